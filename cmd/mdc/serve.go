package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sync/errgroup"

	"github.com/microdc/mdc/api"
	"github.com/microdc/mdc/events"
	"github.com/microdc/mdc/images/blob"
	"github.com/microdc/mdc/machine"
)

const serveHelp = `Usage: mdc serve [flags]

Runs mdc: the event log (an embedded NATS JetStream unless --nats-url is
given), the machine table, and the HTTP API; with --interface also the
network boot services (DHCP, TFTP, iPXE scripts; docs/netboot.md). Flags
can also come from MDC_<FLAG> variables and the --config YAML file
(flags > env > file).

`

// serveConfig is every serve setting, validated before anything starts.
type serveConfig struct {
	configFile      string
	dataDir         string
	httpAddr        string
	natsURL         string
	natsCreds       string
	natsListen      string
	natsReplicas    int
	natsSyncAlways  bool
	telemetryMaxAge time.Duration
	readAccess      api.ReadAccess
	logLevel        slog.Level
	shutdownTimeout time.Duration
	images          imageFlags
	netboot         *netbootConfig
	agent           *agentConfig
	inventory       *inventoryConfig
	bmc             *bmcFlags
	roles           *roleFlags
}

func parseServe(args []string, stderr io.Writer, getenv func(string) string) (*serveConfig, error) {
	c := &serveConfig{}
	fs := newFlagSet("serve", stderr, serveHelp)
	fs.StringVar(&c.configFile, "config", "", "YAML file of settings (keys are flag names)")
	fs.StringVar(&c.dataDir, "data-dir", "/var/lib/mdc", "where mdc keeps its state: event log, admin.token, blobs")
	fs.StringVar(&c.httpAddr, "http-addr", ":8080", "address of the HTTP API, boot scripts and blobs")
	fs.StringVar(&c.natsURL, "nats-url", "", "an existing NATS deployment for the event log (default: embedded)")
	fs.StringVar(&c.natsCreds, "nats-creds", "", "credentials file for --nats-url")
	fs.StringVar(&c.natsListen, "nats-listen", "", "also let nodes and other mdc reach the embedded NATS at this host:port (they need the admin token)")
	fs.IntVar(&c.natsReplicas, "nats-replicas", 1, "stream replicas (3 on a NATS cluster)")
	fs.BoolVar(&c.natsSyncAlways, "nats-sync-always", false, "fsync every event (survives power loss, not only crashes; slower)")
	fs.DurationVar(&c.telemetryMaxAge, "telemetry-max-age", 7*24*time.Hour, "how long boot telemetry is kept")
	readAccess := fs.String("read-access", string(api.ReadLoopback), "who may read the API without the token: loopback, open or token")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	fs.DurationVar(&c.shutdownTimeout, "shutdown-timeout", 10*time.Second, "how long open HTTP requests get to finish on SIGINT/SIGTERM")
	c.images.register(fs)
	nb := addNetbootFlags(fs)
	ag := addAgentFlags(fs)
	inv := addInventoryFlags(fs)
	bf := addBMCFlags(fs)
	rf := addRoleFlags(fs)

	pos, err := parseArgs(fs, args)
	if err != nil {
		return nil, flagError(fs, err)
	}
	if len(pos) > 0 {
		return nil, usagef("serve takes no arguments, got %q", pos)
	}
	if err := settle(fs, getenv); err != nil {
		return nil, usagef("serve: %v", err)
	}
	if c.readAccess, err = api.ParseReadAccess(*readAccess); err != nil {
		return nil, usagef("--read-access: %v", err)
	}
	if err := c.logLevel.UnmarshalText([]byte(*logLevel)); err != nil {
		return nil, usagef("--log-level %q: want debug, info, warn or error", *logLevel)
	}
	if c.dataDir == "" {
		return nil, usagef("--data-dir must not be empty")
	}
	if _, _, err := net.SplitHostPort(c.httpAddr); err != nil {
		return nil, usagef("--http-addr %q: %v", c.httpAddr, err)
	}
	if c.natsListen != "" {
		if c.natsURL != "" {
			return nil, usagef("--nats-listen is for the embedded NATS; it cannot go with --nats-url")
		}
		if _, _, err := net.SplitHostPort(c.natsListen); err != nil {
			return nil, usagef("--nats-listen %q: %v", c.natsListen, err)
		}
	}
	if c.natsURL != "" {
		for _, u := range strings.Split(c.natsURL, ",") {
			p, err := url.Parse(strings.TrimSpace(u))
			if err != nil || (p.Scheme != "nats" && p.Scheme != "tls" && p.Scheme != "ws" && p.Scheme != "wss") || p.Host == "" {
				return nil, usagef("--nats-url %q: want nats://host:port (comma-separated for a cluster)", u)
			}
		}
	}
	if c.natsCreds != "" {
		if c.natsURL == "" {
			return nil, usagef("--nats-creds goes with --nats-url")
		}
		if _, err := os.Stat(c.natsCreds); err != nil {
			return nil, usagef("--nats-creds: %v", err)
		}
	}
	if c.natsReplicas < 1 || c.natsReplicas > 5 {
		return nil, usagef("--nats-replicas %d: want 1 to 5", c.natsReplicas)
	}
	if c.telemetryMaxAge < time.Minute {
		return nil, usagef("--telemetry-max-age %s: want at least 1m", c.telemetryMaxAge)
	}
	if err := c.images.validate(c.dataDir); err != nil {
		return nil, err
	}
	if c.netboot, err = nb.config(); err != nil {
		return nil, err
	}
	if c.agent, err = ag.config(); err != nil {
		return nil, err
	}
	if c.inventory, err = inv.config(); err != nil {
		return nil, err
	}
	if c.bmc, err = bf.config(); err != nil {
		return nil, err
	}
	if c.roles, err = rf.config(); err != nil {
		return nil, err
	}
	return c, nil
}

func serve(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	c, err := parseServe(args, stderr, getenv)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: c.logLevel}))
	if err := os.MkdirAll(c.dataDir, 0o700); err != nil {
		return fmt.Errorf("data directory: %w", err)
	}
	token, created, err := adminToken(c.dataDir)
	if err != nil {
		return err
	}
	if created {
		log.Info("created the admin token", "file", filepath.Join(c.dataDir, "admin.token"))
	}
	// Bind the HTTP port before starting anything, so a taken port is one
	// clear error and not a half-started server.
	ln, err := net.Listen("tcp", c.httpAddr)
	if err != nil {
		return fmt.Errorf("--http-addr: %w", err)
	}
	defer ln.Close()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := events.NewMetrics(reg)

	conn, err := events.Connect(ctx, events.NATSConfig{
		URL: c.natsURL, Creds: c.natsCreds, DataDir: c.dataDir, Listen: c.natsListen, Token: token,
		SyncAlways: c.natsSyncAlways, Logger: log,
	})
	if err != nil {
		return err
	}
	defer conn.Close() // after everything below has stopped: flushes the log
	if u := conn.ClientURL(); u != "" {
		log.Info("embedded NATS listening", "url", u)
	}
	elog, err := events.OpenLog(ctx, conn.NC, events.LogConfig{
		Replicas: c.natsReplicas, TelemetryMaxAge: c.telemetryMaxAge, Logger: log, Metrics: metrics,
	})
	if err != nil {
		return err
	}
	store := events.NewStore(elog, events.NewTable(log, metrics), log)
	imgs, err := c.images.open(ctx, c.dataDir, conn.NC, c.natsReplicas, reg, log,
		func() []machine.Machine { return store.List(events.Filter{}) })
	if err != nil {
		return err
	}
	defer imgs.store.Close()
	// Network boot: DHCP, TFTP and the router advertisement are bound here,
	// served once the machine table is replayed; /boot.ipxe goes on the mux.
	nb, err := newNetboot(ctx, c.netboot, netbootDeps{
		store: store, nc: conn.NC, images: catalogImages{imgs.Catalog},
		httpPort: ln.Addr().(*net.TCPAddr).Port, reg: reg, log: log,
	})
	if err != nil {
		return err
	}
	defer nb.close()
	agentSide := newAgentSide(c.agent, store, log)
	invSide, err := newInventorySide(ctx, c.inventory, c.netboot, conn.NC, store, reg, log)
	if err != nil {
		return err
	}
	bmcSide := newBMCSide(c.bmc, store, c.dataDir, reg, log)
	agentCfg := agentSide.api()
	agentCfg.BMCPowerCycles = true
	roleSide, err := newRoleSide(ctx, c.roles, c.dataDir, store, log)
	if err != nil {
		return err
	}
	agentCfg.Roles = roleSide
	apiServer := api.New(api.Config{
		Machines: store, Token: token, Reads: c.readAccess, Registry: reg, Gatherer: reg, Logger: log, Version: version,
		Images: imgs, Blobs: imgs.blobHandler(blob.OnServed(nb.rec.BlobServed)), Inventory: invSide.api(),
		Agent: agentCfg, BMCs: bmcSide, RoleStatus: roleSide.status(c.agent.policy),
	})
	nb.mount(apiServer.Mount)
	httpServer := &http.Server{
		Handler:           apiServer.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return store.Run(gctx) })
	g.Go(func() error {
		if store.WaitReady(gctx) == nil {
			nb.run(gctx, g)
		}
		return nil
	})
	g.Go(func() error { return imgs.Catalog.Run(gctx) })
	g.Go(func() error { return agentSide.run(gctx) })
	g.Go(func() error { return invSide.run(gctx, store) })
	g.Go(func() error { return bmcSide.run(gctx) })
	g.Go(func() error { return roleSide.run(gctx) })
	g.Go(func() error {
		if err := httpServer.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("http: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		// Drain: stop accepting, let open requests finish. Event feeds are
		// long-lived and end with their request contexts.
		apiServer.CloseFeeds()
		sctx, cancel := context.WithTimeout(context.Background(), c.shutdownTimeout)
		defer cancel()
		if err := httpServer.Shutdown(sctx); err != nil {
			_ = httpServer.Close()
		}
		return nil
	})
	g.Go(func() error {
		if err := store.WaitReady(gctx); err != nil {
			return nil
		}
		if err := imgs.Catalog.WaitReady(gctx); err != nil {
			return nil
		}
		log.Info("mdc ready", "version", version, "http", ln.Addr().String(), "machines", store.Table.Len(),
			"events", store.Table.Applied(), "data_dir", c.dataDir)
		fmt.Fprintf(stdout, "mdc ready on http://%s\n", ln.Addr())
		return nil
	})
	err = g.Wait()
	log.Info("mdc stopped")
	return err
}

// adminToken reads <dataDir>/admin.token, creating it (mode 0600) at first
// start. A token file others can read is refused rather than used.
func adminToken(dataDir string) (token string, created bool, err error) {
	path := filepath.Join(dataDir, "admin.token")
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		var raw [32]byte
		_, _ = rand.Read(raw[:])
		token = hex.EncodeToString(raw[:])
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return "", false, fmt.Errorf("create admin token: %w", err)
		}
		if _, err := f.WriteString(token + "\n"); err != nil {
			f.Close()
			return "", false, fmt.Errorf("write admin token: %w", err)
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return "", false, err
		}
		return token, true, f.Close()
	}
	if err != nil {
		return "", false, fmt.Errorf("admin token: %w", err)
	}
	st, err := os.Stat(path)
	if err != nil {
		return "", false, err
	}
	if st.Mode().Perm()&0o077 != 0 {
		return "", false, fmt.Errorf("%s is readable by others (mode %v): chmod 600 it", path, st.Mode().Perm())
	}
	token = strings.TrimSpace(string(b))
	if token == "" {
		return "", false, fmt.Errorf("%s is empty: delete it and mdc makes a new one", path)
	}
	return token, false, nil
}
