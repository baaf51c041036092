package ipfs

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"mime/multipart"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/microdc/mdc/api/agentapi"
	"github.com/microdc/mdc/images"
	"github.com/microdc/mdc/internal/testkit"
	"github.com/microdc/mdc/machine"
	"github.com/microdc/mdc/roles"
)

// ipfsBinary finds kubo's ipfs: $MDC_IPFS, the repository's bin/ipfs (make
// tools builds it from hack/tools), or PATH.
func ipfsBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("MDC_IPFS"); p != "" {
		return p
	}
	if p, err := filepath.Abs(filepath.Join("..", "..", "bin", "ipfs")); err == nil {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := exec.LookPath("ipfs"); err == nil {
		return p
	}
	t.Skip("kubo's ipfs binary not found (bin/ipfs, MDC_IPFS or PATH): build it with `make tools` " +
		"(cd hack/tools && go build -o ../../bin/ipfs github.com/ipfs/kubo/cmd/ipfs)")
	return ""
}

// kuboNode is one kubo daemon standing in for a machine of the role: its
// own repository, its own loopback ports.
type kuboNode struct {
	t       *testing.T
	bin     string
	name    string
	id      machine.ID
	dir     string // stands for the node's root file system
	repo    string
	env     []string
	swarm   int
	api     int
	rpc     string // http://127.0.0.1:api
	auth    string // the node's own admin token, from the file mdc served
	cmd     *exec.Cmd
	log     *bytes.Buffer
	exited  chan struct{}
	peerID  string
	addrs   []string
	stopped bool
	// reconnect is the role config's list of peers to reconnect to once
	// the daemon is ready.
	reconnect []string
}

// newNode runs `ipfs init` as a role image would on first boot (the
// default profile: what a node gets without mdc's settings).
func newNode(t *testing.T, bin, name string, n int) *kuboNode {
	t.Helper()
	dir := filepath.Join(t.TempDir(), name)
	k := &kuboNode{
		t: t, bin: bin, name: name, dir: dir,
		id:    machine.ID(fmt.Sprintf("52540000%04x", n)),
		repo:  filepath.Join(dir, "var/lib/ipfs"),
		swarm: testkit.FreePort(t), api: testkit.FreePort(t),
	}
	k.rpc = "http://127.0.0.1:" + strconv.Itoa(k.api)
	k.env = append(os.Environ(), "IPFS_PATH="+k.repo)
	if err := os.MkdirAll(filepath.Dir(k.repo), 0o755); err != nil {
		t.Error(err)
		return k
	}
	out, err := k.ipfs("init", "--empty-repo")
	if err != nil {
		t.Errorf("%s: ipfs init: %v\n%s", name, err, out)
		return k
	}
	b, err := os.ReadFile(filepath.Join(k.repo, "config"))
	var cfg struct{ Identity struct{ PeerID string } }
	if err == nil {
		err = json.Unmarshal(b, &cfg)
	}
	if err != nil {
		t.Errorf("%s: %v", name, err)
	}
	k.peerID = cfg.Identity.PeerID
	k.addrs = []string{"/ip4/127.0.0.1/tcp/" + strconv.Itoa(k.swarm)}
	return k
}

func (k *kuboNode) ipfs(args ...string) ([]byte, error) {
	cmd := exec.Command(k.bin, args...)
	cmd.Env = k.env
	return cmd.CombinedOutput()
}

// local maps a path on the node to the test's directory for it.
func (k *kuboNode) local(p string) string { return filepath.Join(k.dir, filepath.FromSlash(p)) }

// apply does what the role image's join hook does with the configuration
// mdc serves: write the files with their modes, then set every setting in
// the repository's config file, then use the environment. The one change
// is the listen addresses: the nodes share 127.0.0.1, so each gets its own
// ports instead of 0.0.0.0:4001 and :5001 (and no gateway).
func (k *kuboNode) apply(rc *agentapi.RoleConfig) {
	t := k.t
	t.Helper()
	for _, f := range rc.Files {
		mode, err := strconv.ParseUint(f.Mode, 8, 32)
		if err != nil {
			t.Fatalf("%s: mode %q: %v", f.Path, f.Mode, err)
		}
		p := k.local(f.Path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(f.Content), os.FileMode(mode)); err != nil {
			t.Fatal(err)
		}
	}
	var nc NodeConfig
	if err := json.Unmarshal(rc.Config, &nc); err != nil {
		t.Fatalf("role config: %v", err)
	}
	if k.local(nc.Repo) != k.repo {
		t.Fatalf("repo %s, the node's is %s", nc.Repo, k.repo)
	}
	cfgPath := filepath.Join(k.repo, "config")
	b, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	for _, s := range nc.Settings {
		var v any
		if err := json.Unmarshal(s.Value, &v); err != nil {
			t.Fatalf("setting %s: %v", s.Key, err)
		}
		switch s.Key {
		case "Addresses.Swarm":
			v = []any{"/ip4/127.0.0.1/tcp/" + strconv.Itoa(k.swarm)}
		case "Addresses.API":
			v = "/ip4/127.0.0.1/tcp/" + strconv.Itoa(k.api)
		case "Addresses.Gateway":
			v = []any{}
		}
		setDotted(cfg, s.Key, v)
	}
	if b, err = json.MarshalIndent(cfg, "", "  "); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfgPath, b, 0o600); err != nil {
		t.Fatal(err)
	}
	env := append(os.Environ(), "IPFS_PATH="+k.repo)
	for key, v := range nc.Env {
		if key != "IPFS_PATH" {
			env = append(env, key+"="+v)
		}
	}
	k.env = env
	a, err := os.ReadFile(k.local(nc.APIAuthFile))
	if err != nil {
		t.Fatal(err)
	}
	k.auth = strings.TrimPrefix(strings.TrimSpace(string(a)), "bearer:")
	k.reconnect = nc.Reconnect
}

// setDotted sets m[a][b][c] = v for key "a.b.c", making the maps between.
func setDotted(m map[string]any, key string, v any) {
	parts := strings.Split(key, ".")
	for _, p := range parts[:len(parts)-1] {
		next, ok := m[p].(map[string]any)
		if !ok {
			next = make(map[string]any)
			m[p] = next
		}
		m = next
	}
	m[parts[len(parts)-1]] = v
}

// start runs the daemon and waits until its RPC answers; then it reports
// what the join hook's evidence would be.
func (k *kuboNode) start() {
	t := k.t
	t.Helper()
	k.log = new(bytes.Buffer)
	k.cmd = exec.Command(k.bin, "daemon")
	k.cmd.Env = k.env
	k.cmd.Stdout, k.cmd.Stderr = k.log, k.log
	if err := k.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	k.exited = make(chan struct{})
	go func() { k.cmd.Wait(); close(k.exited) }()
	t.Cleanup(k.stop)
	deadline := time.Now().Add(90 * time.Second)
	var id struct {
		ID        string
		Addresses []string
	}
	for {
		err := k.call("/api/v0/id", nil, &id)
		if err == nil {
			break
		}
		select {
		case <-k.exited:
			t.Fatalf("%s: kubo exited: %v\n%s", k.name, k.cmd.ProcessState, k.log)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: kubo RPC not up after 90 s: %v\n%s", k.name, err, k.log)
		}
		time.Sleep(50 * time.Millisecond)
	}
	k.peerID, k.addrs = id.ID, id.Addresses
	// What the hook does next (NodeConfig.Reconnect): connections made
	// while kubo 0.42 started are invisible to its bitswap.
	for _, a := range k.reconnect {
		pid := a[strings.LastIndex(a, "/")+1:]
		k.call("/api/v0/swarm/disconnect", map[string]string{"arg": "/p2p/" + pid}, nil)
		if err := k.call("/api/v0/swarm/connect", map[string]string{"arg": a}, nil); err != nil {
			t.Logf("%s: reconnect %s: %v", k.name, a, err)
		}
	}
}

// stop ends the daemon this test started, by its PID.
func (k *kuboNode) stop() {
	if k.cmd == nil || k.stopped {
		return
	}
	k.stopped = true
	k.cmd.Process.Signal(os.Interrupt)
	select {
	case <-k.exited:
	case <-time.After(10 * time.Second):
		k.cmd.Process.Kill()
		<-k.exited
	}
}

func (k *kuboNode) evidence() map[string]string {
	a, _ := json.Marshal(k.addrs)
	return map[string]string{EvidencePeerID: k.peerID, EvidenceAddrs: string(a), EvidenceRPC: k.rpc}
}

func (k *kuboNode) machine() machine.Machine {
	return machine.Machine{ID: k.id, Role: Name, State: machine.Running}
}

// call is an RPC call with the node's own admin token.
func (k *kuboNode) call(p string, q map[string]string, out any) error {
	return rpcCall(k.rpc, k.auth, p, q, nil, "", out)
}

func rpcCall(base, token, p string, q map[string]string, body io.Reader, ctype string, out any) error {
	u := base + p
	if len(q) > 0 {
		var parts []string
		for key, v := range q {
			parts = append(parts, key+"="+v)
		}
		u += "?" + strings.Join(parts, "&")
	}
	req, err := http.NewRequest(http.MethodPost, u, body)
	if err != nil {
		return err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return &rpcError{status: resp.StatusCode, body: strings.TrimSpace(string(b))}
	}
	if out == nil {
		return nil
	}
	if bs, ok := out.(*[]byte); ok {
		*bs = b
		return nil
	}
	return json.Unmarshal(b, out)
}

type rpcError struct {
	status int
	body   string
}

func (e *rpcError) Error() string { return fmt.Sprintf("HTTP %d: %s", e.status, e.body) }

func (k *kuboNode) swarmPeers() map[string]bool {
	k.t.Helper()
	var sp struct{ Peers []struct{ Peer string } }
	if err := k.call("/api/v0/swarm/peers", nil, &sp); err != nil {
		k.t.Fatalf("%s: swarm/peers: %v", k.name, err)
	}
	out := make(map[string]bool)
	for _, p := range sp.Peers {
		out[p.Peer] = true
	}
	return out
}

func (k *kuboNode) peering() map[string]bool {
	k.t.Helper()
	var pl struct{ Peers []struct{ ID string } }
	if err := k.call("/api/v0/swarm/peering/ls", nil, &pl); err != nil {
		k.t.Fatalf("%s: swarm/peering/ls: %v", k.name, err)
	}
	out := make(map[string]bool)
	for _, p := range pl.Peers {
		out[p.ID] = true
	}
	return out
}

// waitFor polls cond until it holds or 60 s pass (2 shared cores can be
// slow; a passing run waits far less).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// verifyUntil calls Verify until it stops saying ErrNotYet.
func verifyUntil(t *testing.T, r *Role, k *kuboNode) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		err := r.Verify(context.Background(), k.machine(), k.evidence())
		if err == nil {
			return time.Since(start)
		}
		if !errors.Is(err, roles.ErrNotYet) {
			t.Fatalf("%s: Verify: %v", k.name, err)
		}
		if time.Since(start) > 60*time.Second {
			t.Fatalf("%s: Verify still says not yet after 60 s: %v", k.name, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func configure(t *testing.T, r *Role, k *kuboNode, report map[string]string) *agentapi.RoleConfig {
	t.Helper()
	rc := &agentapi.RoleConfig{Machine: k.id, Role: Name}
	if err := r.Configure(context.Background(), k.machine(), report, rc); err != nil {
		t.Fatalf("%s: Configure: %v", k.name, err)
	}
	return rc
}

func bootstrapOf(t *testing.T, rc *agentapi.RoleConfig) []string {
	t.Helper()
	var nc NodeConfig
	if err := json.Unmarshal(rc.Config, &nc); err != nil {
		t.Fatal(err)
	}
	for _, s := range nc.Settings {
		if s.Key == "Bootstrap" {
			var b []string
			if err := json.Unmarshal(s.Value, &b); err != nil {
				t.Fatal(err)
			}
			return b
		}
	}
	t.Fatal("no Bootstrap setting")
	return nil
}

// TestPrivateSwarm starts kubo daemons configured by the role: three form
// a private swarm and share an image blob by its CID; one with another
// swarm key cannot join them.
func TestPrivateSwarm(t *testing.T) {
	bin := ipfsBinary(t)
	t0 := time.Now()
	r, err := New(Config{DataDir: filepath.Join(t.TempDir(), "roles", "ipfs"), Peers: NewMemPeers()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var ks [4]*kuboNode
	var wg sync.WaitGroup
	for i, name := range []string{"node1", "node2", "node3", "intruder"} {
		wg.Go(func() { ks[i] = newNode(t, bin, name, i+1) })
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	n1, n2, n3, intruder := ks[0], ks[1], ks[2], ks[3]
	t.Logf("4 repositories initialised in %v", time.Since(t0).Round(time.Millisecond))

	// Node 1 is the first: nothing to bootstrap from, joined on its own.
	rc := configure(t, r, n1, nil)
	if b := bootstrapOf(t, rc); len(b) != 0 {
		t.Fatalf("first node's bootstrap: %v, want none", b)
	}
	n1.apply(rc)
	t1 := time.Now()
	n1.start()
	t.Logf("node1 %s up in %v", n1.peerID, time.Since(t1).Round(time.Millisecond))
	verifyUntil(t, r, n1)

	// Node 2 bootstraps from node 1; Verify waits for its daemon and its
	// connection.
	rc = configure(t, r, n2, nil)
	if b := bootstrapOf(t, rc); len(b) != 1 || !strings.HasSuffix(b[0], "/p2p/"+n1.peerID) {
		t.Fatalf("node2's bootstrap: %v, want node1's address", b)
	}
	n2.apply(rc)
	if err := r.Verify(ctx, n2.machine(), n2.evidence()); !errors.Is(err, roles.ErrNotYet) {
		t.Fatalf("Verify before node2's daemon runs: %v, want ErrNotYet", err)
	}
	t2 := time.Now()
	n2.start()
	d := verifyUntil(t, r, n2)
	if !n2.swarmPeers()[n1.peerID] {
		t.Fatal("Verify accepted node2, but it is not connected to node1")
	}
	t.Logf("node2 %s up and verified in %v (Verify waited %v)", n2.peerID, time.Since(t2).Round(time.Millisecond), d.Round(time.Millisecond))

	// Node 3 bootstraps from both.
	rc = configure(t, r, n3, nil)
	if b := bootstrapOf(t, rc); len(b) != 2 {
		t.Fatalf("node3's bootstrap: %v, want node1's and node2's", b)
	}
	n3.apply(rc)
	n3.start()
	verifyUntil(t, r, n3)
	nodes := []*kuboNode{n1, n2, n3}
	for _, a := range nodes {
		waitFor(t, a.name+" connected to the other two", func() bool {
			ps := a.swarmPeers()
			for _, b := range nodes {
				if b != a && !ps[b.peerID] {
					return false
				}
			}
			return true
		})
	}
	// Verify put node 3 into the peering of the nodes that joined before.
	for _, a := range []*kuboNode{n1, n2} {
		if !a.peering()[n3.peerID] {
			t.Errorf("%s's peering lacks node3 after its join", a.name)
		}
	}
	t.Logf("three nodes in a private swarm after %v", time.Since(t0).Round(time.Millisecond))

	t.Run("blob by CID", func(t *testing.T) {
		blob := make([]byte, 3*262144+1234) // four leaves under one root
		rng := rand.New(rand.NewPCG(8, 8))
		for i := range blob {
			blob[i] = byte(rng.Uint32())
		}
		want, err := images.ComputeCID(ctx, bytes.NewReader(blob))
		if err != nil {
			t.Fatal(err)
		}
		var body bytes.Buffer
		mw := multipart.NewWriter(&body)
		fw, err := mw.CreateFormFile("file", "initrd")
		if err != nil {
			t.Fatal(err)
		}
		fw.Write(blob)
		mw.Close()
		var added struct{ Hash string }
		q := map[string]string{"cid-version": "1", "raw-leaves": "true", "chunker": want.Chunker, "pin": "true"}
		if err := rpcCall(n1.rpc, n1.auth, "/api/v0/add", q, &body, mw.FormDataContentType(), &added); err != nil {
			t.Fatal(err)
		}
		if added.Hash != want.CID {
			t.Fatalf("node1 added the blob as %s, the images package computes %s", added.Hash, want.CID)
		}
		t3 := time.Now()
		var got []byte
		if err := rpcCall(n3.rpc, n3.auth, "/api/v0/cat", map[string]string{"arg": want.CID}, nil, "", &got); err != nil {
			var st1, st3 json.RawMessage
			n1.call("/api/v0/bitswap/stat", nil, &st1)
			n3.call("/api/v0/bitswap/stat", nil, &st3)
			t.Logf("node1 bitswap %s\nnode3 bitswap %s\nnode3 log:\n%s", st1, st3, n3.log)
			t.Fatalf("node3 cat %s: %v", want.CID, err)
		}
		if !bytes.Equal(got, blob) {
			t.Fatalf("node3 got %d bytes for %s, want the %d bytes node1 added", len(got), want.CID, len(blob))
		}
		t.Logf("node3 fetched %s (%d bytes) from the swarm in %v", want.CID, len(got), time.Since(t3).Round(time.Millisecond))
	})

	t.Run("tokens", func(t *testing.T) {
		mdcTok := rpcToken(r.rpcKey, "mdc", n1.id)
		var e *rpcError
		if err := rpcCall(n1.rpc, mdcTok, "/api/v0/config/show", nil, nil, "", nil); !errors.As(err, &e) || e.status != http.StatusForbidden {
			t.Errorf("mdc's token on config/show: %v, want 403", err)
		}
		if err := rpcCall(n1.rpc, "", "/api/v0/id", nil, nil, "", nil); !errors.As(err, &e) || e.status != http.StatusForbidden {
			t.Errorf("no token on id: %v, want 403", err)
		}
		if err := rpcCall(n1.rpc, rpcToken(r.rpcKey, "mdc", n2.id), "/api/v0/id", nil, nil, "", nil); !errors.As(err, &e) || e.status != http.StatusForbidden {
			t.Errorf("node2's mdc token on node1: %v, want 403", err)
		}
	})

	t.Run("another key cannot join", func(t *testing.T) {
		rc := configure(t, r, intruder, nil)
		intruder.apply(rc)
		intruder.reconnect = nil // it is refused anyway; spare the dial timeouts
		other, err := mintSwarmKey()
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(intruder.repo, "swarm.key"), other, 0o600); err != nil {
			t.Fatal(err)
		}
		intruder.start()
		err = intruder.call("/api/v0/swarm/connect", map[string]string{"arg": n1.addrs[0], "timeout": "3s"}, nil)
		if err == nil {
			t.Fatal("a node with another swarm key connected to node1")
		}
		t.Logf("swarm connect with another key: %v", err)
		err = r.Verify(ctx, intruder.machine(), intruder.evidence())
		if !errors.Is(err, roles.ErrNotYet) {
			t.Fatalf("Verify of the node with another key: %v, want ErrNotYet", err)
		}
		for _, a := range nodes {
			if a.swarmPeers()[intruder.peerID] {
				t.Errorf("%s is connected to the node with another key", a.name)
			}
		}
		if ps := intruder.swarmPeers(); len(ps) != 0 {
			t.Errorf("the node with another key has peers: %v", ps)
		}
	})

	t.Run("retire", func(t *testing.T) {
		if err := r.Retire(ctx, n3.machine()); err != nil {
			t.Fatal(err)
		}
		if err := r.Retire(ctx, n3.machine()); err != nil {
			t.Fatalf("second Retire: %v", err)
		}
		ps, _ := r.Peers().List(ctx)
		for _, p := range ps {
			if p.Machine == n3.id {
				t.Fatal("node3 still in the peers after Retire")
			}
		}
		rc := configure(t, r, intruder, nil)
		for _, b := range bootstrapOf(t, rc) {
			if strings.HasSuffix(b, n3.peerID) {
				t.Errorf("a new node's bootstrap still names retired node3: %s", b)
			}
		}
		for _, a := range []*kuboNode{n1, n2} {
			if a.peering()[n3.peerID] {
				t.Errorf("%s's peering still has retired node3", a.name)
			}
		}
	})
	for _, k := range []*kuboNode{n1, n2, n3, intruder} {
		k.stop()
	}
	t.Logf("total %v", time.Since(t0).Round(time.Millisecond))
}

// TestJoinHook runs join.sh, the hook a role image carries, as mdc-agent
// would: the files mdc serves are written, the hook initialises kubo,
// applies the settings, starts the daemon and prints the evidence; Verify
// then confirms the join, and the node reads a blob added on the first.
// The hook runs twice, as after a retry or a reboot.
func TestJoinHook(t *testing.T) {
	bin := ipfsBinary(t)
	for _, tool := range []string{"jq", "curl", "ip", "setsid"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("the join hook needs %s (hack/deps/roles-ipfs.txt): %v", tool, err)
		}
	}
	ctx := context.Background()
	dataDir := filepath.Join(t.TempDir(), "roles", "ipfs")
	peers := NewMemPeers()
	r, err := New(Config{DataDir: dataDir, Peers: peers})
	if err != nil {
		t.Fatal(err)
	}
	n1 := newNode(t, bin, "node1", 1)
	if t.Failed() {
		t.FailNow()
	}
	n1.apply(configure(t, r, n1, nil))
	n1.start()
	verifyUntil(t, r, n1)

	// Node 2's files go where its role configuration says: a Role with the
	// same keys and peers, and the node's directory as its repository.
	dir := filepath.Join(t.TempDir(), "node2")
	repo := filepath.Join(dir, "var/lib/ipfs")
	r2, err := New(Config{DataDir: dataDir, Peers: peers, Repo: repo, EnvFile: filepath.Join(dir, "etc/mdc/ipfs.env")})
	if err != nil {
		t.Fatal(err)
	}
	m2 := machine.Machine{ID: "525400000002", Role: Name, State: machine.Running}
	swarm, api := testkit.FreePort(t), testkit.FreePort(t)
	var pid int
	t.Cleanup(func() {
		if pid == 0 {
			return
		}
		p, err := os.FindProcess(pid)
		if err != nil {
			return
		}
		p.Signal(os.Interrupt)
		for i := 0; i < 100 && p.Signal(syscall.Signal(0)) == nil; i++ {
			time.Sleep(100 * time.Millisecond)
		}
		p.Kill()
	})
	hook := func() map[string]string {
		t.Helper()
		rc := &agentapi.RoleConfig{Machine: m2.ID, Role: Name}
		if err := r2.Configure(ctx, m2, nil, rc); err != nil {
			t.Fatal(err)
		}
		for _, f := range rc.Files { // what the agent does before the hook
			mode, _ := strconv.ParseUint(f.Mode, 8, 32)
			os.MkdirAll(filepath.Dir(f.Path), 0o755)
			if err := os.WriteFile(f.Path, []byte(f.Content), os.FileMode(mode)); err != nil {
				t.Fatal(err)
			}
		}
		cfg := filepath.Join(dir, "run/mdc/role-config.json")
		os.MkdirAll(filepath.Dir(cfg), 0o700)
		if err := os.WriteFile(cfg, rc.Config, 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("sh", "join.sh", cfg)
		cmd.Env = append(os.Environ(), "MDC_ROLE_CONFIG="+cfg, "MDC_ROLE="+Name, "MDC_MACHINE="+string(m2.ID),
			"MDC_IPFS_BIN="+bin,
			"MDC_IPFS_SWARM_ADDRS=[\"/ip4/127.0.0.1/tcp/"+strconv.Itoa(swarm)+"\"]",
			"MDC_IPFS_API_ADDR=/ip4/127.0.0.1/tcp/"+strconv.Itoa(api),
			"MDC_IPFS_GATEWAY_ADDR=[]",
			"MDC_IPFS_RPC_HOST=127.0.0.1")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		t0 := time.Now()
		out, err := cmd.Output()
		if b, err := os.ReadFile(filepath.Join(repo, "daemon.pid")); err == nil {
			pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		}
		if err != nil {
			log, _ := os.ReadFile(filepath.Join(repo, "daemon.log"))
			t.Fatalf("join.sh: %v\n%s\n%s\ndaemon log:\n%s", err, out, &stderr, log)
		}
		t.Logf("join.sh ran in %v", time.Since(t0).Round(time.Millisecond))
		// The agent's rule: the last line that is a JSON object; strings
		// as they are, other values JSON-encoded.
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		var obj map[string]json.RawMessage
		if err := json.Unmarshal([]byte(lines[len(lines)-1]), &obj); err != nil {
			t.Fatalf("join.sh evidence %q: %v", lines[len(lines)-1], err)
		}
		ev := make(map[string]string)
		for k, v := range obj {
			var s string
			if json.Unmarshal(v, &s) == nil {
				ev[k] = s
			} else {
				ev[k] = string(v)
			}
		}
		return ev
	}
	ev := hook()
	start := time.Now()
	for {
		err := r2.Verify(ctx, m2, ev)
		if err == nil {
			break
		}
		if !errors.Is(err, roles.ErrNotYet) || time.Since(start) > 60*time.Second {
			t.Fatalf("Verify of the hook's node: %v (evidence %v)", err, ev)
		}
		time.Sleep(100 * time.Millisecond)
	}
	n2 := &kuboNode{t: t, name: "node2", rpc: ev[EvidenceRPC]}
	a, err := os.ReadFile(filepath.Join(repo, "api-auth"))
	if err != nil {
		t.Fatal(err)
	}
	n2.auth = strings.TrimPrefix(strings.TrimSpace(string(a)), "bearer:")
	if !n2.swarmPeers()[n1.peerID] {
		t.Fatal("Verify accepted node2, but it is not connected to node1")
	}
	if st, err := os.Stat(filepath.Join(repo, "swarm.key")); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("swarm.key on the node: %v %v, want mode 0600", st, err)
	}

	// A blob added on node 1 comes to node 2 by its CID.
	blob := bytes.Repeat([]byte("mdc ipfs role "), 40000)
	want, err := images.ComputeCID(ctx, bytes.NewReader(blob))
	if err != nil {
		t.Fatal(err)
	}
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	fw, _ := mw.CreateFormFile("file", "blob")
	fw.Write(blob)
	mw.Close()
	var added struct{ Hash string }
	q := map[string]string{"cid-version": "1", "raw-leaves": "true", "chunker": want.Chunker}
	if err := rpcCall(n1.rpc, n1.auth, "/api/v0/add", q, &body, mw.FormDataContentType(), &added); err != nil || added.Hash != want.CID {
		t.Fatalf("add on node1: %s %v, want %s", added.Hash, err, want.CID)
	}
	var got []byte
	if err := rpcCall(n2.rpc, n2.auth, "/api/v0/cat", map[string]string{"arg": want.CID}, nil, "", &got); err != nil || !bytes.Equal(got, blob) {
		t.Fatalf("cat on node2: %d bytes, %v", len(got), err)
	}

	// Again, as after a reboot: same repository, same peer, joined again.
	ev2 := hook()
	if ev2[EvidencePeerID] != ev[EvidencePeerID] {
		t.Errorf("the second run reports peer %s, the first %s", ev2[EvidencePeerID], ev[EvidencePeerID])
	}
	waitFor(t, "node2 verified again", func() bool { return r2.Verify(ctx, m2, ev2) == nil })
}
