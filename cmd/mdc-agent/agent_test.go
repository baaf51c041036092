package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/microdc/mdc/api/agentapi"
	"github.com/microdc/mdc/machine"
)

// fakeMDC is an httptest stand-in for mdc's agent API: each path answers
// from a script of replies, and every request is kept.
type fakeMDC struct {
	t       *testing.T
	srv     *httptest.Server
	mu      sync.Mutex
	replies map[string][]reply // "POST /api/v1/agent/facts" → replies in order; the last repeats
	got     []request
}

type reply struct {
	status int
	body   any  // JSON-encoded
	drop   bool // close the connection without an answer
}

type request struct {
	key, auth, machine string
	query              string
	body               []byte
}

func newFakeMDC(t *testing.T) *fakeMDC {
	f := &fakeMDC{t: t, replies: map[string][]reply{}}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeMDC) on(key string, rs ...reply) { f.replies[key] = rs }

func (f *fakeMDC) serve(w http.ResponseWriter, r *http.Request) {
	key := r.Method + " " + r.URL.Path
	body, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	f.got = append(f.got, request{key: key, auth: r.Header.Get("Authorization"), machine: r.Header.Get(agentapi.HeaderMachine), query: r.URL.RawQuery, body: body})
	rs := f.replies[key]
	var rp reply
	switch len(rs) {
	case 0:
		rp = reply{status: 404, body: map[string]any{"error": map[string]string{"code": "not_found", "message": "no reply scripted for " + key}}}
	case 1:
		rp = rs[0]
	default:
		rp, f.replies[key] = rs[0], rs[1:]
	}
	f.mu.Unlock()
	if rp.drop {
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			conn.Close()
		}
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(rp.status)
	_ = json.NewEncoder(w).Encode(rp.body)
}

func (f *fakeMDC) requests(key string) []request {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []request
	for _, r := range f.got {
		if r.key == key {
			out = append(out, r)
		}
	}
	return out
}

func (f *fakeMDC) keys() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, r := range f.got {
		out = append(out, r.key)
	}
	return out
}

func apiError(status int, code, msg string) reply {
	return reply{status: status, body: map[string]any{"error": map[string]string{"code": code, "message": msg}}}
}

// node is a copy of a testdata tree whose kernel command line points at an
// mdc; run runs the agent on it.
type node struct {
	t      *testing.T
	root   string
	power  []agentapi.Action
	sleeps []time.Duration
	log    bytes.Buffer
	mu     sync.Mutex
}

func newNode(t *testing.T, tree, url string, mode agentapi.Mode, id machine.ID) *node {
	t.Helper()
	n := &node{t: t, root: t.TempDir()}
	copyTree(t, filepath.Join("testdata", tree), n.root)
	mustWrite(t, filepath.Join(n.root, "proc/cmdline"),
		fmt.Sprintf("console=ttyS0 mdc.url=%s mdc.machine=%s mdc.token=%s mdc.mode=%s\n", url, id.MAC(), testToken, mode))
	return n
}

const testToken = "6d64632d746573742d746f6b656e2d6f662d746869732d626f6f742d30303031"

func (n *node) run(ctx context.Context) error {
	d := deps{
		power: func(a agentapi.Action) error {
			n.mu.Lock()
			defer n.mu.Unlock()
			n.power = append(n.power, a)
			return nil
		},
		backoff: backoff{Min: 4 * time.Millisecond, Max: 32 * time.Millisecond},
		sleep: func(ctx context.Context, d time.Duration) error {
			n.mu.Lock()
			n.sleeps = append(n.sleeps, d)
			n.mu.Unlock()
			return ctx.Err()
		},
	}
	return runWith(ctx, []string{"-root", n.root}, io.Discard, &n.log, func(string) string { return "" }, d)
}

func copyTree(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.WalkDir(from, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		dst := filepath.Join(to, rel)
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(target, dst)
		case d.IsDir():
			return os.MkdirAll(dst, 0o755)
		default:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			return os.WriteFile(dst, b, 0o644)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestCommissionRetriesUntilMDCAnswers(t *testing.T) {
	mdc := newFakeMDC(t)
	mdc.on("POST "+agentapi.PathFacts,
		apiError(503, "unavailable", "the event log did not answer in time"),
		reply{drop: true},
		apiError(502, "Bad Gateway", ""),
		reply{status: 200, body: agentapi.Answer{Action: agentapi.ActionReboot, Role: "test", Reason: "rule test", HeartbeatSeconds: 30}})
	id := machine.MustParseID("525400a60001")
	n := newNode(t, "qemu-uefi", mdc.srv.URL, agentapi.ModeCommissioning, id)
	if err := n.run(context.Background()); err != nil {
		t.Fatalf("run: %v\n%s", err, n.log.String())
	}
	if !slices.Equal(n.power, []agentapi.Action{agentapi.ActionReboot}) {
		t.Fatalf("power actions %v\n%s", n.power, n.log.String())
	}
	reqs := mdc.requests("POST " + agentapi.PathFacts)
	if len(reqs) != 4 {
		t.Fatalf("%d facts requests, want 4", len(reqs))
	}
	// Exponential backoff with jitter: attempt k waits in [d/2, d], d = 4ms·2^k.
	if len(n.sleeps) != 3 {
		t.Fatalf("sleeps %v", n.sleeps)
	}
	for k, d := range n.sleeps {
		hi := 4 * time.Millisecond << k
		if d < hi/2 || d > hi {
			t.Errorf("retry %d waited %v, want %v to %v", k+1, d, hi/2, hi)
		}
	}
	var posted machine.Facts
	if err := json.Unmarshal(reqs[3].body, &posted); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(collectFacts(n.root), posted); d != "" || posted.MemoryBytes != 1<<30 || len(posted.Disks) != 2 {
		t.Errorf("posted facts (-collected +posted):\n%s", d)
	}
	if reqs[3].auth != "Bearer "+testToken || reqs[3].machine != "525400a60001" {
		t.Errorf("credentials: %q %q", reqs[3].auth, reqs[3].machine)
	}
	log := n.log.String()
	if strings.Contains(log, testToken) {
		t.Error("the token reached the log")
	}
	for _, want := range []string{"mdc unreachable, retrying", "QEMU Standard PC (Q35 + ICH9, 2009), uefi boot, 2 CPUs", "mdc says reboot"} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q:\n%s", want, log)
		}
	}
}

func TestCommissionWaitsThenPowersOff(t *testing.T) {
	mdc := newFakeMDC(t)
	mdc.on("POST "+agentapi.PathFacts, reply{status: 200, body: agentapi.Answer{Action: agentapi.ActionWait, Reason: "held in ready", HeartbeatSeconds: 7}})
	mdc.on("POST "+agentapi.PathHeartbeat,
		reply{status: 200, body: agentapi.Answer{Action: agentapi.ActionWait, Reason: "held in ready", HeartbeatSeconds: 7}},
		apiError(503, "unavailable", "later"),
		reply{status: 200, body: agentapi.Answer{Action: agentapi.ActionPoweroff, Reason: "held: power off", HeartbeatSeconds: 7}})
	n := newNode(t, "qemu-uefi", mdc.srv.URL, agentapi.ModeCommissioning, "525400a60001")
	console := filepath.Join(n.root, "dev/console") // a file here: the log goes to the console too
	mustWrite(t, console, "")
	if err := n.run(context.Background()); err != nil {
		t.Fatalf("run: %v\n%s", err, n.log.String())
	}
	if b, _ := os.ReadFile(console); !strings.Contains(string(b), "mdc-agent: ") || !strings.Contains(string(b), "msg=waiting") {
		t.Errorf("console got %q", b)
	}
	if !slices.Equal(n.power, []agentapi.Action{agentapi.ActionPoweroff}) {
		t.Fatalf("power %v", n.power)
	}
	hbs := mdc.requests("POST " + agentapi.PathHeartbeat)
	if len(hbs) != 3 {
		t.Fatalf("%d heartbeats, want 3", len(hbs))
	}
	var hb agentapi.Heartbeat
	_ = json.Unmarshal(hbs[0].body, &hb)
	if hb.Phase != agentapi.PhaseWaiting || hb.UptimeSeconds != 12 {
		t.Errorf("heartbeat %+v", hb)
	}
	if n.sleeps[0] != 7*time.Second || n.sleeps[1] != 7*time.Second {
		t.Errorf("heartbeats every %v, want the 7 s mdc asked for", n.sleeps)
	}
	if strings.Count(n.log.String(), "msg=waiting") != 1 {
		t.Errorf("the same wait is logged more than once:\n%s", n.log.String())
	}
}

func TestRefusedTokenExits3(t *testing.T) {
	for _, status := range []int{401, 403} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			mdc := newFakeMDC(t)
			mdc.on("POST "+agentapi.PathFacts, apiError(status, agentapi.CodeStaleToken, "this token is from an earlier boot of machine 525400a60001"))
			n := newNode(t, "qemu-uefi", mdc.srv.URL, agentapi.ModeCommissioning, "525400a60001")
			err := n.run(context.Background())
			if exitCode(err) != 3 {
				t.Fatalf("exit %d (%v), want 3", exitCode(err), err)
			}
			if len(mdc.requests("POST "+agentapi.PathFacts)) != 1 || len(n.power) != 0 {
				t.Error("a refused token was retried or acted on")
			}
			log := n.log.String()
			for _, want := range []string{"level=ERROR", "mdc refused this machine's token", "earlier boot of machine 525400a60001", "stale_token", "next network boot gets a new one"} {
				if !strings.Contains(log, want) {
					t.Errorf("log lacks %q:\n%s", want, log)
				}
			}
		})
	}
}

func TestBadConfigExits2(t *testing.T) {
	root := t.TempDir()
	mustWrite(t, filepath.Join(root, "proc/cmdline"), "console=ttyS0 quiet\n")
	var stderr bytes.Buffer
	err := run(context.Background(), []string{"-root", root}, io.Discard, &stderr, func(string) string { return "" })
	if exitCode(err) != 2 || !strings.Contains(err.Error(), "mdc.url, mdc.machine, mdc.token missing") {
		t.Fatalf("exit %d: %v", exitCode(err), err)
	}
	err = run(context.Background(), []string{"-root", root, "-config", filepath.Join(root, "nope.conf")}, io.Discard, &stderr, func(string) string { return "" })
	if exitCode(err) != 2 || !strings.Contains(err.Error(), "nope.conf") {
		t.Fatalf("a missing -config file: exit %d: %v", exitCode(err), err)
	}
}

// joinHook fails its first run (exit 1), then joins: it keeps what it saw
// and ends its output with the evidence.
const joinHook = `#!/bin/sh
set -e
runs=$(cat "$MDC_RUN_DIR_TEST/runs" 2>/dev/null || echo 0)
echo $((runs + 1)) > "$MDC_RUN_DIR_TEST/runs"
if [ "$runs" = 0 ]; then
	echo "cluster not reachable yet" >&2
	exit 1
fi
cp "$1" "$MDC_RUN_DIR_TEST/saw-config.json"
echo "$MDC_ROLE $MDC_MACHINE $MDC_IMAGE $MDC_ROLE_CONFIG" > "$MDC_RUN_DIR_TEST/saw-env"
echo "joining the test cluster"
echo '{"kernel":"6.1.0-28-amd64","hook":"test","peers":2}'
`

func TestRoleBootJoins(t *testing.T) {
	mdc := newFakeMDC(t)
	id := machine.MustParseID("525400b10501")
	mdc.on("POST "+agentapi.PathBooted, reply{status: 200, body: agentapi.Recorded{State: machine.Running}})
	rc := agentapi.RoleConfig{Machine: id, Role: "test", Image: "test-1",
		Files: []agentapi.File{
			{Path: "/etc/mdc/motd", Mode: "0640", Content: "managed by mdc\n"},
			{Path: "/var/lib/test/state/seed", Mode: "0600", Content: "42"},
		},
		Join: agentapi.Join{Hook: "/etc/mdc/join", TimeoutSeconds: 10}, Evidence: []string{"kernel", "hook"},
		Config: json.RawMessage(`{"greeting":"hello"}`), HeartbeatSeconds: 3}
	mdc.on("GET "+agentapi.PathConfig, reply{status: 200, body: rc})
	mdc.on("POST "+agentapi.PathJoined, reply{status: 200, body: agentapi.Recorded{State: machine.StJoined}})
	mdc.on("POST "+agentapi.PathHeartbeat,
		reply{status: 200, body: agentapi.Answer{Action: agentapi.ActionNone, HeartbeatSeconds: 3}}, // while the hook fails
		reply{status: 200, body: agentapi.Answer{Action: agentapi.ActionNone, HeartbeatSeconds: 3}},
		reply{status: 200, body: agentapi.Answer{Action: agentapi.ActionReboot, Role: "other", Reason: "role changed"}})
	n := newNode(t, "qemu-bios", mdc.srv.URL, agentapi.ModeRole, id)
	testDir := t.TempDir()
	mustWrite(t, filepath.Join(n.root, "etc/mdc/join"), strings.ReplaceAll(joinHook, "$MDC_RUN_DIR_TEST", testDir))
	if err := os.Chmod(filepath.Join(n.root, "etc/mdc/join"), 0o755); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, filepath.Join(n.root, "run/mdc/report.json"), `{"nkey":"UABC123","peer_id":"12D3KooWtest"}`)
	if err := n.run(context.Background()); err != nil {
		t.Fatalf("run: %v\n%s", err, n.log.String())
	}
	if q := mdc.requests("GET " + agentapi.PathConfig)[0].query; q != "nkey=UABC123&peer_id=12D3KooWtest" {
		t.Errorf("GET config query %q, want the node's report.json", q)
	}
	want := []string{"POST " + agentapi.PathBooted, "GET " + agentapi.PathConfig, "POST " + agentapi.PathHeartbeat,
		"GET " + agentapi.PathConfig, "POST " + agentapi.PathJoined, "POST " + agentapi.PathHeartbeat, "POST " + agentapi.PathHeartbeat}
	if d := cmp.Diff(want, mdc.keys()); d != "" {
		t.Fatalf("requests (-want +got):\n%s\n%s", d, n.log.String())
	}
	var booted machine.BootedData
	_ = json.Unmarshal(mdc.requests("POST " + agentapi.PathBooted)[0].body, &booted)
	if booted != (machine.BootedData{Image: "test-1", Kernel: "6.1.0-28-amd64"}) {
		t.Errorf("booted %+v", booted)
	}
	var hb agentapi.Heartbeat
	_ = json.Unmarshal(mdc.requests("POST " + agentapi.PathHeartbeat)[0].body, &hb)
	if hb.Phase != agentapi.PhaseJoining || !strings.Contains(hb.Status, "exit status 1") {
		t.Errorf("the failed join was reported as %+v", hb)
	}
	var joined machine.JoinedData
	_ = json.Unmarshal(mdc.requests("POST " + agentapi.PathJoined)[0].body, &joined)
	if d := cmp.Diff(machine.JoinedData{Role: "test", Evidence: map[string]string{"kernel": "6.1.0-28-amd64", "hook": "test", "peers": "2"}}, joined); d != "" {
		t.Errorf("joined (-want +got):\n%s", d)
	}
	if !slices.Equal(n.power, []agentapi.Action{agentapi.ActionReboot}) {
		t.Errorf("power %v", n.power)
	}
	for p, mode := range map[string]os.FileMode{"etc/mdc/motd": 0o640, "var/lib/test/state/seed": 0o600, "run/mdc/role-config.json": 0o600} {
		st, err := os.Stat(filepath.Join(n.root, p))
		if err != nil || st.Mode().Perm() != mode {
			t.Errorf("%s: %v mode %v, want %v", p, err, st.Mode().Perm(), mode)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(n.root, "etc/mdc/motd")); string(b) != "managed by mdc\n" {
		t.Errorf("motd %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(testDir, "saw-config.json")); strings.TrimSpace(string(b)) != `{"greeting":"hello"}` {
		t.Errorf("the hook got config %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(testDir, "saw-env")); !strings.HasPrefix(string(b), "test 525400b10501 test-1 "+n.root+"/run/mdc/role-config.json") {
		t.Errorf("the hook's environment: %q", b)
	}
	if log := n.log.String(); !strings.Contains(log, "join hook: cluster not reachable yet") || !strings.Contains(log, "join hook: joining the test cluster") {
		t.Errorf("the hook's output is not in the log:\n%s", log)
	}
}

func TestJoinStep(t *testing.T) {
	root := t.TempDir()
	a := &agent{cfg: defaultConfig(), log: discardLog()}
	a.cfg.Root, a.cfg.Machine = root, "525400000001"
	outside := t.TempDir()

	// Files only under the roots, and not through a link out of them.
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(root, "etc/escape")); err != nil {
		t.Fatal(err)
	}
	for _, f := range []agentapi.File{
		{Path: "/usr/bin/evil", Mode: "0755"},
		{Path: "/etc/../usr/x", Mode: "0644"},
		{Path: "etc/relative", Mode: "0644"},
		{Path: "/etc/escape/x", Mode: "0644"},
		{Path: "/etc/x", Mode: "4755"},
	} {
		if err := a.writeFile(f); err == nil {
			t.Errorf("wrote %s (mode %s)", f.Path, f.Mode)
		}
	}
	if entries, _ := os.ReadDir(outside); len(entries) != 0 {
		t.Fatal("a file escaped through the symbolic link")
	}

	// A role without a join step joins at once; a hook that is missing or
	// prints no evidence fails; one that hangs is killed, children too.
	if ev, err := a.join(context.Background(), agentapi.RoleConfig{Role: "x"}); err != nil || len(ev) != 0 {
		t.Errorf("no join step: %v %v", ev, err)
	}
	rc := agentapi.RoleConfig{Role: "x", Join: agentapi.Join{Hook: "/etc/mdc/join", TimeoutSeconds: 1}, Evidence: []string{"osd"}}
	if _, err := a.join(context.Background(), rc); err == nil || !strings.Contains(err.Error(), "not in this image") {
		t.Errorf("missing hook: %v", err)
	}
	hook := filepath.Join(root, "etc/mdc/join")
	mustWrite(t, hook, "#!/bin/sh\necho '{\"other\":\"1\"}'\n")
	_ = os.Chmod(hook, 0o755)
	if _, err := a.join(context.Background(), rc); err == nil || !strings.Contains(err.Error(), "printed no osd") {
		t.Errorf("no evidence: %v", err)
	}
	mustWrite(t, hook, "#!/bin/sh\nsleep 30 &\nwait\n")
	start := time.Now()
	if _, err := a.join(context.Background(), rc); err == nil || !strings.Contains(err.Error(), "ran longer than 1s") {
		t.Errorf("hung hook: %v", err)
	}
	if d := time.Since(start); d > 8*time.Second {
		t.Errorf("a hung hook held the agent %v", d)
	}
}

func TestLastJSONObject(t *testing.T) {
	got := lastJSONObject([]byte("starting\n{\"a\":\"old\"}\n{\"a\":\"x\",\"n\":2,\"ok\":true,\"l\":[1]}\nnot json {\n\n"))
	if d := cmp.Diff(map[string]string{"a": "x", "n": "2", "ok": "true", "l": "[1]"}, got); d != "" {
		t.Error(d)
	}
}

func discardLog() *slog.Logger { return slog.New(slog.DiscardHandler) }
