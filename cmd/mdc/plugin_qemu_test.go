package main

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
	"compress/gzip"
	"debug/elf"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/microdc/mdc/api"
	"github.com/microdc/mdc/machine"
)

// The modules the busybox initrd loads, in dependency order (docs/agent.md).
var initrdModules = []string{"virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci",
	"failover", "net_failover", "virtio_net", "virtio_blk"}

const initScript = `#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in ` + "MODULES" + `; do insmod /lib/modules/$m.ko; done
ip link set lo up
ip link set eth0 up
udhcpc -i eth0 -q -n -t 10 -T 2
AGENT
sleep 2
poweroff -f
`

const agentRun = `/bin/mdc-agent
echo "init: mdc-agent exited with status $?"`

// A commissioning image that never checks in: no agent, it just sits there.
const noAgentRun = `echo "init: this image has no agent"
sleep 600`

const udhcpcScript = `#!/bin/sh
case "$1" in bound|renew)
	ip addr flush dev "$interface"; ip addr add "$ip/${mask:-24}" dev "$interface"
	[ -n "$router" ] && ip route add default via "${router%% *}" dev "$interface";;
esac
exit 0
`

const joinHook = `#!/bin/sh
# The test role's join hook: nothing to join; the evidence is the kernel.
echo "{\"kernel\":\"$(cat /proc/sys/kernel/osrelease)\",\"hook\":\"test\"}"
`

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
	needNetbootLab(t)
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("needs a static busybox for the initrd (busybox-static, hack/deps/netboot.txt)")
	}
	if f, err := elf.Open(bb); err != nil || hasInterp(f) {
		t.Skipf("%s is not a static busybox (busybox-static, hack/deps/netboot.txt)", bb)
	}
	out, err := exec.Command("../../hack/test-kernel.sh").Output()
	if err != nil {
		t.Fatalf("no test kernel: hack/test-kernel.sh: %v (it runs apt-get download linux-image-…-amd64 once)", err)
	}
	kernel := strings.TrimSpace(string(out))
	mods := testModules(t, kernel)
	agent, err := agentBin()
	if err != nil {
		t.Fatalf("build mdc-agent: %v", err)
	}
	bin, err := buildOnce()
	if err != nil {
		t.Fatal(err)
	}
	lab := newNetnsLab(t)
	initrd := filepath.Join(lab.dir, "initrd.gz")
	writeInitrd(t, initrd, bb, agent, mods, agentRun)

	type result struct {
		fw     firmware
		joined time.Duration
		stages string
	}
	var results []result

	t.Run("plug-in", func(t *testing.T) {
		l := lab.sub(t)
		pol := filepath.Join(l.dir, "policy.yaml")
		if err := os.WriteFile(pol, []byte(plugPolicy), 0o644); err != nil {
			t.Fatal(err)
		}
		data := filepath.Join(l.dir, "mdc-plugin")
		server := l.startMDC(bin, data, "--interface", "br0", "--dhcp-mode", "full", "--dhcp-range", nbSubnet+".100-"+nbSubnet+".200",
			"--role-policy", pol, "--agent-heartbeat", "5s")
		l.importAs(bin, server, data, kernel, initrd, "commissioning", "commissioning")
		l.importAs(bin, server, data, kernel, initrd, "test-1", "test")
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
		silent := filepath.Join(l.dir, "initrd-silent.gz")
		writeInitrd(t, silent, bb, agent, mods, noAgentRun)
		data := filepath.Join(l.dir, "mdc-silent")
		server := l.startMDC(bin, data, "--interface", "br0", "--dhcp-mode", "full", "--dhcp-range", nbSubnet+".100-"+nbSubnet+".200",
			"--commissioning-timeout", "25s")
		l.importAs(bin, server, data, kernel, silent, "commissioning", "commissioning")
		l.neverChecksIn(server, data, bios, "52:54:00:6d:01:10", 25*time.Second)
	})

	// Two new machines powered on together, told apart by the policy: the
	// one with two disks gets role test, the one with one disk test2. Their
	// VMs stay up for reboot-joined.
	type joinedVM struct {
		l            *netnsLab
		server, data string
		v            vmSpec
		vm           *proc
		monitor      string
	}
	t.Run("two-at-once", func(t *testing.T) {
		l := lab.sub(t)
		// A second tap on the bridge: one VM a tap.
		for _, args := range [][]string{{"tuntap", "add", "tap1", "mode", "tap"}, {"link", "set", "tap1", "master", "br0"}, {"link", "set", "tap1", "up"}} {
			l.ip(append([]string{"-n", l.ns}, args...)...)
		}
		pol := filepath.Join(l.dir, "policy.yaml")
		if err := os.WriteFile(pol, []byte(twoRolePolicy), 0o644); err != nil {
			t.Fatal(err)
		}
		data := filepath.Join(l.dir, "mdc-two")
		server := l.startMDC(bin, data, "--interface", "br0", "--dhcp-mode", "full", "--dhcp-range", nbSubnet+".100-"+nbSubnet+".200",
			"--role-policy", pol, "--agent-heartbeat", "5s")
		l.importAs(bin, server, data, kernel, initrd, "commissioning", "commissioning")
		l.importAs(bin, server, data, kernel, initrd, "test-1", "test")
		l.importAs(bin, server, data, kernel, initrd, "test2-1", "test2")
		vms := []vmSpec{
			{"52:54:00:6d:01:21", 512 << 20, 1, []int64{vmDisk1, vmDisk2}, "test"},
			{"52:54:00:6d:01:22", 512 << 20, 1, []int64{vmDisk1}, "test2"},
		}
		mon := monitorPath(l.t, vms[0].mac) // lives as long as the VM
		t0 := time.Now()
		procs := []*proc{
			l.startVMOn("tap0", mon, bios, vms[0].mac, vms[0].mem, vms[0].cpus, vms[0].disks),
			l.startVMOn("tap1", "", bios, vms[1].mac, vms[1].mem, vms[1].cpus, vms[1].disks),
		}
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
		procs[1].stop() // only the first is rebooted
		kept := &joinedVM{l, server, data, vms[0], procs[0], mon}

		// A joined machine that reboots comes back to joined in its role
		// without commissioning again: its next network boot gets the role
		// image. A subtest of two-at-once, which owns the machine.
		t.Run("reboot-joined", func(t *testing.T) {
			l := kept.l.sub(t)
			id := machine.MustParseID(kept.v.mac)
			c, tok := l.httpClient(), readAdminToken(t, kept.data)
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
			systemReset(t, kept.monitor)
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
				case <-kept.vm.done:
					t.Fatalf("QEMU exited (%v) in state %q", kept.vm.cmd.ProcessState, m.State)
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

	t.Logf("seconds from QEMU start (or the reset) to joined (accel %s):", accel())
	for _, r := range results {
		t.Logf("  %-32s %.1f s  (%s)", r.fw.name+":", r.joined.Seconds(), r.stages)
	}
}

// plugIn powers on a new VM and waits until it is joined in role test, then
// checks its history and facts. It returns the time from QEMU start to
// joined and the stage timeline from mdc's events.
func (l *netnsLab) plugIn(server, data string, fw firmware, mac string) (time.Duration, string) {
	t := l.t
	id := machine.MustParseID(mac)
	c, tok := l.httpClient(), readAdminToken(t, data)
	if code := l.getStatus(c, server+"/api/v1/machines/"+string(id), tok); code != http.StatusNotFound {
		t.Fatalf("machine %s known to mdc before it powered on (HTTP %d)", id, code)
	}
	t0 := time.Now()
	vm := l.startVM(fw, mac, vmMemory, vmCPUs, []int64{vmDisk1, vmDisk2})
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
func (l *netnsLab) awaitJoined(server, data string, fw firmware, v vmSpec, vm *proc, t0 time.Time, limit time.Duration) (time.Duration, string) {
	t := l.t
	mac := v.mac
	id := machine.MustParseID(mac)
	c, tok := l.httpClient(), readAdminToken(t, data)
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
		case <-vm.done:
			t.Fatalf("%s: QEMU exited (%v) in state %q", fw.name, vm.cmd.ProcessState, m.State)
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
func (l *netnsLab) neverChecksIn(server, data string, fw firmware, mac string, timeout time.Duration) {
	t := l.t
	id := machine.MustParseID(mac)
	c, tok := l.httpClient(), readAdminToken(t, data)
	t0 := time.Now()
	vm := l.startVM(fw, mac, 512<<20, 1, nil)
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
		case <-vm.done:
			t.Fatalf("QEMU exited (%v) in state %q", vm.cmd.ProcessState, m.State)
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

// startVM powers on a VM that boots from the network, with sparse raw
// virtio disks of the given sizes. Its serial console is its log file.
func (l *netnsLab) startVM(fw firmware, mac string, mem int64, cpus int, disks []int64) *proc {
	l.t.Helper()
	return l.startVMOn("tap0", "", fw, mac, mem, cpus, disks)
}

// startVMOn is startVM on another tap of the bridge, with QEMU's monitor
// on the unix socket monitor when it is not "".
func (l *netnsLab) startVMOn(tap, monitor string, fw firmware, mac string, mem int64, cpus int, disks []int64) *proc {
	t := l.t
	t.Helper()
	tag := strings.ReplaceAll(mac, ":", "")
	args := []string{"qemu-system-x86_64", "-accel", accel(), "-m", fmt.Sprintf("%dM", mem>>20), "-smp", fmt.Sprint(cpus),
		"-nographic", "-boot", "n", "-netdev", "tap,id=n0,ifname=" + tap + ",script=no,downscript=no"}
	if monitor != "" {
		args = append(args, "-monitor", "unix:"+monitor+",server=on,wait=off")
	}
	args = append(args, l.firmwareArgs(fw, mac)...)
	for i, size := range disks {
		p := filepath.Join(l.dir, fmt.Sprintf("disk%d-%s.img", i, tag))
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Truncate(size); err != nil {
			t.Fatal(err)
		}
		f.Close()
		args = append(args, "-drive", "if=virtio,format=raw,file="+p)
	}
	vm := l.start("serial-"+tag, nil, args...)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("serial console of %s: %s", mac, vm.log)
		}
	})
	return vm
}

// eventsText is the machine's events, one a line, in seconds from t0.
func (l *netnsLab) eventsText(c *http.Client, server, tok string, id machine.ID, t0 time.Time) string {
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

func readAdminToken(t *testing.T, data string) string {
	t.Helper()
	tok, _, err := adminToken(data)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func (l *netnsLab) getStatus(c *http.Client, url, tok string) int {
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

// importAs imports kernel and initrd with the CLI as the image of role.
func (l *netnsLab) importAs(bin, server, data, kernel, initrd, name, role string) {
	l.t.Helper()
	imp := exec.Command("ip", "netns", "exec", l.ns, bin, "images", "import", "--server", server, "--data-dir", data,
		"--kernel", kernel, "--initrd", initrd, "--cmdline", "console=ttyS0 quiet panic=-1", "--name", name, "--role", role)
	if out, err := imp.CombinedOutput(); err != nil {
		l.t.Fatalf("mdc images import %s: %v\n%s", name, err, out)
	}
}

// testModules returns the directory holding initrdModules from the Debian
// package of kernel (vmlinuz-VERSION), unpacked once next to it.
func testModules(t *testing.T, kernel string) string {
	t.Helper()
	ver := strings.TrimPrefix(filepath.Base(kernel), "vmlinuz-")
	dir := filepath.Join(filepath.Dir(kernel), "modules-"+ver)
	have := func() bool {
		for _, m := range initrdModules {
			if _, err := os.Stat(filepath.Join(dir, m+".ko")); err != nil {
				return false
			}
		}
		return true
	}
	if have() {
		return dir
	}
	tmp, err := os.MkdirTemp(filepath.Dir(kernel), "dl.")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	dl := exec.Command("apt-get", "download", "linux-image-"+ver)
	dl.Dir = tmp
	if out, err := dl.CombinedOutput(); err != nil {
		t.Fatalf("apt-get download linux-image-%s (for the NIC and disk modules): %v\n%s", ver, err, out)
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(debs) != 1 {
		t.Fatalf("apt-get download linux-image-%s left %v", ver, debs)
	}
	var pats []string
	for _, m := range initrdModules {
		pats = append(pats, "*/"+m+".ko")
	}
	x := exec.Command("sh", append([]string{"-c", `d=$1 deb=$2; shift 2; dpkg-deb --fsys-tarfile "$deb" | tar -x --wildcards -C "$d" "$@"`, "sh", tmp, debs[0]}, pats...)...)
	if out, err := x.CombinedOutput(); err != nil {
		t.Fatalf("unpack the modules of %s: %v\n%s", debs[0], err, out)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	err = filepath.Walk(filepath.Join(tmp, "lib"), func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() || !strings.HasSuffix(p, ".ko") {
			return err
		}
		return os.Rename(p, filepath.Join(dir, filepath.Base(p)))
	})
	if err != nil || !have() {
		t.Fatalf("modules of linux-image-%s: %v (want %v in %s)", ver, err, initrdModules, dir)
	}
	return dir
}

// writeInitrd writes a gzipped newc cpio: busybox, mdc-agent, the modules,
// /init running run, the udhcpc script and the test role's join hook.
func writeInitrd(t *testing.T, path, busybox, agent, mods, run string) {
	t.Helper()
	init := strings.Replace(strings.Replace(initScript, "MODULES", strings.Join(initrdModules, " "), 1), "AGENT", run, 1)
	var cw cpioWriter
	for _, d := range []string{"bin", "dev", "etc", "etc/mdc", "etc/udhcpc", "lib", "lib/modules", "proc", "sys", "run", "tmp", "usr", "usr/bin", "usr/sbin", "sbin", "var", "var/lib"} {
		cw.add(d, 0o40755, nil, 0, 0)
	}
	cw.add("dev/console", 0o20600, nil, 5, 1)
	cw.add("init", 0o100755, []byte(init), 0, 0)
	cw.add("etc/udhcpc/default.script", 0o100755, []byte(udhcpcScript), 0, 0)
	cw.add("etc/mdc/join", 0o100755, []byte(joinHook), 0, 0)
	for dst, src := range map[string]string{"bin/busybox": busybox, "bin/mdc-agent": agent} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		cw.add(dst, 0o100755, b, 0, 0)
	}
	names := append([]string(nil), initrdModules...)
	sort.Strings(names)
	for _, m := range names {
		b, err := os.ReadFile(filepath.Join(mods, m+".ko"))
		if err != nil {
			t.Fatal(err)
		}
		cw.add("lib/modules/"+m+".ko", 0o100644, b, 0, 0)
	}
	cw.add("TRAILER!!!", 0, nil, 0, 0)
	var gz bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&gz, gzip.BestSpeed)
	if _, err := zw.Write(cw.b.Bytes()); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, gz.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// cpioWriter writes the "newc" cpio format the kernel unpacks.
type cpioWriter struct {
	b   bytes.Buffer
	ino int
}

func (w *cpioWriter) add(name string, mode int, data []byte, rmaj, rmin int) {
	w.ino++
	nlink := 1
	if mode&0o40000 != 0 {
		nlink = 2
	}
	fmt.Fprintf(&w.b, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		w.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rmaj, rmin, len(name)+1, 0)
	w.b.WriteString(name)
	w.b.WriteByte(0)
	w.pad()
	w.b.Write(data)
	w.pad()
}

func (w *cpioWriter) pad() {
	for w.b.Len()%4 != 0 {
		w.b.WriteByte(0)
	}
}

// monitorPath is a short path for a VM's monitor socket (unix socket paths
// are limited to 108 bytes; t.TempDir's can be longer).
func monitorPath(t *testing.T, mac string) string {
	dir, err := os.MkdirTemp("", "mdcmon")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, strings.ReplaceAll(mac, ":", "")+".sock")
}

// systemReset presses the VM's reset button through its QEMU monitor.
func systemReset(t *testing.T, monitor string) {
	t.Helper()
	conn, err := net.DialTimeout("unix", monitor, 5*time.Second)
	if err != nil {
		t.Fatalf("QEMU monitor: %v", err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write([]byte("system_reset\n")); err != nil {
		t.Fatalf("QEMU monitor: %v", err)
	}
	// Wait for the prompt after the command: QEMU has taken it.
	var got []byte
	buf := make([]byte, 4096)
	for !bytes.Contains(got, []byte("system_reset")) || !bytes.HasSuffix(bytes.TrimRight(got, " "), []byte("(qemu)")) {
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("QEMU monitor after system_reset: %v (read %q)", err, got)
		}
		got = append(got, buf[:n]...)
	}
}
