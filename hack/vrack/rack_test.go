package vrack

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// The chassis-control program ipmi_sim runs is this test binary itself
// when VRACK_CHASSIS_HELPER is set (ipmi_sim passes its environment on):
// the same vrack.Chassis the vrack program's `chassis` subcommand calls.
func TestMain(m *testing.M) {
	if os.Getenv("VRACK_CHASSIS_HELPER") == "1" {
		if err := Chassis(context.Background(), os.Args[1:], os.Stdout, slog.New(slog.NewTextHandler(os.Stderr, nil))); err != nil {
			fmt.Fprintln(os.Stderr, "chassis:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// A one-machine rack per BMC kind: IPMI power on through ipmitool really
// starts the machine's QEMU and power off ends it; the same through Redfish
// resets. No boot is needed: the process is the power state.
func TestBMCPower(t *testing.T) {
	if why := Missing(); why != "" {
		t.Skip(why)
	}
	r, err := New(Config{Name: fmt.Sprintf("vrt%d", os.Getpid()%100000), Dir: t.TempDir(),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	ctx := context.Background()

	t.Run("ipmi", func(t *testing.T) {
		for _, bin := range []string{"ipmi_sim", "ipmitool"} {
			if _, err := exec.LookPath(bin); err != nil {
				t.Skipf("needs %s (openipmi, ipmitool: hack/deps/vrack.txt)", bin)
			}
		}
		m, err := r.NewMachine("ipmi1", "52:54:00:7b:00:01", BIOS, 128, 1, nil)
		if err != nil {
			t.Fatal(err)
		}
		addr, err := r.AddAddress()
		if err != nil {
			t.Fatal(err)
		}
		t.Setenv("VRACK_CHASSIS_HELPER", "1")
		self, _ := os.Executable()
		bmc, err := r.StartIPMI(m, addr, 9001, []string{self})
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Save(); err != nil {
			t.Fatal(err)
		}
		r.PowerOffAtClose(m)
		if st, err := os.Stat(bmc.PasswordFile); err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("password file %s: %v %v, want mode 0600", bmc.PasswordFile, st.Mode(), err)
		}
		ipmitool := func(args ...string) string {
			t.Helper()
			cmd := exec.Command("ip", append([]string{"netns", "exec", r.NS, "ipmitool", "-I", "lanplus", "-C", "3", "-H", addr,
				"-U", bmc.User, "-f", bmc.PasswordFile}, args...)...)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("ipmitool %s: %v\n%s\nipmi_sim log:\n%s", strings.Join(args, " "), err, out, tailFile(r.Dir+"/ipmi-ipmi1.log", 2000))
			}
			return string(out)
		}
		if out := ipmitool("chassis", "power", "status"); !strings.Contains(out, "is off") || m.Running() {
			t.Fatalf("before power on: %q, QEMU running %v", out, m.Running())
		}
		ipmitool("chassis", "power", "on")
		pid := m.PID()
		if pid == 0 {
			t.Fatalf("chassis power on: no QEMU process\nserial: %s", tailFile(m.SerialLog(), 2000))
		}
		if cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); !strings.Contains(string(cmdline), "mac="+m.MAC) {
			t.Errorf("pid %d is not the machine's QEMU: %q", pid, cmdline)
		}
		if out := ipmitool("chassis", "power", "status"); !strings.Contains(out, "is on") {
			t.Errorf("after power on: %q", out)
		}
		// ipmitool exits 0 even when the BMC refuses the boot device.
		if out := ipmitool("chassis", "bootdev", "pxe"); !strings.Contains(out, "Set Boot Device to pxe") {
			t.Errorf("chassis bootdev pxe: %q", out)
		}
		if o := m.BootOverride(); o.Target != "Pxe" || o.Enabled != "Once" {
			t.Errorf("boot override after bootdev pxe: %+v, want Pxe once", o)
		}
		ipmitool("chassis", "power", "off")
		if m.Running() || processAlive(pid) {
			t.Errorf("chassis power off: QEMU (pid %d) still runs", pid)
		}
		if out := ipmitool("chassis", "power", "status"); !strings.Contains(out, "is off") {
			t.Errorf("after power off: %q", out)
		}
	})

	t.Run("redfish", func(t *testing.T) {
		m, err := r.NewMachine("rf1", "52:54:00:7b:00:02", BIOS, 128, 1, nil)
		if err != nil {
			t.Fatal(err)
		}
		addr, err := r.AddAddress()
		if err != nil {
			t.Fatal(err)
		}
		bmc, err := r.StartRedfish(m, addr)
		if err != nil {
			t.Fatal(err)
		}
		r.PowerOffAtClose(m)
		pw, err := os.ReadFile(bmc.PasswordFile)
		if err != nil {
			t.Fatal(err)
		}
		c := r.HTTPClient()
		base := "http://" + addr + "/redfish/v1/Systems/1"
		do := func(method, url, body string) *http.Response {
			t.Helper()
			req, _ := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
			req.SetBasicAuth(bmc.User, string(pw))
			if body != "" {
				req.Header.Set("Content-Type", "application/json")
			}
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			return resp
		}
		powerState := func() string {
			t.Helper()
			resp := do("GET", base, "")
			defer resp.Body.Close()
			var sys struct{ PowerState string }
			if err := json.NewDecoder(resp.Body).Decode(&sys); err != nil {
				t.Fatal(err)
			}
			return sys.PowerState
		}
		reset := func(typ string) {
			t.Helper()
			resp := do("POST", base+"/Actions/ComputerSystem.Reset", `{"ResetType":"`+typ+`"}`)
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode/100 != 2 {
				t.Fatalf("Reset %s: %s\n%s", typ, resp.Status, b)
			}
		}
		if ps := powerState(); ps != "Off" || m.Running() {
			t.Fatalf("before Reset On: PowerState %q, QEMU running %v", ps, m.Running())
		}
		reset("On")
		pid := m.PID()
		if pid == 0 {
			t.Fatalf("Reset On: no QEMU process\nserial: %s", tailFile(m.SerialLog(), 2000))
		}
		if ps := powerState(); ps != "On" {
			t.Errorf("after Reset On: PowerState %q", ps)
		}
		reset("ForceOff")
		if m.Running() || processAlive(pid) {
			t.Errorf("Reset ForceOff: QEMU (pid %d) still runs", pid)
		}
		if ps := powerState(); ps != "Off" {
			t.Errorf("after ForceOff: PowerState %q", ps)
		}
	})
}

// processAlive reports whether pid runs (a zombie does not), after giving
// its parent a moment to reap it.
func processAlive(pid int) bool {
	for i := 0; i < 20; i++ {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return false
		}
		if i := strings.LastIndexByte(string(stat), ')'); i > 0 && len(stat) > i+2 && stat[i+2] == 'Z' {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
	return true
}

// The chassis program's answers without a running machine: what ipmi_sim
// parses (power:N, boot:DEV) and the boot override it records.
func TestChassisBoot(t *testing.T) {
	m := &Machine{Name: "c1", MAC: "52:54:00:7b:00:09", Firmware: BIOS, Dir: t.TempDir()}
	if err := m.Save(); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	chassis := func(args ...string) string {
		t.Helper()
		var out strings.Builder
		if err := Chassis(context.Background(), append([]string{"--state", m.Dir}, args...), &out, log); err != nil {
			t.Fatalf("chassis %v: %v", args, err)
		}
		return out.String()
	}
	if got := chassis("get", "power", "boot"); got != "power:0\nboot:none\n" {
		t.Errorf("get power boot = %q", got)
	}
	for _, tc := range []struct{ set, get, target, enabled string }{
		{"pxe", "boot:pxe\n", "Pxe", "Once"},
		{"default", "boot:default\n", "Hdd", "Once"},
		{"none", "boot:none\n", "None", "Disabled"},
	} {
		chassis("set", "boot", tc.set)
		if got := chassis("get", "boot"); got != tc.get {
			t.Errorf("after set boot %s: get boot = %q, want %q", tc.set, got, tc.get)
		}
		if o := m.BootOverride(); o.Target != tc.target || o.Enabled != tc.enabled {
			t.Errorf("after set boot %s: override %+v, want %s %s", tc.set, o, tc.target, tc.enabled)
		}
	}
	// A Once override is used by the next boot and then gone.
	chassis("set", "boot", "default")
	if b := m.nextBoot(); b != BootDisk {
		t.Errorf("next boot after bootdev disk = %s", b)
	}
	if b := m.nextBoot(); b != BootPXE {
		t.Errorf("the boot after that = %s, want the default %s", b, BootPXE)
	}
	var out strings.Builder
	if err := Chassis(context.Background(), []string{"--state", m.Dir, "set", "power"}, &out, log); err == nil {
		t.Error("set power without a value: no error")
	}
}
