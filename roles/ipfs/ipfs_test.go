package ipfs

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/ipfs/go-cid"
	"github.com/microdc/mdc/api/agentapi"
	"github.com/microdc/mdc/machine"
	"github.com/microdc/mdc/roles"
	mh "github.com/multiformats/go-multihash"
)

// Real peer ids printed by kubo 0.42 (`ipfs init`): Ed25519, and the same
// key as a CIDv1 (libp2p-key, base36).
const (
	pidA = "12D3KooWELxWLwS3qzF55c9M5LLSfqC8VGDT7CMTB1aZoMJVDCvV"
	pidB = "12D3KooWH3KT2ew3GrybEdGWyd9VfvRMncudC7DDGtfkuukbNFZz"
	pidQ = "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"
)

func newRole(t *testing.T, log *slog.Logger) (*Role, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "roles", "ipfs")
	r, err := New(Config{DataDir: dir, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	return r, dir
}

func TestKeysMintedOnce(t *testing.T) {
	r, dir := newRole(t, nil)
	for _, name := range []string{"swarm.key", "rpc.key"} {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %04o, want 0600", name, st.Mode().Perm())
		}
	}
	if st, _ := os.Stat(dir); st.Mode().Perm() != 0o700 {
		t.Errorf("data dir mode %04o, want 0700", st.Mode().Perm())
	}
	if !regexp.MustCompile(`^/key/swarm/psk/1\.0\.0/\n/base16/\n[0-9a-f]{64}\n$`).Match(r.swarmKey) {
		t.Errorf("swarm key %q is not in kubo's format", r.swarmKey)
	}
	r2, err := New(Config{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(r.swarmKey, r2.swarmKey) || !bytes.Equal(r.rpcKey, r2.rpcKey) {
		t.Error("a second New minted new keys instead of reading them")
	}
	r3, _ := newRole(t, nil)
	if bytes.Equal(r.swarmKey, r3.swarmKey) {
		t.Error("two data directories got one swarm key")
	}

	if err := os.Chmod(filepath.Join(dir, "swarm.key"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := New(Config{DataDir: dir}); err == nil || !strings.Contains(err.Error(), "0600") {
		t.Errorf("New with a world-readable swarm key: %v, want a refusal naming 0600", err)
	}
	os.Chmod(filepath.Join(dir, "swarm.key"), 0o600)
	os.WriteFile(filepath.Join(dir, "swarm.key"), []byte("/key/swarm/psk/1.0.0/\n/base16/\nzz\n"), 0o600)
	if _, err := New(Config{DataDir: dir}); err == nil {
		t.Error("New accepted a malformed swarm key")
	}
}

func settingsOf(t *testing.T, rc *agentapi.RoleConfig) (NodeConfig, map[string]any) {
	t.Helper()
	var nc NodeConfig
	if err := json.Unmarshal(rc.Config, &nc); err != nil {
		t.Fatal(err)
	}
	m := make(map[string]any)
	for _, s := range nc.Settings {
		var v any
		if err := json.Unmarshal(s.Value, &v); err != nil {
			t.Fatal(err)
		}
		m[s.Key] = v
	}
	return nc, m
}

func TestConfigure(t *testing.T) {
	var logs bytes.Buffer
	r, _ := newRole(t, slog.New(slog.NewTextHandler(&logs, nil)))
	ctx := context.Background()
	m1 := machine.Machine{ID: "525400000001", Role: Name}
	m2 := machine.Machine{ID: "525400000002", Role: Name}
	r.Peers().Put(ctx, Peer{Machine: m1.ID, ID: pidA, Addrs: []string{"/ip4/10.0.0.1/tcp/4001"}, RPC: "http://10.0.0.1:5001"})

	var rc agentapi.RoleConfig
	if err := r.Configure(ctx, m2, nil, &rc); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{}
	for _, f := range rc.Files {
		files[f.Path] = f.Mode
	}
	if diff := cmp.Diff(map[string]string{
		"/var/lib/ipfs/swarm.key": "0600",
		"/var/lib/ipfs/api-auth":  "0600",
		"/etc/mdc/ipfs.env":       "0644",
	}, files); diff != "" {
		t.Errorf("files (-want +got):\n%s", diff)
	}
	if rc.Files[0].Content != string(r.swarmKey) {
		t.Error("swarm.key file is not the minted key")
	}
	if !strings.Contains(rc.Files[2].Content, "LIBP2P_FORCE_PNET=1\n") {
		t.Errorf("env file %q lacks LIBP2P_FORCE_PNET=1", rc.Files[2].Content)
	}
	if diff := cmp.Diff([]string{EvidencePeerID, EvidenceAddrs, EvidenceRPC}, rc.Evidence); diff != "" {
		t.Errorf("evidence (-want +got):\n%s", diff)
	}
	nc, s := settingsOf(t, &rc)
	if nc.Env["LIBP2P_FORCE_PNET"] != "1" || nc.Repo != "/var/lib/ipfs" {
		t.Errorf("env %v repo %s", nc.Env, nc.Repo)
	}
	if diff := cmp.Diff([]string{"/ip4/10.0.0.1/tcp/4001/p2p/" + pidA}, nc.Reconnect); diff != "" {
		t.Errorf("reconnect (-want +got):\n%s", diff)
	}
	want := map[string]any{
		"AutoConf.Enabled":                      false,
		"Bootstrap":                             []any{"/ip4/10.0.0.1/tcp/4001/p2p/" + pidA},
		"Peering.Peers":                         []any{map[string]any{"ID": pidA, "Addrs": []any{"/ip4/10.0.0.1/tcp/4001"}}},
		"Routing.Type":                          "dhtserver",
		"Routing.DelegatedRouters":              []any{},
		"Ipns.DelegatedPublishers":              []any{},
		"Swarm.Transports.Network.TCP":          true,
		"Swarm.Transports.Network.QUIC":         false,
		"Swarm.Transports.Network.WebTransport": false,
		"Swarm.Transports.Network.WebRTCDirect": false,
		"Swarm.Transports.Network.Websocket":    false,
		"Addresses.Swarm":                       []any{"/ip4/0.0.0.0/tcp/4001", "/ip6/::/tcp/4001"},
		"Addresses.API":                         "/ip4/0.0.0.0/tcp/5001",
		"Plugins.Plugins.telemetry.Config.Mode": "off",
		"Discovery.MDNS.Enabled":                false,
		"AutoTLS.Enabled":                       false,
		"Swarm.RelayClient.Enabled":             false,
		"Swarm.DisableNatPortMap":               true,
		"HTTPRetrieval.Enabled":                 false,
		"AutoNAT.ServiceMode":                   "disabled",
		"Swarm.EnableHolePunching":              false,
		"Swarm.RelayService.Enabled":            false,
		"Swarm.Transports.Network.Relay":        false,
		"DNS.Resolvers":                         map[string]any{},
		"Addresses.Gateway":                     "/ip4/127.0.0.1/tcp/8080",
	}
	for k, v := range want {
		if diff := cmp.Diff(v, s[k]); diff != "" {
			t.Errorf("%s (-want +got):\n%s", k, diff)
		}
	}
	// mdc's RPC access is read-mostly and per machine.
	auth := s["API.Authorizations"].(map[string]any)
	mdcAuth := auth["mdc"].(map[string]any)
	if mdcAuth["AuthSecret"] != "bearer:"+rpcToken(r.rpcKey, "mdc", m2.ID) {
		t.Error("mdc's AuthSecret is not the machine's derived token")
	}
	if diff := cmp.Diff([]any{"/api/v0/id", "/api/v0/swarm/peers", "/api/v0/swarm/peering"}, mdcAuth["AllowedPaths"]); diff != "" {
		t.Errorf("mdc's paths (-want +got):\n%s", diff)
	}
	if rpcToken(r.rpcKey, "mdc", m1.ID) == rpcToken(r.rpcKey, "mdc", m2.ID) || rpcToken(r.rpcKey, "node", m2.ID) == rpcToken(r.rpcKey, "mdc", m2.ID) {
		t.Error("tokens are shared between machines or uses")
	}

	// The node itself is never its own bootstrap peer.
	var rc1 agentapi.RoleConfig
	if err := r.Configure(ctx, m1, nil, &rc1); err != nil {
		t.Fatal(err)
	}
	if _, s1 := settingsOf(t, &rc1); len(s1["Bootstrap"].([]any)) != 0 {
		t.Errorf("m1's bootstrap names itself: %v", s1["Bootstrap"])
	}
	var rc3 agentapi.RoleConfig
	if err := r.Configure(ctx, machine.Machine{ID: "525400000003"}, map[string]string{EvidencePeerID: pidA}, &rc3); err != nil {
		t.Fatal(err)
	}
	if _, s3 := settingsOf(t, &rc3); len(s3["Bootstrap"].([]any)) != 0 {
		t.Errorf("a node reporting peer id %s is told to bootstrap from itself: %v", pidA, s3["Bootstrap"])
	}

	r.Verify(ctx, m2, map[string]string{EvidencePeerID: pidB, EvidenceAddrs: "/ip4/10.0.0.2/tcp/4001", EvidenceRPC: "http://127.0.0.1:1"})
	for _, secret := range []string{string(r.swarmKey[len(swarmKeyHeader) : len(swarmKeyHeader)+64]), rpcToken(r.rpcKey, "mdc", m2.ID), rpcToken(r.rpcKey, "node", m2.ID)} {
		if strings.Contains(logs.String(), secret) {
			t.Fatal("a secret reached the log")
		}
	}
}

// fakeKubo answers id and swarm/peers like kubo's RPC, for the paths of
// Verify that a real daemon cannot easily be made to take.
func fakeKubo(t *testing.T, token, id string, peers []string) *httptest.Server {
	t.Helper()
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+token {
			http.Error(w, "Kubo RPC Access Denied", http.StatusForbidden)
			return
		}
		switch r.URL.Path {
		case "/api/v0/id":
			json.NewEncoder(w).Encode(map[string]any{"ID": id})
		case "/api/v0/swarm/peers":
			var ps []map[string]string
			for _, p := range peers {
				ps = append(ps, map[string]string{"Peer": p, "Addr": "/ip4/10.0.0.9/tcp/4001"})
			}
			json.NewEncoder(w).Encode(map[string]any{"Peers": ps})
		default:
			http.Error(w, "no", http.StatusNotFound)
		}
	}))
	t.Cleanup(s.Close)
	return s
}

func TestVerify(t *testing.T) {
	ctx := context.Background()
	m1 := machine.Machine{ID: "525400000001", Role: Name}
	m2 := machine.Machine{ID: "525400000002", Role: Name}
	ev := func(id, rpc string) map[string]string {
		return map[string]string{EvidencePeerID: id, EvidenceAddrs: `["/ip4/10.0.0.2/tcp/4001/p2p/` + id + `","/ip4/127.0.0.1/tcp/4001"]`, EvidenceRPC: rpc}
	}
	r, _ := newRole(t, nil)
	tok1, tok2 := rpcToken(r.rpcKey, "mdc", m1.ID), rpcToken(r.rpcKey, "mdc", m2.ID)

	// First node: no peer needed.
	k1 := fakeKubo(t, tok1, pidA, nil)
	if err := r.Verify(ctx, m1, ev(pidA, k1.URL)); err != nil {
		t.Fatalf("first node: %v", err)
	}
	ps, _ := r.Peers().List(ctx)
	if diff := cmp.Diff([]Peer{{Machine: m1.ID, ID: pidA, Addrs: []string{"/ip4/10.0.0.2/tcp/4001"}, RPC: k1.URL}}, ps); diff != "" {
		t.Errorf("peers after the first join (-want +got):\n%s", diff)
	}
	// Second node, not connected to node 1 (only to someone else): not yet.
	alone := fakeKubo(t, tok2, pidB, []string{pidQ})
	if err := r.Verify(ctx, m2, ev(pidB, alone.URL)); !errors.Is(err, roles.ErrNotYet) {
		t.Errorf("unconnected node: %v, want ErrNotYet", err)
	}
	// Its kubo is another peer than the evidence says: failed.
	if err := r.Verify(ctx, m2, ev(pidQ, alone.URL)); err == nil || errors.Is(err, roles.ErrNotYet) {
		t.Errorf("peer id mismatch: %v, want a failure", err)
	}
	// Its kubo does not hold mdc's token: failed, with the reason.
	wrong := fakeKubo(t, "other", pidB, nil)
	if err := r.Verify(ctx, m2, ev(pidB, wrong.URL)); err == nil || errors.Is(err, roles.ErrNotYet) || !strings.Contains(err.Error(), "API.Authorizations") {
		t.Errorf("refused token: %v, want a failure naming API.Authorizations", err)
	}
	// Bad evidence: failed.
	if err := r.Verify(ctx, m2, map[string]string{EvidencePeerID: pidB, EvidenceAddrs: "/ip4/10.0.0.2/udp/4001/quic-v1", EvidenceRPC: alone.URL}); err == nil || errors.Is(err, roles.ErrNotYet) {
		t.Errorf("QUIC address: %v, want a failure", err)
	}
	// Connected to node 1: joined.
	joined := fakeKubo(t, tok2, pidB, []string{pidQ, pidA})
	if err := r.Verify(ctx, m2, ev(pidB, joined.URL)); err != nil {
		t.Errorf("connected node: %v", err)
	}
	if ps, _ := r.Peers().List(ctx); len(ps) != 2 {
		t.Errorf("peers: %+v, want 2", ps)
	}
	if err := r.Retire(ctx, m2); err != nil {
		t.Fatal(err)
	}
	if ps, _ := r.Peers().List(ctx); len(ps) != 1 || ps[0].Machine != m1.ID {
		t.Errorf("peers after retire: %+v", ps)
	}
}

func TestFilePeers(t *testing.T) {
	ctx := context.Background()
	p := filepath.Join(t.TempDir(), "peers.json")
	s, err := OpenFilePeers(p)
	if err != nil {
		t.Fatal(err)
	}
	a := Peer{Machine: "525400000001", ID: pidA, Addrs: []string{"/ip4/10.0.0.1/tcp/4001"}, RPC: "http://10.0.0.1:5001"}
	b := Peer{Machine: "525400000002", ID: pidB, Addrs: []string{"/ip4/10.0.0.2/tcp/4001"}}
	s.Put(ctx, b)
	s.Put(ctx, a)
	s.Delete(ctx, "525400000009")
	s2, err := OpenFilePeers(p)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := s2.List(ctx)
	if diff := cmp.Diff([]Peer{a, b}, got); diff != "" {
		t.Errorf("reopened (-want +got):\n%s", diff)
	}
	s2.Delete(ctx, a.Machine)
	s3, _ := OpenFilePeers(p)
	if got, _ := s3.List(ctx); len(got) != 1 || got[0].ID != pidB {
		t.Errorf("after delete: %+v", got)
	}
}

func TestParse(t *testing.T) {
	h, err := mh.FromB58String(pidA)
	if err != nil {
		t.Fatal(err)
	}
	cidA := cid.NewCidV1(libp2pKeyCodec, h).String() // bafzaa…, as `ipfs id --peerid-base` may print it
	for name, tc := range map[string]struct {
		in      string
		want    string
		wantErr bool
	}{
		"ed25519":      {in: pidA, want: pidA},
		"rsa":          {in: pidQ, want: pidQ},
		"empty":        {in: "", wantErr: true},
		"garbage":      {in: "12D3KooW!!!", wantErr: true},
		"a file cid":   {in: "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy", wantErr: true},
		"libp2p-key":   {in: cidA, want: pidA},
		"truncated id": {in: pidA[:20], wantErr: true},
	} {
		t.Run(name, func(t *testing.T) {
			got, err := parsePeerID(tc.in)
			if (err != nil) != tc.wantErr || (!tc.wantErr && got != tc.want) {
				t.Errorf("parsePeerID(%q) = %q, %v", tc.in, got, err)
			}
		})
	}
	for name, tc := range map[string]struct {
		in, addr, id string
		wantErr      bool
	}{
		"ip4":         {in: "/ip4/10.0.0.1/tcp/4001", addr: "/ip4/10.0.0.1/tcp/4001"},
		"ip6 p2p":     {in: "/ip6/fd00::1/tcp/4001/p2p/" + pidA, addr: "/ip6/fd00::1/tcp/4001", id: pidA},
		"dns":         {in: "/dns4/node1.rack/tcp/4001", addr: "/dns4/node1.rack/tcp/4001"},
		"quic":        {in: "/ip4/10.0.0.1/udp/4001/quic-v1", wantErr: true},
		"ws":          {in: "/ip4/10.0.0.1/tcp/4001/ws", wantErr: true},
		"port 0":      {in: "/ip4/10.0.0.1/tcp/0", wantErr: true},
		"port big":    {in: "/ip4/10.0.0.1/tcp/65536", wantErr: true},
		"ip4 as ip6":  {in: "/ip6/10.0.0.1/tcp/1", wantErr: true},
		"relay":       {in: "/ip4/10.0.0.1/tcp/4001/p2p/" + pidA + "/p2p-circuit", wantErr: true},
		"bad peer":    {in: "/ip4/10.0.0.1/tcp/4001/p2p/xyz", wantErr: true},
		"no slash":    {in: "ip4/10.0.0.1/tcp/4001", wantErr: true},
		"zone":        {in: "/ip6/fe80::1%eth0/tcp/4001", wantErr: true},
		"bad host":    {in: "/dns/-x-/tcp/4001", wantErr: true},
		"leading 0":   {in: "/ip4/10.0.0.1/tcp/04001", wantErr: true},
		"unspecified": {in: "/ip4/0.0.0.0/tcp/4001", addr: "/ip4/0.0.0.0/tcp/4001"},
	} {
		t.Run(name, func(t *testing.T) {
			addr, id, err := parseAddr(tc.in)
			if (err != nil) != tc.wantErr || addr != tc.addr || id != tc.id {
				t.Errorf("parseAddr(%q) = %q, %q, %v", tc.in, addr, id, err)
			}
		})
	}
	got, err := parseAddrs(`["/ip4/127.0.0.1/tcp/4001/p2p/`+pidA+`", "/ip4/10.0.0.1/tcp/4001/p2p/`+pidA+`", "/ip4/10.0.0.1/tcp/4001"]`, pidA)
	if err != nil || !cmp.Equal(got, []string{"/ip4/10.0.0.1/tcp/4001"}) {
		t.Errorf("loopback dropped when there is more: %v, %v", got, err)
	}
	got, err = parseAddrs("/ip4/127.0.0.1/tcp/4001 /ip4/127.0.0.1/tcp/4002", pidA)
	if err != nil || len(got) != 2 {
		t.Errorf("loopback kept when it is all: %v, %v", got, err)
	}
	if _, err := parseAddrs(`["/ip4/10.0.0.1/tcp/4001/p2p/`+pidB+`"]`, pidA); err == nil {
		t.Error("an address of another peer was accepted")
	}
	for in, ok := range map[string]bool{
		"http://10.0.0.1:5001":          true,
		"http://10.0.0.1:5001/":         true,
		"http://[fd00::1]:5001":         true,
		"https://10.0.0.1:5001":         false,
		"http://10.0.0.1":               false,
		"http://u:p@10.0.0.1:5001":      false,
		"http://10.0.0.1:5001/api/v0/x": false,
		"http://10.0.0.1:5001?x=1":      false,
		"file:///etc/passwd":            false,
	} {
		if _, err := parseRPC(in); (err == nil) != ok {
			t.Errorf("parseRPC(%q): %v", in, err)
		}
	}
}

// FuzzEvidence feeds the join evidence parsers what a node may send.
func FuzzEvidence(f *testing.F) {
	f.Add(pidA, `["/ip4/10.0.0.1/tcp/4001/p2p/`+pidA+`"]`, "http://10.0.0.1:5001")
	f.Add(pidQ, "/ip6/::1/tcp/4001 /dns/a.b/tcp/1", "http://[::1]:5001/")
	f.Add("bafzaajaiaejcb", "[", "http://x:0")
	f.Fuzz(func(t *testing.T, id, addrs, rpc string) {
		ev, err := parseEvidence(map[string]string{EvidencePeerID: id, EvidenceAddrs: addrs, EvidenceRPC: rpc})
		if err != nil {
			return
		}
		if len(ev.addrs) == 0 || len(ev.addrs) > maxAddrs {
			t.Fatalf("accepted %d addresses", len(ev.addrs))
		}
		for _, a := range ev.addrs {
			if b, pid, err := parseAddr(a); err != nil || b != a || pid != "" {
				t.Fatalf("accepted address %q does not parse back: %q %q %v", a, b, pid, err)
			}
		}
		if again, err := parsePeerID(ev.peerID); err != nil || again != ev.peerID {
			t.Fatalf("peer id %q not stable: %q %v", ev.peerID, again, err)
		}
	})
}
