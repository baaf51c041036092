package nats

import (
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
)

// Embedded says how mdc's embedded server takes part.
type Embedded struct {
	// ResolverDir holds the server's account JWTs (full resolver).
	ResolverDir string
	// ClusterPort 0 keeps the server out of any cluster: its JetStream
	// (the event log) then needs no peers, and nodes form their own
	// cluster that mdc reaches through Config.URLs. Otherwise the server
	// listens for routes on ClusterHost:ClusterPort and is a member of the
	// nodes' cluster; see docs/roles-nats.md for what that costs JetStream.
	ClusterHost string
	ClusterPort int
	ClusterName string // default "mdc"
	// Members are the route listeners (host:port) of the other members
	// mdc knows (the joined nats nodes).
	Members []string
}

// EmbeddedOptions puts o, the options of mdc's embedded server, in operator
// mode under this trust chain: it trusts the operator and resolves accounts
// from a full resolver preloaded with the system and MDC accounts, and, if
// e.ClusterPort is set, routes with the route user. Operator mode admits no
// token or user list (o.Authorization is cleared): mdc itself connects with
// ServiceCredentials.
func (k *Keys) EmbeddedOptions(o *server.Options, e Embedded) error {
	oc, err := jwt.DecodeOperatorClaims(k.operatorJWT)
	if err != nil {
		return fmt.Errorf("nats keys: operator JWT: %w", err)
	}
	res, err := server.NewDirAccResolver(e.ResolverDir, 0, 2*time.Minute, server.NoDelete)
	if err != nil {
		return fmt.Errorf("nats keys: account resolver in %s: %w", e.ResolverDir, err)
	}
	accJWT, err := k.AccountJWT()
	if err != nil {
		return err
	}
	for pub, j := range map[string]string{k.sysPub: k.sysAccountJWT, k.accountPub: accJWT} {
		if err := res.Store(pub, j); err != nil {
			return fmt.Errorf("nats keys: preload account %s: %w", pub, err)
		}
	}
	o.TrustedOperators = []*jwt.OperatorClaims{oc}
	o.SystemAccount = k.sysPub
	o.AccountResolver = res
	o.Authorization = ""
	if e.ClusterPort == 0 {
		return nil
	}
	// A clustered JetStream server refuses to start without a configured
	// route: route to itself too (it drops the route to itself).
	var routes []*url.URL
	for _, hp := range append([]string{net.JoinHostPort(e.ClusterHost, strconv.Itoa(e.ClusterPort))}, e.Members...) {
		if _, _, err := net.SplitHostPort(hp); err != nil {
			return fmt.Errorf("nats keys: cluster member %q is not host:port", hp)
		}
		routes = append(routes, &url.URL{Scheme: "nats-route", User: url.UserPassword(RouteUser, k.routePassword), Host: hp})
	}
	o.Routes = routes
	o.Cluster.Name = e.ClusterName
	if o.Cluster.Name == "" {
		o.Cluster.Name = "mdc"
	}
	o.Cluster.Host = e.ClusterHost
	o.Cluster.Port = e.ClusterPort
	o.Cluster.Username = RouteUser
	o.Cluster.Password = k.routePassword
	return nil
}

// Member says how mdc's cluster member runs: the in-process server that
// nats nodes route to (StartMember).
type Member struct {
	// Dir holds its account resolver (Dir/jwt).
	Dir string
	// Cluster is the route listener, host:port; nodes route to it, so the
	// host must be an address they reach.
	Cluster string
	// Clients, if set, is a client listener (host:port) for machines
	// connecting with the credentials mdc minted for them. Empty: no
	// client listener but a random one on loopback (mdc connects in-process).
	Clients     string
	ClusterName string // default "mdc"
	Logger      server.Logger
}

// StartMember starts mdc's member of the nodes' cluster, in this process,
// in operator mode under k. It runs no JetStream: a clustered JetStream
// server does not start until a peer routes to it, and mdc's event log
// must not wait for the first node (docs/roles-nats.md). The event log stays
// on mdc's own standalone server; this one exists so that the first node
// has a member to route to, and mdc reaches the cluster in-process.
func (k *Keys) StartMember(m Member) (*server.Server, error) {
	host, port, err := splitHostPort(m.Cluster)
	if err != nil {
		return nil, fmt.Errorf("nats cluster listener %q: %w", m.Cluster, err)
	}
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		return nil, fmt.Errorf("nats cluster listener %q: want the IP address nodes route to (it goes into their configuration), not a name or 0.0.0.0", m.Cluster)
	}
	// A taken port is one clear error now, not a Fatalf in the server's log.
	l, err := net.Listen("tcp", m.Cluster)
	if err != nil {
		return nil, fmt.Errorf("nats cluster listener: %w", err)
	}
	l.Close()
	// Without a client listener nats-server never starts routing (it waits
	// for the accept loop): take a random loopback port then.
	o := &server.Options{ServerName: "mdc", NoSigs: true, Host: "127.0.0.1", Port: -1}
	if m.Clients != "" {
		h, p, err := splitHostPort(m.Clients)
		if strings.HasSuffix(m.Clients, ":0") {
			h, p, err = strings.TrimSuffix(m.Clients, ":0"), -1, nil // any free port (nats-server reads 0 as 4222)
		}
		if err != nil {
			return nil, fmt.Errorf("nats client listener %q: %w", m.Clients, err)
		}
		o.Host, o.Port = strings.Trim(h, "[]"), p
	}
	if err := k.EmbeddedOptions(o, Embedded{ResolverDir: filepath.Join(m.Dir, "jwt"), ClusterHost: host, ClusterPort: port, ClusterName: m.ClusterName}); err != nil {
		return nil, err
	}
	srv, err := server.NewServer(o)
	if err != nil {
		return nil, fmt.Errorf("nats cluster member: %w", err)
	}
	if m.Logger != nil {
		srv.SetLoggerV2(m.Logger, false, false, false)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		return nil, fmt.Errorf("nats cluster member on %s did not start in 10s (is the port taken?)", m.Cluster)
	}
	return srv, nil
}

func splitHostPort(hp string) (string, int, error) {
	host, ps, err := net.SplitHostPort(hp)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(ps)
	if err != nil || port <= 0 || port > 65535 {
		return "", 0, fmt.Errorf("bad port %q", ps)
	}
	return host, port, nil
}
