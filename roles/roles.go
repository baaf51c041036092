// Package roles is what each role needs to join its cluster: the per-machine
// configuration the agent fetches, the secrets it mints, the check that the
// cluster really took the node, and what retiring the node removes.
// roles/ceph, roles/nats and roles/ipfs implement Role.
package roles

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"github.com/microdc/mdc/api/agentapi"
	"github.com/microdc/mdc/machine"
)

// Role is one kind of node.
type Role interface {
	// Name is the role's name as machines carry it (ceph-osd, nats, ipfs).
	Name() string
	// Configure fills in what machine m needs at run time to join: files
	// (with modes), the role's Config JSON for the join hook, the evidence
	// keys the hook must report. It runs at request time, after the
	// machine's boot token was checked; what it returns is never logged.
	// report carries what the node sent with the request, if anything
	// (e.g. its public NATS nkey, its IPFS peer id).
	Configure(ctx context.Context, m machine.Machine, report map[string]string, c *agentapi.RoleConfig) error
	// Verify checks, after the agent reported joined with evidence, that
	// the cluster confirms the node. ErrNotYet: ask again later; any other
	// error is the reason the join failed.
	Verify(ctx context.Context, m machine.Machine, evidence map[string]string) error
	// Retire takes a retired node out of its cluster and revokes what was
	// minted for it. It is idempotent.
	Retire(ctx context.Context, m machine.Machine) error
}

// ErrBadReport is wrapped by Configure when what the node reported is not
// valid (a malformed key): the node's fault, answered 400.
var ErrBadReport = errors.New("bad report")

// ErrNotYet is Verify's answer while the cluster does not show the node yet.
var ErrNotYet = errors.New("the cluster does not show the node yet")

// Registry holds the roles mdc knows, by name. It does not change after
// NewRegistry, so it needs no lock.
type Registry struct {
	roles map[string]Role
}

// NewRegistry returns a registry of rs; two roles with one name are an error.
func NewRegistry(rs ...Role) (*Registry, error) {
	r := &Registry{roles: make(map[string]Role)}
	for _, x := range rs {
		if _, dup := r.roles[x.Name()]; dup {
			return nil, fmt.Errorf("roles: %q registered twice", x.Name())
		}
		r.roles[x.Name()] = x
	}
	return r, nil
}

// Get returns the role named name.
func (r *Registry) Get(name string) (Role, bool) {
	x, ok := r.roles[name]
	return x, ok
}

// Names lists the registered roles, sorted.
func (r *Registry) Names() []string {
	names := make([]string, 0, len(r.roles))
	for n := range r.roles {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Status is what `mdc roles show` prints of a role. It never holds a
// secret.
type Status struct {
	Name string `json:"name"`
	// Summary is one line: what the role joins and how healthy that is.
	Summary string `json:"summary"`
	// Settings are the role's non-secret settings (cluster name, fsid,
	// monitors, topology, ports).
	Settings map[string]string `json:"settings,omitempty"`
	// Members are the nodes the cluster confirmed, as the role knows them.
	Members []Member `json:"members,omitempty"`
}

// Member is one confirmed node of a role's cluster.
type Member struct {
	Machine machine.ID `json:"machine"`
	// Detail says how the cluster knows it: peer id, server name, OSD ids.
	Detail string `json:"detail,omitempty"`
}

// Describer is implemented by roles that can describe their cluster.
type Describer interface {
	Describe(ctx context.Context) (Status, error)
}
