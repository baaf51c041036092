package ipfs

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/microdc/mdc/roles"
)

// Describe shows the joined peers and the settings nodes get, and never
// the swarm or RPC key.
func TestDescribe(t *testing.T) {
	ctx := context.Background()
	r, dir := newRole(t, nil)
	st, err := r.Describe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Name != Name || st.Summary != "private IPFS swarm: no node joined yet" || len(st.Members) != 0 {
		t.Errorf("empty swarm: %+v", st)
	}

	a := Peer{Machine: "525400000001", ID: pidA, Addrs: []string{"/ip4/10.0.0.1/tcp/4001"}, RPC: "http://10.0.0.1:5001"}
	b := Peer{Machine: "525400000002", ID: pidB}
	for _, p := range []Peer{b, a} {
		if err := r.Peers().Put(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	st, err = r.Describe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []roles.Member{
		{Machine: a.Machine, Detail: "peer " + pidA + " at /ip4/10.0.0.1/tcp/4001"},
		{Machine: b.Machine, Detail: "peer " + pidB},
	}
	if diff := cmp.Diff(want, st.Members); diff != "" {
		t.Errorf("members (-want +got):\n%s", diff)
	}
	if st.Summary != "private IPFS swarm of 2 joined nodes" {
		t.Errorf("summary %q", st.Summary)
	}
	key, err := os.ReadFile(filepath.Join(dir, "swarm.key"))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(key) // what sha256sum prints on a node
	if got := st.Settings["swarm_key_sha256"]; got != hex.EncodeToString(sum[:])[:16] {
		t.Errorf("swarm key fingerprint %q, want the start of sha256sum swarm.key", got)
	}
	if st.Settings["bootstrap_peers"] != "2" || st.Settings["swarm_port"] != "4001" || st.Settings["repo"] != DefaultRepo {
		t.Errorf("settings %v", st.Settings)
	}
	rpc, err := os.ReadFile(filepath.Join(dir, "rpc.key"))
	if err != nil {
		t.Fatal(err)
	}
	js, _ := json.Marshal(st)
	hexKey := strings.TrimSpace(strings.TrimPrefix(string(key), swarmKeyHeader))
	for name, secret := range map[string]string{"swarm key": hexKey, "rpc key": hex.EncodeToString(rpc), "rpc key raw": string(rpc)} {
		if secret != "" && strings.Contains(string(js), secret) {
			t.Errorf("Describe shows the %s: %s", name, js)
		}
	}
	if strings.Contains(string(js), "bearer:") || strings.Contains(string(js), a.RPC) {
		t.Errorf("Describe shows RPC access: %s", js)
	}
}
