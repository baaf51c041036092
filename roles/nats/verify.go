package nats

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/microdc/mdc/machine"
	"github.com/microdc/mdc/roles"
)

// Verify says whether m's server is a connected route of the cluster, seen
// from both sides: the node's server reports a route to another member, and
// another member reports a route to the node's server. A node whose server
// is the only one answering is the cluster's first member, and joined. It asks every server
// at once over the system account ($SYS.REQ.SERVER.PING.ROUTEZ), which works
// the same through the embedded server's in-process connection and against
// a remote cluster, and needs no monitoring port reachable from mdc.
func (r *Role) Verify(ctx context.Context, m machine.Machine, evidence map[string]string) error {
	name := ServerName(m)
	if got, ok := evidence[EvidenceServerName]; ok && got != name {
		if got != string(m.ID) {
			if len(got) > 64 {
				got = got[:64] + "…"
			}
			return fmt.Errorf("nats role: the node reports server_name %q, mdc configured %q", got, name)
		}
		name = got // renamed since it was configured
	}
	seen, err := r.routes(ctx, name)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		// mdc not reaching the cluster says nothing against the node.
		return fmt.Errorf("%w: %v", roles.ErrNotYet, err)
	}
	if seen.node && seen.cluster || seen.nodeAnswered && seen.others == 0 {
		return nil
	}
	if !seen.node && !seen.cluster {
		return fmt.Errorf("%w: no route between %s and the cluster", roles.ErrNotYet, name)
	}
	if !seen.node {
		return fmt.Errorf("%w: %s does not answer, or reports no route", roles.ErrNotYet, name)
	}
	return fmt.Errorf("%w: no other member reports a route to %s", roles.ErrNotYet, name)
}

type routeSeen struct {
	node, cluster bool // the node's side of a route, the cluster's side
	nodeAnswered  bool
	others        int // servers other than the node that answered
}

type routezAnswer struct {
	Server server.ServerInfo `json:"server"`
	Data   server.Routez     `json:"data"`
	Error  *server.ApiError  `json:"error"`
}

// routes collects the servers' routez answers for VerifyWait, or until both
// sides of name's route were seen.
func (r *Role) routes(ctx context.Context, name string) (routeSeen, error) {
	var seen routeSeen
	err := r.pingRoutez(ctx, func(a routezAnswer) bool {
		if a.Server.Name == name {
			seen.nodeAnswered = true
		} else {
			seen.others++
		}
		for _, ri := range a.Data.Routes {
			if ri == nil {
				continue
			}
			if a.Server.Name == name && ri.RemoteName != name && ri.RemoteName != "" {
				seen.node = true
			}
			if a.Server.Name != name && ri.RemoteName == name {
				seen.cluster = true
			}
		}
		return seen.node && seen.cluster
	})
	return seen, err
}

// pingRoutez asks every server of the cluster for its routes over the
// system account and hands each good answer to each, for VerifyWait or
// until each says it has seen enough. One server's bad answer says nothing
// about the others and is skipped.
func (r *Role) pingRoutez(ctx context.Context, each func(routezAnswer) (enough bool)) error {
	nc, err := r.connectSystem(len(r.cfg.URLs) == 0)
	if err != nil {
		return err
	}
	defer nc.Close()
	inbox := nc.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return err
	}
	if err := nc.PublishRequest("$SYS.REQ.SERVER.PING.ROUTEZ", inbox, nil); err != nil {
		return fmt.Errorf("nats role: ask for routes: %w", err)
	}
	wctx, cancel := context.WithTimeout(ctx, r.cfg.VerifyWait)
	defer cancel()
	for {
		msg, err := sub.NextMsgWithContext(wctx)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, context.DeadlineExceeded) {
				return nil
			}
			return fmt.Errorf("nats role: routes: %w", err)
		}
		var a routezAnswer
		if err := json.Unmarshal(msg.Data, &a); err != nil || a.Error != nil {
			continue
		}
		if each(a) {
			return nil
		}
	}
}
