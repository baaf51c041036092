package bmc

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// ipmiSim is OpenIPMI's ipmi_sim serving one BMC on loopback, its chassis
// driven by testdata/chassis-control.sh keeping state in dir.
type ipmiSim struct {
	ep   Endpoint
	cred Credentials
	dir  string // the chassis-control program's state
}

func (s *ipmiSim) read(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(s.dir, name))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func (s *ipmiSim) write(t *testing.T, name, v string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(s.dir, name), []byte(v+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// waitFor polls the chassis state until cond holds or 10 s pass.
func (s *ipmiSim) waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; chassis log:\n%s", what, s.read(t, "log"))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func freeUDPPort(t *testing.T) int {
	t.Helper()
	c, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

func startIPMISim(t *testing.T) *ipmiSim {
	t.Helper()
	sim, err := exec.LookPath("ipmi_sim")
	if err != nil {
		t.Skip("ipmi_sim not installed (Debian package openipmi; hack/install-deps.sh bmc)")
	}
	if _, err := exec.LookPath("ipmitool"); err != nil {
		t.Skip("ipmitool not installed (Debian package ipmitool; hack/install-deps.sh bmc)")
	}
	script, err := filepath.Abs("testdata/chassis-control.sh")
	if err != nil {
		t.Fatal(err)
	}
	emu, err := filepath.Abs("testdata/ipmi-bmc.emu")
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	s := &ipmiSim{
		cred: Credentials{User: "admin", Password: "ipmi-Secret-7f3a"},
		dir:  filepath.Join(tmp, "chassis"),
	}
	for _, d := range []string{s.dir, filepath.Join(tmp, "state")} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	port := freeUDPPort(t)
	s.ep = Endpoint{Protocol: IPMI, Host: "127.0.0.1", Port: port}
	conf := fmt.Sprintf(`name "mdctest"
set_working_mc 0x20
  startlan 1
    addr 127.0.0.1 %d
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid a123456789abcdefa123456789abcdef
  endlan
  chassis_control "/bin/sh %s %s"
  user 2 true "%s" "%s" admin 10 none md2 md5 straight
`, port, script, s.dir, s.cred.User, s.cred.Password)
	confPath := filepath.Join(tmp, "lan.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(tmp, "ipmi_sim.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(sim, "-n", "-c", confPath, "-f", emu, "-s", filepath.Join(tmp, "state"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	})
	// Ready when ipmitool gets an answer.
	deadline := time.Now().Add(10 * time.Second)
	for {
		c := exec.Command("ipmitool", "-I", "lanplus", "-C", "3", "-N", "1", "-R", "1",
			"-H", "127.0.0.1", "-p", fmt.Sprint(port), "-U", s.cred.User, "-E", "chassis", "power", "status")
		c.Env = []string{"IPMI_PASSWORD=" + s.cred.Password}
		if c.Run() == nil {
			break
		}
		select {
		case <-exited:
			b, _ := os.ReadFile(filepath.Join(tmp, "ipmi_sim.log"))
			t.Fatalf("ipmi_sim exited:\n%s", b)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("ipmi_sim did not answer within 10 s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	return s
}

func ipmiTestOptions() Options {
	// The default timeout: these hosts are shared and ipmitool can be slow.
	return Options{Timeout: DefaultTimeout, MinInterval: 10 * time.Millisecond, BootRetries: 1}
}

func TestIPMIPower(t *testing.T) {
	t.Parallel()
	s := startIPMISim(t)
	ctx := t.Context()
	c := New(s.ep, s.cred, ipmiTestOptions())
	defer c.Close(ctx)

	st, err := c.PowerStatus(ctx)
	if err != nil || st != PowerOff {
		t.Fatalf("PowerStatus = %q, %v; want off", st, err)
	}
	if err := c.Power(ctx, ActionOn); err != nil {
		t.Fatal(err)
	}
	if got := s.read(t, "power"); got != "1" {
		t.Fatalf("chassis power after on = %q, want 1", got)
	}
	if st, err := c.PowerStatus(ctx); err != nil || st != PowerOn {
		t.Fatalf("PowerStatus = %q, %v; want on", st, err)
	}

	// Cycle of a machine that is on: ipmi_sim powers off, then on again.
	s.write(t, "log", "")
	if err := c.Power(ctx, ActionCycle); err != nil {
		t.Fatal(err)
	}
	s.waitFor(t, "off then on", func() bool {
		log := s.read(t, "log")
		i := strings.Index(log, "set power 0")
		return i >= 0 && strings.Contains(log[i:], "set power 1") && s.read(t, "power") == "1"
	})

	if err := c.Power(ctx, ActionOff); err != nil {
		t.Fatal(err)
	}
	if got := s.read(t, "power"); got != "0" {
		t.Fatalf("chassis power after off = %q, want 0", got)
	}
	if st, err := c.PowerStatus(ctx); err != nil || st != PowerOff {
		t.Fatalf("PowerStatus = %q, %v; want off", st, err)
	}

	// Cycle of a machine that is off powers it on, without a cycle.
	s.write(t, "log", "")
	if err := c.Power(ctx, ActionCycle); err != nil {
		t.Fatal(err)
	}
	if got := s.read(t, "power"); got != "1" {
		t.Fatalf("chassis power after cycle from off = %q, want 1", got)
	}
	if log := s.read(t, "log"); strings.Contains(log, "set power 0") {
		t.Fatalf("cycle from off switched power off:\n%s", log)
	}

	if err := c.Power(ctx, ActionSoft); err != nil {
		t.Fatal(err)
	}
	s.waitFor(t, "soft shutdown", func() bool { return strings.Contains(s.read(t, "log"), "set shutdown 1") })
}

func TestIPMISetNextBootPXE(t *testing.T) {
	t.Parallel()
	s := startIPMISim(t)
	ctx := t.Context()
	c := New(s.ep, s.cred, ipmiTestOptions())
	for _, opt := range []BootOptions{{}, {EFI: true}, {Persistent: true, EFI: true}} {
		s.write(t, "boot", "none")
		s.write(t, "log", "")
		if err := c.SetNextBootPXE(ctx, opt); err != nil {
			t.Fatalf("SetNextBootPXE(%s): %v", opt, err)
		}
		if got := s.read(t, "boot"); got != "pxe" {
			t.Fatalf("chassis boot after SetNextBootPXE(%s) = %q, want pxe", opt, got)
		}
		if log := s.read(t, "log"); !strings.Contains(log, "set boot pxe") {
			t.Fatalf("chassis program never got 'set boot pxe':\n%s", log)
		}
	}
}

func TestIPMIBootNotHeld(t *testing.T) {
	t.Parallel()
	s := startIPMISim(t)
	s.write(t, "drop-boot", "")
	c := New(s.ep, s.cred, ipmiTestOptions()) // BootRetries: 1
	err := c.SetNextBootPXE(t.Context(), BootOptions{EFI: true})
	if !errors.Is(err, ErrBootNotHeld) {
		t.Fatalf("SetNextBootPXE on a BMC that drops the override: %v; want ErrBootNotHeld", err)
	}
	if n := strings.Count(s.read(t, "log"), "set boot pxe"); n != 2 {
		t.Errorf("boot set %d times, want 2 (1 + BootRetries)", n)
	}
	t.Log(err)
}

func TestIPMIInventoryUnsupported(t *testing.T) {
	t.Parallel()
	c := New(Endpoint{Protocol: IPMI, Host: "192.0.2.1", Port: 623}, Credentials{User: "u", Password: "p"}, Options{})
	_, err := c.Inventory(t.Context())
	if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "--mac") {
		t.Fatalf("Inventory over IPMI: %v; want ErrUnsupported naming --mac", err)
	}
}

func TestIPMIWrongPassword(t *testing.T) {
	t.Parallel()
	s := startIPMISim(t)
	bad := Credentials{User: s.cred.User, Password: "wrong-Password-9"}
	c := New(s.ep, bad, ipmiTestOptions())
	start := time.Now()
	_, err := c.PowerStatus(t.Context())
	if !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("PowerStatus with a wrong password: %v; want ErrAuthFailed", err)
	}
	if d := time.Since(start); d > DefaultTimeout/2 {
		t.Errorf("took %v to report a wrong password; it should not wait for the timeout", d)
	}
	if strings.Contains(err.Error(), bad.Password) {
		t.Fatalf("error shows the password: %v", err)
	}
	if !strings.Contains(err.Error(), s.ep.Addr()) {
		t.Errorf("error does not name the BMC: %v", err)
	}
	t.Log(err)

	// An unknown user is an authentication failure too.
	c = New(s.ep, Credentials{User: "nobody", Password: s.cred.Password}, ipmiTestOptions())
	if _, err := c.PowerStatus(t.Context()); !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("PowerStatus as an unknown user: %v; want ErrAuthFailed", err)
	}
}

// TestIPMIPasswordNotOnCommandLine wraps ipmitool in a script recording its
// argv and environment, and checks the password is in the environment only.
func TestIPMIPasswordNotOnCommandLine(t *testing.T) {
	t.Parallel()
	s := startIPMISim(t)
	real, _ := exec.LookPath("ipmitool")
	dir := t.TempDir()
	argvLog := filepath.Join(dir, "argv.log")
	envLog := filepath.Join(dir, "env.log")
	shim := filepath.Join(dir, "ipmitool")
	// bmclib runs ipmitool with an environment of the password only, so
	// the shim uses absolute paths.
	script := fmt.Sprintf("#!/bin/sh\nprintf '%%s\\n' \"$0 $*\" >>%s\n/usr/bin/env >>%s\nexec %s \"$@\"\n", argvLog, envLog, real)
	if err := os.WriteFile(shim, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	opt := ipmiTestOptions()
	opt.IpmitoolPath = shim
	opt.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	c := New(s.ep, s.cred, opt)
	ctx := t.Context()
	if _, err := c.PowerStatus(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Power(ctx, ActionOn); err != nil {
		t.Fatal(err)
	}
	if err := c.SetNextBootPXE(ctx, BootOptions{EFI: true}); err != nil {
		t.Fatal(err)
	}
	argv, err := os.ReadFile(argvLog)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(argv)), "\n")
	if len(lines) < 4 {
		t.Fatalf("ipmitool ran %d times, want at least 4 (status, on, bootdev, bootparam):\n%s", len(lines), argv)
	}
	for _, l := range lines {
		if strings.Contains(l, s.cred.Password) {
			t.Fatalf("password on ipmitool's command line: %s", l)
		}
		if !strings.Contains(l, " -E ") {
			t.Errorf("ipmitool run without -E: %s", l)
		}
	}
	if !strings.Contains(string(argv), "bootparam get 5") {
		t.Errorf("the boot override was never read back:\n%s", argv)
	}
	if _, err := New(s.ep, Credentials{User: s.cred.User, Password: "wrong-Password-9"}, opt).PowerStatus(ctx); !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("wrong password: %v", err)
	}
	if logs.Len() == 0 || strings.Contains(logs.String(), s.cred.Password) || strings.Contains(logs.String(), "wrong-Password-9") {
		t.Fatalf("log is empty or shows a password:\n%s", logs.String())
	}
	argv, _ = os.ReadFile(argvLog)
	if strings.Contains(string(argv), "wrong-Password-9") {
		t.Fatalf("password on ipmitool's command line:\n%s", argv)
	}
	env, err := os.ReadFile(envLog)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(env), s.cred.Password) {
		t.Errorf("the password did not reach ipmitool through its environment")
	}
}

func TestIPMIUnreachable(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("ipmitool"); err != nil {
		t.Skip("ipmitool not installed (Debian package ipmitool; hack/install-deps.sh bmc)")
	}
	ep := Endpoint{Protocol: IPMI, Host: "127.0.0.1", Port: freeUDPPort(t)} // nothing listens
	c := New(ep, Credentials{User: "admin", Password: "some-Password-1"}, Options{Timeout: 10 * time.Second})
	start := time.Now()
	_, err := c.PowerStatus(t.Context())
	if !errors.Is(err, ErrUnreachable) {
		t.Fatalf("PowerStatus of a closed IPMI port = %v, want ErrUnreachable", err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("took %v to report a closed port; it should not wait for the timeout", took)
	}
	if !strings.Contains(err.Error(), ep.Addr()) {
		t.Errorf("error does not name the BMC: %v", err)
	}
	t.Log(err)
}

func TestIPMISilentBMC(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("ipmitool"); err != nil {
		t.Skip("ipmitool not installed (Debian package ipmitool; hack/install-deps.sh bmc)")
	}
	// A UDP socket that takes every packet and never answers.
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
		}
	}()
	ep := Endpoint{Protocol: IPMI, Host: "127.0.0.1", Port: pc.LocalAddr().(*net.UDPAddr).Port}
	timeout := 3 * time.Second
	c := New(ep, Credentials{User: "admin", Password: "some-Password-1"}, Options{Timeout: timeout})
	start := time.Now()
	_, err = c.PowerStatus(t.Context())
	took := time.Since(start)
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("PowerStatus of a silent IPMI BMC = %v, want ErrTimeout", err)
	}
	if took > timeout+time.Second {
		t.Fatalf("took %v with a %v timeout", took, timeout)
	}
	t.Log(err)
}
