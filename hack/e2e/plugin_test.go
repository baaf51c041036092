//go:build e2e

package e2e

// Plug in a machine and it configures itself, with real firmware: a QEMU VM
// with a MAC mdc has never seen network-boots from `mdc serve --dhcp-mode
// full` (OVMF's own UEFI PXE, and SeaBIOS with the iPXE ROM), runs mdc-agent
// from a busybox initrd as the commissioning image, gets role `test` from the
// policy, reboots into the role image and joins. Then an image whose agent
// never checks in ends failed after --commissioning-timeout; two machines
// powered on together join in the roles the policy gives them; and a joined
// machine that is reset boots its role image again and rejoins without
// commissioning.
//
// Needs what TestNetbootQEMU needs, plus a static busybox and apt-get (the
// Debian kernel package's NIC and disk modules, cached beside the kernel).
// About two and a half minutes under TCG on two cores.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/microdc/mdc/api"
	"github.com/microdc/mdc/hack/vrack"
	"github.com/microdc/mdc/machine"
)

const plugPolicy = `
rules:
  - {role: test, min_disks: 2}
roles:
  test:
    evidence: [kernel, hook]
    heartbeat: 5s
    files:
      - {path: /etc/mdc/motd, mode: "0644", content: "a test node\n"}
`

// Two roles told apart by disk count (two-at-once).
const twoRolePolicy = `
rules:
  - {role: test, min_disks: 2}
  - {role: test2}
roles:
  test:
    evidence: [kernel, hook]
    heartbeat: 5s
  test2:
    evidence: [kernel, hook]
    heartbeat: 5s
`

const (
	vmMemory = 1 << 30
	vmCPUs   = 2
	vmDisk1  = 3 << 30
	vmDisk2  = 1 << 30
)

func TestPlugInQEMU(t *testing.T) {
	k := newKit(t)
	bin, kernel := k.bin, k.kernel
	lab := newLab(t)
	initrd := k.initrd(t, filepath.Join(lab.dir, "initrd.gz"), vrack.AgentRun)

	type result struct {
		fw     firmware
		joined time.Duration
		stages string
	}
	var results []result

	t.Run("plug-in", func(t *testing.T) {
		l := lab.sub(t)
		md, data := l.startRoleMDC(k, initrd, "mdc-plugin", plugPolicy)
		server := md.URL
		for i, fw := range []firmware{bios, uefi} {
			mac := fmt.Sprintf("52:54:00:6d:01:%02x", i+1)
			ok := t.Run(strings.Fields(fw.name)[0], func(t *testing.T) {
				l := l.sub(t)
				joined, stages := l.plugIn(server, data, fw, mac)
				results = append(results, result{fw, joined, stages})
			})
			if !ok {
				break // the next boot would only take its time to fail the same way
			}
		}
	})

	t.Run("never-checks-in", func(t *testing.T) {
		l := lab.sub(t)
		silent := k.initrd(t, filepath.Join(l.dir, "initrd-silent.gz"), vrack.NoAgentRun)
		data := filepath.Join(l.dir, "mdc-silent")
		md := l.startMDC(bin, data, "--interface", "br0", "--dhcp-mode", "full", "--dhcp-range", nbSubnet+".100-"+nbSubnet+".200",
			"--commissioning-timeout", "25s")
		server := md.URL
		l.importAs(md, kernel, silent, "console=ttyS0 quiet panic=-1", "commissioning", "commissioning")
		l.neverChecksIn(server, data, bios, "52:54:00:6d:01:10", 25*time.Second)
	})

	// Two new machines powered on together, told apart by the policy: the
	// one with two disks gets role test, the one with one disk test2. Their
	// VMs stay up for reboot-joined.
	type joinedVM struct {
		l            *testLab
		server, data string
		v            vmSpec
		vm           *vrack.Proc
		m            *vrack.Machine
	}
	t.Run("two-at-once", func(t *testing.T) {
		l := lab.sub(t)
		md, data := l.startRoleMDC(k, initrd, "mdc-two", twoRolePolicy)
		server := md.URL
		l.importAs(md, kernel, initrd, testCmdline, "test2-1", "test2")
		vms := []vmSpec{
			{"52:54:00:6d:01:21", 512 << 20, 1, []int64{vmDisk1, vmDisk2}, "test"},
			{"52:54:00:6d:01:22", 512 << 20, 1, []int64{vmDisk1}, "test2"},
		}
		// One VM a tap; the first one's QMP socket lives as long as it.
		ms := []*vrack.Machine{
			l.machine(bios, vms[0].mac, int(vms[0].mem>>20), vms[0].cpus, vms[0].disks),
			l.machine(bios, vms[1].mac, int(vms[1].mem>>20), vms[1].cpus, vms[1].disks),
		}
		t0 := time.Now()
		procs := []*vrack.Proc{l.startMachine(ms[0], nil), l.startMachine(ms[1], nil)}
		for i, v := range vms {
			ok := t.Run(v.role, func(t *testing.T) {
				l := l.sub(t)
				took, stages := l.awaitJoined(server, data, bios, v, procs[i], t0, 150*time.Second)
				results = append(results, result{firmware{bios.name + " " + v.mac + " (two at once)", false, ""}, took, stages})
			})
			if !ok {
				return
			}
		}
		procs[1].Stop() // only the first is rebooted
		kept := &joinedVM{l, server, data, vms[0], procs[0], ms[0]}

		// A joined machine that reboots comes back to joined in its role
		// without commissioning again: its next network boot gets the role
		// image. A subtest of two-at-once, which owns the machine.
		t.Run("reboot-joined", func(t *testing.T) {
			l := kept.l.sub(t)
			id := machine.MustParseID(kept.v.mac)
			c, tok := l.r.HTTPClient(), readAdminToken(t, kept.data)
			url := kept.server + "/api/v1/machines/" + string(id)
			lifecycle := func() []string {
				var life []string
				for _, e := range getIn[api.EventList](t, c, url+"/events", tok, false).Events {
					if e.Type.Lifecycle() {
						life = append(life, string(e.Type))
					}
				}
				return life
			}
			before := lifecycle()
			t0 := time.Now()
			// The reset button, through QEMU's QMP socket.
			if _, err := vrack.QMP(context.Background(), kept.m.QMP, "system_reset", nil); err != nil {
				t.Fatal(err)
			}
			deadline := t0.Add(90 * time.Second)
			var m machine.Machine
			for {
				m = getIn[machine.Machine](t, c, url, tok, false)
				life := lifecycle()
				if len(life) > len(before) && m.State == machine.StJoined || m.State == machine.StFailed {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("not joined again 90 s after the reset: state %q\n%s", m.State, l.eventsText(c, kept.server, tok, id, t0))
				}
				select {
				case <-kept.vm.Done:
					t.Fatalf("QEMU exited (%v) in state %q", kept.vm.Cmd.ProcessState, m.State)
				case <-time.After(200 * time.Millisecond):
				}
			}
			took := time.Since(t0)
			if m.State != machine.StJoined || m.Role != kept.v.role {
				t.Fatalf("after the reset: state %q role %q (failure %+v), want joined in role %s\n%s", m.State, m.Role, m.Failure, kept.v.role, l.eventsText(c, kept.server, tok, id, t0))
			}
			after := lifecycle()
			if got, want := strings.Join(after[len(before):], " "), "provisioning_started booted joined"; got != want {
				t.Errorf("events after the reset\n  %s\nwant\n  %s\n%s", got, want, l.eventsText(c, kept.server, tok, id, t0))
			}
			t.Logf("joined again %.1f s after the reset; events (seconds from the reset):\n%s", took.Seconds(), l.eventsText(c, kept.server, tok, id, t0))
			var since []machine.Event
			for _, e := range getIn[api.EventList](t, c, url+"/events?telemetry=true", tok, false).Events {
				if !e.Time.Before(t0) {
					since = append(since, e)
				}
			}
			results = append(results, result{firmware{bios.name + " reset when joined", false, ""}, took, stageLine(since, t0)})
		})
	})

	t.Logf("seconds from QEMU start (or the reset) to joined (accel %s):", vrack.Accel())
	for _, r := range results {
		t.Logf("  %-32s %.1f s  (%s)", r.fw.name+":", r.joined.Seconds(), r.stages)
	}
}

// plugIn powers on a new VM and waits until it is joined in role test, then
// checks its history and facts. It returns the time from QEMU start to
// joined and the stage timeline from mdc's events.
func (l *testLab) plugIn(server, data string, fw firmware, mac string) (time.Duration, string) {
	t := l.t
	id := machine.MustParseID(mac)
	c, tok := l.r.HTTPClient(), readAdminToken(t, data)
	if code := l.getStatus(c, server+"/api/v1/machines/"+string(id), tok); code != http.StatusNotFound {
		t.Fatalf("machine %s known to mdc before it powered on (HTTP %d)", id, code)
	}
	t0 := time.Now()
	vm := l.startMachine(l.machine(fw, mac, vmMemory>>20, vmCPUs, []int64{vmDisk1, vmDisk2}), nil)
	limit := 90 * time.Second
	if fw.uefi {
		limit = 120 * time.Second
	}
	return l.awaitJoined(server, data, fw, vmSpec{mac, vmMemory, vmCPUs, []int64{vmDisk1, vmDisk2}, "test"}, vm, t0, limit)
}

// vmSpec is what a VM has and the role the policy should give it.
type vmSpec struct {
	mac   string
	mem   int64
	cpus  int
	disks []int64
	role  string
}

// awaitJoined waits until the VM started at t0 is joined in its role, then
// checks its history and facts.
func (l *testLab) awaitJoined(server, data string, fw firmware, v vmSpec, vm *vrack.Proc, t0 time.Time, limit time.Duration) (time.Duration, string) {
	t := l.t
	mac := v.mac
	id := machine.MustParseID(mac)
	c, tok := l.r.HTTPClient(), readAdminToken(t, data)
	var m machine.Machine
	deadline := t0.Add(limit)
	for {
		m = getIn[machine.Machine](t, c, server+"/api/v1/machines/"+string(id), tok, true)
		if m.State == machine.StJoined || m.State == machine.StFailed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not joined %s after power-on: state %q role %q\n%s", fw.name, limit, m.State, m.Role, l.eventsText(c, server, tok, id, t0))
		}
		select {
		case <-vm.Done:
			t.Fatalf("%s: QEMU exited (%v) in state %q", fw.name, vm.Cmd.ProcessState, m.State)
		case <-time.After(200 * time.Millisecond):
		}
	}
	took := time.Since(t0)
	if m.State != machine.StJoined || m.Role != v.role {
		t.Fatalf("%s: state %q role %q (failure %+v), want joined in role %s\n%s", fw.name, m.State, m.Role, m.Failure, v.role, l.eventsText(c, server, tok, id, t0))
	}

	evs := getIn[api.EventList](t, c, server+"/api/v1/machines/"+string(id)+"/events?telemetry=true", tok, false)
	var life []string
	for _, e := range evs.Events {
		if e.Type.Lifecycle() {
			life = append(life, string(e.Type))
		}
	}
	if got, want := strings.Join(life, " "), "discovered commissioning_started facts_reported role_assigned provisioning_started booted joined"; got != want {
		t.Errorf("%s: history\n  %s\nwant\n  %s", fw.name, got, want)
	}

	f := m.Facts
	if f == nil {
		t.Fatalf("%s: joined without facts", fw.name)
	}
	wantMode := "bios"
	if fw.uefi {
		wantMode = "uefi"
	}
	if f.BootMode != wantMode || f.CPUs != v.cpus || f.MemoryBytes != uint64(v.mem) {
		t.Errorf("%s: facts boot mode %q, %d CPUs, %d bytes of memory; the VM has %s, %d, %d", fw.name, f.BootMode, f.CPUs, f.MemoryBytes, wantMode, v.cpus, v.mem)
	}
	var sizes []uint64
	for _, d := range f.Disks {
		sizes = append(sizes, d.SizeBytes)
	}
	if fmt.Sprint(sizes) != fmt.Sprint(v.disks) {
		t.Errorf("%s: disk sizes %v, the VM has %v", fw.name, sizes, v.disks)
	}
	var macs []string
	for _, n := range f.NICs {
		macs = append(macs, strings.ToLower(n.MAC))
	}
	if len(macs) != 1 || macs[0] != mac {
		t.Errorf("%s: NIC MACs %v, the VM has [%s]", fw.name, macs, mac)
	}
	t.Logf("%s: joined %.1f s after QEMU started; events (seconds from QEMU start):\n%s", fw.name, took.Seconds(), l.eventsText(c, server, tok, id, t0))
	return took, stageLine(evs.Events, t0)
}

// stageLine is when a plug-in passed each stage, in seconds from QEMU
// start, from mdc's events: the first network boot (firmware to boot
// script, image downloaded), the commissioning kernel to facts, the reboot
// to the role's boot script, the role image to booted and joined.
func stageLine(evs []machine.Event, t0 time.Time) string {
	var parts []string
	mark := func(label string, at time.Time) {
		parts = append(parts, fmt.Sprintf("%s %.1f", label, at.Sub(t0).Seconds()))
	}
	var lastBlob time.Time
	for _, e := range evs {
		switch e.Type {
		case machine.Discovered:
			mark("firmware DHCP", e.Time)
		case machine.CommissioningStarted:
			mark("commissioning script", e.Time)
		case machine.BlobServed:
			lastBlob = e.Time
		case machine.FactsReported:
			mark("downloaded", lastBlob)
			mark("facts", e.Time)
		case machine.ProvisioningStarted:
			mark("role script", e.Time)
		case machine.Booted:
			mark("downloaded", lastBlob)
			mark("booted", e.Time)
		case machine.Joined:
			mark("joined", e.Time)
		}
	}
	return strings.Join(parts, ", ")
}

// neverChecksIn boots an image whose agent never reports and waits for the
// machine to fail with a reason that says what to do.
func (l *testLab) neverChecksIn(server, data string, fw firmware, mac string, timeout time.Duration) {
	t := l.t
	id := machine.MustParseID(mac)
	c, tok := l.r.HTTPClient(), readAdminToken(t, data)
	t0 := time.Now()
	vm := l.startMachine(l.machine(fw, mac, 512, 1, nil), nil)
	deadline := t0.Add(timeout + 60*time.Second)
	var m machine.Machine
	for {
		m = getIn[machine.Machine](t, c, server+"/api/v1/machines/"+string(id), tok, true)
		if m.State == machine.StFailed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not failed %s after power-on: state %q\n%s", time.Since(t0).Round(time.Second), m.State, l.eventsText(c, server, tok, id, t0))
		}
		select {
		case <-vm.Done:
			t.Fatalf("QEMU exited (%v) in state %q", vm.Cmd.ProcessState, m.State)
		case <-time.After(500 * time.Millisecond):
		}
	}
	t.Logf("failed %.1f s after QEMU started: %s", time.Since(t0).Seconds(), m.Failure.Reason)
	r := m.Failure.Reason
	// The reason names what was missing, what was last seen and where to look.
	// It booted the image (mdc served the kernel and initrd) and the
	// initrd's DHCP client got an address: the reason must point at the
	// agent, not at the boot chain.
	for _, want := range []string{"no facts", "commissioning", "last seen", "agent never reported", "console"} {
		if !strings.Contains(r, want) {
			t.Errorf("failure reason %q does not mention %q", r, want)
		}
	}
	for _, bad := range []string{"last seen: nothing", "TFTP", "no kernel"} {
		if strings.Contains(r, bad) {
			t.Errorf("failure reason %q says %q, but the VM booted the image and only the agent is missing", r, bad)
		}
	}
	if m.Failure.In != machine.Commissioning {
		t.Errorf("failed in %q, want commissioning", m.Failure.In)
	}
}

// eventsText is the machine's events, one a line, in seconds from t0.
func (l *testLab) eventsText(c *http.Client, server, tok string, id machine.ID, t0 time.Time) string {
	evs := getIn[api.EventList](l.t, c, server+"/api/v1/machines/"+string(id)+"/events?telemetry=true", tok, false)
	var b strings.Builder
	for _, e := range evs.Events {
		var cb bytes.Buffer
		_ = json.Compact(&cb, e.Data)
		d := cb.String()
		if len(d) > 140 {
			d = d[:140] + "…"
		}
		fmt.Fprintf(&b, "  %6.1f %-21s %s\n", e.Time.Sub(t0).Seconds(), e.Type, d)
	}
	return b.String()
}

func (l *testLab) getStatus(c *http.Client, url, tok string) int {
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := c.Do(req)
	if err != nil {
		l.t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// getIn GETs JSON from mdc inside the namespace; with notFoundOK a 404 is
// the zero value (the machine is not known yet).
func getIn[T any](t *testing.T, c *http.Client, url, tok string, notFoundOK bool) T {
	t.Helper()
	var v T
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound && notFoundOK {
		return v
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s\n%s", url, resp.Status, b)
	}
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return v
}
