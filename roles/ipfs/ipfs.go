// Package ipfs is the "ipfs" role: nodes run kubo in a private swarm
// whose key mdc mints once. Configure serves the key, the settings a
// private TCP-only network needs and the joined nodes as bootstrap and
// peering addresses; Verify asks the node's kubo RPC whether it is
// connected to a joined peer; Retire drops the node from the peers.
// docs/roles-ipfs.md is the operator's view.
package ipfs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"path"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/microdc/mdc/api/agentapi"
	"github.com/microdc/mdc/machine"
	"github.com/microdc/mdc/roles"
)

// Name is the role's name.
const Name = "ipfs"

// Defaults of Config.
const (
	DefaultRepo      = "/var/lib/ipfs"
	DefaultEnvFile   = "/etc/mdc/ipfs.env"
	DefaultSwarmPort = 4001
	DefaultAPIPort   = 5001
	DefaultGateway   = "/ip4/127.0.0.1/tcp/8080"
)

// Config is what the role needs from mdc's composition root.
type Config struct {
	// DataDir is the directory (created 0700) holding the swarm key, the
	// RPC key and, unless Peers is set, peers.json: <data-dir>/roles/ipfs.
	DataDir string
	// Peers holds the joined nodes; nil: a file store in DataDir.
	Peers Peers
	// Repo is the kubo repository on the node (IPFS_PATH).
	Repo string
	// EnvFile is where the node's daemon environment is written (for
	// systemd's EnvironmentFile): IPFS_PATH and LIBP2P_FORCE_PNET=1.
	EnvFile string
	// SwarmPort and APIPort are kubo's TCP swarm and RPC ports on the
	// node; the RPC listens on every address, behind API.Authorizations.
	SwarmPort, APIPort int
	// Gateway is Addresses.Gateway (the node's own HTTP gateway).
	Gateway string
	// HTTPClient calls the nodes' kubo RPC; nil: a client with a 5 s
	// timeout.
	HTTPClient *http.Client
	// Log receives joins and retires (never a key or token); nil: discard.
	Log *slog.Logger
}

// Role is the ipfs role.
type Role struct {
	cfg      Config
	swarmKey []byte
	rpcKey   []byte
	peers    Peers
	client   *http.Client
	log      *slog.Logger
	// verifyMu makes "no peer yet, so this one is first" and recording it
	// one step: two first nodes verified at once do not both start a swarm
	// of their own unnoticed.
	verifyMu sync.Mutex
}

var _ roles.Role = (*Role)(nil)

// New loads the swarm and RPC keys from cfg.DataDir, minting each the
// first time (mode 0600).
func New(cfg Config) (*Role, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("ipfs role: no data directory")
	}
	if cfg.Repo == "" {
		cfg.Repo = DefaultRepo
	}
	if !path.IsAbs(cfg.Repo) {
		return nil, fmt.Errorf("ipfs role: repo %q is not an absolute path", cfg.Repo)
	}
	if cfg.EnvFile == "" {
		cfg.EnvFile = DefaultEnvFile
	}
	if cfg.SwarmPort == 0 {
		cfg.SwarmPort = DefaultSwarmPort
	}
	if cfg.APIPort == 0 {
		cfg.APIPort = DefaultAPIPort
	}
	if cfg.Gateway == "" {
		cfg.Gateway = DefaultGateway
	}
	if err := ensureDir(cfg.DataDir); err != nil {
		return nil, fmt.Errorf("ipfs role: %w", err)
	}
	r := &Role{cfg: cfg, peers: cfg.Peers, client: cfg.HTTPClient, log: cfg.Log}
	var err error
	if r.swarmKey, err = loadOrMint(filepath.Join(cfg.DataDir, "swarm.key"), mintSwarmKey, checkSwarmKey); err != nil {
		return nil, fmt.Errorf("ipfs role: swarm key: %w", err)
	}
	if r.rpcKey, err = loadOrMint(filepath.Join(cfg.DataDir, "rpc.key"), mintRPCKey, checkRPCKey); err != nil {
		return nil, fmt.Errorf("ipfs role: rpc key: %w", err)
	}
	if r.peers == nil {
		if r.peers, err = OpenFilePeers(filepath.Join(cfg.DataDir, "peers.json")); err != nil {
			return nil, fmt.Errorf("ipfs role: %w", err)
		}
	}
	if r.client == nil {
		r.client = &http.Client{Timeout: 5 * time.Second}
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	return r, nil
}

// Name is "ipfs".
func (r *Role) Name() string { return Name }

// Peers returns the store of joined nodes.
func (r *Role) Peers() Peers { return r.peers }

// NodeConfig is the role's Config JSON: what the join hook applies to the
// node's kubo repository before it starts the daemon.
type NodeConfig struct {
	// Repo is IPFS_PATH; the swarm key is already written in it.
	Repo string `json:"repo"`
	// Env is the daemon's environment (also in the env file).
	Env map[string]string `json:"env"`
	// Settings are applied in order, each as `ipfs config --json KEY
	// VALUE` would (better: by editing the config file, since a value may
	// hold a secret that must not appear on a command line).
	Settings []Setting `json:"settings"`
	// APIAuthFile holds "bearer:TOKEN", the node's own admin access to its
	// RPC (`ipfs --api-auth`), since API.Authorizations guards every RPC
	// caller, local ones too.
	APIAuthFile string `json:"api_auth_file"`
	// Reconnect lists the joined nodes (one multiaddr with /p2p each) the hook
	// disconnects from and connects to again once the daemon is ready:
	// kubo 0.42's bitswap never sees a peer connected while the daemon was
	// starting (bootstrap, peering), so it would never ask that peer for a
	// block (fixed in boxo by ipfs/boxo#1201, after kubo 0.42).
	Reconnect []string `json:"reconnect"`
}

// Setting is one kubo config key (dotted) and its JSON value.
type Setting struct {
	Key   string          `json:"key"`
	Value json.RawMessage `json:"value"`
}

// mdcPaths are the RPC paths mdc's token opens on a node: who are you,
// whom are you connected to, and the peering list it keeps current.
var mdcPaths = []string{"/api/v0/id", "/api/v0/swarm/peers", "/api/v0/swarm/peering"}

// Configure serves the swarm key, the env file, the node's RPC token and
// the private-swarm settings with the joined nodes (other than m) as
// Bootstrap and Peering.Peers. report may carry the node's peer_id (a
// node that keeps its repository across reboots), which is left out too.
func (r *Role) Configure(ctx context.Context, m machine.Machine, report map[string]string, c *agentapi.RoleConfig) error {
	self := ""
	if s := report[EvidencePeerID]; s != "" {
		if id, err := parsePeerID(s); err == nil {
			self = id
		}
	}
	all, err := r.peers.List(ctx)
	if err != nil {
		return fmt.Errorf("ipfs configure %s: peers: %w", m.ID, err)
	}
	bootstrap, reconnect := []string{}, []string{}
	type peering struct {
		ID    string
		Addrs []string
	}
	peerings := []peering{}
	for _, p := range all {
		if p.Machine == m.ID || p.ID == self {
			continue
		}
		for _, a := range p.Addrs {
			bootstrap = append(bootstrap, a+"/p2p/"+p.ID)
		}
		if len(p.Addrs) > 0 {
			reconnect = append(reconnect, p.Addrs[0]+"/p2p/"+p.ID)
		}
		peerings = append(peerings, peering{ID: p.ID, Addrs: p.Addrs})
	}
	nodeAuth := "bearer:" + rpcToken(r.rpcKey, "node", m.ID)
	auth := map[string]any{
		"mdc":  map[string]any{"AuthSecret": "bearer:" + rpcToken(r.rpcKey, "mdc", m.ID), "AllowedPaths": mdcPaths},
		"node": map[string]any{"AuthSecret": nodeAuth, "AllowedPaths": []string{"/api/v0"}},
	}
	swarm := strconv.Itoa(r.cfg.SwarmPort)
	var settings []Setting
	set := func(k string, v any) {
		b, err := json.Marshal(v)
		if err != nil {
			panic(err) // cannot fail: strings, bools, slices and maps of them
		}
		settings = append(settings, Setting{Key: k, Value: b})
	}
	// No public network: no bootstrap but the swarm's own nodes, no
	// AutoConf (it would fetch public bootstrap peers and routers), no
	// delegated routing or DNS, no NAT traversal, no mDNS on the rack.
	set("AutoConf.Enabled", false)
	set("Bootstrap", bootstrap)
	set("Peering.Peers", peerings)
	set("Routing.Type", "dhtserver") // every node serves the swarm's own DHT
	set("Routing.DelegatedRouters", []string{})
	set("Ipns.DelegatedPublishers", []string{})
	set("DNS.Resolvers", map[string]string{})
	set("AutoTLS.Enabled", false)
	set("AutoNAT.ServiceMode", "disabled")
	set("Discovery.MDNS.Enabled", false)
	set("HTTPRetrieval.Enabled", false)
	set("Plugins.Plugins.telemetry.Config.Mode", "off") // it reports to a public endpoint
	// TCP only: QUIC, WebTransport and WebRTC cannot carry a pre-shared
	// key (kubo refuses to start with them and a swarm key); websockets
	// share the TCP listener, which pnet does not support.
	set("Swarm.Transports.Network.TCP", true)
	set("Swarm.Transports.Network.QUIC", false)
	set("Swarm.Transports.Network.WebTransport", false)
	set("Swarm.Transports.Network.WebRTCDirect", false)
	set("Swarm.Transports.Network.Websocket", false)
	set("Swarm.Transports.Network.Relay", false)
	set("Swarm.RelayClient.Enabled", false)
	set("Swarm.RelayService.Enabled", false)
	set("Swarm.EnableHolePunching", false)
	set("Swarm.DisableNatPortMap", true)
	set("Addresses.Swarm", []string{"/ip4/0.0.0.0/tcp/" + swarm, "/ip6/::/tcp/" + swarm})
	set("Addresses.API", "/ip4/0.0.0.0/tcp/"+strconv.Itoa(r.cfg.APIPort))
	set("Addresses.Gateway", r.cfg.Gateway)
	set("API.Authorizations", auth)

	env := map[string]string{"IPFS_PATH": r.cfg.Repo, "LIBP2P_FORCE_PNET": "1", "IPFS_TELEMETRY": "off"}
	nc := NodeConfig{
		Repo:        r.cfg.Repo,
		Env:         env,
		Settings:    settings,
		APIAuthFile: path.Join(r.cfg.Repo, "api-auth"),
		Reconnect:   reconnect,
	}
	b, err := json.Marshal(nc)
	if err != nil {
		return fmt.Errorf("ipfs configure %s: %w", m.ID, err)
	}
	c.Config = b
	c.Files = append(c.Files,
		agentapi.File{Path: path.Join(r.cfg.Repo, "swarm.key"), Mode: "0600", Content: string(r.swarmKey)},
		agentapi.File{Path: nc.APIAuthFile, Mode: "0600", Content: nodeAuth + "\n"},
		agentapi.File{Path: r.cfg.EnvFile, Mode: "0644", Content: "IPFS_PATH=" + r.cfg.Repo + "\nLIBP2P_FORCE_PNET=1\nIPFS_TELEMETRY=off\n"},
	)
	c.Evidence = []string{EvidencePeerID, EvidenceAddrs, EvidenceRPC}
	if c.Join.TimeoutSeconds == 0 {
		c.Join.TimeoutSeconds = 120
	}
	return nil
}

// Verify asks the node's kubo RPC (with mdc's scoped token) who it is and
// whom it is connected to: joined means it is the peer its evidence names
// and is connected to at least one joined node, or no node has joined
// yet. A joined node is recorded in Peers and added to the others'
// peering lists.
func (r *Role) Verify(ctx context.Context, m machine.Machine, evidence map[string]string) error {
	ev, err := parseEvidence(evidence)
	if err != nil {
		return fmt.Errorf("ipfs verify %s: evidence: %w", m.ID, err)
	}
	tok := rpcToken(r.rpcKey, "mdc", m.ID)
	var id struct{ ID string }
	if err := r.rpc(ctx, ev.rpc, tok, "/api/v0/id", nil, &id); err != nil {
		return fmt.Errorf("ipfs verify %s: %w", m.ID, err)
	}
	if id.ID != ev.peerID {
		return fmt.Errorf("ipfs verify %s: the kubo at %s is peer %s, the evidence says %s", m.ID, ev.rpc, id.ID, ev.peerID)
	}
	var sp struct{ Peers []struct{ Peer string } }
	if err := r.rpc(ctx, ev.rpc, tok, "/api/v0/swarm/peers", nil, &sp); err != nil {
		return fmt.Errorf("ipfs verify %s: %w", m.ID, err)
	}
	connected := make(map[string]bool, len(sp.Peers))
	for _, p := range sp.Peers {
		connected[p.Peer] = true
	}
	self := Peer{Machine: m.ID, ID: ev.peerID, Addrs: ev.addrs, RPC: ev.rpc}
	r.verifyMu.Lock()
	all, err := r.peers.List(ctx)
	if err != nil {
		r.verifyMu.Unlock()
		return fmt.Errorf("ipfs verify %s: peers: %w: %w", m.ID, roles.ErrNotYet, err)
	}
	var known []Peer
	via := ""
	for _, p := range all {
		if p.Machine != m.ID && p.ID != ev.peerID {
			known = append(known, p)
			if via == "" && connected[p.ID] {
				via = p.ID
			}
		}
	}
	if len(known) > 0 && via == "" {
		r.verifyMu.Unlock()
		return fmt.Errorf("ipfs verify %s: %w: connected to %d peers, none of the %d joined nodes", m.ID, roles.ErrNotYet, len(sp.Peers), len(known))
	}
	err = r.peers.Put(ctx, self)
	r.verifyMu.Unlock()
	if err != nil {
		return fmt.Errorf("ipfs verify %s: %w: %w", m.ID, roles.ErrNotYet, err)
	}
	if len(known) == 0 {
		r.log.Info("ipfs: first node of the swarm", "machine", m.ID, "peer", ev.peerID)
		return nil
	}
	r.log.Info("ipfs: node joined the swarm", "machine", m.ID, "peer", ev.peerID, "via", via)
	// The others learn of it now rather than at their next configuration;
	// a node that misses this still reaches it through the new node's
	// own peering.
	for _, p := range known {
		if p.RPC == "" {
			continue
		}
		q := url.Values{}
		for _, a := range ev.addrs {
			q.Add("arg", a+"/p2p/"+ev.peerID)
		}
		if err := r.rpc(ctx, p.RPC, rpcToken(r.rpcKey, "mdc", p.Machine), "/api/v0/swarm/peering/add", q, nil); err != nil {
			r.log.Warn("ipfs: could not add the new node to a peer's peering", "machine", p.Machine, "new", m.ID, "err", err)
		}
	}
	return nil
}

// Retire forgets the node, so no later configuration names it, and takes
// it out of the other nodes' peering lists. The swarm key stays valid on
// the node: a pre-shared key cannot be revoked per node (docs).
func (r *Role) Retire(ctx context.Context, m machine.Machine) error {
	all, err := r.peers.List(ctx)
	if err != nil {
		return fmt.Errorf("ipfs retire %s: %w", m.ID, err)
	}
	var gone *Peer
	for i := range all {
		if all[i].Machine == m.ID {
			gone = &all[i]
		}
	}
	if gone == nil {
		return nil
	}
	if err := r.peers.Delete(ctx, m.ID); err != nil {
		return fmt.Errorf("ipfs retire %s: %w", m.ID, err)
	}
	for _, p := range all {
		if p.Machine == m.ID || p.RPC == "" {
			continue
		}
		q := url.Values{"arg": {gone.ID}}
		if err := r.rpc(ctx, p.RPC, rpcToken(r.rpcKey, "mdc", p.Machine), "/api/v0/swarm/peering/rm", q, nil); err != nil {
			r.log.Warn("ipfs: could not drop the retired node from a peer's peering", "machine", p.Machine, "retired", m.ID, "err", err)
		}
	}
	r.log.Info("ipfs: node left the swarm", "machine", m.ID, "peer", gone.ID)
	return nil
}

// rpc POSTs one kubo RPC call and decodes its JSON answer into out (if
// not nil). A refused connection or a 5xx is ErrNotYet (the daemon may be
// starting); 403 means the node does not hold the configuration mdc
// served.
func (r *Role) rpc(ctx context.Context, base, token, p string, q url.Values, out any) error {
	u := base + p
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := r.client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return err
		}
		return fmt.Errorf("%w: kubo RPC %s: %w", roles.ErrNotYet, p, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return fmt.Errorf("%w: kubo RPC %s: %w", roles.ErrNotYet, p, err)
	}
	switch {
	case resp.StatusCode == http.StatusForbidden:
		return fmt.Errorf("kubo RPC %s at %s refused mdc's token: the node's API.Authorizations is not what mdc served", p, base)
	case resp.StatusCode >= 500:
		return fmt.Errorf("%w: kubo RPC %s: %s: %s", roles.ErrNotYet, p, resp.Status, firstLine(body))
	case resp.StatusCode != http.StatusOK:
		return fmt.Errorf("kubo RPC %s at %s: %s: %s", p, base, resp.Status, firstLine(body))
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("kubo RPC %s at %s: %w", p, base, err)
	}
	return nil
}

func firstLine(b []byte) string {
	for i, c := range b {
		if c == '\n' || i == 200 {
			return string(b[:i])
		}
	}
	return string(b)
}
