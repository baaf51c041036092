package main

// The agent side of `mdc serve`: the role policy (--role-policy), the agent
// API's settings, and the watcher that fails machines stuck in
// commissioning or provisioning (docs/agent.md).

import (
	"context"
	"flag"
	"log/slog"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/microdc/mdc/api"
	"github.com/microdc/mdc/events"
	"github.com/microdc/mdc/policy"
)

// agentFlags are the flags of the agent side, as given.
type agentFlags struct {
	rolePolicy                  string
	commissioning, provisioning time.Duration
	heartbeat                   time.Duration
}

func addAgentFlags(fs *flag.FlagSet) *agentFlags {
	f := &agentFlags{}
	fs.StringVar(&f.rolePolicy, "role-policy", "", "YAML file of rules that give machines roles from their facts, and the roles' join settings (docs/agent.md); without it every machine waits in ready for mdc machines assign")
	fs.DurationVar(&f.commissioning, "commissioning-timeout", 15*time.Minute, "a machine still commissioning this long after it started becomes failed (0: never)")
	fs.DurationVar(&f.provisioning, "provisioning-timeout", 30*time.Minute, "a machine not joined this long after its role image was first served becomes failed (0: never)")
	fs.DurationVar(&f.heartbeat, "agent-heartbeat", 30*time.Second, "how often the agents of commissioning boots send heartbeats")
	return f
}

// agentConfig is the validated agent side.
type agentConfig struct {
	policy                      *policy.Policy
	policyFile                  string
	commissioning, provisioning time.Duration
	heartbeat                   time.Duration
}

// config loads and checks the policy file, so that a mistake in it stops
// mdc at start with the line it is on.
func (f *agentFlags) config() (*agentConfig, error) {
	c := &agentConfig{policy: policy.Hold(), policyFile: f.rolePolicy,
		commissioning: f.commissioning, provisioning: f.provisioning, heartbeat: f.heartbeat}
	if f.rolePolicy != "" {
		p, err := policy.Load(f.rolePolicy)
		if err != nil {
			return nil, usagef("--role-policy: %v", err)
		}
		c.policy = p
	}
	for name, d := range map[string]time.Duration{"--commissioning-timeout": f.commissioning, "--provisioning-timeout": f.provisioning} {
		if d != 0 && d < time.Second {
			return nil, usagef("%s %s: want at least 1s, or 0 for never", name, d)
		}
	}
	if f.heartbeat < time.Second || f.heartbeat > time.Hour {
		return nil, usagef("--agent-heartbeat %s: want 1s to 1h", f.heartbeat)
	}
	return c, nil
}

// agentSide is the policy engine and the timeout watcher.
type agentSide struct {
	cfg     *agentConfig
	engine  *policy.Engine
	watcher *timeoutWatcher
	store   *events.Store
	log     *slog.Logger
}

func newAgentSide(c *agentConfig, store *events.Store, log *slog.Logger) *agentSide {
	return &agentSide{
		cfg: c, store: store, log: log,
		engine:  policy.NewEngine(c.policy, store, log),
		watcher: newTimeoutWatcher(store, timeouts{commissioning: c.commissioning, provisioning: c.provisioning}, log),
	}
}

// api is the agent API's configuration.
func (a *agentSide) api() api.AgentConfig {
	return api.AgentConfig{Policy: a.engine, Telemetry: a.store.Log, Heartbeat: a.cfg.heartbeat}
}

// run replays the log into the policy engine and watches for timeouts
// until ctx ends.
func (a *agentSide) run(ctx context.Context) error {
	if a.cfg.policyFile != "" {
		a.log.Info("role policy", "file", a.cfg.policyFile, "rules", len(a.cfg.policy.Rules), "default", a.cfg.policy.Default, "held", a.cfg.policy.Held)
	} else {
		a.log.Info("no role policy (--role-policy): machines wait in ready for mdc machines assign")
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return a.engine.Run(gctx) })
	g.Go(func() error {
		if a.store.WaitReady(gctx) != nil {
			return nil
		}
		return a.watcher.Run(gctx)
	})
	return g.Wait()
}
