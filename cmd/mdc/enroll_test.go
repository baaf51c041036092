package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/microdc/mdc/api"
	"github.com/microdc/mdc/bmc"
	"github.com/microdc/mdc/hack/vrack/redfish"
	"github.com/microdc/mdc/machine"
)

const testBMCPassword = "s3cret-BMC-pw"

// redfishBMC serves one Redfish system on loopback: the virtual rack's BMC
// with an in-memory machine.
func redfishBMC(t *testing.T, macs ...string) (*redfish.Memory, string) {
	t.Helper()
	sys := redfish.NewMemory(redfish.Info{UUID: "4c4c4544-0042-3510-8052-b2c04f4e3232", SerialNumber: "SN-" + strings.ReplaceAll(macs[0], ":", ""),
		Manufacturer: "QEMU", Model: "Standard PC", MACs: macs})
	svc, err := redfish.New(redfish.Config{User: "admin", Password: testBMCPassword, Systems: map[string]redfish.System{"1": sys}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(svc)
	t.Cleanup(srv.Close)
	return sys, "redfish://" + strings.TrimPrefix(srv.URL, "http://")
}

func writeSecret(t *testing.T, dir, name, s string) string {
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(s+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func history(t *testing.T, url, dataDir string, id machine.ID) []machine.Event {
	t.Helper()
	var list api.EventList
	c := &client{server: url, dataDir: dataDir, output: "json"}
	if err := c.setup(); err != nil {
		t.Fatal(err)
	}
	if err := c.call(context.Background(), "GET", "/api/v1/machines/"+string(id)+"/events", nil, &list); err != nil {
		t.Fatal(err)
	}
	return list.Events
}

func eventTypes(evs []machine.Event) []string {
	var out []string
	for _, e := range evs {
		out = append(out, string(e.Type))
	}
	return out
}

func showMachine(t *testing.T, url, dataDir string, id machine.ID) machine.Machine {
	t.Helper()
	out, err := mdc(t, url, dataDir, "machines", "show", string(id), "-o", "json")
	if err != nil {
		t.Fatalf("machines show %s: %v", id, err)
	}
	var m machine.Machine
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// TestEnrollRedfish drives `mdc enroll`, `mdc power` and `mdc machines
// reprovision` against the virtual rack's Redfish service.
func TestEnrollRedfish(t *testing.T) {
	data := t.TempDir()
	url, stop := serveInProcess(t, data, "--log-level", "debug", "--bmc-timeout", "3s", "--bmc-min-interval", "0")
	sys, bmcURL := redfishBMC(t, "52:54:00:aa:00:01", "52:54:00:aa:00:02")
	pw := writeSecret(t, t.TempDir(), "pw", testBMCPassword)
	const id = machine.ID("525400aa0001")

	out, err := mdc(t, url, data, "enroll", "--bmc", bmcURL, "--bmc-user", "admin", "--bmc-password-file", pw, "--name", "n1", "--role", "test")
	if err != nil {
		t.Fatalf("enroll: %v\n%s", err, out)
	}
	if !strings.Contains(out, "enrolled "+string(id)) || !strings.Contains(out, "power action: on") {
		t.Errorf("enroll said %q, want the machine's id (the BMC's first MAC) and power on", out)
	}
	m := showMachine(t, url, data, id)
	if m.State != machine.Provisioning || m.Role != "test" || m.Name != "n1" || m.Power != "on" || m.BootDevice != "pxe" {
		t.Errorf("after enroll: state %s role %q name %q power %q boot %q; want provisioning/test/n1/on/pxe", m.State, m.Role, m.Name, m.Power, m.BootDevice)
	}
	if m.BMC == nil || m.BMC.URL != bmcURL || m.BMC.User != "admin" || len(m.ExtraMACs) != 1 || m.ExtraMACs[0] != "525400aa0002" {
		t.Errorf("recorded BMC %+v, extra MACs %v; want %s as admin and the second NIC", m.BMC, m.ExtraMACs, bmcURL)
	}
	if st, _ := sys.PowerState(context.Background()); st != "On" {
		t.Errorf("the BMC's machine is %s, want On", st)
	}
	if b := sys.Boots(); len(b) != 1 || b[0].Target != "Pxe" {
		t.Errorf("the machine's starts booted from %+v, want one start from Pxe", b)
	}
	got := strings.Join(eventTypes(history(t, url, data, id)), " ")
	if want := "enrolled boot_device_set power_requested power_changed"; got != want {
		t.Errorf("history %q, want %q", got, want)
	}

	// The password is kept 0600 in the data directory and nowhere else.
	var found bool
	filepath.Walk(data, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return nil
		}
		b, _ := os.ReadFile(p)
		if strings.Contains(string(b), testBMCPassword) {
			if filepath.Dir(p) != filepath.Join(data, "bmc") {
				t.Errorf("the BMC password is in %s", p)
			} else if fi.Mode().Perm() != 0o600 {
				t.Errorf("%s has mode %v, want 0600", p, fi.Mode().Perm())
			} else {
				found = true
			}
		}
		return nil
	})
	if !found {
		t.Error("no credential file holds the BMC password")
	}
	evJSON, _ := json.Marshal(history(t, url, data, id))
	if strings.Contains(string(evJSON), testBMCPassword) {
		t.Error("an event carries the BMC password")
	}

	// Enrolling again changes nothing.
	out, err = mdc(t, url, data, "enroll", "--bmc", bmcURL, "--bmc-user", "admin", "--bmc-password-file", pw, "--name", "n1", "--role", "test")
	if err != nil || !strings.Contains(out, "already enrolled") {
		t.Errorf("second enroll: %v, %q; want already enrolled", err, out)
	}
	if n := len(history(t, url, data, id)); n != 4 {
		t.Errorf("second enroll appended events: %d, want 4", n)
	}

	// Power through the CLI.
	if out, err := mdc(t, url, data, "power", "status", string(id)); err != nil || !strings.Contains(out, "power on") {
		t.Errorf("power status: %v %q", err, out)
	}
	if out, err := mdc(t, url, data, "power", "off", string(id)); err != nil || !strings.Contains(out, "power off") {
		t.Errorf("power off: %v %q", err, out)
	}
	if st, _ := sys.PowerState(context.Background()); st != "Off" {
		t.Errorf("after power off the machine is %s", st)
	}
	if _, err := mdc(t, url, data, "power", "sideways", string(id)); err == nil {
		t.Error("power sideways: no error")
	}

	// Reprovision: back to provisioning, PXE set, powered (on: it was off).
	if out, err := mdc(t, url, data, "machines", "reprovision", string(id)); err != nil || !strings.Contains(out, "provisioning") {
		t.Fatalf("reprovision: %v %q", err, out)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		evs := eventTypes(history(t, url, data, id))
		tail := strings.Join(evs[max(0, len(evs)-4):], " ")
		if tail == "boot_device_set power_requested power_changed" || strings.HasSuffix(tail, "role_assigned boot_device_set power_requested power_changed") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after reprovision the history ends %q, want role_assigned boot_device_set power_requested power_changed", tail)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if st, _ := sys.PowerState(context.Background()); st != "On" {
		t.Errorf("after reprovision the machine is %s, want On", st)
	}
	if b := sys.Boots(); len(b) != 2 || b[1].Target != "Pxe" {
		t.Errorf("the machine's starts booted from %+v, want a second start from Pxe", b)
	}

	// Failures record nothing.
	before := countMachines(t, url, data)
	bad := writeSecret(t, t.TempDir(), "bad", "wrong-password")
	_, bmc2 := redfishBMC(t, "52:54:00:bb:00:01")
	start := time.Now()
	if _, err := mdc(t, url, data, "enroll", "--bmc", bmc2, "--bmc-user", "admin", "--bmc-password-file", bad); err == nil || !strings.Contains(err.Error(), "bmc_auth_failed") {
		t.Errorf("wrong password: %v, want bmc_auth_failed", err)
	}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := ln.Addr().String()
	ln.Close()
	if _, err := mdc(t, url, data, "enroll", "--bmc", "redfish://"+closed, "--bmc-user", "admin", "--bmc-password-file", pw, "--mac", "52:54:00:bb:00:02"); err == nil || !strings.Contains(err.Error(), "bmc_unreachable") {
		t.Errorf("unreachable BMC: %v, want bmc_unreachable", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("the two failed enrolments took %s, want within the 3 s BMC timeout each", d)
	}
	if _, err := mdc(t, url, data, "enroll", "--bmc", "ipmi://127.0.0.1:1", "--bmc-user", "admin", "--bmc-password-file", pw); err == nil || !strings.Contains(err.Error(), "--mac") {
		t.Errorf("IPMI without --mac: %v, want an error naming --mac", err)
	}
	// A BMC whose machine has a NIC of another machine is refused.
	_, bmc3 := redfishBMC(t, "52:54:00:cc:00:01", "52:54:00:aa:00:02")
	if _, err := mdc(t, url, data, "enroll", "--bmc", bmc3, "--bmc-user", "admin", "--bmc-password-file", pw); err == nil || !strings.Contains(err.Error(), "525400aa0001") {
		t.Errorf("MAC of another machine: %v, want a conflict naming 525400aa0001", err)
	}
	if n := countMachines(t, url, data); n != before {
		t.Errorf("failed enrolments left machines: %d, want %d", n, before)
	}
	stop()
}

func countMachines(t *testing.T, url, data string) int {
	out, err := mdc(t, url, data, "machines", "list", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var l api.MachineList
	if err := json.Unmarshal([]byte(out), &l); err != nil {
		t.Fatal(err)
	}
	return l.Count
}

// A failed machine with a BMC is power-cycled again after the backoff, up
// to --bmc-retries times; then it is left alone.
func TestBMCRetriesFailedMachine(t *testing.T) {
	store := newTestStore(t)
	data := t.TempDir()
	sys, bmcURL := redfishBMC(t, "52:54:00:dd:00:01")
	const id = machine.ID("525400dd0001")
	ref, err := bmc.SaveCredentials(data, string(id), bmc.Credentials{User: "admin", Password: testBMCPassword})
	if err != nil {
		t.Fatal(err)
	}
	cfg := &bmcFlags{timeout: 3 * time.Second, retries: 2, backoff: 500 * time.Millisecond, bootMode: "uefi"}
	side := newBMCSide(cfg, store, data, prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- side.run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	// The follower starts from the log's end: wait until it runs.
	time.Sleep(200 * time.Millisecond)
	lifecycle(t, store, id, machine.Enrolled, machine.EnrolledData{BMC: &machine.BMC{URL: bmcURL, User: "admin", Credential: ref}})

	boots := func() int { return len(sys.Boots()) }
	// Three failures: the first two are retried (after 0.5 s, then 1 s),
	// the third is not.
	for i := 1; i <= 3; i++ {
		lifecycle(t, store, id, machine.Failed, machine.FailedData{Reason: fmt.Sprintf("test failure %d", i)})
		want := min(i, 2)
		deadline := time.Now().Add(10 * time.Second)
		for boots() < want && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if boots() != want {
			t.Fatalf("failure %d: the machine started %d times, want %d (retried through its BMC)", i, boots(), want)
		}
		// The retry's power-cycle boots the machine; it fails again later.
		for {
			m, _ := store.Get(id)
			if i > 2 || m.Power == "on" {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		lifecycle(t, store, id, machine.CommissioningStarted, machine.CommissioningBootData{})
	}
	time.Sleep(3 * time.Second) // the third retry would have come after 2 s
	if boots() != 2 {
		t.Errorf("after the third failure the machine started %d times, want 2 (no retries left)", boots())
	}
	for _, b := range sys.Boots() {
		if b.Target != "Pxe" {
			t.Errorf("a start booted from %+v, want Pxe", b)
		}
	}
	h, _ := store.History(context.Background(), id)
	var n int
	for _, e := range h {
		if e.Type == machine.BootDeviceSet {
			n++
		}
	}
	if n != 2 {
		t.Errorf("%d boot_device_set events, want 2 (one per retry)", n)
	}
}
