package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/microdc/mdc/api"
	"github.com/microdc/mdc/events"
	"github.com/microdc/mdc/machine"
)

// client talks to mdc's API for every command but serve.
type client struct {
	server  string
	token   string
	dataDir string
	output  string
	http    *http.Client
}

func (c *client) flags(fs *flag.FlagSet) {
	fs.StringVar(&c.server, "server", "http://127.0.0.1:8080", "mdc's API")
	fs.StringVar(&c.token, "token", "", "the admin token (default: <data-dir>/admin.token)")
	fs.StringVar(&c.dataDir, "data-dir", "/var/lib/mdc", "where to find admin.token")
	fs.StringVar(&c.output, "o", "table", "output: table or json")
}

// setup validates the client flags after parsing and settling.
func (c *client) setup() error {
	if c.output != "table" && c.output != "json" {
		return usagef("-o %q: want table or json", c.output)
	}
	u, err := url.Parse(c.server)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return usagef("--server %q: want http://host:port", c.server)
	}
	c.server = strings.TrimRight(c.server, "/")
	if c.token == "" {
		// Without a readable token file reads still work from loopback.
		if b, err := os.ReadFile(filepath.Join(c.dataDir, "admin.token")); err == nil {
			c.token = strings.TrimSpace(string(b))
		}
	}
	c.http = &http.Client{}
	return nil
}

// apiError is an error answer from the server.
type apiError struct {
	status int
	body   api.Error
}

func (e *apiError) Error() string {
	return fmt.Sprintf("%s (HTTP %d, %s)", e.body.Message, e.status, e.body.Code)
}

// call sends a request and decodes a JSON answer into out (if not nil).
func (c *client) call(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.server+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach mdc at %s (is mdc serve running? --server): %w", c.server, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		var e struct{ Error api.Error }
		if json.Unmarshal(b, &e) == nil && e.Error.Code != "" {
			if e.Error.Code == api.CodeUnauthorized && c.token == "" {
				e.Error.Message += fmt.Sprintf("; no token found (--token, MDC_TOKEN or %s/admin.token)", c.dataDir)
			}
			return &apiError{status: resp.StatusCode, body: e.Error}
		}
		return fmt.Errorf("%s %s: HTTP %d: %s", method, path, resp.StatusCode, strings.TrimSpace(string(b)))
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("%s %s: unexpected answer: %w", method, path, err)
	}
	return nil
}

// newClientCmd parses a client command's flags and returns its arguments.
func newClientCmd(name, help string, args []string, stderr io.Writer, getenv func(string) string,
	extra func(fs *flag.FlagSet)) (*client, []string, error) {
	c := &client{}
	fs := newFlagSet(name, stderr, help)
	c.flags(fs)
	if extra != nil {
		extra(fs)
	}
	pos, err := parseArgs(fs, args)
	if err != nil {
		return nil, nil, flagError(fs, err)
	}
	// MDC_SERVER, MDC_TOKEN, MDC_DATA_DIR, MDC_O are read like every flag.
	if err := settle(fs, getenv); err != nil {
		return nil, nil, usagef("%s: %v", name, err)
	}
	if err := c.setup(); err != nil {
		return nil, nil, err
	}
	return c, pos, nil
}

var machineSubcommands = []string{"list", "show", "register", "rename", "assign", "reprovision", "retire"}

const machinesHelp = `Usage: mdc machines list|show|register|rename|assign|reprovision|retire …

  list [--state S] [--role R]   the machines, by id
  show ID                       one machine (ID: its MAC in any spelling)
  register MAC [--name NAME]    record a machine before it boots
  rename ID NAME                change its name
  assign ID ROLE                give it a role; its next boot gets the role's image
  reprovision ID                back to provisioning in its role; with a BMC, mdc
                                sets PXE and power-cycles it
  retire ID [--reason TEXT]     decommission it

`

func machinesCmd(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, machinesHelp)
		return usagef("machines: which subcommand? (list, show, register, rename, assign, reprovision, retire)")
	}
	args = commandFirst(args, machineSubcommands)
	sub := args[0]
	var state, role, name, reason string
	c, pos, err := newClientCmd("machines "+sub, machinesHelp, args[1:], stderr, getenv, func(fs *flag.FlagSet) {
		switch sub {
		case "list":
			fs.StringVar(&state, "state", "", "only machines in this state")
			fs.StringVar(&role, "role", "", "only machines with this role")
		case "register":
			fs.StringVar(&name, "name", "", "the machine's name")
		case "retire":
			fs.StringVar(&reason, "reason", "", "why, for the record")
		}
	})
	if err != nil {
		return err
	}
	want := map[string]int{"list": 0, "show": 1, "register": 1, "rename": 2, "assign": 2, "reprovision": 1, "retire": 1}
	n, ok := want[sub]
	if !ok {
		return usagef("machines: unknown subcommand %q (list, show, register, rename, assign, reprovision, retire)", sub)
	}
	if len(pos) != n {
		return usagef("machines %s takes %d argument(s), got %d", sub, n, len(pos))
	}
	var id machine.ID
	if n > 0 && sub != "register" {
		if id, err = machine.ParseID(pos[0]); err != nil {
			return usagef("machines %s: %v", sub, err)
		}
	}
	var res api.WriteResult
	switch sub {
	case "list":
		q := url.Values{}
		if state != "" {
			q.Set("state", state)
		}
		if role != "" {
			q.Set("role", role)
		}
		var list api.MachineList
		path := "/api/v1/machines"
		if len(q) > 0 {
			path += "?" + q.Encode()
		}
		if err := c.call(ctx, "GET", path, nil, &list); err != nil {
			return err
		}
		if c.output == "json" {
			return printJSON(stdout, list)
		}
		return printMachines(stdout, list.Machines)
	case "show":
		var m api.MachineDetail
		if err := c.call(ctx, "GET", "/api/v1/machines/"+string(id), nil, &m); err != nil {
			return err
		}
		if c.output == "json" {
			return printJSON(stdout, m)
		}
		var evs api.EventList
		if err := c.call(ctx, "GET", "/api/v1/machines/"+string(id)+"/events", nil, &evs); err != nil {
			return err
		}
		return printMachine(stdout, m, evs.Events)
	case "register":
		err = c.call(ctx, "POST", "/api/v1/machines", api.RegisterRequest{MAC: pos[0], Name: name}, &res)
	case "rename":
		err = c.call(ctx, "PATCH", "/api/v1/machines/"+string(id), api.RenameRequest{Name: pos[1]}, &res)
	case "assign":
		err = c.call(ctx, "POST", "/api/v1/machines/"+string(id)+"/assign", api.AssignRequest{Role: pos[1]}, &res)
	case "reprovision":
		err = c.call(ctx, "POST", "/api/v1/machines/"+string(id)+"/reprovision", nil, &res)
	case "retire":
		err = c.call(ctx, "POST", "/api/v1/machines/"+string(id)+"/retire", api.RetireRequest{Reason: reason}, &res)
	}
	if err != nil {
		return err
	}
	if c.output == "json" {
		return printJSON(stdout, res)
	}
	fmt.Fprintf(stdout, "%s %s: %s (event %s, seq %d)\n", res.Machine.ID, res.Machine.MAC, res.Machine.State, res.Event.Type, res.Event.Seq)
	return nil
}

const eventsHelp = `Usage: mdc events [--follow] [--machine ID] [--since SEQ]

Prints lifecycle events, oldest first. --follow keeps printing new ones until
Ctrl-C; with --follow and no --since or --machine it starts with new events.

`

func eventsCmd(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	var follow bool
	var mach string
	var since uint64
	c, pos, err := newClientCmd("events", eventsHelp, args, stderr, getenv, func(fs *flag.FlagSet) {
		fs.BoolVar(&follow, "follow", false, "keep printing new events")
		fs.StringVar(&mach, "machine", "", "only this machine's events")
		fs.Uint64Var(&since, "since", 0, "first sequence to print")
	})
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("events takes no arguments, got %q", pos)
	}
	q := url.Values{}
	if mach != "" {
		id, err := machine.ParseID(mach)
		if err != nil {
			return usagef("--machine: %v", err)
		}
		q.Set("machine", string(id))
	}
	if since == 0 && (!follow || mach != "") {
		since = 1
	}
	if since > 0 {
		q.Set("since", strconv.FormatUint(since, 10))
	}
	q.Set("follow", strconv.FormatBool(follow))
	req, err := http.NewRequestWithContext(ctx, "GET", c.server+"/api/v1/events?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("cannot reach mdc at %s: %w", c.server, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		var e struct{ Error api.Error }
		if json.Unmarshal(b, &e) == nil && e.Error.Code != "" {
			return &apiError{status: resp.StatusCode, body: e.Error}
		}
		return fmt.Errorf("events: HTTP %d", resp.StatusCode)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	// A live feed cannot align columns on what is still to come: it uses
	// fixed widths that fit ids, event types and sources.
	const live = "%-6v  %-19s  %-12s  %-21s  %-9s  %s\n"
	switch {
	case c.output == "table" && follow:
		fmt.Fprintf(stdout, live, "SEQ", "TIME", "MACHINE", "EVENT", "SOURCE", "DATA")
	case c.output == "table":
		fmt.Fprintln(tw, "SEQ\tTIME\tMACHINE\tEVENT\tSOURCE\tDATA")
	}
	err = readSSE(resp.Body, func(seq uint64, data []byte) error {
		e, err := events.Decode(data)
		if err != nil {
			return err
		}
		e.Seq = seq
		if c.output == "json" {
			return json.NewEncoder(stdout).Encode(e)
		}
		if follow {
			_, err := fmt.Fprintf(stdout, live, e.Seq, e.Time.Local().Format(time.DateTime), e.Machine, e.Type, e.Source, compact(e.Data))
			return err
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", e.Seq, e.Time.Local().Format(time.DateTime), e.Machine, e.Type, e.Source, compact(e.Data))
		return nil
	})
	if ctx.Err() != nil {
		err = nil // Ctrl-C ends a follow
	}
	if ferr := tw.Flush(); err == nil {
		err = ferr
	}
	return err
}

// readSSE calls fn for each event of a Server-Sent Events stream.
func readSSE(r io.Reader, fn func(seq uint64, data []byte) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	var seq uint64
	var data []byte
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if len(data) > 0 {
				if err := fn(seq, data); err != nil {
					return err
				}
			}
			seq, data = 0, nil
		case strings.HasPrefix(line, "id: "):
			seq, _ = strconv.ParseUint(line[4:], 10, 64)
		case strings.HasPrefix(line, "data: "):
			data = append(data, line[6:]...)
		}
	}
	return sc.Err()
}

func versionCmd(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	c, _, err := newClientCmd("version", "Usage: mdc version\n\n", args, stderr, getenv, nil)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "mdc %s\n", version)
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var v struct{ Version string }
	if err := c.call(ctx, "GET", "/api/v1/version", nil, &v); err == nil {
		fmt.Fprintf(stdout, "server %s at %s\n", v.Version, c.server)
	}
	return nil
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func printMachines(w io.Writer, ms []machine.Machine) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tMAC\tNAME\tSTATE\tROLE\tEVENTS\tUPDATED")
	for _, m := range ms {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\n", m.ID, m.MAC, dash(m.Name), m.State, dash(m.Role), m.Events, ago(m.Updated))
	}
	return tw.Flush()
}

func printMachine(w io.Writer, md api.MachineDetail, evs []machine.Event) error {
	m := md.Machine
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	row := func(k, v string) {
		if v != "" {
			fmt.Fprintf(tw, "%s:\t%s\n", k, v)
		}
	}
	row("ID", string(m.ID))
	row("MAC", m.MAC)
	row("Name", m.Name)
	row("State", string(m.State))
	row("Role", m.Role)
	row("Image", m.Image)
	row("Arch", m.Arch)
	row("Join", joinText(md.Join))
	if m.Failure != nil {
		row("Failure", fmt.Sprintf("%s (in %s, %s)", m.Failure.Reason, m.Failure.In, m.Failure.At.Local().Format(time.DateTime)))
	}
	if m.BMC != nil {
		row("BMC", m.BMC.URL+" as "+m.BMC.User)
	}
	row("Power", m.Power)
	if f := m.Facts; f != nil {
		row("Hardware", strings.TrimSpace(fmt.Sprintf("%s %s, serial %s", f.Vendor, f.Product, dash(f.Serial))))
		row("CPU", fmt.Sprintf("%d × %s", f.CPUs, f.CPUModel))
		row("Memory", fmt.Sprintf("%.1f GiB", float64(f.MemoryBytes)/(1<<30)))
		for _, d := range f.Disks {
			row("Disk "+d.Name, fmt.Sprintf("%.1f GB %s", float64(d.SizeBytes)/1e9, d.Model))
		}
		for _, n := range f.NICs {
			row("NIC "+n.Name, n.MAC+" "+n.Driver)
		}
	}
	row("Created", m.Created.Local().Format(time.DateTime))
	row("Updated", m.Updated.Local().Format(time.DateTime)+" ("+ago(m.Updated)+")")
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w, "\nEvents:")
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, e := range evs {
		fmt.Fprintf(tw, "  %d\t%s\t%s\t%s\t%s\n", e.Seq, e.Time.Local().Format(time.DateTime), e.Type, e.Source, compact(e.Data))
	}
	return tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func compact(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	var buf bytes.Buffer
	if json.Compact(&buf, b) != nil {
		return string(b)
	}
	return buf.String()
}

func ago(t time.Time) string {
	d := time.Since(t).Round(time.Second)
	switch {
	case t.IsZero():
		return "-"
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return fmt.Sprintf("%dd ago", int(d.Hours()/24))
}
