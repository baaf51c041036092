package main

// The roles side of `mdc serve`: the roles mdc runs (package roles), their
// settings, and the follower that takes retired machines out of their
// clusters (docs/agent.md, docs/roles-*.md).

import (
	"context"
	"errors"
	"flag"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/microdc/mdc/api/agentapi"
	"github.com/microdc/mdc/events"
	"github.com/microdc/mdc/machine"
	"github.com/microdc/mdc/roles"
	"github.com/microdc/mdc/roles/ceph"
	"github.com/microdc/mdc/roles/ipfs"
	natsrole "github.com/microdc/mdc/roles/nats"
)

type roleFlags struct {
	cephConf, cephKeyring string
	// The nats role: mdc's cluster member and the nodes' settings.
	natsCluster, natsClients, natsClusterName string
	natsNodeHost, natsNodePorts               string
	natsNode                                  natsrole.Node
}

func addRoleFlags(fs *flag.FlagSet) *roleFlags {
	f := &roleFlags{}
	fs.StringVar(&f.cephConf, "ceph-conf", "", "ceph.conf of the Ceph cluster that ceph-osd machines join (enables the ceph-osd role; needs a build with -tags ceph,pacific)")
	fs.StringVar(&f.cephKeyring, "ceph-keyring", "", "keyring of client.admin of that cluster (0600)")
	fs.StringVar(&f.natsCluster, "nats-cluster", "", "IP:port where mdc's member of the NATS cluster listens for routes (enables the nats role; nodes route to it)")
	fs.StringVar(&f.natsClients, "nats-cluster-clients", "", "host:port where that member also takes clients: machines with the NATS credentials mdc minted for them")
	fs.StringVar(&f.natsClusterName, "nats-cluster-name", "mdc", "name of the NATS cluster nats nodes join")
	fs.StringVar(&f.natsNodeHost, "nats-node-host", "0.0.0.0", "address a nats node's server listens on for clients and routes")
	fs.StringVar(&f.natsNodePorts, "nats-node-ports", "4222,6222,8222", "a nats node's client, cluster and monitoring ports")
	return f
}

func (f *roleFlags) config() (*roleFlags, error) {
	if (f.cephConf == "") != (f.cephKeyring == "") {
		return nil, usagef("--ceph-conf and --ceph-keyring go together")
	}
	if f.natsCluster == "" {
		if f.natsClients != "" {
			return nil, usagef("--nats-cluster-clients goes with --nats-cluster")
		}
		return f, nil
	}
	host, _, err := net.SplitHostPort(f.natsCluster)
	if ip := net.ParseIP(host); err != nil || ip == nil || ip.IsUnspecified() {
		return nil, usagef("--nats-cluster %q: want IP:port, the address nodes route to (not 0.0.0.0 or a name)", f.natsCluster)
	}
	if f.natsClients != "" {
		if _, _, err := net.SplitHostPort(f.natsClients); err != nil {
			return nil, usagef("--nats-cluster-clients %q: %v", f.natsClients, err)
		}
	}
	var p []int
	for _, s := range strings.Split(f.natsNodePorts, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n <= 0 || n > 65535 {
			p = nil
			break
		}
		p = append(p, n)
	}
	if len(p) != 3 {
		return nil, usagef("--nats-node-ports %q: want three ports, client,cluster,monitoring (e.g. 4222,6222,8222)", f.natsNodePorts)
	}
	if net.ParseIP(f.natsNodeHost) == nil {
		return nil, usagef("--nats-node-host %q: want an IP address", f.natsNodeHost)
	}
	f.natsNode = natsrole.Node{Host: f.natsNodeHost, ClientPort: p[0], ClusterPort: p[1], HTTPPort: p[2]}
	return f, nil
}

// roleSide implements api.Roles over the registry.
type roleSide struct {
	reg   *roles.Registry
	nats  *natsSide // nil without --nats-cluster
	store *events.Store
	log   *slog.Logger
	close func()
}

func newRoleSide(ctx context.Context, f *roleFlags, dataDir string, store *events.Store, log *slog.Logger) (*roleSide, error) {
	ip, err := ipfs.New(ipfs.Config{DataDir: filepath.Join(dataDir, "roles", "ipfs"), Log: log.With("role", "ipfs")})
	if err != nil {
		return nil, err
	}
	rs := []roles.Role{ip}
	var closers []func()
	closeFn := func() {
		for _, c := range closers {
			c()
		}
	}
	var ns *natsSide
	if f.natsCluster != "" {
		if ns, err = newNATSRole(f, dataDir, store, log); err != nil {
			return nil, err
		}
		closers = append(closers, ns.close)
		rs = append(rs, ns.Role)
	}
	if f.cephConf != "" {
		c, err := ceph.New(ctx, ceph.Config{ConfFile: f.cephConf, Keyring: f.cephKeyring, Log: log.With("role", "ceph-osd")})
		if errors.Is(err, ceph.ErrNotCompiled) {
			return nil, usagef("--ceph-conf: this mdc was %v", err)
		}
		if err != nil {
			closeFn()
			return nil, err
		}
		rs = append(rs, c)
		closers = append(closers, c.Close)
	}
	reg, err := roles.NewRegistry(rs...)
	if err != nil {
		closeFn()
		return nil, err
	}
	log.Info("roles", "run", reg.Names())
	return &roleSide{reg: reg, nats: ns, store: store, log: log, close: closeFn}, nil
}

// Configure implements api.Roles.
func (r *roleSide) Configure(ctx context.Context, m machine.Machine, role string, report map[string]string, c *agentapi.RoleConfig) error {
	// The nats role serves a node its own credentials; every other
	// machine that reported a key gets them here.
	if r.nats != nil && role != natsrole.RoleName {
		if err := r.nats.machineCredentials(m, report, c); err != nil {
			return err
		}
	}
	x, ok := r.reg.Get(role)
	if !ok {
		return nil // a role of the policy only (e.g. test)
	}
	return x.Configure(ctx, m, report, c)
}

// Verify implements api.Roles.
func (r *roleSide) Verify(ctx context.Context, m machine.Machine, role string, evidence map[string]string) (bool, error) {
	x, ok := r.reg.Get(role)
	if !ok {
		return true, nil
	}
	// An error wrapping roles.ErrNotYet is the cluster's reason for not yet.
	err := x.Verify(ctx, m, evidence)
	return err == nil, err
}

// run follows the log from now on and takes each retired machine out of
// its role's cluster, retrying while the role says not yet (data still
// moving off an OSD).
func (r *roleSide) run(ctx context.Context) error {
	defer r.close()
	if r.store.WaitReady(ctx) != nil {
		return nil
	}
	from, err := r.store.LastSeq(ctx)
	if err != nil {
		return err
	}
	err = r.store.Follow(ctx, from+1, "", func(e machine.Event, _ uint64) error {
		if e.Type != machine.Retired {
			return nil
		}
		if r.store.Table.WaitFor(ctx, e.Seq) != nil {
			return nil
		}
		m, _ := r.store.Get(e.Machine)
		if x, ok := r.reg.Get(m.Role); ok {
			go r.retire(ctx, x, m)
		}
		if r.nats != nil && m.Role != natsrole.RoleName {
			if err := r.nats.RevokeMachine(ctx, m.ID); err != nil {
				r.log.Warn("revoking a retired machine's NATS credentials failed", "machine", m.ID, "err", err)
			}
		}
		return nil
	})
	if ctx.Err() != nil {
		return nil
	}
	return err
}

func (r *roleSide) retire(ctx context.Context, x roles.Role, m machine.Machine) {
	wait := 10 * time.Second
	for {
		err := x.Retire(ctx, m)
		switch {
		case err == nil:
			r.log.Info("retired machine left its cluster", "machine", m.ID, "role", x.Name())
			return
		case !errors.Is(err, roles.ErrNotYet):
			r.log.Warn("taking a retired machine out of its cluster failed", "machine", m.ID, "role", x.Name(), "err", err)
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Minute)
	}
}
