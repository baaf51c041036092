package main

// The BMC commands: mdc enroll, mdc power, mdc machines reprovision.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/microdc/mdc/api"
	"github.com/microdc/mdc/machine"
)

const enrollHelp = `Usage: mdc enroll --bmc URL --bmc-user U --bmc-password-file F [--mac M] [--name N] [--role R] [--wait]

Enrols a machine through its BMC: mdc connects to the BMC, reads the
machine's MACs, serial and UUID (Redfish; IPMI cannot, so give --mac),
records it, sets its next boot to PXE (and checks that it held) and powers
it on, or cycles it if it was on. BMC URLs: redfish://host[:port],
redfishs://host[:port] (TLS), ipmi://host[:port].

The password is read from --bmc-password-file, or asked for on a terminal;
it is never taken on the command line. mdc keeps it in a 0600 file in its
data directory.

With --wait, mdc enroll shows the machine's progress (state, boot stages,
elapsed time) until it is joined (exit 0), failed or --timeout (exit 1).

`

func enrollCmd(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	var req api.EnrollRequest
	var pwFile string
	var wait bool
	var timeout time.Duration
	c, pos, err := newClientCmd("enroll", enrollHelp, args, stderr, getenv, func(fs *flag.FlagSet) {
		fs.StringVar(&req.BMC, "bmc", "", "the BMC: redfish://host[:port], redfishs://host[:port] or ipmi://host[:port]")
		fs.StringVar(&req.User, "bmc-user", "", "the BMC user")
		fs.StringVar(&pwFile, "bmc-password-file", "", "file holding the BMC password (default: ask on the terminal)")
		fs.StringVar(&req.MAC, "mac", "", "MAC of the NIC the machine network-boots from (default: read through a Redfish BMC)")
		fs.StringVar(&req.Name, "name", "", "the machine's name")
		fs.StringVar(&req.Role, "role", "", "give the machine this role: its first boot goes straight to the role image")
		fs.BoolVar(&wait, "wait", false, "show progress until the machine is joined or failed")
		fs.DurationVar(&timeout, "timeout", 30*time.Minute, "with --wait: give up after this long")
	})
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("enroll takes no arguments, got %q", pos)
	}
	if req.BMC == "" || req.User == "" {
		return usagef("enroll needs --bmc URL and --bmc-user U")
	}
	if req.Password, err = readPassword(pwFile, stderr); err != nil {
		return err
	}
	start := time.Now()
	var res api.EnrollResult
	if err := c.call(ctx, "POST", "/api/v1/enroll", req, &res); err != nil {
		return err
	}
	if c.output == "json" && !wait {
		return printJSON(stdout, res)
	}
	verb := "enrolled"
	if !res.Created {
		verb = "already enrolled"
	}
	fmt.Fprintf(stdout, "%s %s (%s) %s; state %s, power action: %s\n", verb, res.Machine.ID, res.Machine.MAC, req.BMC, res.Machine.State, res.Power)
	if !wait {
		return nil
	}
	return c.waitJoined(ctx, stdout, res.Machine.ID, start, timeout)
}

// readPassword reads the BMC password from file, or from the terminal
// without echo. A password is never a flag: command lines are public.
func readPassword(file string, stderr io.Writer) (string, error) {
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return "", usagef("--bmc-password-file: %v", err)
		}
		pw := strings.TrimRight(string(b), "\r\n")
		if pw == "" {
			return "", usagef("--bmc-password-file %s is empty", file)
		}
		return pw, nil
	}
	fd := int(os.Stdin.Fd())
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return "", usagef("give --bmc-password-file (standard input is not a terminal to ask on)")
	}
	noEcho := *old
	noEcho.Lflag &^= unix.ECHO
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &noEcho); err != nil {
		return "", err
	}
	defer unix.IoctlSetTermios(fd, unix.TCSETS, old)
	fmt.Fprint(stderr, "BMC password: ")
	var line []byte
	buf := make([]byte, 1)
	for {
		n, err := os.Stdin.Read(buf)
		if n == 0 || err != nil || buf[0] == '\n' {
			break
		}
		line = append(line, buf[0])
	}
	fmt.Fprintln(stderr)
	if len(line) == 0 {
		return "", usagef("no BMC password given")
	}
	return strings.TrimRight(string(line), "\r"), nil
}

// waitJoined prints a machine's lifecycle events and boot telemetry as they
// come, until it is joined (nil), failed or timeout (an error).
func (c *client) waitJoined(ctx context.Context, stdout io.Writer, id machine.ID, start time.Time, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	seen := map[string]bool{}
	first := true
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var lastState machine.State
	for {
		var list api.EventList
		err := c.call(ctx, "GET", "/api/v1/machines/"+string(id)+"/events?telemetry=true", nil, &list)
		if err != nil && ctx.Err() == nil {
			fmt.Fprintf(stdout, "[%6s] (cannot read progress: %v)\n", elapsed(start), err)
		}
		for _, e := range list.Events {
			if seen[e.ID] {
				continue
			}
			seen[e.ID] = true
			if first && e.Time.Before(start.Add(-time.Second)) {
				continue // history from before this enrolment
			}
			fmt.Fprintf(stdout, "[%6s] %-22s %s\n", elapsed(start), e.Type, compact(e.Data))
		}
		first = false
		var m machine.Machine
		if err := c.call(ctx, "GET", "/api/v1/machines/"+string(id), nil, &m); err == nil {
			if m.State != lastState {
				fmt.Fprintf(stdout, "[%6s] state: %s\n", elapsed(start), m.State)
				lastState = m.State
			}
			switch m.State {
			case machine.StJoined:
				fmt.Fprintf(stdout, "machine %s joined as %s in %s\n", id, m.Role, elapsed(start))
				return nil
			case machine.StFailed:
				reason := ""
				if m.Failure != nil {
					reason = m.Failure.Reason
				}
				return fmt.Errorf("machine %s failed after %s: %s", id, elapsed(start), reason)
			}
		}
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return fmt.Errorf("machine %s is still %s after %s (--timeout); see mdc machines show %s", id, lastState, timeout, id)
			}
			return ctx.Err()
		case <-tick.C:
		}
	}
}

func elapsed(start time.Time) string {
	return time.Since(start).Round(100 * time.Millisecond).String()
}

const powerHelp = `Usage: mdc power on|off|cycle|soft|status ID

Powers a machine with a BMC on, off (hard), soft (ACPI shutdown) or cycles
it, or reads its power state from the BMC. Each action and its result is an
event (power_requested, power_changed).

`

func powerCmd(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	c, pos, err := newClientCmd("power", powerHelp, args, stderr, getenv, nil)
	if err != nil {
		return err
	}
	if len(pos) != 2 {
		return usagef("usage: mdc power on|off|cycle|soft|status ID")
	}
	action, raw := pos[0], pos[1]
	id, err := machine.ParseID(raw)
	if err != nil {
		return usagef("machine id: %v", err)
	}
	var res api.PowerResult
	switch action {
	case "status":
		err = c.call(ctx, "GET", "/api/v1/machines/"+string(id)+"/power", nil, &res)
	case "on", "off", "cycle", "soft":
		err = c.call(ctx, "POST", "/api/v1/machines/"+string(id)+"/power", api.PowerRequest{Action: action}, &res)
	default:
		return usagef("power %q: want on, off, cycle, soft or status", action)
	}
	if err != nil {
		return err
	}
	if c.output == "json" {
		return printJSON(stdout, res)
	}
	fmt.Fprintf(stdout, "%s: power %s\n", id, res.Power)
	return nil
}
