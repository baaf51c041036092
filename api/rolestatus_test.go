package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/microdc/mdc/api/agentapi"
	"github.com/microdc/mdc/machine"
	"github.com/microdc/mdc/roles"
)

// fakeRoleStatus runs one role, ipfs, and a policy naming test.
type fakeRoleStatus struct{}

func (fakeRoleStatus) Names() []string       { return []string{"ipfs"} }
func (fakeRoleStatus) PolicyRoles() []string { return []string{"ipfs", "test"} }
func (fakeRoleStatus) Describe(_ context.Context, name string) (roles.Status, bool, error) {
	if name != "ipfs" {
		return roles.Status{}, false, nil
	}
	return roles.Status{Name: "ipfs", Summary: "private IPFS swarm of 1 joined node",
		Settings: map[string]string{"swarm_key_sha256": "0123456789abcdef"},
		Members:  []roles.Member{{Machine: "525400c10009", Detail: "peer 12D3KooW"}}}, true, nil
}

// waitingRoles is a cluster that gives its reason for not showing a node
// until it has been asked confirmN times, or refuses it.
type waitingRoles struct {
	mu       sync.Mutex
	checks   map[machine.ID]int
	confirmN int
	refuse   error
}

func (r *waitingRoles) Configure(context.Context, machine.Machine, string, map[string]string, *agentapi.RoleConfig) error {
	return nil
}

func (r *waitingRoles) Verify(_ context.Context, m machine.Machine, _ string, _ map[string]string) (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.checks[m.ID]++
	switch {
	case r.refuse != nil:
		return false, r.refuse
	case r.checks[m.ID] < r.confirmN:
		return false, fmt.Errorf("test verify %s: %w: no route between 10.0.0.9 and the cluster", m.ID, roles.ErrNotYet)
	}
	return true, nil
}

func getAs[T any](t *testing.T, url string) (int, T) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var v T
	if resp.StatusCode == 200 {
		if err := json.Unmarshal(b, &v); err != nil {
			t.Fatalf("GET %s: %v in %s", url, err, b)
		}
	} else {
		var e struct{ Error Error }
		_ = json.Unmarshal(b, &e)
		if p, ok := any(&v).(*Error); ok {
			*p = e.Error
		}
	}
	return resp.StatusCode, v
}

func TestRolesAPI(t *testing.T) {
	f := newAgentFixture(t, testPolicy)
	f.api.cfg.RoleStatus = fakeRoleStatus{}
	id := machine.MustParseID("52:54:00:c1:00:01")
	f.toRoleBoot(t, id)
	other := machine.MustParseID("52:54:00:c1:00:02")
	for _, e := range []struct {
		typ  machine.EventType
		data any
	}{
		{machine.Discovered, machine.DiscoveredData{Via: "test"}},
		{machine.RoleAssigned, machine.RoleAssignedData{Role: "edge", By: "operator"}},
	} {
		if _, _, err := f.store.Update(context.Background(), other, func(machine.Machine) (machine.Event, error) {
			return machine.NewEvent(other, e.typ, "test", e.data)
		}); err != nil {
			t.Fatal(err)
		}
	}

	code, list := getAs[RoleList](t, f.srv.URL+"/api/v1/roles")
	want := RoleList{Roles: []RoleSummary{
		{Name: "edge", Summary: noClusterSummary, Machines: map[machine.State]int{machine.Provisioning: 1}},
		{Name: "ipfs", Cluster: true, Summary: "private IPFS swarm of 1 joined node", Machines: map[machine.State]int{}},
		{Name: "test", Summary: noClusterSummary, Machines: map[machine.State]int{machine.Running: 1}},
	}}
	if diff := cmp.Diff(want, list); code != 200 || diff != "" {
		t.Errorf("GET /api/v1/roles: %d (-want +got):\n%s", code, diff)
	}

	code, d := getAs[RoleDetail](t, f.srv.URL+"/api/v1/roles/ipfs")
	if code != 200 || !d.Cluster || d.Settings["swarm_key_sha256"] != "0123456789abcdef" || len(d.Members) != 1 || d.Nodes == nil || len(d.Nodes) != 0 {
		t.Errorf("GET /api/v1/roles/ipfs: %d %+v", code, d)
	}
	code, d = getAs[RoleDetail](t, f.srv.URL+"/api/v1/roles/test")
	if code != 200 || d.Cluster || len(d.Nodes) != 1 || d.Nodes[0].ID != id || d.Nodes[0].State != machine.Running {
		t.Errorf("GET /api/v1/roles/test: %d %+v", code, d)
	}

	code, e := getAs[Error](t, f.srv.URL+"/api/v1/roles/ceph-osd")
	if code != 404 || e.Code != CodeNotFound || !strings.Contains(e.Message, "no role ceph-osd") ||
		!strings.Contains(e.Message, "mdc runs ipfs") || !strings.Contains(e.Message, "edge, test") {
		t.Errorf("unknown role: %d %+v, want 404 naming it and the roles there are", code, e)
	}
	if code, e = getAs[Error](t, f.srv.URL+"/api/v1/roles/No_Such"); code != 400 || e.Code != CodeInvalidValue {
		t.Errorf("bad role name: %d %+v", code, e)
	}
	// The roles are read like everything else: --read-access token asks
	// for the token.
	locked := httptest.NewServer(New(Config{Machines: f.store, Token: token, Reads: ReadToken, RoleStatus: fakeRoleStatus{}}).Handler())
	defer locked.Close()
	if code, _ := getAs[Error](t, locked.URL+"/api/v1/roles"); code != 401 {
		t.Errorf("GET /api/v1/roles without the token under --read-access token: %d", code)
	}
}

// A machine's join shows in GET /api/v1/machines/{id}: configuring,
// waiting with the cluster's reason, confirmed; or failed.
func TestJoinStatus(t *testing.T) {
	rs := &waitingRoles{checks: map[machine.ID]int{}, confirmN: 4}
	f := newAgentFixture(t, testPolicy, func(c *AgentConfig) { c.Roles, c.VerifyInterval = rs, 100*time.Millisecond })
	id := machine.MustParseID("52:54:00:c1:00:01")
	tok := f.toRoleBoot(t, id)
	get := func() MachineDetail {
		t.Helper()
		code, m := getAs[MachineDetail](t, f.srv.URL+"/api/v1/machines/"+string(id))
		if code != 200 {
			t.Fatalf("GET machine: %d", code)
		}
		return m
	}
	if m := get(); m.Join != nil {
		t.Errorf("join before the agent fetched its configuration: %+v", m.Join)
	}
	var rc agentapi.RoleConfig
	f.ok(t, "GET", agentapi.PathConfig, id, tok, "", &rc)
	if j := get().Join; j == nil || j.State != JoinConfiguring || j.Role != "test" || j.ConfiguredAt.IsZero() {
		t.Errorf("after GET config: %+v", j)
	}
	var rec agentapi.Recorded
	f.ok(t, "POST", agentapi.PathJoined, id, tok, `{"evidence":{"kernel":"6.1.0-test","hook":"test"}}`, &rec)
	if rec.State != machine.Running {
		t.Fatalf("state %s, want running while the cluster does not show the node", rec.State)
	}
	j := get().Join
	if j == nil || j.State != JoinWaiting || j.ReportedAt.IsZero() || j.Checks != 1 ||
		j.Reason != "test verify 525400c10001: no route between 10.0.0.9 and the cluster" {
		t.Errorf("after joined: %+v, want waiting with the cluster's reason", j)
	}
	deadline := time.Now().Add(10 * time.Second)
	var m MachineDetail
	for m = get(); m.State != machine.StJoined; m = get() {
		if time.Now().After(deadline) {
			t.Fatalf("not joined: %+v %+v", m.Machine, m.Join)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if j := m.Join; j == nil || j.State != JoinConfirmed || j.Checks != 4 || j.Reason != "" || j.ConfirmedAt.Before(j.ReportedAt) {
		t.Errorf("confirmed: %+v", j)
	}

	// A restarted mdc knows only the machine's state.
	fresh := httptest.NewServer(New(Config{Machines: f.store}).Handler())
	defer fresh.Close()
	if _, m := getAs[MachineDetail](t, fresh.URL+"/api/v1/machines/"+string(id)); m.Join == nil || *m.Join != (JoinStatus{State: JoinJoined, Role: "test"}) {
		t.Errorf("after a restart: %+v, want state joined only", m.Join)
	}

	// The cluster refuses a node: failed, with its reason.
	rs.mu.Lock()
	rs.refuse = errors.New("osd.7 key refused by the monitors")
	rs.mu.Unlock()
	id2 := machine.MustParseID("52:54:00:c1:00:02")
	tok2 := f.toRoleBoot(t, id2)
	f.ok(t, "GET", agentapi.PathConfig, id2, tok2, "", &rc)
	f.ok(t, "POST", agentapi.PathJoined, id2, tok2, `{"evidence":{"kernel":"6.1.0-test","hook":"test"}}`, &rec)
	_, m = getAs[MachineDetail](t, f.srv.URL+"/api/v1/machines/"+string(id2))
	if m.State != machine.StFailed || m.Join == nil || m.Join.State != JoinFailed || !strings.Contains(m.Join.Reason, "osd.7 key refused") {
		t.Errorf("refused: %s %+v, want failed with the cluster's reason", m.State, m.Join)
	}
	// Neither shows the boot token.
	for _, mid := range []machine.ID{id, id2} {
		resp, err := http.Get(f.srv.URL + "/api/v1/machines/" + string(mid))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.Contains(string(b), tok) || strings.Contains(string(b), tok2) || strings.Contains(string(b), machine.HashBootToken(tok).TokenSHA256) {
			t.Errorf("GET machine shows a boot token: %s", b)
		}
	}
}

// A role mdc runs no cluster for (test) is joined at the node's word, and
// the join says so rather than claiming a cluster confirmed it.
func TestJoinNodesWord(t *testing.T) {
	f := newAgentFixture(t, testPolicy)
	f.api.cfg.RoleStatus = fakeRoleStatus{} // runs ipfs only
	id := machine.MustParseID("52:54:00:c1:00:09")
	tok := f.toRoleBoot(t, id)
	var rec agentapi.Recorded
	f.ok(t, "POST", agentapi.PathJoined, id, tok, `{"evidence":{"kernel":"6.1.0-test","hook":"test"}}`, &rec)
	if rec.State != machine.StJoined {
		t.Fatalf("state %s, want joined at the node's word", rec.State)
	}
	_, m := getAs[MachineDetail](t, f.srv.URL+"/api/v1/machines/"+string(id))
	if j := m.Join; j == nil || j.State != JoinNodesWord || j.Role != "test" || j.ConfirmedAt.IsZero() {
		t.Errorf("join %+v, want reported (no cluster to ask)", m.Join)
	}
}
