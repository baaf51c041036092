package nats

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/microdc/mdc/api/agentapi"
	"github.com/microdc/mdc/internal/testkit"
	"github.com/microdc/mdc/machine"
	"github.com/microdc/mdc/roles"
	"github.com/microdc/mdc/roles/nats/natstest"
)

func natsServerBinary(t *testing.T) string { return natstest.ServerBinary(t) }

// keySeeds are the seeds in k's directory.
func keySeeds(t *testing.T, k *Keys) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(k.dir, "*.nk"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no seeds in %s: %v", k.dir, err)
	}
	var seeds []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		seeds = append(seeds, strings.TrimSpace(string(b)))
	}
	return seeds
}

// mdcServer starts an embedded server configured as mdc's would be: a
// cluster member listening for routes, or (clustered false) standalone.
func mdcServer(t *testing.T, k *Keys, clustered bool) (*server.Server, int) {
	t.Helper()
	dir := t.TempDir()
	clusterPort := 0
	if clustered {
		clusterPort = testkit.FreePort(t)
	}
	o := &server.Options{
		ServerName: "mdc",
		Host:       "127.0.0.1",
		Port:       -1,
		JetStream:  true,
		StoreDir:   filepath.Join(dir, "js"),
		NoSigs:     true,
	}
	if err := k.EmbeddedOptions(o, Embedded{ResolverDir: filepath.Join(dir, "jwt"), ClusterHost: "127.0.0.1", ClusterPort: clusterPort}); err != nil {
		t.Fatal(err)
	}
	srv, err := server.NewServer(o)
	if err != nil {
		t.Fatal(err)
	}
	srv.SetLoggerV2(testLogger{t}, false, false, false)
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("embedded server not ready")
	}
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	return srv, clusterPort
}

// testLogger shows the embedded server's warnings and errors in the test log.
type testLogger struct{ t *testing.T }

func (l testLogger) Noticef(f string, v ...any) { l.t.Logf("mdc nats: "+f, v...) }
func (l testLogger) Warnf(f string, v ...any)   { l.t.Logf("mdc nats: WARN "+f, v...) }
func (l testLogger) Fatalf(f string, v ...any)  { l.t.Logf("mdc nats: FATAL "+f, v...) }
func (l testLogger) Errorf(f string, v ...any)  { l.t.Logf("mdc nats: ERROR "+f, v...) }
func (l testLogger) Debugf(f string, v ...any)  {}
func (l testLogger) Tracef(f string, v ...any)  {}

type natsProc struct {
	cmd *exec.Cmd
	log string
}

// startProc runs nats-server -c conf; stopped by PID at cleanup.
func startProc(t *testing.T, bin, conf string) *natsProc {
	t.Helper()
	logf := filepath.Join(t.TempDir(), "nats-server.log")
	f, err := os.Create(logf)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-c", conf)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("start nats-server: %v", err)
	}
	p := &natsProc{cmd: cmd, log: logf}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		f.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logf)
			t.Logf("nats-server log:\n%s", b)
		}
	})
	return p
}

// writeFiles does what the agent does with a RoleConfig's files.
func writeFiles(t *testing.T, fs []agentapi.File) {
	t.Helper()
	for _, f := range fs {
		mode, err := strconv.ParseUint(f.Mode, 8, 32)
		if err != nil {
			t.Fatalf("%s: mode %q: %v", f.Path, f.Mode, err)
		}
		if err := os.MkdirAll(filepath.Dir(f.Path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f.Path, []byte(f.Content), os.FileMode(mode)); err != nil {
			t.Fatal(err)
		}
	}
}

func waitFor(t *testing.T, what string, d time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still %v after %v", what, err, d)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func newUser(t *testing.T) (pub, seed string) {
	t.Helper()
	u, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	p, _ := u.PublicKey()
	s, _ := u.Seed()
	return p, string(s)
}

// permErrors collects a connection's asynchronous errors.
type permErrors struct {
	mu   sync.Mutex
	errs []string
}

func (p *permErrors) handler(_ *nats.Conn, _ *nats.Subscription, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.errs = append(p.errs, err.Error())
}

func (p *permErrors) waitFor(t *testing.T, substr string) {
	t.Helper()
	waitFor(t, "permission error about "+substr, 5*time.Second, func() error {
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, e := range p.errs {
			if strings.Contains(e, "Permissions Violation") && strings.Contains(e, substr) {
				return nil
			}
		}
		return fmt.Errorf("errors so far: %q", p.errs)
	})
}

// TestNodeJoins runs the whole path: a real nats-server process started
// with the configuration Configure serves joins the embedded server's
// cluster; the node's credentials are scoped; retiring revokes them.
func TestNodeJoins(t *testing.T) {
	bin := natsServerBinary(t)
	keys, err := OpenKeys(filepath.Join(t.TempDir(), "keys"))
	if err != nil {
		t.Fatal(err)
	}
	srv, clusterPort := mdcServer(t, keys, true)
	var roleLog testkit.Buffer

	nodeDir := t.TempDir()
	node := Node{
		Host:        "127.0.0.1",
		ClientPort:  testkit.FreePort(t),
		ClusterPort: testkit.FreePort(t),
		HTTPPort:    testkit.FreePort(t),
		ConfigFile:  filepath.Join(nodeDir, "etc/nats/nats-server.conf"),
		UserJWTFile: filepath.Join(nodeDir, "etc/nats/user.jwt"),
		StoreDir:    filepath.Join(nodeDir, "var/lib/nats/jetstream"),
		ResolverDir: filepath.Join(nodeDir, "var/lib/nats/jwt"),
	}
	role, err := New(Config{
		Keys:        keys,
		ClusterName: "mdc",
		Routes: func(context.Context) ([]string, error) {
			return []string{"127.0.0.1:" + strconv.Itoa(clusterPort)}, nil
		},
		InProcess:  srv,
		Node:       node,
		VerifyWait: time.Second,
		Machines: func() []machine.Machine {
			return []machine.Machine{{ID: "525400123456", Name: "nats-1", Role: RoleName}}
		},
		Logger: slog.New(slog.NewTextHandler(&roleLog, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	m := machine.Machine{ID: "525400123456", Name: "nats-1", Role: RoleName}
	other := machine.ID("525400abcdef")

	// The node's user key: its seed stays here, on the "node".
	nodePub, nodeSeed := newUser(t)

	t.Run("bad nkeys are refused", func(t *testing.T) {
		acct, _ := nkeys.CreateAccount()
		acctPub, _ := acct.PublicKey()
		for name, nk := range map[string]string{
			"missing":     "",
			"account key": acctPub,
			"seed":        nodeSeed,
			"garbage":     "UNOTAKEY",
		} {
			var c agentapi.RoleConfig
			err := role.Configure(ctx, m, map[string]string{ReportNkey: nk}, &c)
			if !errors.Is(err, ErrBadNkey) {
				t.Errorf("%s: Configure = %v, want ErrBadNkey", name, err)
				continue
			}
			if nk != "" && strings.Contains(err.Error(), nk) {
				t.Errorf("%s: the error repeats what the node sent: %v", name, err)
			}
			t.Logf("%s: %v", name, err)
			if len(c.Files) != 0 {
				t.Errorf("%s: files served despite the error", name)
			}
		}
	})

	var c agentapi.RoleConfig
	if err := role.Configure(ctx, m, map[string]string{ReportNkey: nodePub}, &c); err != nil {
		t.Fatal(err)
	}
	if len(c.Files) != 2 || c.Files[0].Path != node.ConfigFile || c.Files[0].Mode != "0600" {
		t.Fatalf("files served: %+v", c.Files)
	}
	if strings.Contains(c.Files[0].Content, nodeSeed) || strings.Contains(string(c.Config), nodeSeed) {
		t.Fatal("the served configuration holds the node's seed")
	}
	var rc roleConfig
	if err := json.Unmarshal(c.Config, &rc); err != nil {
		t.Fatal(err)
	}
	if rc.ServerName != "nats-1" || rc.Subjects.Publish != "mdc.machine.525400123456.>" {
		t.Fatalf("role config: %+v", rc)
	}
	if diff := cmp.Diff([]string{EvidenceServerName}, c.Evidence); diff != "" {
		t.Errorf("evidence (-want +got):\n%s", diff)
	}

	if err := role.Verify(ctx, m, nil); !errors.Is(err, roles.ErrNotYet) {
		t.Fatalf("Verify before the node runs = %v, want ErrNotYet", err)
	}

	writeFiles(t, c.Files)
	fi, err := os.Stat(node.ConfigFile)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("config file mode: %v %v", fi.Mode(), err)
	}
	proc := startProc(t, bin, node.ConfigFile)

	start := time.Now()
	waitFor(t, "Verify", 30*time.Second, func() error {
		return role.Verify(ctx, m, map[string]string{EvidenceServerName: "nats-1"})
	})
	t.Logf("Verify held %v after the process started", time.Since(start).Round(time.Millisecond))

	// Both sides, as an operator would look: Routez on the embedded server,
	// /routez on the process's monitoring port.
	rz, err := srv.Routez(nil)
	if err != nil {
		t.Fatal(err)
	}
	if !hasRoute(rz, "nats-1") {
		t.Errorf("embedded server's routes do not include nats-1: %+v", rz.Routes)
	}
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/routez", node.HTTPPort))
	if err != nil {
		t.Fatal(err)
	}
	var prz server.Routez
	err = json.NewDecoder(resp.Body).Decode(&prz)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if prz.Name != "nats-1" || !hasRoute(&prz, "mdc") {
		t.Errorf("process /routez: name %q routes %+v", prz.Name, prz.Routes)
	}

	// mdc roles show: the node is a member, named by its machine, and
	// nothing secret is shown.
	st, err := role.Describe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Members) != 1 || st.Members[0].Machine != m.ID || st.Members[0].Detail != "server nats-1, routes to mdc" {
		t.Errorf("Describe members %+v, want %s (nats-1)", st.Members, m.ID)
	}
	shown, _ := json.Marshal(st)
	for _, secret := range append(keySeeds(t, keys), keys.routePassword, nodeSeed) {
		if strings.Contains(string(shown), secret) {
			t.Errorf("Describe shows a secret: %s", shown)
		}
	}
	t.Logf("Describe: %s", st.Summary)

	if err := role.Verify(ctx, m, map[string]string{EvidenceServerName: "someone-else"}); err == nil || errors.Is(err, roles.ErrNotYet) {
		t.Errorf("Verify with another server_name = %v, want a reason", err)
	}

	// mdc's own client, on the embedded server.
	sj, ss, err := keys.ServiceCredentials()
	if err != nil {
		t.Fatal(err)
	}
	mdc, err := nats.Connect(nats.DefaultURL, nats.InProcessServer(srv), nats.UserJWTAndSeed(sj, ss))
	if err != nil {
		t.Fatal(err)
	}
	defer mdc.Close()
	events, err := mdc.SubscribeSync("mdc.machine.>")
	if err != nil {
		t.Fatal(err)
	}
	if err := mdc.Flush(); err != nil {
		t.Fatal(err)
	}

	// The node, with its served user JWT and its own seed, on its own server.
	userJWT := strings.TrimSpace(c.Files[1].Content)
	nodeURL := fmt.Sprintf("nats://127.0.0.1:%d", node.ClientPort)
	perr := &permErrors{}
	nc, err := nats.Connect(nodeURL, nats.UserJWTAndSeed(userJWT, nodeSeed),
		nats.CustomInboxPrefix(rc.Subjects.Inbox), nats.ErrorHandler(perr.handler), nats.NoReconnect())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()

	t.Run("publishes its own events across the route", func(t *testing.T) {
		waitFor(t, "event through the route", 10*time.Second, func() error {
			if err := nc.Publish("mdc.machine.525400123456.x", []byte("hello")); err != nil {
				return err
			}
			msg, err := events.NextMsg(500 * time.Millisecond)
			if err != nil {
				return err
			}
			if msg.Subject != "mdc.machine.525400123456.x" {
				return fmt.Errorf("got %s", msg.Subject)
			}
			return nil
		})
	})
	t.Run("receives and answers its commands", func(t *testing.T) {
		cmds, err := nc.Subscribe("mdc.cmd.525400123456.>", func(m *nats.Msg) { _ = m.Respond([]byte("done")) })
		if err != nil {
			t.Fatal(err)
		}
		defer cmds.Unsubscribe()
		nc.Flush()
		waitFor(t, "command answered", 10*time.Second, func() error {
			ans, err := mdc.Request("mdc.cmd.525400123456.reboot", nil, 500*time.Millisecond)
			if err != nil {
				return err
			}
			if string(ans.Data) != "done" {
				return fmt.Errorf("answer %q", ans.Data)
			}
			return nil
		})
	})
	t.Run("is refused other subjects", func(t *testing.T) {
		for _, subj := range []string{"mdc.machine.525400abcdef.x", "mdc.boot.525400123456.x", "foo"} {
			if err := nc.Publish(subj, []byte("forged")); err != nil {
				t.Fatal(err)
			}
			perr.waitFor(t, `Publish to "`+subj+`"`)
		}
		for _, subj := range []string{"mdc.machine.>", "mdc.cmd.525400abcdef.>", "_INBOX.>"} {
			if _, err := nc.SubscribeSync(subj); err != nil {
				t.Fatal(err)
			}
			perr.waitFor(t, `Subscription to "`+subj+`"`)
		}
		// Nothing forged reached mdc.
		if msg, err := events.NextMsg(300 * time.Millisecond); err == nil {
			t.Errorf("mdc received %s from the node", msg.Subject)
		}
	})

	t.Run("machine of another role", func(t *testing.T) {
		pub, seed := newUser(t)
		j, err := role.MachineCredentials(other, pub)
		if err != nil {
			t.Fatal(err)
		}
		perr := &permErrors{}
		oc, err := nats.Connect(srv.ClientURL(), nats.UserJWTAndSeed(j, seed), nats.ErrorHandler(perr.handler))
		if err != nil {
			t.Fatal(err)
		}
		defer oc.Close()
		if err := oc.Publish("mdc.machine.525400abcdef.booted", nil); err != nil {
			t.Fatal(err)
		}
		msg, err := events.NextMsg(2 * time.Second)
		if err != nil || msg.Subject != "mdc.machine.525400abcdef.booted" {
			t.Fatalf("own event: %v %v", msg, err)
		}
		oc.Publish("mdc.machine.525400123456.booted", nil)
		perr.waitFor(t, `Publish to "mdc.machine.525400123456.booted"`)
	})

	t.Run("retire revokes", func(t *testing.T) {
		waitFor(t, "nats-1 in the JetStream meta group", 10*time.Second, func() error {
			if peers := srv.JetStreamClusterPeers(); !slices.Contains(peers, "nats-1") {
				return fmt.Errorf("peers %v", peers)
			}
			return nil
		})
		closed := make(chan struct{})
		nc.SetClosedHandler(func(*nats.Conn) { close(closed) })
		if err := role.Retire(ctx, m); err != nil {
			t.Fatal(err)
		}
		select {
		case <-closed:
		case <-time.After(10 * time.Second):
			t.Error("the node's live connection was not closed by the revocation")
		}
		for name, url := range map[string]string{"node's server": nodeURL, "mdc's server": srv.ClientURL()} {
			waitFor(t, "refusal on "+name, 10*time.Second, func() error { return refused(url, userJWT, nodeSeed) })
		}
		// Out of the JetStream meta group, so it no longer counts for the quorum.
		waitFor(t, "meta group without nats-1", 10*time.Second, func() error {
			if peers := srv.JetStreamClusterPeers(); slices.Contains(peers, "nats-1") {
				return fmt.Errorf("peers %v", peers)
			}
			return nil
		})
		if err := role.Retire(ctx, m); err != nil {
			t.Errorf("second Retire: %v", err)
		}
		// The other machine is unaffected.
		pub, seed := newUser(t)
		j, err := role.MachineCredentials(other, pub)
		if err != nil {
			t.Fatal(err)
		}
		oc, err := nats.Connect(srv.ClientURL(), nats.UserJWTAndSeed(j, seed))
		if err != nil {
			t.Fatalf("another machine after the retire: %v", err)
		}
		oc.Close()
	})

	t.Run("no secret in the logs", func(t *testing.T) {
		procLog, _ := os.ReadFile(proc.log)
		if !bytes.Contains(procLog, []byte("Server is ready")) {
			t.Fatalf("the node's log is not what the check expects:\n%s", procLog)
		}
		secrets := map[string]string{"node seed": nodeSeed, "route password": keys.routePassword}
		for _, f := range []string{fileOperator, fileSysAccount, fileAccount, fileSigning} {
			b, _ := os.ReadFile(filepath.Join(keys.dir, f))
			secrets[f] = string(b)
		}
		for what, sec := range secrets {
			if strings.Contains(roleLog.String(), sec) {
				t.Errorf("the role's log holds the %s", what)
			}
			if strings.Contains(string(procLog), sec) {
				t.Errorf("the node's nats-server log holds the %s", what)
			}
		}
		if !strings.Contains(roleLog.String(), "nats credentials revoked") {
			t.Errorf("role log: %s", roleLog.String())
		}
	})
}

// refused is nil when url refuses the user for authorization.
func refused(url, userJWT, seed string) error {
	c, err := nats.Connect(url, nats.UserJWTAndSeed(userJWT, seed), nats.NoReconnect())
	if err == nil {
		c.Close()
		return errors.New("connected")
	}
	if !errors.Is(err, nats.ErrAuthorization) && !strings.Contains(err.Error(), "Authorization Violation") {
		return fmt.Errorf("refused, but not for authorization: %w", err)
	}
	return nil
}

func hasRoute(rz *server.Routez, name string) bool {
	for _, r := range rz.Routes {
		if r != nil && r.RemoteName == name {
			return true
		}
	}
	return false
}

func TestMachineCredentialsScope(t *testing.T) {
	k, err := OpenKeys(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := newUser(t)
	j, err := k.MachineCredentials("525400123456", pub)
	if err != nil {
		t.Fatal(err)
	}
	uc, err := jwt.DecodeUserClaims(j)
	if err != nil {
		t.Fatal(err)
	}
	want := jwt.Permissions{
		Pub:  jwt.Permission{Allow: jwt.StringList{"mdc.machine.525400123456.>"}},
		Sub:  jwt.Permission{Allow: jwt.StringList{"mdc.cmd.525400123456.>", "_INBOX.525400123456.>"}},
		Resp: &jwt.ResponsePermission{MaxMsgs: 1, Expires: time.Minute},
	}
	if diff := cmp.Diff(want, uc.Permissions); diff != "" {
		t.Errorf("permissions (-want +got):\n%s", diff)
	}
	if uc.Subject != pub || uc.IssuerAccount != k.AccountPublicKey() {
		t.Errorf("subject %s issuer account %s", uc.Subject, uc.IssuerAccount)
	}
	if uc.Issuer == k.AccountPublicKey() {
		t.Error("signed by the account identity key, want the signing key")
	}
	for _, id := range []machine.ID{"", "52:54:00:12:34:56", "5254001234*6", "a.b"} {
		if _, err := k.MachineCredentials(id, pub); err == nil {
			t.Errorf("machine id %q accepted", id)
		}
	}
}

func TestKeysPersist(t *testing.T) {
	dir := t.TempDir()
	k1, err := OpenKeys(dir)
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := newUser(t)
	if _, err := k1.MachineCredentials("525400123456", pub); err != nil {
		t.Fatal(err)
	}
	k2, err := OpenKeys(dir)
	if err != nil {
		t.Fatal(err)
	}
	if k1.OperatorPublicKey() != k2.OperatorPublicKey() || k1.AccountPublicKey() != k2.AccountPublicKey() ||
		k1.routePassword != k2.routePassword {
		t.Error("keys changed across OpenKeys")
	}
	if got := k2.state.Users["525400123456"]; len(got) != 1 || got[0] != pub {
		t.Errorf("issued users not kept: %v", got)
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		fi, _ := e.Info()
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %#o, want 0600", e.Name(), fi.Mode().Perm())
		}
	}
	seed, _ := os.ReadFile(filepath.Join(dir, fileOperator))
	if !bytes.HasPrefix(seed, []byte("SO")) {
		t.Errorf("operator.nk does not hold an operator seed")
	}
	os.Chmod(filepath.Join(dir, fileSigning), 0o644)
	if _, err := OpenKeys(dir); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("a world-readable seed: OpenKeys = %v", err)
	}
}

func TestConfigRefusesUnsafeValues(t *testing.T) {
	k, err := OpenKeys(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	routes := func(context.Context) ([]string, error) { return []string{"127.0.0.1:6222"}, nil }
	for name, cfg := range map[string]Config{
		"cluster name": {Keys: k, Routes: routes, URLs: []string{"nats://x"}, ClusterName: `a" b`},
		"path":         {Keys: k, Routes: routes, URLs: []string{"nats://x"}, Node: Node{StoreDir: `/a"b`}},
		"host":         {Keys: k, Routes: routes, URLs: []string{"nats://x"}, Node: Node{Host: "example.com"}},
		"no routes":    {Keys: k, URLs: []string{"nats://x"}},
		"no cluster":   {Keys: k, Routes: routes},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	r, err := New(Config{Keys: k, URLs: []string{"nats://127.0.0.1:1"}, Routes: func(context.Context) ([]string, error) {
		return []string{`10.0.0.1:6222"`}, nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := newUser(t)
	var c agentapi.RoleConfig
	if err := r.Configure(context.Background(), machine.Machine{ID: "525400123456"}, map[string]string{ReportNkey: pub}, &c); err == nil {
		t.Error("a route with a quote accepted")
	}
	// mdc not reaching the cluster is not the node's failure.
	if err := r.Verify(context.Background(), machine.Machine{ID: "525400123456"}, nil); !errors.Is(err, roles.ErrNotYet) {
		t.Errorf("Verify with the cluster unreachable = %v, want ErrNotYet", err)
	}
	if got := ServerName(machine.Machine{ID: "525400123456", Name: "rack 1/node"}); got != "525400123456" {
		t.Errorf("ServerName of an unsafe name = %q, want the id", got)
	}
	if got := ServerName(machine.Machine{ID: "525400123456", Name: "mdc"}); got != "525400123456" {
		t.Errorf("ServerName of a machine named mdc = %q, want the id", got)
	}
}

func testNode(t *testing.T) Node {
	dir := t.TempDir()
	return Node{
		Host:        "127.0.0.1",
		ClientPort:  testkit.FreePort(t),
		ClusterPort: testkit.FreePort(t),
		HTTPPort:    testkit.FreePort(t),
		ConfigFile:  filepath.Join(dir, "etc/nats/nats-server.conf"),
		UserJWTFile: filepath.Join(dir, "etc/nats/user.jwt"),
		StoreDir:    filepath.Join(dir, "var/lib/nats/jetstream"),
		ResolverDir: filepath.Join(dir, "var/lib/nats/jwt"),
	}
}

func monitorRoutez(t *testing.T, n Node) *server.Routez {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/routez", n.HTTPPort))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var rz server.Routez
	if err := json.NewDecoder(resp.Body).Decode(&rz); err != nil {
		t.Fatal(err)
	}
	return &rz
}

// TestNodesClusterBesideStandaloneMDC is the other topology: mdc's embedded
// server stays out of the cluster (its event log needs no peers), the nodes
// form the cluster, and mdc reaches it through client URLs.
func TestNodesClusterBesideStandaloneMDC(t *testing.T) {
	bin := natsServerBinary(t)
	keys, err := OpenKeys(filepath.Join(t.TempDir(), "keys"))
	if err != nil {
		t.Fatal(err)
	}
	srv, _ := mdcServer(t, keys, false)
	sj, ss, err := keys.ServiceCredentials()
	if err != nil {
		t.Fatal(err)
	}
	mdc, err := nats.Connect(nats.DefaultURL, nats.InProcessServer(srv), nats.UserJWTAndSeed(sj, ss))
	if err != nil {
		t.Fatal(err)
	}
	defer mdc.Close()
	js, err := mdc.JetStream()
	if err != nil {
		t.Fatal(err)
	}
	// The event log works before any node exists.
	if _, err := js.AddStream(&nats.StreamConfig{Name: "MDC_MACHINES", Subjects: []string{"mdc.machine.>"}}, nats.MaxWait(5*time.Second)); err != nil {
		t.Fatalf("standalone embedded JetStream: %v", err)
	}

	ctx := context.Background()
	var joined []string // cluster listeners of joined nodes
	n1, n2 := testNode(t), testNode(t)
	urls := []string{fmt.Sprintf("nats://127.0.0.1:%d", n1.ClientPort), fmt.Sprintf("nats://127.0.0.1:%d", n2.ClientPort)}
	newRole := func(n Node) *Role {
		r, err := New(Config{Keys: keys, URLs: urls, InProcess: srv, Node: n, VerifyWait: time.Second,
			Routes: func(context.Context) ([]string, error) { return joined, nil }})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	r1, r2 := newRole(n1), newRole(n2)
	m1 := machine.Machine{ID: "525400000001", Name: "nats-a"}
	m2 := machine.Machine{ID: "525400000002", Name: "nats-b"}

	join := func(r *Role, m machine.Machine, n Node) (userJWT, seed string) {
		pub, seed := newUser(t)
		var c agentapi.RoleConfig
		if err := r.Configure(ctx, m, map[string]string{ReportNkey: pub}, &c); err != nil {
			t.Fatal(err)
		}
		writeFiles(t, c.Files)
		startProc(t, bin, n.ConfigFile)
		waitFor(t, "Verify "+m.Name, 30*time.Second, func() error { return r.Verify(ctx, m, nil) })
		joined = append(joined, fmt.Sprintf("127.0.0.1:%d", n.ClusterPort))
		return strings.TrimSpace(c.Files[1].Content), seed
	}
	join(r1, m1, n1) // the first member: joined alone
	if rz := monitorRoutez(t, n1); rz.NumRoutes != 0 {
		t.Errorf("first node has routes: %+v", rz.Routes)
	}
	j2, s2 := join(r2, m2, n2)
	if !hasRoute(monitorRoutez(t, n1), "nats-b") || !hasRoute(monitorRoutez(t, n2), "nats-a") {
		t.Errorf("route not visible from both sides: a %+v, b %+v", monitorRoutez(t, n1).Routes, monitorRoutez(t, n2).Routes)
	}

	// nats-b's credentials work on nats-a's server and mdc's until nats-b
	// retires.
	for _, u := range []string{urls[0], srv.ClientURL()} {
		c, err := nats.Connect(u, nats.UserJWTAndSeed(j2, s2), nats.NoReconnect())
		if err != nil {
			t.Fatalf("nats-b's user on %s: %v", u, err)
		}
		c.Close()
	}
	if err := r2.Retire(ctx, m2); err != nil {
		t.Fatal(err)
	}
	for _, u := range append(urls, srv.ClientURL()) {
		waitFor(t, "refusal on "+u, 10*time.Second, func() error { return refused(u, j2, s2) })
	}
}
