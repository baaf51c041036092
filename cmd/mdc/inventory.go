package main

// The inventory side of `mdc serve` (--netbox-url, --netbox-token-file:
// NetBox kept in step with the event log; docs/inventory.md) and the
// `mdc inventory status|resync` commands.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/microdc/mdc/api"
	"github.com/microdc/mdc/dhcp"
	"github.com/microdc/mdc/events"
	"github.com/microdc/mdc/inventory/netbox"
	"github.com/microdc/mdc/machine"
)

// inventoryFlags are the NetBox flags as given.
type inventoryFlags struct {
	url, tokenFile                          string
	site, manufacturer, deviceType, defRole string
	nameRule                                string
	poll                                    time.Duration
}

func addInventoryFlags(fs *flag.FlagSet) *inventoryFlags {
	f := &inventoryFlags{}
	fs.StringVar(&f.url, "netbox-url", "", "keep this NetBox in step with the machines, and enroll the devices tagged mdc that it records first (docs/inventory.md)")
	fs.StringVar(&f.tokenFile, "netbox-token-file", "", "file (mode 0600) holding the NetBox API token")
	fs.StringVar(&f.site, "netbox-site", "mdc", "slug of the NetBox site new devices go in (created if missing)")
	fs.StringVar(&f.manufacturer, "netbox-manufacturer", "generic", "slug of the manufacturer of the device type (created if missing)")
	fs.StringVar(&f.deviceType, "netbox-device-type", "mdc-server", "slug of the device type of new devices (created if missing)")
	fs.StringVar(&f.defRole, "netbox-default-role", "mdc-unassigned", "slug of the device role of machines without a role yet (created if missing)")
	fs.StringVar(&f.nameRule, "netbox-name", "{name}", "name of a new device: {name} (the machine's name, or mdc-{id}), {id}, {mac}; a device renamed in NetBox keeps its name")
	fs.DurationVar(&f.poll, "netbox-poll-interval", time.Minute, "how often devices tagged mdc are read back as intent (0: never)")
	return f
}

// inventoryConfig is the validated NetBox setting; nil without --netbox-url.
type inventoryConfig struct {
	netbox netbox.Config
}

func (f *inventoryFlags) config() (*inventoryConfig, error) {
	if f.url == "" {
		if f.tokenFile != "" {
			return nil, usagef("--netbox-token-file goes with --netbox-url")
		}
		return nil, nil
	}
	u, err := url.Parse(f.url)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, usagef("--netbox-url %q: want https://netbox.example.org", f.url)
	}
	if u.User != nil {
		return nil, usagef("--netbox-url: put the token in --netbox-token-file, not in the URL")
	}
	if f.tokenFile == "" {
		return nil, usagef("--netbox-url needs --netbox-token-file (a 0600 file holding the API token)")
	}
	token, err := readSecret(f.tokenFile)
	if err != nil {
		return nil, usagef("--netbox-token-file: %v", err)
	}
	if f.poll != 0 && f.poll < time.Second {
		return nil, usagef("--netbox-poll-interval %s: want at least 1s, or 0 for never", f.poll)
	}
	for name, v := range map[string]string{"--netbox-site": f.site, "--netbox-manufacturer": f.manufacturer,
		"--netbox-device-type": f.deviceType, "--netbox-default-role": f.defRole} {
		if !slugRE(v) {
			return nil, usagef("%s %q: want a slug (letters, digits, '-' and '_')", name, v)
		}
	}
	if !strings.Contains(f.nameRule, "{") {
		return nil, usagef("--netbox-name %q: one name for every device cannot work; use {name}, {id} or {mac}", f.nameRule)
	}
	return &inventoryConfig{netbox: netbox.Config{
		URL: strings.TrimRight(f.url, "/"), Token: token, NameRule: f.nameRule, Site: f.site,
		Manufacturer: f.manufacturer, DeviceType: f.deviceType, DefaultRole: f.defRole, PollInterval: f.poll,
	}}, nil
}

func slugRE(s string) bool {
	if s == "" || len(s) > 100 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// readSecret reads a token file that only its owner may read.
func readSecret(path string) (string, error) {
	st, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	if st.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("%s is readable by others (mode %v): chmod 600 it", path, st.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("%s is empty", path)
	}
	return tok, nil
}

// inventorySide is the NetBox sync, or nothing.
type inventorySide struct {
	sync *netbox.Syncer
	log  *slog.Logger
}

func newInventorySide(ctx context.Context, c *inventoryConfig, nbc *netbootConfig, nc *nats.Conn, store *events.Store,
	reg prometheus.Registerer, log *slog.Logger) (*inventorySide, error) {
	if c == nil {
		return &inventorySide{log: log}, nil
	}
	cfg := c.netbox
	cfg.Logger, cfg.Metrics = log, netbox.NewMetrics(reg)
	if nbc != nil && nbc.enabled && nbc.dhcpMode == string(dhcp.ModeFull) {
		// Leases live in JetStream: NetBox gets each machine's address.
		js, err := jetstream.New(nc)
		if err != nil {
			return nil, err
		}
		kv, err := dhcp.NewKVStore(ctx, js, "")
		if err != nil {
			return nil, err
		}
		cfg.Leases = kvLeases{kv}
		for _, s := range nbc.subnets {
			cfg.Subnets = append(cfg.Subnets, s.Prefix)
		}
	}
	s, err := netbox.New(cfg, nc, netbox.StoreMachines(store))
	if err != nil {
		return nil, err
	}
	return &inventorySide{sync: s, log: log}, nil
}

// api is what the API serves at /api/v1/inventory (nil: embedded only).
func (i *inventorySide) api() api.Inventory {
	if i.sync == nil {
		return nil
	}
	return netboxStatus{i.sync}
}

// run follows the log into NetBox once the machine table is replayed.
func (i *inventorySide) run(ctx context.Context, store *events.Store) error {
	if i.sync == nil {
		return nil
	}
	if store.WaitReady(ctx) != nil {
		return nil
	}
	i.log.Info("keeping NetBox in step", "url", i.sync.Status(ctx).Target)
	return i.sync.Run(ctx)
}

// kvLeases reads the DHCP lease bucket for the NetBox sync.
type kvLeases struct{ kv *dhcp.KVStore }

func (k kvLeases) Watch(ctx context.Context, fn func(machine.ID, netip.Addr, bool), ready func()) error {
	return k.kv.Watch(ctx, func(l dhcp.Lease, _ uint64) {
		if id, err := machine.ParseID(l.Client); err == nil {
			fn(id, l.Addr, l.State == dhcp.LeaseBound && l.ActiveAt(time.Now()))
		}
	}, ready)
}

type netboxStatus struct{ s *netbox.Syncer }

func (n netboxStatus) Resync(ctx context.Context) error { return n.s.Resync(ctx) }

func (n netboxStatus) Status(ctx context.Context) api.InventoryStatus {
	st := n.s.Status(ctx)
	return api.InventoryStatus{Backend: st.Backend, Target: st.Target, Lag: st.Lag, LastAppliedSeq: st.LastAppliedSeq,
		Applied: st.Applied, Failing: st.Failing, LastError: st.LastError, LastErrorAt: st.LastErrorAt,
		Imported: st.Imported, Resyncs: st.Resyncs}
}

const inventoryHelp = `Usage: mdc inventory status | resync

  status   how far NetBox is behind the event log (lag), the last error
  resync   replay the whole event log into NetBox; nothing is created twice,
           operators' edits to fields mdc does not own stay

`

func inventoryCmd(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, inventoryHelp)
		return usagef("inventory: which subcommand? (status, resync)")
	}
	args = commandFirst(args, []string{"status", "resync"})
	sub := args[0]
	c, pos, err := newClientCmd("inventory "+sub, inventoryHelp, args[1:], stderr, getenv, nil)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usagef("inventory %s takes no arguments", sub)
	}
	var st api.InventoryStatus
	switch sub {
	case "status":
		err = c.call(ctx, "GET", "/api/v1/inventory/status", nil, &st)
	case "resync":
		err = c.call(ctx, "POST", "/api/v1/inventory/resync", nil, &st)
	default:
		return usagef("inventory: unknown subcommand %q (status, resync)", sub)
	}
	if err != nil {
		var ae *apiError
		if errors.As(err, &ae) && ae.status == 409 && sub == "resync" {
			return fmt.Errorf("%s", ae.body.Message)
		}
		return err
	}
	if c.output == "json" {
		return printJSON(stdout, st)
	}
	if sub == "resync" {
		fmt.Fprintln(stdout, "resync started: the whole event log is being replayed into NetBox (mdc inventory status shows the lag)")
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "backend:\t%s\n", st.Backend)
	if st.Backend == "embedded" {
		fmt.Fprintf(tw, "\tthe event log is the inventory (mdc serve --netbox-url to keep NetBox in step)\n")
		return tw.Flush()
	}
	fmt.Fprintf(tw, "target:\t%s\n", st.Target)
	fmt.Fprintf(tw, "lag:\t%d events not yet in NetBox\n", st.Lag)
	fmt.Fprintf(tw, "last applied:\tseq %d (%d events since start, %d resyncs)\n", st.LastAppliedSeq, st.Applied, st.Resyncs)
	fmt.Fprintf(tw, "imported:\t%d machines from NetBox intent\n", st.Imported)
	health := "ok"
	if st.Failing {
		health = "FAILING, retrying with backoff"
	}
	fmt.Fprintf(tw, "state:\t%s\n", health)
	if st.LastError != "" {
		fmt.Fprintf(tw, "last error:\t%s (%s)\n", st.LastError, ago(st.LastErrorAt))
	}
	return tw.Flush()
}
