//go:build ceph

package ceph

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/microdc/mdc/api/agentapi"
	"github.com/microdc/mdc/internal/testkit"
	"github.com/microdc/mdc/machine"
	"github.com/microdc/mdc/roles"
)

// These tests need a cluster from ../shared/ceph/ceph-up.sh (hack/test-roles-ceph.sh
// starts one) and the real ceph-osd, which plays the node: it is given only
// what Configure serves, plus local paths (data dir, logs) a node's image
// would set.

func clusterEnv(t *testing.T) (conf, keyring string) {
	t.Helper()
	conf, keyring = os.Getenv("CEPH_CONF"), os.Getenv("CEPH_ADMIN_KEYRING")
	if conf == "" || keyring == "" {
		t.Skip("CEPH_CONF/CEPH_ADMIN_KEYRING not set: start a cluster with ../shared/ceph/ceph-up.sh (hack/test-roles-ceph.sh does)")
	}
	if _, err := exec.LookPath("ceph-osd"); err != nil {
		t.Skip("ceph-osd not installed: hack/install-deps.sh roles-ceph")
	}
	return conf, keyring
}

func newTestRole(t *testing.T, grace time.Duration) *Role {
	t.Helper()
	conf, keyring := clusterEnv(t)
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	r, err := New(context.Background(), Config{ConfFile: conf, Keyring: keyring, UpGrace: grace, MinDiskBytes: 1 << 30,
		Timeout: 20 * time.Second, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r
}

// testMachine is a node with one data disk and a removable one.
func testMachine(t *testing.T) machine.Machine {
	var b [6]byte
	rand.Read(b[:])
	b[0] = 0x02 // locally administered
	id := machine.ID(fmt.Sprintf("%x", b))
	return machine.Machine{ID: id, Name: "node-" + string(id[6:]), Role: Name, State: machine.State("booted"),
		Facts: &machine.Facts{Disks: []machine.Disk{
			{Name: "vdb", Serial: "SER-" + string(id), SizeBytes: 20 << 30},
			{Name: "sr0", SizeBytes: 700 << 20, Removable: true},
		}}}
}

// node is the machine's filesystem: the files Configure served, written
// where the agent would write them, under a root.
type node struct {
	t    *testing.T
	root string
	jc   JoinConfig
	rc   agentapi.RoleConfig
	osd  *exec.Cmd
	exit chan error
	out  *bytes.Buffer // the running ceph-osd's output; read after exit
}

func configure(t *testing.T, r *Role, m machine.Machine) *node {
	t.Helper()
	rc := agentapi.RoleConfig{Machine: m.ID, Role: Name}
	if err := r.Configure(context.Background(), m, nil, &rc); err != nil {
		t.Fatal(err)
	}
	n := &node{t: t, root: t.TempDir(), rc: rc}
	if err := json.Unmarshal(rc.Config, &n.jc); err != nil {
		t.Fatalf("role config: %v", err)
	}
	for _, f := range rc.Files {
		mode, err := strconv.ParseUint(f.Mode, 8, 32)
		if err != nil {
			t.Fatalf("file %s: mode %q: %v", f.Path, f.Mode, err)
		}
		p := filepath.Join(n.root, f.Path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(f.Content), os.FileMode(mode)); err != nil {
			t.Fatal(err)
		}
	}
	return n
}

func (n *node) path(p string) string { return filepath.Join(n.root, p) }

// args are the node-local settings plus what mdc served: its conf and
// the OSD's keyring.
func (n *node) args(o JoinOSD) []string {
	d := n.path("/var/lib/ceph/osd/ceph-" + strconv.Itoa(o.ID))
	return append([]string{"--conf", n.path(n.jc.Conf), "-i", strconv.Itoa(o.ID), "--keyring", n.path(o.Keyring),
		"--osd-data", d, "--run-dir", n.path("/run/ceph"), "--log-file", n.path("/var/log/ceph/osd.log"),
		"--crash-dir", n.path("/var/lib/ceph/crash"), "--pid-file", n.path("/run/ceph/osd.pid")}, testOSDArgs...)
}

// testOSDArgs make a node's OSD fit a test: in memory, on loopback, small.
var testOSDArgs = []string{"--osd-objectstore", "memstore", "--memstore-device-bytes", strconv.Itoa(256 << 20),
	"--public-addr", "127.0.0.1", "--cluster-addr", "127.0.0.1",
	"--osd-mon-shutdown-timeout", "1", "--osd-op-num-shards", "2", "--osd-op-num-threads-per-shard", "1"}

// cephEnv drops the variables libceph reads in every process, so the node's
// ceph-osd sees only what it is given.
func cephEnv() []string {
	var env []string
	for _, e := range os.Environ() {
		if k, _, _ := strings.Cut(e, "="); k == "CEPH_CONF" || k == "CEPH_KEYRING" || k == "CEPH_ARGS" {
			continue
		}
		env = append(env, e)
	}
	return env
}

// mkfs runs ceph-osd --mkfs for o as the join hook would.
func (n *node) mkfs(o JoinOSD) (string, error) {
	for _, d := range []string{"/var/lib/ceph/osd/ceph-" + strconv.Itoa(o.ID), "/run/ceph", "/var/log/ceph", "/var/lib/ceph/crash"} {
		os.MkdirAll(n.path(d), 0o755)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ceph-osd", append(n.args(o), "--mkfs", "--osd-uuid", o.UUID)...)
	cmd.Env, cmd.Dir = cephEnv(), n.root
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// start runs ceph-osd -f for o in the background; stop ends it by PID.
func (n *node) start(o JoinOSD) {
	n.t.Helper()
	cmd := exec.Command("ceph-osd", append(n.args(o), "-f")...)
	cmd.Env, cmd.Dir = cephEnv(), n.root
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		n.t.Fatal(err)
	}
	n.osd, n.exit, n.out = cmd, make(chan error, 1), &out
	go func() { n.exit <- cmd.Wait() }()
	n.t.Cleanup(n.stop)
	n.t.Cleanup(func() {
		if n.t.Failed() {
			n.t.Logf("ceph-osd output:\n%s", out.String())
		}
	})
}

func (n *node) stop() {
	if n.osd == nil {
		return
	}
	n.osd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.exit:
	case <-time.After(15 * time.Second):
		n.osd.Process.Kill()
		<-n.exit
	}
	n.osd = nil
}

// evidence is what the join hook reports: the fingerprint of each key it
// used, read from the keyring files on the node.
func (n *node) evidence() map[string]string {
	ev := map[string]string{}
	for _, o := range n.jc.OSDs {
		b, err := os.ReadFile(n.path(o.Keyring))
		if err != nil {
			n.t.Fatal(err)
		}
		_, key, _ := strings.Cut(string(b), "key = ")
		ev[EvidenceKey(o.ID)] = KeyFingerprint(key)
	}
	return ev
}

// waitVerify polls Verify until it returns something other than ErrNotYet.
func waitVerify(t *testing.T, r *Role, m machine.Machine, ev map[string]string, within time.Duration) (error, time.Duration) {
	t.Helper()
	start := time.Now()
	for {
		err := r.Verify(context.Background(), m, ev)
		if !errors.Is(err, roles.ErrNotYet) || time.Since(start) > within {
			return err, time.Since(start)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// retire calls Retire until it stops answering ErrNotYet.
func retire(t *testing.T, r *Role, m machine.Machine) error {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		err := r.Retire(context.Background(), m)
		if !errors.Is(err, roles.ErrNotYet) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// admin is the test's own view of the cluster, through the same admin key.
func admin(t *testing.T, r *Role, cmd map[string]any) []byte {
	t.Helper()
	b, err := r.c.mon(cmd, nil)
	if err != nil {
		t.Fatalf("%v: %v", cmd, err)
	}
	return b
}

func treeHas(t *testing.T, r *Role, name string) bool {
	var tr osdTree
	if err := json.Unmarshal(admin(t, r, map[string]any{"prefix": "osd tree", "format": "json"}), &tr); err != nil {
		t.Fatal(err)
	}
	for _, n := range append(tr.Nodes, tr.Stray...) {
		if n.Name == name {
			return true
		}
	}
	return false
}

func authHas(t *testing.T, r *Role, entity string) bool {
	var a struct {
		Auth []struct {
			Entity string `json:"entity"`
		} `json:"auth_dump"`
	}
	if err := json.Unmarshal(admin(t, r, map[string]any{"prefix": "auth ls", "format": "json"}), &a); err != nil {
		t.Fatal(err)
	}
	for _, e := range a.Auth {
		if e.Entity == entity {
			return true
		}
	}
	return false
}

// TestJoinVerifyRetire: the real ceph-osd creates and starts an OSD from
// what Configure served; Verify says joined only once it is up and in
// under the machine's host; Retire removes it and its key.
func TestJoinVerifyRetire(t *testing.T) {
	r := newTestRole(t, time.Minute)
	m := testMachine(t)
	t0 := time.Now()
	n := configure(t, r, m)
	t.Logf("Configure: %s", time.Since(t0).Round(time.Millisecond))

	// What mdc serves: the cluster's fsid and mons, one OSD for the one
	// fixed disk, its key readable by root only.
	minimal := string(admin(t, r, map[string]any{"prefix": "config generate-minimal-conf"}))
	conf, _ := os.ReadFile(n.path(ConfPath))
	if fsidOf(string(conf)) != fsidOf(minimal) || !strings.Contains(string(conf), "mon_host") ||
		!strings.Contains(string(conf), "host="+HostName(m)) {
		t.Fatalf("served ceph.conf:\n%s\nwant the cluster's fsid and mon_host, and crush host %s", conf, HostName(m))
	}
	if len(n.jc.OSDs) != 1 || n.jc.OSDs[0].Disk != "vdb" {
		t.Fatalf("join config OSDs = %+v, want one on vdb", n.jc.OSDs)
	}
	o := n.jc.OSDs[0]
	st, err := os.Stat(n.path(o.Keyring))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("keyring %s: %v, mode %v; want 0600", o.Keyring, err, st.Mode())
	}
	if len(n.rc.Evidence) != 1 || n.rc.Evidence[0] != EvidenceKey(o.ID) {
		t.Fatalf("evidence = %v", n.rc.Evidence)
	}
	t.Cleanup(func() { r.Retire(context.Background(), m) })

	// Asking again (an agent retrying) gives the same OSD and key.
	again := configure(t, r, m)
	if again.jc.OSDs[0] != o {
		t.Fatalf("second Configure: %+v, first %+v", again.jc.OSDs[0], o)
	}
	if a, b := again.evidence(), n.evidence(); a[EvidenceKey(o.ID)] != b[EvidenceKey(o.ID)] {
		t.Fatal("second Configure served another key")
	}

	if err := r.Verify(context.Background(), m, nil); !errors.Is(err, roles.ErrNotYet) {
		t.Fatalf("Verify before the OSD exists = %v, want ErrNotYet", err)
	}
	t1 := time.Now()
	if out, err := n.mkfs(o); err != nil {
		t.Fatalf("ceph-osd --mkfs with the served configuration: %v\n%s", err, out)
	}
	t.Logf("ceph-osd --mkfs: %s", time.Since(t1).Round(time.Millisecond))
	if err := r.Verify(context.Background(), m, n.evidence()); !errors.Is(err, roles.ErrNotYet) {
		t.Fatalf("Verify after mkfs, before start = %v, want ErrNotYet", err)
	}
	n.start(o)
	err, took := waitVerify(t, r, m, n.evidence(), 90*time.Second)
	if err != nil {
		t.Fatalf("Verify after starting osd.%d (%s): %v", o.ID, took, err)
	}
	t.Logf("joined: Verify nil %s after ceph-osd start", took.Round(time.Millisecond))
	// The cluster agrees: up, in, under the machine's host.
	states, _ := osdStates(admin(t, r, map[string]any{"prefix": "osd dump", "format": "json"}),
		admin(t, r, map[string]any{"prefix": "osd tree", "format": "json"}))
	if s := states[o.ID]; !s.up || !s.in || s.parent != HostName(m) {
		t.Fatalf("osd.%d: %+v", o.ID, s)
	}
	// Describe (mdc roles show ceph-osd) sees it too, and no key.
	ds, err := r.Describe(context.Background())
	if err != nil {
		t.Fatalf("Describe: %v", err)
	}
	want := fmt.Sprintf("host %s: osd.%d vdb (up, in)", HostName(m), o.ID)
	if ds.Settings["fsid"] != fsidOf(minimal) || ds.Settings["mon_host"] == "" ||
		!slices.ContainsFunc(ds.Members, func(x roles.Member) bool { return x.Machine == m.ID && x.Detail == want }) {
		t.Fatalf("Describe = %+v, want the fsid, the mons and member %s %q", ds, m.ID, want)
	}
	kr, _ := os.ReadFile(n.path(o.Keyring))
	_, key, _ := strings.Cut(string(kr), "key = ")
	if js, _ := json.Marshal(ds); strings.TrimSpace(key) == "" || strings.Contains(string(js), strings.TrimSpace(key)) {
		t.Fatalf("Describe shows osd.%d's key: %s", o.ID, js)
	}
	t.Logf("Describe: %s", ds.Summary)

	// Retire while the node still runs it: out, but not purged (the first
	// answers may be that data is still moving).
	deadline := time.Now().Add(30 * time.Second)
	for err = r.Retire(context.Background(), m); errors.Is(err, roles.ErrNotYet) &&
		!strings.Contains(err.Error(), "still up") && time.Now().Before(deadline); err = r.Retire(context.Background(), m) {
		time.Sleep(500 * time.Millisecond)
	}
	if !errors.Is(err, roles.ErrNotYet) || !strings.Contains(err.Error(), "still up") {
		t.Fatalf("Retire with ceph-osd running = %v, want ErrNotYet (still up)", err)
	}
	states, _ = osdStates(admin(t, r, map[string]any{"prefix": "osd dump", "format": "json"}), nil)
	if states[o.ID].in {
		t.Fatalf("osd.%d still in after Retire", o.ID)
	}
	n.stop() // the node is powered off
	t2 := time.Now()
	if err := retire(t, r, m); err != nil {
		t.Fatalf("Retire: %v", err)
	}
	t.Logf("Retire after stop: %s", time.Since(t2).Round(time.Millisecond))
	name := fmt.Sprintf("osd.%d", o.ID)
	if treeHas(t, r, name) || treeHas(t, r, HostName(m)) {
		t.Fatalf("%s or host %s still in the OSD tree after Retire", name, HostName(m))
	}
	if authHas(t, r, name) {
		t.Fatalf("%s still in auth ls after Retire", name)
	}
	if err := r.Retire(context.Background(), m); err != nil {
		t.Fatalf("second Retire: %v", err)
	}
	if err := r.Verify(context.Background(), m, nil); err == nil || errors.Is(err, roles.ErrNotYet) {
		t.Fatalf("Verify after Retire = %v, want a failure", err)
	}
}

// TestWrongKey: a node with a key that is not the one mdc minted cannot
// create its OSD, and Verify says why.
func TestWrongKey(t *testing.T) {
	r := newTestRole(t, 3*time.Second)
	m := testMachine(t)
	n := configure(t, r, m)
	t.Cleanup(func() { r.Retire(context.Background(), m) })
	o := n.jc.OSDs[0]
	wrong, _ := NewSecret()
	if err := os.WriteFile(n.path(o.Keyring), []byte(keyring(o.ID, wrong)), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := n.mkfs(o)
	if err == nil {
		t.Fatalf("ceph-osd --mkfs with a wrong key succeeded:\n%s", out)
	}
	if !strings.Contains(out, "handle_auth_bad_method") && !strings.Contains(out, "failed to fetch mon config") {
		t.Fatalf("ceph-osd --mkfs with a wrong key: %v, without an authentication error:\n%s", err, out)
	}
	// The hook reports the key it used: Verify names the mismatch.
	err = r.Verify(context.Background(), m, n.evidence())
	if err == nil || errors.Is(err, roles.ErrNotYet) || !strings.Contains(err.Error(), "not the cluster's") {
		t.Fatalf("Verify with the wrong key's evidence = %v", err)
	}
	if strings.Contains(err.Error(), wrong) {
		t.Fatal("Verify's error carries the key")
	}
	// Without evidence, the OSD never boots: ErrNotYet, then a failure
	// once UpGrace is over.
	err, took := waitVerify(t, r, m, nil, 20*time.Second)
	if err == nil || !strings.Contains(err.Error(), "never booted") {
		t.Fatalf("Verify without evidence after %s = %v, want a failure naming the never-booted OSD", took, err)
	}
	t.Logf("Verify failed after %s: %v", took.Round(time.Millisecond), err)
	if err := retire(t, r, m); err != nil {
		t.Fatalf("Retire of a never-booted OSD: %v", err)
	}
	if treeHas(t, r, fmt.Sprintf("osd.%d", o.ID)) || authHas(t, r, fmt.Sprintf("osd.%d", o.ID)) {
		t.Fatal("never-booted OSD or its key left after Retire")
	}
}

// TestRevokedKey: once an OSD's key is deleted, Verify reports it and the
// real ceph-osd can no longer start with it.
func TestRevokedKey(t *testing.T) {
	r := newTestRole(t, time.Minute)
	m := testMachine(t)
	n := configure(t, r, m)
	t.Cleanup(func() { r.Retire(context.Background(), m) })
	o := n.jc.OSDs[0]
	if out, err := n.mkfs(o); err != nil {
		t.Fatalf("mkfs: %v\n%s", err, out)
	}
	n.start(o)
	if err, took := waitVerify(t, r, m, n.evidence(), 90*time.Second); err != nil {
		t.Fatalf("Verify (%s): %v", took, err)
	}
	name := fmt.Sprintf("osd.%d", o.ID)
	admin(t, r, map[string]any{"prefix": "auth del", "entity": name})
	err := r.Verify(context.Background(), m, n.evidence())
	if err == nil || errors.Is(err, roles.ErrNotYet) || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("Verify after auth del = %v, want a failure naming the revoked key", err)
	}
	t.Logf("Verify: %v", err)
	// A restart of the OSD (a reboot of the node) is refused.
	n.stop()
	n.start(o)
	select {
	case err := <-n.exit:
		n.osd = nil
		if err == nil {
			t.Fatal("ceph-osd with a revoked key exited 0")
		}
		if o := n.out.String(); !strings.Contains(o, "handle_auth_bad_method") && !strings.Contains(o, "failed to fetch mon config") {
			t.Fatalf("ceph-osd with a revoked key: %v, without an authentication error:\n%s", err, o)
		}
		t.Logf("ceph-osd with the revoked key: %v: %s", err, strings.TrimSpace(n.out.String()))
	case <-time.After(60 * time.Second):
		t.Fatal("ceph-osd with a revoked key still running after 60s")
	}
	if err := retire(t, r, m); err != nil {
		t.Fatalf("Retire: %v", err)
	}
	if treeHas(t, r, name) {
		t.Fatalf("%s left in the tree", name)
	}
}

// TestJoinHook runs join.sh, the hook the role image carries, as mdc-agent
// would, with what Configure served: the OSD it makes and starts is
// confirmed by Verify with the evidence the hook printed, and running the
// hook again (an agent retrying) changes nothing.
func TestJoinHook(t *testing.T) {
	for _, tool := range []string{"jq", "sha256sum", "setsid", "blkid"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("the join hook needs %s (hack/install-deps.sh installs it)", tool)
		}
	}
	r := newTestRole(t, time.Minute)
	m := testMachine(t)
	n := configure(t, r, m)
	t.Cleanup(func() { retire(t, r, m) })
	o := n.jc.OSDs[0]
	pidFile := n.path(fmt.Sprintf("/run/ceph/osd.%d.pid", o.ID))
	t.Cleanup(func() { testkit.StopPidFile(pidFile) }) // before the retire above
	cfg := n.path("/run/mdc/role-config.json")
	if err := os.MkdirAll(filepath.Dir(cfg), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg, n.rc.Config, 0o600); err != nil {
		t.Fatal(err)
	}
	run := func() map[string]string {
		t.Helper()
		var stdout, stderr bytes.Buffer
		cmd := exec.Command("sh", "join.sh", cfg)
		cmd.Env = append(cephEnv(), "MDC_CEPH_ROOT="+n.root, "MDC_CEPH_OSD_ARGS="+strings.Join(testOSDArgs, " "))
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		t0 := time.Now()
		if err := cmd.Run(); err != nil {
			log, _ := os.ReadFile(n.path(fmt.Sprintf("/var/log/ceph/osd.%d.out", o.ID)))
			t.Fatalf("join.sh: %v\n%s\n%s\nosd output:\n%s", err, &stdout, &stderr, log)
		}
		t.Logf("join.sh ran in %v", time.Since(t0).Round(time.Millisecond))
		lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
		ev := map[string]string{}
		if err := json.Unmarshal([]byte(lines[len(lines)-1]), &ev); err != nil {
			t.Fatalf("join.sh evidence %q: %v", lines[len(lines)-1], err)
		}
		return ev
	}
	ev := run()
	if want := n.evidence(); ev[EvidenceKey(o.ID)] == "" || ev[EvidenceKey(o.ID)] != want[EvidenceKey(o.ID)] {
		t.Fatalf("hook evidence %v, want the served key's fingerprint %v", ev, want)
	}
	err, took := waitVerify(t, r, m, ev, 90*time.Second)
	if err != nil {
		t.Fatalf("Verify after join.sh (%s): %v", took, err)
	}
	t.Logf("joined: Verify nil %s after join.sh", took.Round(time.Millisecond))
	pid, _ := os.ReadFile(pidFile)
	if again := run(); again[EvidenceKey(o.ID)] != ev[EvidenceKey(o.ID)] {
		t.Fatalf("second run evidence %v, first %v", again, ev)
	}
	if pid2, _ := os.ReadFile(pidFile); string(pid2) != string(pid) {
		t.Fatalf("second run restarted osd.%d (pid %s, then %s)", o.ID, pid, pid2)
	}
}
