package nats

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"

	"github.com/microdc/mdc/machine"
	"github.com/microdc/mdc/roles"
)

var _ roles.Describer = (*Role)(nil)

// Describe lists the cluster's servers as they answer over the system
// account, with their routes, and the role's non-secret settings.
func (r *Role) Describe(ctx context.Context) (roles.Status, error) {
	n := r.cfg.Node
	st := roles.Status{Name: RoleName, Settings: map[string]string{
		"cluster":      r.cfg.ClusterName,
		"operator":     r.keys.OperatorPublicKey(),
		"account":      r.keys.AccountPublicKey(),
		"node ports":   fmt.Sprintf("client %d, cluster %d, monitor %d (on %s)", n.ClientPort, n.ClusterPort, n.HTTPPort, n.MonitorHost),
		"node servers": "server_name = machine name, else its id",
	}}
	if routes, err := r.cfg.Routes(ctx); err == nil {
		st.Settings["seed routes"] = fmt.Sprint(routes)
	}
	servers, err := r.servers(ctx)
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
	nodes := 0
	for _, s := range servers {
		id, ok := byName[s.name]
		if !ok {
			continue // mdc's own member, or a server mdc did not configure
		}
		nodes++
		st.Members = append(st.Members, roles.Member{Machine: id,
			Detail: "server " + s.name + ", " + strconv.Itoa(s.routes) + " routes"})
	}
	st.Summary = fmt.Sprintf("NATS cluster %q: %d nodes mdc configured, %d servers in all (mdc's member included)", r.cfg.ClusterName, nodes, len(servers))
	return st, nil
}

type serverRoutes struct {
	name   string
	routes int
}

// servers asks every server of the cluster for its routes and collects
// the answers for VerifyWait.
func (r *Role) servers(ctx context.Context) ([]serverRoutes, error) {
	nc, err := r.connectSystem(len(r.cfg.URLs) == 0)
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	inbox := nc.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return nil, err
	}
	if err := nc.PublishRequest("$SYS.REQ.SERVER.PING.ROUTEZ", inbox, nil); err != nil {
		return nil, err
	}
	wctx, cancel := context.WithTimeout(ctx, r.cfg.VerifyWait)
	defer cancel()
	var out []serverRoutes
	for {
		msg, err := sub.NextMsgWithContext(wctx)
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			break
		}
		if err != nil {
			return nil, err
		}
		var a routezAnswer
		if json.Unmarshal(msg.Data, &a) != nil || a.Error != nil {
			continue
		}
		out = append(out, serverRoutes{name: a.Server.Name, routes: len(a.Data.Routes)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out, nil
}
