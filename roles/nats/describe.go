package nats

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"

	"github.com/microdc/mdc/machine"
	"github.com/microdc/mdc/roles"
)

var _ roles.Describer = (*Role)(nil)

// Describe lists the cluster's servers as they answer over the system
// account, with their routes, and the role's non-secret settings.
func (r *Role) Describe(ctx context.Context) (roles.Status, error) {
	n := r.cfg.Node
	st := roles.Status{Name: RoleName, Settings: map[string]string{
		"cluster":    r.cfg.ClusterName,
		"operator":   r.keys.OperatorPublicKey(),
		"account":    r.keys.AccountPublicKey(),
		"node ports": fmt.Sprintf("client %d, cluster %d, monitor %d (on %s)", n.ClientPort, n.ClusterPort, n.HTTPPort, n.MonitorHost),
	}}
	if routes, err := r.cfg.Routes(ctx); err == nil {
		st.Settings["seed routes"] = fmt.Sprint(routes)
	}
	// Route pooling makes several connections per peer: count peers.
	peers := map[string]map[string]bool{} // server name → names it routes to
	err := r.pingRoutez(ctx, func(a routezAnswer) bool {
		to := map[string]bool{}
		for _, ri := range a.Data.Routes {
			if ri != nil && ri.RemoteName != "" {
				to[ri.RemoteName] = true
			}
		}
		peers[a.Server.Name] = to
		return false
	})
	if err != nil {
		st.Summary = "cluster not reachable: " + err.Error()
		return st, nil
	}
	byName := map[string]machine.ID{}
	if r.cfg.Machines != nil {
		for _, m := range r.cfg.Machines() {
			byName[ServerName(m)] = m.ID
		}
	}
	for name, to := range peers {
		id, ok := byName[name]
		if !ok {
			continue // mdc's own member, or a server mdc did not configure
		}
		names := slices.Sorted(maps.Keys(to))
		detail := "server " + name + ", no route"
		if len(names) > 0 {
			detail = "server " + name + ", routes to " + strings.Join(names, ", ")
		}
		st.Members = append(st.Members, roles.Member{Machine: id, Detail: detail})
	}
	sort.Slice(st.Members, func(i, j int) bool { return st.Members[i].Machine < st.Members[j].Machine })
	st.Summary = fmt.Sprintf("NATS cluster %q: %d servers answer, %d of them nodes mdc configured", r.cfg.ClusterName, len(peers), len(st.Members))
	return st, nil
}
