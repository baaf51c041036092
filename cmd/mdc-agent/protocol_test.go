package main

import (
	"context"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/microdc/mdc/api"
	"github.com/microdc/mdc/api/agentapi"
	"github.com/microdc/mdc/events"
	"github.com/microdc/mdc/machine"
	"github.com/microdc/mdc/policy"
)

// realMDC is mdc's real API, event log (an embedded NATS) and role policy.
type realMDC struct {
	url   string
	store *events.Store
}

func newRealMDC(t *testing.T, policyYAML string) *realMDC {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	conn, err := events.Connect(ctx, events.NATSConfig{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	metrics := events.NewMetrics(reg)
	l, err := events.OpenLog(ctx, conn.NC, events.LogConfig{Metrics: metrics})
	if err != nil {
		t.Fatal(err)
	}
	store := events.NewStore(l, events.NewTable(nil, metrics), nil)
	p, err := policy.Parse([]byte(policyYAML), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	engine := policy.NewEngine(p, store, nil)
	done := make(chan struct{}, 2)
	go func() { _ = store.Run(ctx); done <- struct{}{} }()
	go func() { _ = engine.Run(ctx); done <- struct{}{} }()
	if err := store.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	s := api.New(api.Config{Machines: store, Token: "admin", Registry: reg, Gatherer: reg,
		Agent: api.AgentConfig{Policy: engine, Telemetry: l, Heartbeat: time.Second}})
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(func() {
		srv.Close()
		cancel()
		<-done
		<-done
		conn.Close()
	})
	return &realMDC{url: srv.URL, store: store}
}

// boot records a network boot as mdc's boot script does and returns the
// token that went on the kernel command line.
func (m *realMDC) boot(t *testing.T, id machine.ID, mode agentapi.Mode) string {
	t.Helper()
	tok, stored := machine.NewBootToken()
	_, _, err := m.store.Update(context.Background(), id, func(cur machine.Machine) (machine.Event, error) {
		switch {
		case cur.State == machine.Absent:
			return machine.NewEvent(id, machine.Discovered, "test", machine.DiscoveredData{Via: "dhcp"})
		case mode == agentapi.ModeCommissioning:
			return machine.NewEvent(id, machine.CommissioningStarted, "mdc/ipxe",
				machine.CommissioningBootData{ImageData: machine.ImageData{Image: "commissioning"}, BootToken: stored})
		default:
			return machine.NewEvent(id, machine.ProvisioningStarted, "mdc/ipxe", machine.ProvisioningBootData{
				ProvisioningStartedData: machine.ProvisioningStartedData{Role: cur.Role, Image: "test-1"}, BootToken: stored})
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if cur, _ := m.store.Get(id); cur.State == machine.StDiscovered && mode == agentapi.ModeCommissioning {
		return m.boot(t, id, mode)
	}
	return tok
}

func (m *realMDC) waitState(t *testing.T, id machine.ID, want machine.State) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if cur, _ := m.store.Get(id); cur.State == want {
			return
		}
		if time.Now().After(deadline) {
			cur, _ := m.store.Get(id)
			t.Fatalf("machine %s is %s, want %s", id, cur.State, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// The agent against the real agent API: a machine commissions, reboots into
// its role, joins, and an earlier boot's token is refused.
func TestAgentWithRealMDC(t *testing.T) {
	mdc := newRealMDC(t, `
rules:
  - {role: test, boot_mode: uefi}
roles:
  test:
    evidence: [kernel, hook]
    heartbeat: 1s
    files:
      - {path: /etc/mdc/motd, mode: "0644", content: "test node\n"}
`)
	id := machine.MustParseID("52:54:00:a6:00:01")
	ctok := mdc.boot(t, id, agentapi.ModeCommissioning)

	n := newNode(t, "qemu-uefi", mdc.url, agentapi.ModeCommissioning, id)
	setToken(t, n, ctok)
	if err := n.run(context.Background()); err != nil {
		t.Fatalf("commissioning: %v\n%s", err, n.log.String())
	}
	if !slices.Equal(n.power, []agentapi.Action{agentapi.ActionReboot}) {
		t.Fatalf("commissioning ended with %v\n%s", n.power, n.log.String())
	}
	m, _ := mdc.store.Get(id)
	if m.State != machine.Provisioning || m.Role != "test" {
		t.Fatalf("after commissioning: %s %q", m.State, m.Role)
	}
	if d := cmp.Diff(collectFacts(n.root), *m.Facts); d != "" {
		t.Errorf("stored facts (-node +stored):\n%s", d)
	}

	// The role image: booted, files, join hook, joined, heartbeats.
	rtok := mdc.boot(t, id, agentapi.ModeRole)
	r := newNode(t, "qemu-uefi", mdc.url, agentapi.ModeRole, id)
	setToken(t, r, rtok)
	mustWrite(t, filepath.Join(r.root, "etc/mdc/join"), "#!/bin/sh\necho \"{\\\"kernel\\\":\\\"$(cat "+r.root+"/proc/sys/kernel/osrelease)\\\",\\\"hook\\\":\\\"test\\\"}\"\n")
	if err := os.Chmod(filepath.Join(r.root, "etc/mdc/join"), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- r.runPaced(ctx) }()
	mdc.waitState(t, id, machine.StJoined)
	// Let it send a heartbeat or two, then stop it as systemd would.
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(r.logString(), "joined") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	cancel()
	if err := <-errc; err != nil {
		t.Fatalf("role agent: %v\n%s", err, r.logString())
	}
	if b, _ := os.ReadFile(filepath.Join(r.root, "etc/mdc/motd")); string(b) != "test node\n" {
		t.Errorf("role file: %q", b)
	}
	history, err := mdc.store.History(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	for _, e := range history {
		types = append(types, string(e.Type))
	}
	want := "discovered commissioning_started facts_reported role_assigned provisioning_started booted joined"
	if got := strings.Join(types, " "); got != want {
		t.Fatalf("history %s, want %s", got, want)
	}
	if !strings.Contains(string(history[6].Data), `"kernel":"6.1.0-28-amd64"`) {
		t.Errorf("joined evidence %s", history[6].Data)
	}

	// The commissioning boot's token is stale now: the agent stops, status 3.
	old := newNode(t, "qemu-uefi", mdc.url, agentapi.ModeCommissioning, id)
	setToken(t, old, ctok)
	err = old.run(context.Background())
	if exitCode(err) != 3 || !strings.Contains(old.log.String(), agentapi.CodeStaleToken) {
		t.Fatalf("stale token: exit %d %v\n%s", exitCode(err), err, old.log.String())
	}
	if after, _ := mdc.store.History(context.Background(), id); len(after) != len(history) {
		t.Fatal("a stale token appended events")
	}
}

func setToken(t *testing.T, n *node, tok string) {
	t.Helper()
	p := filepath.Join(n.root, "proc/cmdline")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	mustWrite(t, p, strings.Replace(string(b), "mdc.token="+testToken, "mdc.token="+tok, 1))
}

// runPaced runs the agent with real, shortened sleeps (heartbeats every
// 20 ms instead of seconds).
func (n *node) runPaced(ctx context.Context) error {
	d := deps{
		power:   func(a agentapi.Action) error { return fmt.Errorf("unexpected %s", a) },
		backoff: backoff{Min: 4 * time.Millisecond, Max: 32 * time.Millisecond},
		sleep:   func(ctx context.Context, d time.Duration) error { return sleepCtx(ctx, min(d, 20*time.Millisecond)) },
	}
	return runWith(ctx, []string{"-root", n.root}, nil, &lockedWriter{n: n}, func(string) string { return "" }, d)
}

type lockedWriter struct{ n *node }

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.n.mu.Lock()
	defer w.n.mu.Unlock()
	return w.n.log.Write(p)
}

func (n *node) logString() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.log.String()
}
