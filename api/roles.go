package api

// GET /api/v1/roles and /api/v1/roles/{name}: the roles mdc knows, what
// their clusters say, and their machines with how each one's join goes
// (`mdc roles list|show`).

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/microdc/mdc/events"
	"github.com/microdc/mdc/machine"
	"github.com/microdc/mdc/roles"
)

// RoleStatus is what the roles routes need of the roles mdc runs.
type RoleStatus interface {
	// Names lists the roles mdc runs (it configures their nodes and asks
	// their clusters to confirm joins), sorted.
	Names() []string
	// Describe describes role name's cluster; false: mdc does not run it.
	// It never returns a secret.
	Describe(ctx context.Context, name string) (roles.Status, bool, error)
	// PolicyRoles lists the roles the role policy names, sorted; some of
	// them may have no cluster (test).
	PolicyRoles() []string
}

// describeTimeout bounds asking one role's cluster.
const describeTimeout = 5 * time.Second

// RoleSummary is one role of GET /api/v1/roles.
type RoleSummary struct {
	Name string `json:"name"`
	// Cluster: mdc runs the role's side (configures its nodes, asks its
	// cluster to confirm joins). A role without one (only the policy or
	// an operator names it) is joined at the node's word.
	Cluster bool   `json:"cluster"`
	Summary string `json:"summary,omitempty"`
	// Error: the cluster could not be described.
	Error string `json:"error,omitempty"`
	// Machines counts the machines of the role by state.
	Machines map[machine.State]int `json:"machines"`
}

// RoleList is the answer to GET /api/v1/roles.
type RoleList struct {
	Roles []RoleSummary `json:"roles"`
}

// RoleMachine is one machine of a role and how its join goes.
type RoleMachine struct {
	ID    machine.ID    `json:"id"`
	Name  string        `json:"name,omitempty"`
	State machine.State `json:"state"`
	Join  *JoinStatus   `json:"join,omitempty"`
}

// RoleDetail is the answer to GET /api/v1/roles/{name}.
type RoleDetail struct {
	RoleSummary
	Settings map[string]string `json:"settings,omitempty"`
	Members  []roles.Member    `json:"members,omitempty"`
	// Nodes are the machines that have the role, by id.
	Nodes []RoleMachine `json:"nodes"`
}

// noClusterSummary is the summary of a role mdc does not run.
const noClusterSummary = "no cluster: mdc takes each node's word that it joined"

// knownRoles returns every role mdc knows: the ones it runs, the
// policy's, and the ones machines carry; and the machines by role.
func (s *Server) knownRoles() (running map[string]bool, names []string, byRole map[string][]machine.Machine) {
	running = map[string]bool{}
	set := map[string]bool{}
	if rs := s.cfg.RoleStatus; rs != nil {
		for _, n := range rs.Names() {
			running[n], set[n] = true, true
		}
		for _, n := range rs.PolicyRoles() {
			set[n] = true
		}
	}
	byRole = map[string][]machine.Machine{}
	for _, m := range s.cfg.Machines.List(events.Filter{}) {
		if m.Role != "" {
			byRole[m.Role] = append(byRole[m.Role], m)
			set[m.Role] = true
		}
	}
	for n := range set {
		names = append(names, n)
	}
	slices.Sort(names)
	return running, names, byRole
}

// summary describes one role; its cluster is asked only if mdc runs it.
func (s *Server) summary(ctx context.Context, name string, cluster bool, ms []machine.Machine) (RoleSummary, roles.Status) {
	sum := RoleSummary{Name: name, Cluster: cluster, Summary: noClusterSummary, Machines: map[machine.State]int{}}
	for _, m := range ms {
		sum.Machines[m.State]++
	}
	var st roles.Status
	if !cluster {
		return sum, st
	}
	ctx, cancel := context.WithTimeout(ctx, describeTimeout)
	defer cancel()
	st, ok, err := s.cfg.RoleStatus.Describe(ctx, name)
	switch {
	case err != nil:
		sum.Summary, sum.Error = "", clipText(err.Error())
	case !ok:
		sum.Cluster, sum.Summary = false, noClusterSummary
	default:
		sum.Summary = clipText(st.Summary)
	}
	return sum, st
}

func (s *Server) listRoles(w http.ResponseWriter, r *http.Request) {
	running, names, byRole := s.knownRoles()
	list := RoleList{Roles: make([]RoleSummary, len(names))}
	// Clusters are asked side by side: one slow cluster costs its own
	// timeout, not the sum.
	var wg sync.WaitGroup
	for i, n := range names {
		wg.Go(func() { list.Roles[i], _ = s.summary(r.Context(), n, running[n], byRole[n]) })
	}
	wg.Wait()
	writeJSON(w, http.StatusOK, list)
}

func (s *Server) getRole(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if !roleRE.MatchString(name) {
		writeError(w, errorf(http.StatusBadRequest, CodeInvalidValue, "role %q: role names are lowercase letters, digits and '-', up to 63", clipText(name)))
		return
	}
	running, names, byRole := s.knownRoles()
	if !slices.Contains(names, name) {
		writeError(w, errorf(http.StatusNotFound, CodeNotFound, "no role %s: %s", name, rolesKnown(running, names)))
		return
	}
	sum, st := s.summary(r.Context(), name, running[name], byRole[name])
	d := RoleDetail{RoleSummary: sum, Settings: st.Settings, Members: st.Members, Nodes: []RoleMachine{}}
	for _, m := range byRole[name] {
		d.Nodes = append(d.Nodes, RoleMachine{ID: m.ID, Name: m.Name, State: m.State, Join: s.joinOf(m)})
	}
	writeJSON(w, http.StatusOK, d)
}

// rolesKnown says which roles there are, for a 404.
func rolesKnown(running map[string]bool, names []string) string {
	if len(names) == 0 {
		return "mdc knows no role (it runs none, the role policy names none, and no machine has one)"
	}
	var run, other []string
	for _, n := range names {
		if running[n] {
			run = append(run, n)
		} else {
			other = append(other, n)
		}
	}
	var parts []string
	if len(run) > 0 {
		parts = append(parts, "mdc runs "+strings.Join(run, ", "))
	}
	if len(other) > 0 {
		parts = append(parts, "the policy or machines name "+strings.Join(other, ", "))
	}
	return fmt.Sprintf("%s (mdc roles list)", strings.Join(parts, "; "))
}
