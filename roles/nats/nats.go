// Package nats is the "nats" role: a node that runs nats-server and joins
// mdc's NATS cluster. mdc serves the node's server configuration (cluster
// name, routes to the current members, JetStream, its server name, the
// operator and account JWTs of decentralised JWT auth) and a user JWT for the
// node's own public nkey; the seed never leaves the node. Keys also mints
// credentials for machines of every role (MachineCredentials).
// docs/roles-nats.md describes the trust chain.
package nats

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/microdc/mdc/api/agentapi"
	"github.com/microdc/mdc/machine"
	"github.com/microdc/mdc/roles"
)

// RoleName is the role's name as machines carry it.
const RoleName = "nats"

// ReportNkey is the report key the node's public user nkey comes in.
const ReportNkey = "nkey"

// EvidenceServerName is the evidence key the join hook reports: the
// server_name its nats-server runs with.
const EvidenceServerName = "server_name"

// Node says where things live on a node of this role.
type Node struct {
	// Host is what the node's server listens on for clients and routes.
	// Default 0.0.0.0.
	Host string
	// MonitorHost is where its monitoring port listens. Default 127.0.0.1:
	// monitoring has no auth, and mdc does not need it (Verify asks over
	// the system account).
	MonitorHost string
	// Ports; defaults 4222, 6222, 8222.
	ClientPort, ClusterPort, HTTPPort int
	// ConfigFile is the server configuration mdc serves (mode 0600: it
	// holds the route password). Default /etc/nats/nats-server.conf.
	ConfigFile string
	// UserJWTFile is the node's user JWT; with its seed it makes the
	// node's credentials. Default /etc/nats/user.jwt.
	UserJWTFile string
	// StoreDir is JetStream's store. Default /var/lib/nats/jetstream.
	StoreDir string
	// ResolverDir is where the server keeps account JWTs. Default
	// /var/lib/nats/jwt.
	ResolverDir string
	// SeedFile is where the image put the node's user seed (0600) when it
	// made the key it reports. Default /var/lib/mdc/nats/user.nk.
	SeedFile string
	// CredsFile is the creds file the join hook makes of the user JWT and
	// the seed, for the node's clients. Default /etc/nats/node.creds.
	CredsFile string
	// PidFile is where the join hook keeps nats-server's PID. Default
	// /run/nats/nats-server.pid.
	PidFile string
}

// Config is what the role needs.
type Config struct {
	// Keys is mdc's trust chain (OpenKeys).
	Keys *Keys
	// ClusterName; default "mdc".
	ClusterName string
	// Routes returns the route listeners (host:port) of the cluster's
	// current members: mdc's embedded server's cluster address and the
	// joined nats nodes'. A node's own address in it is harmless.
	Routes func(ctx context.Context) ([]string, error)
	// InProcess is mdc's embedded server (a *server.Server), if any.
	InProcess nats.InProcessConnProvider
	// URLs are client URLs of the nodes' cluster when mdc's embedded
	// server is not a member of it (or there is none). mdc connects as a
	// system-account user: to the cluster (URLs, else InProcess) to ask
	// servers for their routes, and to both to push account updates.
	URLs []string
	Node Node
	// Machines, if set, lists the machines of this role, so that Describe
	// can name the machine behind each server.
	Machines func() []machine.Machine
	// VerifyWait bounds how long Verify collects the servers' answers;
	// default 2s.
	VerifyWait time.Duration
	Logger     *slog.Logger
}

// Role is the nats role.
type Role struct {
	cfg  Config
	keys *Keys
	log  *slog.Logger
}

var _ roles.Role = (*Role)(nil)

// New checks cfg and returns the role.
func New(cfg Config) (*Role, error) {
	if cfg.Keys == nil {
		return nil, errors.New("nats role: no keys (OpenKeys)")
	}
	if cfg.Routes == nil {
		return nil, errors.New("nats role: no Routes: a node must be told where the cluster is")
	}
	if cfg.InProcess == nil && len(cfg.URLs) == 0 {
		return nil, errors.New("nats role: neither an embedded server nor cluster URLs to reach the cluster through")
	}
	if cfg.ClusterName == "" {
		cfg.ClusterName = "mdc"
	}
	if !safeName.MatchString(cfg.ClusterName) {
		return nil, fmt.Errorf("nats role: cluster name %q: use letters, digits, '.', '_' and '-'", cfg.ClusterName)
	}
	n := &cfg.Node
	n.Host = def(n.Host, "0.0.0.0")
	n.MonitorHost = def(n.MonitorHost, "127.0.0.1")
	n.ConfigFile = def(n.ConfigFile, "/etc/nats/nats-server.conf")
	n.UserJWTFile = def(n.UserJWTFile, "/etc/nats/user.jwt")
	n.StoreDir = def(n.StoreDir, "/var/lib/nats/jetstream")
	n.ResolverDir = def(n.ResolverDir, "/var/lib/nats/jwt")
	n.SeedFile = def(n.SeedFile, "/var/lib/mdc/nats/user.nk")
	n.CredsFile = def(n.CredsFile, "/etc/nats/node.creds")
	n.PidFile = def(n.PidFile, "/run/nats/nats-server.pid")
	if n.ClientPort == 0 {
		n.ClientPort = 4222
	}
	if n.ClusterPort == 0 {
		n.ClusterPort = 6222
	}
	if n.HTTPPort == 0 {
		n.HTTPPort = 8222
	}
	for _, h := range []string{n.Host, n.MonitorHost} {
		if net.ParseIP(h) == nil {
			return nil, fmt.Errorf("nats role: node host %q is not an IP address", h)
		}
	}
	for _, p := range []string{n.ConfigFile, n.UserJWTFile, n.StoreDir, n.ResolverDir, n.SeedFile, n.CredsFile, n.PidFile} {
		if !safePath.MatchString(p) {
			return nil, fmt.Errorf("nats role: node path %q: want an absolute path of letters, digits, '/', '.', '_' and '-'", p)
		}
	}
	if cfg.VerifyWait <= 0 {
		cfg.VerifyWait = 2 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Role{cfg: cfg, keys: cfg.Keys, log: log}, nil
}

// Name is "nats".
func (r *Role) Name() string { return RoleName }

// MachineCredentials is Keys.MachineCredentials: a user JWT for a machine
// of any role.
func (r *Role) MachineCredentials(id machine.ID, userPub string) (string, error) {
	return r.keys.MachineCredentials(id, userPub)
}

// roleConfig is the role's Config JSON, handed to the join hook.
type roleConfig struct {
	ServerName  string          `json:"server_name"`
	Cluster     string          `json:"cluster"`
	ConfigFile  string          `json:"config_file"`
	UserJWTFile string          `json:"user_jwt_file"`
	SeedFile    string          `json:"seed_file"`
	CredsFile   string          `json:"creds_file"`
	PidFile     string          `json:"pid_file"`
	ClientURL   string          `json:"client_url"`
	MonitorURL  string          `json:"monitor_url"`
	Account     string          `json:"account"`
	Subjects    MachineSubjects `json:"subjects"`
}

// Configure serves the node's nats-server configuration and its user JWT.
// report[ReportNkey] must be the node's public user nkey.
func (r *Role) Configure(ctx context.Context, m machine.Machine, report map[string]string, c *agentapi.RoleConfig) error {
	if err := checkID(m.ID); err != nil {
		return err
	}
	nkey := report[ReportNkey]
	if err := CheckUserKey(nkey); err != nil {
		return fmt.Errorf("nats role: machine %s: report %q: %w", m.ID, ReportNkey, err)
	}
	members, err := r.cfg.Routes(ctx)
	if err != nil {
		return fmt.Errorf("nats role: current cluster members: %w", err)
	}
	// A clustered JetStream server refuses to start without a configured
	// route; the first node has only itself (a route to itself is dropped).
	n := r.cfg.Node
	self := net.JoinHostPort(localHost(n.Host), strconv.Itoa(n.ClusterPort))
	routes := make([]string, 0, len(members)+1)
	for _, hp := range append([]string{self}, members...) {
		host, port, err := net.SplitHostPort(hp)
		if err != nil || net.ParseIP(host) == nil && !safeName.MatchString(host) {
			return fmt.Errorf("nats role: cluster member %q is not host:port", hp)
		}
		if p, err := strconv.Atoi(port); err != nil || p <= 0 || p > 65535 {
			return fmt.Errorf("nats role: cluster member %q: bad port", hp)
		}
		routes = append(routes, "nats-route://"+RouteUser+":"+r.keys.routePassword+"@"+net.JoinHostPort(host, port))
	}
	userJWT, err := r.keys.MachineCredentials(m.ID, nkey)
	if err != nil {
		return err
	}
	accJWT, err := r.keys.AccountJWT()
	if err != nil {
		return err
	}
	name := ServerName(m)
	conf := renderConf(confData{
		Machine:       m.ID,
		ServerName:    name,
		Host:          n.Host,
		MonitorHost:   n.MonitorHost,
		ClientPort:    n.ClientPort,
		ClusterPort:   n.ClusterPort,
		HTTPPort:      n.HTTPPort,
		StoreDir:      n.StoreDir,
		ResolverDir:   n.ResolverDir,
		Cluster:       r.cfg.ClusterName,
		RouteUser:     RouteUser,
		RoutePassword: r.keys.routePassword,
		Routes:        routes,
		OperatorJWT:   r.keys.OperatorJWT(),
		SysPub:        r.keys.sysPub,
		Preload: [][2]string{
			{r.keys.sysPub, r.keys.SystemAccountJWT()},
			{r.keys.accountPub, accJWT},
		},
	})
	rc, err := json.Marshal(roleConfig{
		ServerName:  name,
		Cluster:     r.cfg.ClusterName,
		ConfigFile:  n.ConfigFile,
		UserJWTFile: n.UserJWTFile,
		SeedFile:    n.SeedFile,
		CredsFile:   n.CredsFile,
		PidFile:     n.PidFile,
		ClientURL:   "nats://" + net.JoinHostPort(localHost(n.Host), strconv.Itoa(n.ClientPort)),
		MonitorURL:  "http://" + net.JoinHostPort(localHost(n.MonitorHost), strconv.Itoa(n.HTTPPort)),
		Account:     r.keys.accountPub,
		Subjects:    SubjectsFor(m.ID),
	})
	if err != nil {
		return err
	}
	c.Files = append(c.Files,
		agentapi.File{Path: n.ConfigFile, Mode: "0600", Content: conf},
		agentapi.File{Path: n.UserJWTFile, Mode: "0600", Content: userJWT + "\n"},
	)
	if !slices.Contains(c.Evidence, EvidenceServerName) {
		c.Evidence = append(c.Evidence, EvidenceServerName)
	}
	c.Config = rc
	r.log.Info("nats role configured", "machine", m.ID, "server_name", name, "routes", len(routes))
	return nil
}

// ServerName is the server_name a machine's nats-server runs with: its name
// when that is a valid server name and not "mdc" (the embedded server's),
// else its id.
func ServerName(m machine.Machine) string {
	if m.Name != "" && m.Name != "mdc" && safeName.MatchString(m.Name) {
		return m.Name
	}
	return string(m.ID)
}

// Retire revokes every user key issued for m (the account JWT's revocation
// list) and pushes the new account JWT to the cluster, whose servers then
// close m's connections and refuse them. Then it asks the JetStream meta
// leader to remove m's server from the meta group, so that a retired peer
// no longer counts towards the quorum; that is best effort (a lone node, or
// a group that lost its quorum, has no leader to ask) and only logged.
// Idempotent.
func (r *Role) Retire(ctx context.Context, m machine.Machine) error {
	if err := r.RevokeMachine(ctx, m.ID); err != nil {
		return err
	}
	if err := r.removePeer(ctx, m); err != nil {
		r.log.Warn("nats role: retired server still in the JetStream meta group; remove it by hand (nats server raft peer-remove)",
			"machine", m.ID, "server_name", ServerName(m), "err", err)
	}
	return nil
}

// removePeer asks the meta leader, over the system account, to drop m's
// server from the JetStream meta group. Not a member: done.
func (r *Role) removePeer(ctx context.Context, m machine.Machine) error {
	nc, err := r.connectSystem(len(r.cfg.URLs) == 0)
	if err != nil {
		return err
	}
	defer nc.Close()
	names := []string{ServerName(m)}
	if names[0] != string(m.ID) {
		names = append(names, string(m.ID))
	}
	for _, name := range names {
		req, _ := json.Marshal(map[string]string{"peer": name})
		rctx, cancel := context.WithTimeout(ctx, r.cfg.VerifyWait+3*time.Second)
		msg, err := nc.RequestWithContext(rctx, "$JS.API.SERVER.REMOVE", req)
		cancel()
		if err != nil {
			return fmt.Errorf("ask the meta leader to remove %s: %w", name, err)
		}
		var ans struct {
			Error *struct {
				ErrCode     int    `json:"err_code"`
				Description string `json:"description"`
			} `json:"error"`
		}
		if err := json.Unmarshal(msg.Data, &ans); err != nil {
			return fmt.Errorf("remove %s: answer: %w", name, err)
		}
		if ans.Error == nil {
			r.log.Info("nats role: server removed from the JetStream meta group", "machine", m.ID, "server_name", name)
			return nil
		}
		if ans.Error.ErrCode != jsNotMember {
			return fmt.Errorf("remove %s: %s", name, ans.Error.Description)
		}
	}
	return nil
}

// jsNotMember is JetStream's JSClusterServerNotMemberErr.
const jsNotMember = 10044

// RevokeMachine revokes the credentials of machine id, of any role.
func (r *Role) RevokeMachine(ctx context.Context, id machine.ID) error {
	n, err := r.keys.revokeMachine(id)
	if err != nil {
		return err
	}
	// Push even when nothing was new: an earlier push may have failed.
	if err := r.pushAccount(ctx); err != nil {
		return fmt.Errorf("nats role: revoke %s: %w", id, err)
	}
	r.log.Info("nats credentials revoked", "machine", id, "keys", n)
	return nil
}

// PushAccount sends the current account JWT to the full resolvers of the
// embedded server and of the cluster at URLs (each propagates it to its
// cluster's servers).
func (r *Role) PushAccount(ctx context.Context) error { return r.pushAccount(ctx) }

func (r *Role) pushAccount(ctx context.Context) error {
	accJWT, err := r.keys.AccountJWT()
	if err != nil {
		return err
	}
	var errs []error
	if r.cfg.InProcess != nil {
		errs = append(errs, r.pushTo(ctx, true, accJWT))
	}
	if len(r.cfg.URLs) > 0 {
		errs = append(errs, r.pushTo(ctx, false, accJWT))
	}
	return errors.Join(errs...)
}

func (r *Role) pushTo(ctx context.Context, inProcess bool, accJWT string) error {
	nc, err := r.connectSystem(inProcess)
	if err != nil {
		return err
	}
	defer nc.Close()
	msg, err := nc.RequestWithContext(ctx, "$SYS.REQ.CLAIMS.UPDATE", []byte(accJWT))
	if err != nil {
		return fmt.Errorf("push account JWT: %w", err)
	}
	var ans struct {
		Error *struct {
			Description string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(msg.Data, &ans); err != nil {
		return fmt.Errorf("push account JWT: answer: %w", err)
	}
	if ans.Error != nil {
		return fmt.Errorf("push account JWT: server refused it: %s", ans.Error.Description)
	}
	return nil
}

// connectSystem connects as a $SYS user to the embedded server, or to the
// cluster at URLs.
func (r *Role) connectSystem(inProcess bool) (*nats.Conn, error) {
	ujwt, seed, err := r.keys.systemCredentials()
	if err != nil {
		return nil, err
	}
	opts := []nats.Option{nats.Name("mdc-roles-nats"), nats.UserJWTAndSeed(ujwt, seed), nats.NoReconnect()}
	url := strings.Join(r.cfg.URLs, ",")
	if inProcess {
		opts = append(opts, nats.InProcessServer(r.cfg.InProcess))
		url = nats.DefaultURL
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS as the system account: %w", err)
	}
	return nc, nil
}

func localHost(h string) string {
	if ip := net.ParseIP(h); ip != nil && ip.IsUnspecified() {
		return "127.0.0.1"
	}
	return h
}

func def(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

var (
	// safeName: server and cluster names, and hosts, go into the
	// configuration file quoted; nothing in them may end the quote.
	safeName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)
	safePath = regexp.MustCompile(`^/[A-Za-z0-9._/-]*$`)
)
