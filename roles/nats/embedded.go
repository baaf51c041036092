package nats

import (
	"fmt"
	"net"
	"net/url"
	"strconv"
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
