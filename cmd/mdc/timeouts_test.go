package main

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/microdc/mdc/api"
	"github.com/microdc/mdc/events"
	"github.com/microdc/mdc/events/eventstest"
	"github.com/microdc/mdc/machine"
)

// newTestStore runs a real event store on an embedded NATS.
func newTestStore(t *testing.T) *events.Store { return eventstest.Start(t).Store }

// lifecycle appends events to a machine, in order.
func lifecycle(t *testing.T, s *events.Store, id machine.ID, evs ...any) {
	t.Helper()
	for i := 0; i+1 < len(evs); i += 2 {
		typ, data := evs[i].(machine.EventType), evs[i+1]
		if _, _, err := s.Update(context.Background(), id, func(machine.Machine) (machine.Event, error) {
			return machine.NewEvent(id, typ, "test", data)
		}); err != nil {
			t.Fatalf("%s %s: %v", id, typ, err)
		}
	}
}

// telemetry appends boot telemetry that happened at `at`.
func telemetry(t *testing.T, s *events.Store, id machine.ID, typ machine.EventType, at time.Time, data any) {
	t.Helper()
	e, err := machine.NewEvent(id, typ, "test", data)
	if err != nil {
		t.Fatal(err)
	}
	e.Time = at
	if err := s.Log.AppendTelemetry(e); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		tel, _ := s.Telemetry(context.Background(), id)
		if len(tel) > 0 && tel[len(tel)-1].ID == e.ID {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("telemetry not stored")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestTimeouts(t *testing.T) {
	s := newTestStore(t)
	start := time.Now()
	img := machine.ImageData{Image: "commission-1"}
	disc := machine.DiscoveredData{Via: "dhcp"}
	role := machine.RoleAssignedData{Role: "test", By: "policy"}
	prov := machine.ProvisioningStartedData{Role: "test", Image: "test-1"}

	tftp := machine.MustParseID("525400e00001")
	lifecycle(t, s, tftp, machine.Discovered, disc, machine.CommissioningStarted, img)
	telemetry(t, s, tftp, machine.TFTPServed, start.Add(time.Minute), map[string]any{"path": "snponly.efi", "bytes": 190000})

	silent := machine.MustParseID("525400e00002")
	lifecycle(t, s, silent, machine.Discovered, disc, machine.CommissioningStarted, img)

	joining := machine.MustParseID("525400e00003")
	lifecycle(t, s, joining, machine.Discovered, disc, machine.CommissioningStarted, img, machine.FactsReported, machine.Facts{},
		machine.RoleAssigned, role, machine.ProvisioningStarted, prov, machine.Booted, machine.BootedData{Kernel: "6.1"})
	telemetry(t, s, joining, machine.AgentSeen, start.Add(20*time.Minute),
		api.AgentSeenData{Mode: "role", Phase: "joining", Status: "join hook /etc/mdc/join: exit status 1"})

	notBooted := machine.MustParseID("525400e00004")
	lifecycle(t, s, notBooted, machine.Discovered, disc, machine.CommissioningStarted, img, machine.FactsReported, machine.Facts{},
		machine.RoleAssigned, role, machine.ProvisioningStarted, prov)
	telemetry(t, s, notBooted, machine.BlobServed, start.Add(2*time.Minute), map[string]any{"digest": "sha256:" + strings.Repeat("ab", 32), "bytes": 50 << 20, "status": 200})

	ready := machine.MustParseID("525400e00005")
	lifecycle(t, s, ready, machine.Discovered, disc, machine.CommissioningStarted, img, machine.FactsReported, machine.Facts{})
	joined := machine.MustParseID("525400e00006")
	lifecycle(t, s, joined, machine.Discovered, disc, machine.CommissioningStarted, img, machine.FactsReported, machine.Facts{},
		machine.RoleAssigned, role, machine.ProvisioningStarted, prov, machine.Booted, machine.BootedData{}, machine.Joined, machine.JoinedData{})

	offset := 10 * time.Minute
	w := newTimeoutWatcher(s, timeouts{commissioning: 15 * time.Minute, provisioning: 30 * time.Minute}, slog.New(slog.DiscardHandler))
	w.now = func() time.Time { return start.Add(offset) }
	if n := w.check(context.Background()); n != 0 {
		t.Fatalf("%d machines failed before any limit", n)
	}
	// A reboot during commissioning does not restart the clock.
	lifecycle(t, s, silent, machine.CommissioningStarted, img)

	offset = 16 * time.Minute
	if n := w.check(context.Background()); n != 2 {
		t.Fatalf("%d failed at 16m, want the two commissioning machines", n)
	}
	offset = 31 * time.Minute
	if n := w.check(context.Background()); n != 2 {
		t.Fatalf("%d failed at 31m, want the two provisioning machines", n)
	}
	// A second mdc's watcher finds nothing left to do.
	w2 := newTimeoutWatcher(s, w.limit, slog.New(slog.DiscardHandler))
	w2.now = w.now
	if n := w2.check(context.Background()); n != 0 {
		t.Fatalf("a second watcher failed %d more", n)
	}

	for id, want := range map[machine.ID][]string{
		tftp:      {"no facts 15m after commissioning started (image commission-1)", "last seen: tftp_served snponly.efi 15m ago", "never asked for its boot script"},
		silent:    {"no facts 15m after commissioning started", "last seen: nothing (no boot telemetry)", "powered on"},
		joining:   {"role test: booted", "but not joined 30m after provisioning started", "last seen: agent_seen joining (join hook /etc/mdc/join: exit status 1) 11m ago", "its status says why"},
		notBooted: {"role test: image test-1 served but not booted 30m after provisioning started", "blob_served sha256:abababababab… (50 MiB) 29m ago", "look at its console"},
	} {
		m, _ := s.Get(id)
		if m.State != machine.StFailed || m.Failure == nil {
			t.Errorf("%s: %s, want failed", id, m.State)
			continue
		}
		t.Logf("%s: %s", id, m.Failure.Reason)
		for _, w := range want {
			if !strings.Contains(m.Failure.Reason, w) {
				t.Errorf("%s: reason %q lacks %q", id, m.Failure.Reason, w)
			}
		}
		h, _ := s.History(context.Background(), id)
		if last := h[len(h)-1]; last.Source != "mdc/timeouts" {
			t.Errorf("%s: failed by %s", id, last.Source)
		}
	}
	if m, _ := s.Get(tftp); m.Failure.In != machine.Commissioning {
		t.Errorf("failed in %s", m.Failure.In)
	}
	for _, id := range []machine.ID{ready, joined} {
		if m, _ := s.Get(id); m.State == machine.StFailed {
			t.Errorf("%s (%s before) timed out", id, m.Failure.In)
		}
	}
}

// The watcher as serve runs it, with a short timeout and the real clock.
func TestTimeoutWatcherRuns(t *testing.T) {
	s := newTestStore(t)
	id := machine.MustParseID("525400e10001")
	lifecycle(t, s, id, machine.Discovered, machine.DiscoveredData{Via: "dhcp"}, machine.CommissioningStarted, machine.ImageData{Image: "c"})
	w := newTimeoutWatcher(s, timeouts{commissioning: time.Second}, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if m, _ := s.Get(id); m.State == machine.StFailed {
			if !strings.Contains(m.Failure.Reason, "no facts 1s after commissioning started (image c)") {
				t.Errorf("reason %q", m.Failure.Reason)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the machine did not time out")
		}
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestHuman(t *testing.T) {
	for d, want := range map[time.Duration]string{15 * time.Minute: "15m", 90 * time.Minute: "1h30m", 2 * time.Hour: "2h", 42 * time.Second: "42s", 61 * time.Second: "1m1s"} {
		if got := human(d); got != want {
			t.Errorf("human(%v) = %q, want %q", d, got, want)
		}
	}
}

// The DHCP of the system a machine booted (no boot client) is not the
// firmware's: it says the image booted, not that TFTP is broken.
func TestHintOSDHCP(t *testing.T) {
	for client, want := range map[string]string{"none": "its agent never reported", "pxe": "check TFTP", "ipxe": "check TFTP"} {
		e, err := machine.NewEvent(machine.MustParseID("525400e00009"), machine.DHCPAcked, "test", map[string]any{"addr": "10.0.0.9", "client": client})
		if err != nil {
			t.Fatal(err)
		}
		if h := hint(e); !strings.Contains(h, want) {
			t.Errorf("client %s: hint %q, want %q", client, h, want)
		}
	}
}
