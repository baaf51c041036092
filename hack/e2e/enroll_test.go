//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/microdc/mdc/api"
	"github.com/microdc/mdc/hack/vrack"
	"github.com/microdc/mdc/machine"
)

// vrackBin builds the rack program: ipmi_sim runs its chassis subcommand.
var vrackBin = sync.OnceValues(func() (string, error) { return goBuild("vrack", "../vrack/cmd/vrack") })

const enrollPolicy = "default: test\n"

// TestEnrollQEMU: powered-off machines are enrolled by hand through their
// BMCs (one IPMI with --mac, one Redfish with the MAC read from the BMC),
// both with --wait, and both reach joined; the Redfish one is then
// reprovisioned through its BMC; a wrong password and an unreachable BMC
// fail clearly within the timeout and record nothing.
func TestEnrollQEMU(t *testing.T) {
	k := newKit(t)
	bin := k.bin
	self, err := vrackBin()
	if err != nil {
		t.Fatalf("build vrack: %v", err)
	}
	l := newLab(t)
	initrd := k.initrd(t, filepath.Join(l.dir, "initrd.gz"), vrack.AgentRun)
	md, data := l.startRoleMDC(k, initrd, "mdc-enroll", enrollPolicy, "--bmc-timeout", "8s", "--bmc-retries", "0")

	// Two powered-off machines with BMCs on management addresses of the
	// rack network, where mdc reaches them.
	newBMCMachine := func(name, mac string, fw vrack.Firmware, kind string, port int) (*vrack.Machine, *vrack.BMC) {
		m, err := l.r.NewMachine(name, mac, fw, 512, 2, []int64{2 << 30})
		if err != nil {
			t.Fatal(err)
		}
		addr, err := l.r.AddAddress()
		if err != nil {
			t.Fatal(err)
		}
		var b *vrack.BMC
		if kind == "ipmi" {
			b, err = l.r.StartIPMI(m, addr, port, []string{self, "chassis"})
		} else {
			b, err = l.r.StartRedfish(m, addr)
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Save(); err != nil {
			t.Fatal(err)
		}
		l.r.PowerOffAtClose(m)
		t.Cleanup(func() {
			if t.Failed() {
				b, _ := os.ReadFile(m.SerialLog())
				t.Logf("--- serial console of %s:\n%s", name, tail(string(b), 6000))
			}
		})
		return m, b
	}
	mIPMI, bIPMI := newBMCMachine("ipmi1", "52:54:00:6e:00:01", vrack.BIOS, "ipmi", 9101)
	mRF, bRF := newBMCMachine("redfish1", "52:54:00:6e:00:02", vrack.UEFI, "redfish", 0)
	if mIPMI.Running() || mRF.Running() {
		t.Fatal("the machines should start powered off")
	}

	// mdc runs the CLI from inside the rack, where the API and BMCs are.
	cli := func(ctx context.Context, args ...string) (string, error) {
		full := append([]string{"netns", "exec", l.r.NS, bin}, args...)
		full = append(full, "--server", md.URL, "--data-dir", data)
		out, err := exec.CommandContext(ctx, "ip", full...).CombinedOutput()
		return string(out), err
	}
	count := func() int {
		out, err := cli(context.Background(), "machines", "list", "-o", "json")
		if err != nil {
			t.Fatalf("machines list: %v\n%s", err, out)
		}
		var list api.MachineList
		if err := json.Unmarshal([]byte(out), &list); err != nil {
			t.Fatalf("machines list: %v\n%s", err, out)
		}
		return list.Count
	}

	// Failures first: they must record nothing.
	bad := filepath.Join(l.dir, "wrong-password")
	if err := os.WriteFile(bad, []byte("not-the-password\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	out, err := cli(context.Background(), "enroll", "--bmc", bRF.URL, "--bmc-user", bRF.User, "--bmc-password-file", bad)
	if err == nil || !strings.Contains(out, "bmc_auth_failed") {
		t.Errorf("wrong Redfish password: %v\n%s\nwant bmc_auth_failed", err, out)
	}
	out, err = cli(context.Background(), "enroll", "--bmc", "ipmi://"+nbSubnet+".199", "--bmc-user", "admin",
		"--bmc-password-file", bad, "--mac", "52:54:00:6e:00:99")
	if err == nil || !(strings.Contains(out, "bmc_unreachable") || strings.Contains(out, "bmc_timeout")) {
		t.Errorf("unreachable BMC: %v\n%s\nwant bmc_unreachable or bmc_timeout", err, out)
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("the two failed enrolments took %s; each should end within the 8 s BMC timeout (plus retries)", d.Round(time.Second))
	}
	if n := count(); n != 0 {
		t.Errorf("failed enrolments left %d machines, want none", n)
	}

	// Both enrolled at once, each waiting until joined.
	type result struct {
		out string
		err error
		d   time.Duration
	}
	results := make([]result, 2)
	var wg sync.WaitGroup
	t0 := time.Now()
	for i, args := range [][]string{
		{"enroll", "--bmc", bIPMI.URL, "--bmc-user", bIPMI.User, "--bmc-password-file", bIPMI.PasswordFile, "--mac", mIPMI.MAC, "--name", "ipmi1", "--wait", "--timeout", "12m"},
		{"enroll", "--bmc", bRF.URL, "--bmc-user", bRF.User, "--bmc-password-file", bRF.PasswordFile, "--name", "redfish1", "--wait", "--timeout", "12m"},
	} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 13*time.Minute)
			defer cancel()
			out, err := cli(ctx, args...)
			results[i] = result{out, err, time.Since(t0)}
		}()
	}
	wg.Wait()
	for i, name := range []string{"IPMI (BIOS)", "Redfish (UEFI)"} {
		r := results[i]
		t.Logf("enroll %s --wait: %s to joined\n%s", name, r.d.Round(time.Second), tail(r.out, 3000))
		if r.err != nil || !strings.Contains(r.out, "joined as test") {
			t.Errorf("enroll %s --wait: %v, want exit 0 with joined", name, r.err)
		}
	}
	if !strings.Contains(results[1].out, "enrolled 5254006e0002") {
		t.Errorf("the Redfish enrolment did not name the machine by the MAC its BMC reports:\n%s", results[1].out)
	}
	tok := readAdminToken(t, data)
	c := l.r.HTTPClient()
	for _, m := range []*vrack.Machine{mIPMI, mRF} {
		id := machine.MustParseID(m.MAC)
		got := getIn[machine.Machine](t, c, md.URL+"/api/v1/machines/"+string(id), tok, false)
		if got.State != machine.StJoined || got.BMC == nil || got.Power != "on" || got.BootDevice != "pxe" {
			t.Errorf("%s: state %s BMC %+v power %q boot %q; want joined, with its BMC, on, pxe", m.Name, got.State, got.BMC, got.Power, got.BootDevice)
		}
		evs := getIn[api.EventList](t, c, md.URL+"/api/v1/machines/"+string(id)+"/events", tok, false)
		var types []string
		for _, e := range evs.Events {
			types = append(types, string(e.Type))
		}
		// Its role comes from the policy on facts; mdc then power-cycles it
		// into the role image through its BMC.
		want := "enrolled boot_device_set power_requested power_changed commissioning_started facts_reported role_assigned boot_device_set power_requested power_changed provisioning_started booted joined"
		if got := strings.Join(types, " "); got != want {
			t.Errorf("%s history:\n  %s\nwant\n  %s", m.Name, got, want)
		}
	}
	if !mIPMI.Running() || !mRF.Running() {
		t.Error("the enrolled machines are not powered on")
	}

	// Reprovision the Redfish machine: back through its role image.
	id := machine.MustParseID(mRF.MAC)
	out, err = cli(context.Background(), "machines", "reprovision", string(id))
	if err != nil {
		t.Fatalf("reprovision: %v\n%s", err, out)
	}
	deadline := time.Now().Add(8 * time.Minute)
	for {
		evs := getIn[api.EventList](t, c, md.URL+"/api/v1/machines/"+string(id)+"/events", tok, false)
		var types []string
		for _, e := range evs.Events {
			types = append(types, string(e.Type))
		}
		got := strings.Join(types, " ")
		if strings.HasSuffix(got, "joined role_assigned boot_device_set power_requested power_changed provisioning_started booted joined") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after reprovision the history is\n  %s\nwant it to end role_assigned boot_device_set power_requested power_changed provisioning_started booted joined", got)
		}
		time.Sleep(2 * time.Second)
	}
	if out, err := cli(context.Background(), "power", "status", string(id)); err != nil || !strings.Contains(out, "power on") {
		t.Errorf("power status: %v %s", err, out)
	}
}
