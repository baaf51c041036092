package main

import (
	"context"
	"debug/elf"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/microdc/mdc/api"
	"github.com/microdc/mdc/machine"
)

func TestAgentFlags(t *testing.T) {
	good := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(good, []byte("rules:\n  - {role: test}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := parseServe([]string{"--role-policy", good, "--commissioning-timeout", "2m"}, io.Discard, env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if c.agent.commissioning != 2*time.Minute || c.agent.provisioning != 30*time.Minute || len(c.agent.policy.Rules) != 1 {
		t.Errorf("%+v", c.agent)
	}
	c, err = parseServe(nil, io.Discard, env(map[string]string{"MDC_PROVISIONING_TIMEOUT": "0"}))
	if err != nil || c.agent.provisioning != 0 || c.agent.policy.Default != "" || len(c.agent.policy.Rules) != 0 {
		t.Errorf("defaults: %+v %v", c.agent, err)
	}

	bad := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(bad, []byte("rules:\n  - role: nats\n    frist: 3\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--role-policy", bad}, `--role-policy: role policy ` + bad + `: line 3: unknown key "frist"`},
		{[]string{"--role-policy", "/nonexistent.yaml"}, "no such file"},
		{[]string{"--commissioning-timeout", "10ms"}, "--commissioning-timeout 10ms: want at least 1s, or 0 for never"},
		{[]string{"--agent-heartbeat", "2h"}, "--agent-heartbeat 2h0m0s: want 1s to 1h"},
	} {
		_, err := parseServe(tc.args, io.Discard, env(nil))
		var ue *usageError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want a usage error with %q", tc.args, err, tc.want)
		}
	}
}

var agentBin = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "mdc-agent-test")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "mdc-agent")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", bin, "../mdc-agent")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", errors.New(string(out))
	}
	return bin, nil
})

// The plug-in path without firmware: `mdc serve` with a role policy hands
// out boot scripts; the real mdc-agent binary, given each script's kernel
// arguments and a QEMU VM's /sys and /proc, commissions the machine, which
// gets its role, "reboots" into the role image and joins. The history is
// exactly the lifecycle DESIGN.md draws.
func TestPlugInWithoutFirmware(t *testing.T) {
	if testing.Short() {
		t.Skip("builds mdc-agent")
	}
	bin, err := agentBin()
	if err != nil {
		t.Fatalf("build mdc-agent: %v", err)
	}
	if f, err := elf.Open(bin); err != nil || hasInterp(f) {
		t.Fatalf("mdc-agent is not a static binary (%v)", err)
	}

	dataDir := t.TempDir()
	pol := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(pol, []byte(`
rules:
  - {role: test, min_disks: 2}
roles:
  test:
    evidence: [kernel, hook]
    heartbeat: 1s
    files:
      - {path: /etc/mdc/motd, mode: "0644", content: "a test node\n"}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	url, _ := serveInProcess(t, dataDir, "--role-policy", pol, "--agent-heartbeat", "1s")
	importTestImages(t, url, dataDir, "commissioning", "test")
	mac := "52:54:00:a6:00:01"
	id := machine.MustParseID(mac)
	root := commission(t, url, bin, mac, "test")
	m := getJSON[machine.Machine](t, url+"/api/v1/machines/"+string(id), "")
	if m.Facts == nil || m.Facts.MemoryBytes != 1<<30 ||
		len(m.Facts.Disks) != 2 || m.Facts.Disks[0].SizeBytes != 4<<30 || m.Facts.BootMode != "uefi" || m.Facts.CPUs != 2 {
		t.Fatalf("after commissioning: %+v facts %+v", m, m.Facts)
	}

	// The role image: booted, files, join hook, joined; then heartbeats
	// until it is stopped.
	args2 := bootArgs(t, url, mac, "role")
	root2 := agentRoot(t, args2)
	hook := filepath.Join(root2, "etc/mdc/join")
	if err := os.WriteFile(hook, []byte("#!/bin/sh\necho '{\"kernel\":\"6.1.0-28-amd64\",\"hook\":\"test\"}'\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var roleOut strings.Builder
	cmd := exec.CommandContext(ctx, bin, "-root", root2, "-dry-run")
	cmd.Stdout, cmd.Stderr = &roleOut, &roleOut
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for getJSON[machine.Machine](t, url+"/api/v1/machines/"+string(id), "").State != machine.StJoined {
		if time.Now().After(deadline) {
			cancel()
			_ = cmd.Wait()
			t.Fatalf("not joined:\n%s", roleOut.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(1500 * time.Millisecond) // a heartbeat
	cancel()
	_ = cmd.Wait() // reports the cancelled context; the exit status is what counts
	if code := cmd.ProcessState.ExitCode(); code != 0 || !strings.Contains(roleOut.String(), "msg=stopped") {
		t.Fatalf("role agent on SIGTERM: exit %d\n%s", code, roleOut.String())
	}
	if b, _ := os.ReadFile(filepath.Join(root2, "etc/mdc/motd")); string(b) != "a test node\n" {
		t.Errorf("role file %q", b)
	}

	evs := getJSON[api.EventList](t, url+"/api/v1/machines/"+string(id)+"/events?telemetry=true", "")
	var life, tel []string
	for _, e := range evs.Events {
		if e.Type.Lifecycle() {
			life = append(life, string(e.Type))
		} else {
			tel = append(tel, string(e.Type))
		}
	}
	if got, want := strings.Join(life, " "), "discovered commissioning_started facts_reported role_assigned provisioning_started booted joined"; got != want {
		t.Fatalf("history\n  %s\nwant\n  %s", got, want)
	}
	if !strings.Contains(strings.Join(tel, " "), "agent_seen") {
		t.Errorf("telemetry %v has no agent_seen", tel)
	}

	// The commissioning boot's token, shown again: refused, exit status 3.
	out, code := runAgent(t, bin, root, 30*time.Second)
	if code != 3 || !strings.Contains(out, "stale_token") {
		t.Fatalf("an earlier boot's token: exit %d\n%s", code, out)
	}
}

// importTestImages imports a stand-in image (kernel and initrd that are
// not really ones) for each role, named after it: the agent API needs an
// image to boot, never its content.
func importTestImages(t *testing.T, url, dataDir string, roles ...string) {
	t.Helper()
	img := t.TempDir()
	for _, f := range []string{"bzImage", "initrd"} {
		if err := os.WriteFile(filepath.Join(img, f), []byte("not really a "+f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, role := range roles {
		name := role
		if role != "commissioning" {
			name = role + "-1"
		}
		if _, err := mdc(t, url, dataDir, "images", "import", "--kernel", filepath.Join(img, "bzImage"),
			"--initrd", filepath.Join(img, "initrd"), "--cmdline", "console=ttyS0", "--name", name, "--role", role); err != nil {
			t.Fatal(err)
		}
	}
}

// commission runs the agent's commissioning boot of mac, which the policy
// must give role, and returns that boot's agent root.
func commission(t *testing.T, url, bin, mac, role string) string {
	t.Helper()
	root := agentRoot(t, bootArgs(t, url, mac, "commissioning"))
	out, code := runAgent(t, bin, root, 30*time.Second)
	if code != 0 || !strings.Contains(out, "mdc says reboot") || !strings.Contains(out, "dry run: not doing reboot") {
		t.Fatalf("commissioning agent: exit %d\n%s", code, out)
	}
	m := getJSON[machine.Machine](t, url+"/api/v1/machines/"+string(machine.MustParseID(mac)), "")
	if m.State != machine.Provisioning || m.Role != role {
		t.Fatalf("after commissioning: %s, role %q; want provisioning, role %s", m.State, m.Role, role)
	}
	return root
}

func hasInterp(f *elf.File) bool {
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return true
		}
	}
	return false
}

var kernelArgsRE = regexp.MustCompile(`mdc\.url=\S+ mdc\.machine=\S+ mdc\.token=[0-9a-f]{64} mdc\.mode=\S+`)

// bootArgs fetches the machine's boot script as iPXE would and returns the
// mdc.* kernel arguments in it.
func bootArgs(t *testing.T, url, mac, wantMode string) string {
	t.Helper()
	resp, err := http.Get(url + "/boot.ipxe?mac=" + mac + "&platform=efi")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	args := kernelArgsRE.FindString(string(b))
	if !strings.HasSuffix(args, "mdc.mode="+wantMode) {
		t.Fatalf("boot script has no %s boot:\n%s", wantMode, b)
	}
	return args
}

// agentRoot is a copy of the agent's QEMU UEFI testdata tree booted with
// args on the kernel command line.
func agentRoot(t *testing.T, args string) string {
	t.Helper()
	root := t.TempDir()
	from := filepath.Join("..", "mdc-agent", "testdata", "qemu-uefi")
	err := filepath.WalkDir(from, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		dst := filepath.Join(root, rel)
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			return os.Symlink(target, dst)
		case d.IsDir():
			return os.MkdirAll(dst, 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(dst, b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "proc/cmdline"), []byte("BOOT_IMAGE=vmlinuz console=ttyS0 "+args+" initrd=initrd0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "etc/mdc"), 0o755); err != nil {
		t.Fatal(err)
	}
	return root
}

func runAgent(t *testing.T, bin, root string, limit time.Duration) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "-root", root, "-dry-run").CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(out), ee.ExitCode()
	}
	if err != nil {
		t.Fatalf("mdc-agent: %v\n%s", err, out)
	}
	return string(out), 0
}
