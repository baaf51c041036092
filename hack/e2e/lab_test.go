//go:build e2e

package e2e

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/microdc/mdc/hack/vrack"
)

// Server side of the rack: mdc on the bridge's address.
const (
	nbSubnet = "10.79.0"
	nbServer = nbSubnet + ".1"
	nbPort   = 8080
	ipxeDir  = vrack.IPXEDir
)

func needNetbootLab(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("QEMU boots take a minute; skipped in -short mode")
	}
	if why := vrack.Missing(); why != "" {
		t.Skip(why)
	}
}

// buildOnce builds mdc for the tests (once per test binary).
var buildOnce = sync.OnceValues(func() (string, error) { return goBuild("mdc", "../../cmd/mdc") })

// agentBin builds the static mdc-agent for the test image.
var agentBin = sync.OnceValues(func() (string, error) { return goBuild("mdc-agent", "../../cmd/mdc-agent") })

// buildDir holds the binaries the tests build; TestMain removes it.
var buildDir = sync.OnceValues(func() (string, error) { return os.MkdirTemp("", "mdc-e2e") })

func TestMain(m *testing.M) {
	code := m.Run()
	if dir, err := buildDir(); err == nil {
		os.RemoveAll(dir)
	}
	os.Exit(code)
}

func goBuild(name, pkg string) (string, error) {
	dir, err := buildDir()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, name)
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", bin, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", errors.New(string(out))
	}
	return bin, nil
}

// kit is what a boot-to-joined test needs: the mdc binary and the parts of
// the test image (a Debian kernel and its NIC modules, a static busybox,
// mdc-agent), built or fetched once.
type kit struct {
	bin, agent, busybox, kernel, mods string
}

func newKit(t *testing.T) kit {
	t.Helper()
	needNetbootLab(t)
	var k kit
	var err error
	if k.busybox, err = vrack.StaticBusybox(); err != nil {
		t.Skipf("needs a static busybox for the initrd: %v", err)
	}
	if k.kernel, err = vrack.TestKernel(vrack.DefaultCacheDir()); err != nil {
		t.Fatalf("no test kernel: %v (it runs apt-get download linux-image-…-amd64 once)", err)
	}
	if k.mods, err = vrack.TestModules(k.kernel); err != nil {
		t.Fatal(err)
	}
	if k.agent, err = agentBin(); err != nil {
		t.Fatalf("build mdc-agent: %v", err)
	}
	if k.bin, err = buildOnce(); err != nil {
		t.Fatal(err)
	}
	return k
}

// initrd writes the test image's initrd, whose init runs run, to path.
func (k kit) initrd(t *testing.T, path, run string) string {
	t.Helper()
	if err := vrack.WriteInitrd(path, k.busybox, k.agent, k.mods, run); err != nil {
		t.Fatal(err)
	}
	return path
}

// startRoleMDC writes policy, starts mdc with full DHCP and that role
// policy (and extra flags), and imports initrd with the kit's kernel as the
// commissioning image and the `test` role's image. It returns mdc and its
// data directory.
func (l *testLab) startRoleMDC(k kit, initrd, name, policy string, extra ...string) (*vrack.MDC, string) {
	l.t.Helper()
	pol := filepath.Join(l.dir, name+"-policy.yaml")
	if err := os.WriteFile(pol, []byte(policy), 0o644); err != nil {
		l.t.Fatal(err)
	}
	data := filepath.Join(l.dir, name)
	flags := append([]string{"--interface", "br0", "--dhcp-mode", "full", "--dhcp-range", nbSubnet + ".100-" + nbSubnet + ".200",
		"--role-policy", pol, "--agent-heartbeat", "5s"}, extra...)
	md := l.startMDC(k.bin, data, flags...)
	l.importAs(md, k.kernel, initrd, testCmdline, "commissioning", "commissioning")
	l.importAs(md, k.kernel, initrd, testCmdline, "test-1", "test")
	return md, data
}

// testCmdline is the kernel command line of the test image.
const testCmdline = "console=ttyS0 quiet panic=-1"

// testLab is the virtual rack seen from one test or subtest: processes a
// subtest starts stop when it ends, and their logs are printed if it failed.
type testLab struct {
	t   *testing.T
	r   *vrack.Rack
	dir string
}

func newLab(t *testing.T) *testLab {
	dir := t.TempDir()
	r, err := vrack.New(vrack.Config{Name: fmt.Sprintf("mdcnb%d", os.Getpid()%100000), Dir: dir, Subnet: nbSubnet,
		Logger: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return &testLab{t: t, r: r, dir: dir}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// sub is the lab for a subtest: processes it starts stop when it ends.
func (l *testLab) sub(t *testing.T) *testLab {
	c := *l
	c.t = t
	return &c
}

// watch stops p when the (sub)test ends and prints its log if it failed.
func (l *testLab) watch(p *vrack.Proc) *vrack.Proc {
	t := l.t
	t.Cleanup(func() {
		p.Stop()
		if t.Failed() {
			t.Logf("--- %s:\n%s", p.Name, p.Tail(20000))
		}
	})
	return p
}

func (l *testLab) start(name string, stdout io.Writer, args ...string) *vrack.Proc {
	l.t.Helper()
	return l.startIn(l.r.NS, name, stdout, args...)
}

func (l *testLab) startIn(ns, name string, stdout io.Writer, args ...string) *vrack.Proc {
	l.t.Helper()
	p, err := l.r.StartIn(ns, name, stdout, args...)
	if err != nil {
		l.t.Fatal(err)
	}
	return l.watch(p)
}

// peerNS makes another namespace joined to the bridge by a veth (veth0
// inside it, with addr), for a server that is not mdc.
func (l *testLab) peerNS(name, addr string) string {
	l.t.Helper()
	ns, err := l.r.PeerNS(name, addr)
	if err != nil {
		l.t.Fatal(err)
	}
	// Gone with the subtest (its veth leaves the bridge with it).
	l.t.Cleanup(func() { _ = exec.Command("ip", "netns", "delete", ns).Run() })
	return ns
}

// startMDC runs `mdc serve` in the namespace and waits until it is ready.
func (l *testLab) startMDC(bin, data string, flags ...string) *vrack.MDC {
	l.t.Helper()
	m, err := l.r.StartMDC(bin, data, nbPort, flags...)
	if err != nil {
		l.t.Fatal(err)
	}
	l.watch(m.Proc)
	return m
}

// importAs imports kernel and initrd with the CLI as the image of role.
func (l *testLab) importAs(m *vrack.MDC, kernel, initrd, cmdline, name, role string) {
	l.t.Helper()
	if err := l.r.ImportImage(m, kernel, initrd, cmdline, name, role); err != nil {
		l.t.Fatal(err)
	}
}

// machine is a rack machine on a new tap of the bridge.
func (l *testLab) machine(fw firmware, mac string, memMiB, cpus int, disks []int64) *vrack.Machine {
	l.t.Helper()
	vfw := vrack.BIOS
	if fw.uefi {
		vfw = vrack.UEFI
	}
	m, err := l.r.NewMachine(strings.ReplaceAll(mac, ":", ""), mac, vfw, memMiB, cpus, disks)
	if err != nil {
		l.t.Fatal(err)
	}
	return m
}

// startMachine powers m on (attached to the test) and reports where its
// serial console is if the test fails.
func (l *testLab) startMachine(m *vrack.Machine, out io.Writer) *vrack.Proc {
	t := l.t
	t.Helper()
	p, err := l.r.StartMachine(m, out)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Stop()
		if t.Failed() {
			t.Logf("--- serial console of %s (%s):\n%s", m.MAC, m.SerialLog(), p.Tail(20000))
		}
	})
	return p
}

// inNS runs fn inside the rack's namespace.
func (l *testLab) inNS(fn func() error) {
	l.t.Helper()
	if err := l.r.InNS(fn); err != nil {
		l.t.Fatal(err)
	}
}

func (l *testLab) tapIndex(tap string) int {
	var idx int
	l.inNS(func() error {
		ifi, err := net.InterfaceByName(tap)
		if err == nil {
			idx = ifi.Index
		}
		return err
	})
	return idx
}

func readAdminToken(t *testing.T, data string) string {
	t.Helper()
	tok, err := os.ReadFile(filepath.Join(data, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(tok))
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
