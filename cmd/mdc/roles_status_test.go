package main

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/microdc/mdc/api"
	"github.com/microdc/mdc/api/agentapi"
	"github.com/microdc/mdc/machine"
)

// agentCall is one request of a node's agent, with its boot token.
func agentCall(t *testing.T, url, method, path, mac, tok, body string) []byte {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, _ := http.NewRequest(method, url+path, rd)
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set(agentapi.HeaderMachine, mac)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := testClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, b)
	}
	return b
}

var waitingRE = regexp.MustCompile(`(?m)^Join:\s+waiting for the cluster \(\d+s\)(?:: (.*))?$`)

// mdc roles list|show against a real mdc serve: the ipfs role it runs
// (its swarm, never its key), the policy's test role without a cluster,
// and an ipfs node's join, waiting for its kubo and then confirmed, in
// mdc roles show and mdc machines show.
func TestRolesCLI(t *testing.T) {
	dataDir := t.TempDir()
	pol := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(pol, []byte("rules:\n  - {role: test, min_disks: 9}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	url, stop := serveInProcess(t, dataDir, "--role-policy", pol)
	defer stop()
	img := t.TempDir()
	for _, f := range []string{"bzImage", "initrd"} {
		if err := os.WriteFile(filepath.Join(img, f), []byte("not really a "+f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := mdc(t, url, dataDir, "images", "import", "--kernel", filepath.Join(img, "bzImage"),
		"--initrd", filepath.Join(img, "initrd"), "--cmdline", "console=ttyS0", "--name", "ipfs-1", "--role", "ipfs"); err != nil {
		t.Fatal(err)
	}
	const macA, macB = "52:54:00:b1:00:01", "52:54:00:b1:00:02"
	for _, c := range [][]string{
		{"machines", "register", macA, "--name", "store-1"}, {"machines", "assign", macA, "ipfs"},
		{"machines", "register", macB}, {"machines", "assign", macB, "test"},
	} {
		if _, err := mdc(t, url, dataDir, c...); err != nil {
			t.Fatal(err)
		}
	}

	out, err := mdc(t, url, dataDir, "roles", "list")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"ROLE", "CLUSTER", "MACHINES",
		"ipfs  private IPFS swarm: no node joined yet", "1 provisioning", "test  none (a join is the node's word)"} {
		if !strings.Contains(out, want) {
			t.Errorf("mdc roles list lacks %q:\n%s", want, out)
		}
	}

	// Machine A boots its ipfs image; its kubo answers 503 until it is
	// ready, so the join waits for it.
	var ready atomic.Bool
	const peer = "12D3KooWELxWLwS3qzF55c9M5LLSfqC8VGDT7CMTB1aZoMJVDCvV"
	kubo := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !ready.Load() {
			http.Error(w, "daemon starting", http.StatusServiceUnavailable)
			return
		}
		switch r.URL.Path {
		case "/api/v0/id":
			_, _ = io.WriteString(w, `{"ID":"`+peer+`"}`)
		case "/api/v0/swarm/peers":
			_, _ = io.WriteString(w, `{"Peers":[]}`)
		default:
			http.NotFound(w, r)
		}
	}))
	defer kubo.Close()
	args := bootArgs(t, url, macA, "role")
	_, tok, _ := strings.Cut(args, "mdc.token=")
	tok, _, _ = strings.Cut(tok, " ")
	agentCall(t, url, "POST", agentapi.PathBooted, macA, tok, `{"kernel":"6.1.0-test"}`)
	agentCall(t, url, "GET", agentapi.PathConfig, macA, tok, "")
	ev, _ := json.Marshal(map[string]map[string]string{"evidence": {
		"peer_id": peer, "addrs": `["/ip4/10.0.0.1/tcp/4001"]`, "rpc": kubo.URL}})
	agentCall(t, url, "POST", agentapi.PathJoined, macA, tok, string(ev))
	out, err = mdc(t, url, dataDir, "machines", "show", macA)
	// The reason is the role's: kubo's answer.
	join := waitingRE.FindStringSubmatch(out)
	if err != nil || !strings.Contains(out, "running") || join == nil || join[1] != "" && !strings.Contains(join[1], "503") {
		t.Errorf("mdc machines show while kubo starts: %v\n%s", err, out)
	}

	ready.Store(true)
	id := machine.MustParseID(macA)
	deadline := time.Now().Add(20 * time.Second)
	for getJSON[machine.Machine](t, url+"/api/v1/machines/"+string(id), "").State != machine.StJoined {
		if time.Now().After(deadline) {
			t.Fatal("not joined after kubo answered")
		}
		time.Sleep(50 * time.Millisecond)
	}
	out, err = mdc(t, url, dataDir, "machines", "show", macA)
	if err != nil || !regexp.MustCompile(`(?m)^Join:\s+confirmed by the cluster \d\d:\d\d:\d\d$`).MatchString(out) {
		t.Errorf("mdc machines show once joined: %v\n%s", err, out)
	}
	out, err = mdc(t, url, dataDir, "roles", "show", "ipfs")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Cluster:   private IPFS swarm of 1 joined node", "Machines:  1 joined",
		"swarm_key_sha256", "525400b10001  peer " + peer + " at /ip4/10.0.0.1/tcp/4001",
		"525400b10001  store-1  joined  confirmed by the cluster "} {
		if !strings.Contains(out, want) {
			t.Errorf("mdc roles show ipfs lacks %q:\n%s", want, out)
		}
	}
	js, err := mdc(t, url, dataDir, "roles", "show", "ipfs", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var d api.RoleDetail
	if err := json.Unmarshal([]byte(js), &d); err != nil || len(d.Nodes) != 1 || d.Nodes[0].Join == nil || d.Nodes[0].Join.State != api.JoinConfirmed {
		t.Errorf("mdc roles show -o json: %v\n%s", err, js)
	}
	key, err := os.ReadFile(filepath.Join(dataDir, "roles", "ipfs", "swarm.key"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(key)), "\n")
	if k := lines[len(lines)-1]; strings.Contains(out, k) || strings.Contains(js, k) {
		t.Errorf("mdc roles show prints the swarm key")
	}

	out, err = mdc(t, url, dataDir, "roles", "show", "test")
	if err != nil || !strings.Contains(out, "525400b10002  -     provisioning  -") {
		t.Errorf("mdc roles show test: %v\n%s", err, out)
	}
	_, err = mdc(t, url, dataDir, "roles", "show", "nope")
	var ae *apiError
	if !errors.As(err, &ae) || ae.status != 404 || !strings.Contains(err.Error(), "no role nope: mdc runs ipfs") {
		t.Errorf("mdc roles show nope: %v, want a 404 naming the roles there are", err)
	}
	for _, args := range [][]string{{"roles"}, {"roles", "show"}, {"roles", "list", "x"}, {"roles", "drop"}} {
		var ue *usageError
		if _, err := mdc(t, url, dataDir, args...); !errors.As(err, &ue) {
			t.Errorf("mdc %s: %v, want a usage error", strings.Join(args, " "), err)
		}
	}
}
