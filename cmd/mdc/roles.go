package main

// The roles side of `mdc serve`: the roles mdc runs (package roles), their
// settings, and the follower that takes retired machines out of their
// clusters (docs/agent.md, docs/roles-*.md).

import (
	"context"
	"errors"
	"flag"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/microdc/mdc/api/agentapi"
	"github.com/microdc/mdc/events"
	"github.com/microdc/mdc/machine"
	"github.com/microdc/mdc/roles"
	"github.com/microdc/mdc/roles/ceph"
	"github.com/microdc/mdc/roles/ipfs"
)

type roleFlags struct {
	cephConf, cephKeyring string
}

func addRoleFlags(fs *flag.FlagSet) *roleFlags {
	f := &roleFlags{}
	fs.StringVar(&f.cephConf, "ceph-conf", "", "ceph.conf of the Ceph cluster that ceph-osd machines join (enables the ceph-osd role; needs a build with -tags ceph,pacific)")
	fs.StringVar(&f.cephKeyring, "ceph-keyring", "", "keyring of client.admin of that cluster (0600)")
	return f
}

func (f *roleFlags) config() (*roleFlags, error) {
	if (f.cephConf == "") != (f.cephKeyring == "") {
		return nil, usagef("--ceph-conf and --ceph-keyring go together")
	}
	return f, nil
}

// roleSide implements api.Roles over the registry.
type roleSide struct {
	reg   *roles.Registry
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
	closeFn := func() {}
	if f.cephConf != "" {
		c, err := ceph.New(ctx, ceph.Config{ConfFile: f.cephConf, Keyring: f.cephKeyring, Log: log.With("role", "ceph-osd")})
		if errors.Is(err, ceph.ErrNotCompiled) {
			return nil, usagef("--ceph-conf: this mdc was %v", err)
		}
		if err != nil {
			return nil, err
		}
		rs = append(rs, c)
		closeFn = c.Close
	}
	reg, err := roles.NewRegistry(rs...)
	if err != nil {
		return nil, err
	}
	log.Info("roles", "run", reg.Names())
	return &roleSide{reg: reg, store: store, log: log, close: closeFn}, nil
}

// Configure implements api.Roles.
func (r *roleSide) Configure(ctx context.Context, m machine.Machine, role string, report map[string]string, c *agentapi.RoleConfig) error {
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
	err := x.Verify(ctx, m, evidence)
	if errors.Is(err, roles.ErrNotYet) {
		return false, nil
	}
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
