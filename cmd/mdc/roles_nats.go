package main

// The nats role in `mdc serve`: mdc's in-process member of the nodes' NATS
// cluster, the role on top of it, and NATS credentials for machines of
// every role (docs/roles-nats.md).

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/microdc/mdc/api/agentapi"
	"github.com/microdc/mdc/events"
	"github.com/microdc/mdc/machine"
	natsrole "github.com/microdc/mdc/roles/nats"
)

// Where a machine of any role finds the NATS credentials mdc minted for
// the public key it reported (nkey): its user JWT, and the client URLs to
// use it on. The seed never left the node.
const (
	machineNATSJWT     = "/etc/mdc/nats/user.jwt"
	machineNATSServers = "/etc/mdc/nats/servers"
)

type natsSide struct {
	*natsrole.Role
	member  *server.Server
	clients string // client URL of the member, if it takes clients
}

func newNATSRole(f *roleFlags, dataDir string, store *events.Store, log *slog.Logger) (*natsSide, error) {
	dir := filepath.Join(dataDir, "roles", "nats")
	keys, err := natsrole.OpenKeys(filepath.Join(dir, "keys"))
	if err != nil {
		return nil, err
	}
	srv, err := keys.StartMember(natsrole.Member{
		Dir: dir, Cluster: f.natsCluster, Clients: f.natsClients, ClusterName: f.natsClusterName,
		Logger: events.ServerLogger(log.With("component", "nats-cluster")),
	})
	if err != nil {
		return nil, err
	}
	r, err := natsrole.New(natsrole.Config{
		Keys:        keys,
		ClusterName: f.natsClusterName,
		// The member is the seed route; servers learn the rest of the
		// cluster from it.
		Routes:    func(context.Context) ([]string, error) { return []string{f.natsCluster}, nil },
		InProcess: srv,
		Node:      f.natsNode,
		Machines: func() []machine.Machine {
			return store.List(events.Filter{Role: natsrole.RoleName})
		},
		Logger: log.With("role", natsrole.RoleName),
	})
	if err != nil {
		srv.Shutdown()
		return nil, err
	}
	ns := &natsSide{Role: r, member: srv}
	if f.natsClients != "" {
		// Machines get an address they can reach: the cluster IP when the
		// client listener is on every interface.
		host, _, _ := net.SplitHostPort(f.natsClients)
		if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
			host, _, _ = net.SplitHostPort(f.natsCluster)
		}
		ns.clients = "nats://" + net.JoinHostPort(host, strconv.Itoa(srv.Addr().(*net.TCPAddr).Port))
	}
	log.Info("nats role: cluster member listening", "cluster", f.natsCluster, "clients", ns.clients)
	return ns, nil
}

func (n *natsSide) close() {
	n.member.Shutdown()
	n.member.WaitForShutdown()
}

// machineCredentials adds, for a machine that reported a public nkey, its
// user JWT and where to use it.
func (n *natsSide) machineCredentials(m machine.Machine, report map[string]string, c *agentapi.RoleConfig) error {
	pub, ok := report[natsrole.ReportNkey]
	if !ok {
		return nil
	}
	jwt, err := n.MachineCredentials(m.ID, pub)
	if err != nil {
		return fmt.Errorf("machine %s: report %q: %w", m.ID, natsrole.ReportNkey, err)
	}
	c.Files = append(c.Files, agentapi.File{Path: machineNATSJWT, Mode: "0600", Content: jwt + "\n"})
	if n.clients != "" {
		c.Files = append(c.Files, agentapi.File{Path: machineNATSServers, Mode: "0644", Content: n.clients + "\n"})
	}
	return nil
}
