package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/microdc/mdc/api/agentapi"
	"github.com/microdc/mdc/events/eventstest"
	"github.com/microdc/mdc/internal/testkit"
	"github.com/microdc/mdc/machine"
	"github.com/microdc/mdc/roles"
	"github.com/microdc/mdc/roles/nats/natstest"
)

// TestNATSRoleJoins is the nats role end to end in `mdc serve`: a machine is
// commissioned by the real mdc-agent, gets role nats, and its role boot runs
// the role's join hook (roles/nats/join.sh), which starts a real nats-server
// with the configuration mdc served. mdc moves the machine to joined only once
// that server is a route of mdc's cluster member, seen from both sides. The
// node's credentials may publish its own subjects only, and stop working when
// the machine is retired.
func TestNATSRoleJoins(t *testing.T) {
	if testing.Short() {
		t.Skip("builds mdc-agent and nats-server")
	}
	for _, tool := range []string{"jq", "curl", "setsid"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("the nats join hook needs %s (hack/install-deps.sh installs it)", tool)
		}
	}
	bin, err := agentBin()
	if err != nil {
		t.Fatalf("build mdc-agent: %v", err)
	}
	natsBin := natstest.ServerBinary(t)

	dataDir := t.TempDir()
	pol := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(pol, []byte("rules:\n  - {role: nats, min_disks: 2}\nroles:\n  nats:\n    heartbeat: 1s\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cluster := "127.0.0.1:" + strconv.Itoa(testkit.FreePort(t))
	cp, rp, hp := testkit.FreePort(t), testkit.FreePort(t), testkit.FreePort(t)
	url, _ := serveInProcess(t, dataDir, "--role-policy", pol, "--agent-heartbeat", "1s",
		"--nats-cluster", cluster, "--nats-node-host", "127.0.0.1", "--nats-node-ports", fmt.Sprintf("%d,%d,%d", cp, rp, hp))
	importTestImages(t, url, dataDir, "commissioning", "nats")
	mac := "52:54:00:a6:00:42"
	id := machine.MustParseID(mac)
	commission(t, url, bin, mac, "nats")

	// The role image, before its agent starts: it makes the node's user
	// key, keeps the seed, and reports the public key.
	root := agentRoot(t, bootArgs(t, url, mac, "role"))
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := kp.PublicKey()
	seed, _ := kp.Seed()
	report, _ := json.Marshal(map[string]string{"nkey": pub})
	hook, err := os.ReadFile(filepath.Join("..", "..", "roles", "nats", "join.sh"))
	if err != nil {
		t.Fatal(err)
	}
	for path, f := range map[string]struct {
		b    []byte
		mode os.FileMode
	}{
		"var/lib/mdc/nats/user.nk": {seed, 0o600},
		"run/mdc/report.json":      {report, 0o644},
		"etc/mdc/join":             {hook, 0o755},
	} {
		p := filepath.Join(root, path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, f.b, f.mode); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { testkit.StopPidFile(filepath.Join(root, "run/nats/nats-server.pid")) })

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var agentOut testkit.Buffer
	cmd := exec.CommandContext(ctx, bin, "-root", root, "-dry-run")
	cmd.Env = append(os.Environ(), "MDC_NATS_ROOT="+root, "MDC_NATS_BIN="+natsBin)
	cmd.Stdout, cmd.Stderr = &agentOut, &agentOut
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); _ = cmd.Wait() }()
	start := time.Now()
	for m := getJSON[machine.Machine](t, url+"/api/v1/machines/"+string(id), ""); m.State != machine.StJoined; m = getJSON[machine.Machine](t, url+"/api/v1/machines/"+string(id), "") {
		if m.State == machine.StFailed || time.Since(start) > 60*time.Second {
			log, _ := os.ReadFile(filepath.Join(root, "run/nats/nats-server.log"))
			t.Fatalf("machine %s (%+v), not joined\nagent:\n%s\nnats-server:\n%s", m.State, m.Failure, agentOut.String(), log)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("joined %v after the role boot's agent started", time.Since(start).Round(time.Millisecond))

	// The node's side of the route, as its operator would look.
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/routez", hp))
	if err != nil {
		t.Fatal(err)
	}
	var rz server.Routez
	err = json.NewDecoder(resp.Body).Decode(&rz)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	// Route pooling makes several connections to one peer.
	peers := map[string]bool{}
	for _, r := range rz.Routes {
		peers[r.RemoteName] = true
	}
	if rz.Name != string(id) || len(peers) != 1 || !peers["mdc"] {
		t.Fatalf("node %q routes to %v, want mdc only", rz.Name, peers)
	}
	creds := filepath.Join(root, "etc/nats/node.creds")
	if fi, err := os.Stat(creds); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("creds file: %v %v", fi, err)
	}
	for _, f := range []string{"etc/nats/nats-server.conf", "etc/nats/user.jwt"} {
		b, _ := os.ReadFile(filepath.Join(root, f))
		if strings.Contains(string(b), string(seed)) {
			t.Errorf("%s holds the node's seed: it never leaves the node", f)
		}
	}

	// The node's user: its own subjects, nothing else.
	client := fmt.Sprintf("nats://127.0.0.1:%d", cp)
	denied := make(chan string, 4)
	nc, err := nats.Connect(client, nats.UserCredentials(creds), nats.NoReconnect(),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { denied <- err.Error() }))
	if err != nil {
		t.Fatalf("the node's credentials on its own server: %v", err)
	}
	defer nc.Close()
	if err := nc.Publish("mdc.machine."+string(id)+".heartbeat", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	if err := nc.Publish("mdc.machine.525400000000.joined", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-denied:
		if !strings.Contains(e, "Permissions Violation") || !strings.Contains(e, "525400000000") {
			t.Errorf("another machine's subject: %s", e)
		}
	case <-time.After(5 * time.Second):
		t.Error("publishing to another machine's subject was not refused")
	}
	select {
	case e := <-denied:
		t.Errorf("a second refusal: %s (its own subject must be allowed)", e)
	default:
	}

	// Retired: mdc revokes the machine's users; the cluster refuses them.
	if _, err := mdc(t, url, dataDir, "machines", "retire", string(id), "--reason", "test"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := nats.Connect(client, nats.UserCredentials(creds), nats.NoReconnect())
		if err != nil {
			if !strings.Contains(strings.ToLower(err.Error()), "authorization") {
				t.Fatalf("after retire: %v, want an authorization error", err)
			}
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("a retired machine's credentials still work after 20s")
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// A machine of any role that reports a public nkey gets a user JWT for it
// and the member's client URL; with them it may publish its own subjects
// only, until it is retired. A malformed key is the node's error (400).
func TestMachineNATSCredentialsAnyRole(t *testing.T) {
	fx := eventstest.Start(t)
	f, err := (&roleFlags{natsCluster: "127.0.0.1:" + strconv.Itoa(testkit.FreePort(t)), natsClients: "127.0.0.1:0",
		natsClusterName: "mdc", natsNodeHost: "127.0.0.1", natsNodePorts: "4222,6222,8222"}).config()
	if err != nil {
		t.Fatal(err)
	}
	rs, err := newRoleSide(context.Background(), f, t.TempDir(), fx.Store, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer rs.close()
	m := machine.Machine{ID: "525400a60077", Role: "test"}

	var bad agentapi.RoleConfig
	err = rs.Configure(context.Background(), m, "test", map[string]string{"nkey": "SUAM-not-a-key"}, &bad)
	if !errors.Is(err, roles.ErrBadReport) || strings.Contains(err.Error(), "SUAM") {
		t.Fatalf("bad nkey: %v, want ErrBadReport without the value", err)
	}
	var none agentapi.RoleConfig
	if err := rs.Configure(context.Background(), m, "test", nil, &none); err != nil || len(none.Files) != 0 {
		t.Fatalf("no nkey reported: %v, files %+v; want nothing minted", err, none.Files)
	}

	kp, _ := nkeys.CreateUser()
	pub, _ := kp.PublicKey()
	seed, _ := kp.Seed()
	var c agentapi.RoleConfig
	if err := rs.Configure(context.Background(), m, "test", map[string]string{"nkey": pub}, &c); err != nil {
		t.Fatal(err)
	}
	files := map[string]agentapi.File{}
	for _, f := range c.Files {
		files[f.Path] = f
	}
	jwtFile, servers := files[machineNATSJWT], files[machineNATSServers]
	if jwtFile.Mode != "0600" || servers.Content == "" {
		t.Fatalf("files %+v, want %s (0600) and %s", c.Files, machineNATSJWT, machineNATSServers)
	}
	url := strings.TrimSpace(servers.Content)
	connect := func() (*nats.Conn, chan string, error) {
		denied := make(chan string, 4)
		nc, err := nats.Connect(url, nats.UserJWTAndSeed(strings.TrimSpace(jwtFile.Content), string(seed)), nats.NoReconnect(),
			nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { denied <- err.Error() }))
		return nc, denied, err
	}
	nc, denied, err := connect()
	if err != nil {
		t.Fatalf("the machine's credentials at %s: %v", url, err)
	}
	defer nc.Close()
	if err := nc.Publish("mdc.machine.525400a60077.heartbeat", nil); err != nil {
		t.Fatal(err)
	}
	if err := nc.Publish("mdc.boot.525400a60077.dhcp_acked", nil); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-denied:
		if !strings.Contains(e, "mdc.boot.525400a60077") {
			t.Errorf("refusal %q does not name the subject", e)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("publishing outside the machine's subjects was not refused")
	}
	if err := nc.FlushTimeout(2 * time.Second); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-denied:
		t.Errorf("its own subject was refused too: %s", e)
	default:
	}

	if err := rs.nats.RevokeMachine(context.Background(), m.ID); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, _, err := connect()
		if err != nil {
			if !strings.Contains(strings.ToLower(err.Error()), "authorization") {
				t.Fatalf("after revocation: %v, want an authorization error", err)
			}
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("revoked credentials still connect after 10s")
		}
		time.Sleep(100 * time.Millisecond)
	}
}
