package api

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/microdc/mdc/api/agentapi"
	"github.com/microdc/mdc/machine"
)

// clusterRoles is a role whose cluster confirms a node after some checks,
// or refuses it.
type clusterRoles struct {
	mu       sync.Mutex
	reports  []map[string]string
	checks   map[machine.ID]int
	confirmN int    // checks until the cluster shows the node
	refuse   error  // the cluster's refusal, if any
	evidence string // evidence the role asks for, if any
}

func (r *clusterRoles) Configure(_ context.Context, m machine.Machine, role string, report map[string]string, c *agentapi.RoleConfig) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reports = append(r.reports, report)
	c.Files = append(c.Files, agentapi.File{Path: "/etc/cluster/member.conf", Mode: "0600", Content: "member " + report["nkey"] + "\n"})
	if r.evidence != "" {
		c.Evidence = append(c.Evidence, r.evidence)
	}
	return nil
}

func (r *clusterRoles) Verify(_ context.Context, m machine.Machine, role string, _ map[string]string) (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.checks[m.ID]++
	if r.refuse != nil {
		return false, r.refuse
	}
	return r.checks[m.ID] >= r.confirmN, nil
}

// toRoleBoot brings id to a role boot of role test and reports it booted.
func (f *agentFixture) toRoleBoot(t *testing.T, id machine.ID) string {
	t.Helper()
	lifecycle := func(typ machine.EventType, data any) {
		if _, _, err := f.store.Update(context.Background(), id, func(machine.Machine) (machine.Event, error) {
			return machine.NewEvent(id, typ, "test", data)
		}); err != nil {
			t.Fatal(err)
		}
	}
	lifecycle(machine.Discovered, machine.DiscoveredData{Via: "test"})
	lifecycle(machine.RoleAssigned, machine.RoleAssignedData{Role: "test", By: "operator"})
	tok := f.boot(t, id, agentapi.ModeRole)
	var rec agentapi.Recorded
	f.ok(t, "POST", agentapi.PathBooted, id, tok, `{"kernel":"6.1.0-test"}`, &rec)
	return tok
}

// A join counts once the role's cluster confirms it: until then the
// machine stays running; a refusal fails it with the cluster's reason.
func TestAgentJoinConfirmedByCluster(t *testing.T) {
	roles := &clusterRoles{checks: map[machine.ID]int{}, confirmN: 3}
	f := newAgentFixture(t, testPolicy, func(c *AgentConfig) { c.Roles, c.VerifyInterval = roles, 20*time.Millisecond })
	id := machine.MustParseID("52:54:00:c1:00:01")
	tok := f.toRoleBoot(t, id)

	var rc agentapi.RoleConfig
	f.ok(t, "GET", agentapi.PathConfig+"?nkey=UABC123", id, tok, "", &rc)
	if len(rc.Files) != 2 || rc.Files[1].Content != "member UABC123\n" {
		t.Errorf("role config files %+v, want the policy's and the role's (with the reported key)", rc.Files)
	}
	if code, b := f.call(t, "GET", agentapi.PathConfig+"?Bad-Key=x", id, tok, ""); code != 400 || !strings.Contains(string(b), "Bad-Key") {
		t.Errorf("bad report key: %d %s, want 400 naming it", code, b)
	}

	var rec agentapi.Recorded
	f.ok(t, "POST", agentapi.PathJoined, id, tok, `{"evidence":{"kernel":"6.1.0-test","hook":"test"}}`, &rec)
	if rec.State != machine.Running {
		t.Fatalf("joined before the cluster confirms: state %s, want running", rec.State)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		m, _ := f.store.Get(id)
		if m.State == machine.StJoined {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("state %s after the cluster confirmed, want joined", m.State)
		}
		time.Sleep(10 * time.Millisecond)
	}
	roles.mu.Lock()
	checks := roles.checks[id]
	roles.mu.Unlock()
	if checks != 3 {
		t.Errorf("the cluster was asked %d times, want 3 (joined at the first yes)", checks)
	}
	if got := f.types(t, id); got[len(got)-1] != machine.Joined || countType(got, machine.Joined) != 1 {
		t.Errorf("history %v, want one joined at the end", got)
	}

	// A node the cluster refuses fails, with the cluster's reason.
	roles.mu.Lock()
	roles.refuse = errors.New("osd.7 key refused by the monitors")
	roles.mu.Unlock()
	id2 := machine.MustParseID("52:54:00:c1:00:02")
	tok2 := f.toRoleBoot(t, id2)
	f.ok(t, "POST", agentapi.PathJoined, id2, tok2, `{"evidence":{"kernel":"6.1.0-test","hook":"test"}}`, &rec)
	m, _ := f.store.Get(id2)
	if rec.State != machine.StFailed || m.Failure == nil || !strings.Contains(m.Failure.Reason, "osd.7 key refused") {
		t.Errorf("refused join: state %s failure %+v, want failed with the cluster's reason", rec.State, m.Failure)
	}
}

func countType(ts []machine.EventType, t machine.EventType) int {
	n := 0
	for _, x := range ts {
		if x == t {
			n++
		}
	}
	return n
}

// joined must carry the evidence the role's configuration asked for, and
// checking that does not configure the role again (which mints secrets).
func TestJoinedNeedsRoleEvidence(t *testing.T) {
	roles := &clusterRoles{checks: map[machine.ID]int{}, confirmN: 1, evidence: "member_id"}
	f := newAgentFixture(t, testPolicy, func(c *AgentConfig) { c.Roles = roles })
	id := machine.MustParseID("52:54:00:c1:00:05")
	tok := f.toRoleBoot(t, id)
	var rc agentapi.RoleConfig
	f.ok(t, "GET", agentapi.PathConfig+"?nkey=UABC123", id, tok, "", &rc)
	code, b := f.call(t, "POST", agentapi.PathJoined, id, tok, `{"evidence":{"kernel":"6.1.0-test","hook":"test"}}`)
	if code != 400 || !strings.Contains(string(b), "member_id") {
		t.Fatalf("joined without the role's evidence: %d %s, want 400 naming member_id", code, b)
	}
	var rec agentapi.Recorded
	f.ok(t, "POST", agentapi.PathJoined, id, tok, `{"evidence":{"kernel":"6.1.0-test","hook":"test","member_id":"m1"}}`, &rec)
	if rec.State != machine.StJoined {
		t.Fatalf("state %s, want joined", rec.State)
	}
	roles.mu.Lock()
	defer roles.mu.Unlock()
	if len(roles.reports) != 1 {
		t.Errorf("the role was configured %d times, want once (joined must not configure it again)", len(roles.reports))
	}
}
