package nats

import (
	"fmt"
	"strings"

	"github.com/microdc/mdc/machine"
)

// confData is what a node's nats-server configuration is made of. Every
// string in it was checked (names, paths, IPs) or is a JWT, nkey or hex
// password: none can end a quoted string.
type confData struct {
	Machine                           machine.ID
	ServerName                        string
	Host, MonitorHost                 string
	ClientPort, ClusterPort, HTTPPort int
	StoreDir, ResolverDir             string
	Cluster                           string
	RouteUser, RoutePassword          string
	Routes                            []string
	OperatorJWT                       string
	SysPub                            string
	Preload                           [][2]string // account public key, JWT
}

// renderConf writes nats-server's configuration format.
func renderConf(d confData) string {
	var b strings.Builder
	p := func(f string, a ...any) { fmt.Fprintf(&b, f, a...) }
	p("# nats-server configuration for machine %s, served by mdc at each boot.\n", d.Machine)
	p("# Local edits are overwritten. Mode 0600: it holds the route password.\n")
	p("server_name: %q\n", d.ServerName)
	p("host: %q\n", d.Host)
	p("port: %d\n", d.ClientPort)
	p("http: %q\n", joinHostPort(d.MonitorHost, d.HTTPPort))
	p("\njetstream {\n  store_dir: %q\n}\n", d.StoreDir)
	p("\n# Decentralised JWT auth: trust mdc's operator; accounts come from the\n")
	p("# cluster's full resolvers, and updates (revocations) are pushed to them.\n")
	p("operator: %q\n", d.OperatorJWT)
	p("system_account: %q\n", d.SysPub)
	p("resolver {\n  type: full\n  dir: %q\n  allow_delete: false\n  interval: \"2m\"\n}\n", d.ResolverDir)
	p("resolver_preload {\n")
	for _, kv := range d.Preload {
		p("  %s: %q\n", kv[0], kv[1])
	}
	p("}\n")
	p("\ncluster {\n  name: %q\n  listen: %q\n", d.Cluster, joinHostPort(d.Host, d.ClusterPort))
	p("  authorization {\n    user: %q\n    password: %q\n  }\n", d.RouteUser, d.RoutePassword)
	p("  routes: [\n")
	for _, r := range d.Routes {
		p("    %q\n", r)
	}
	p("  ]\n}\n")
	return b.String()
}

func joinHostPort(h string, port int) string {
	if strings.Contains(h, ":") {
		return fmt.Sprintf("[%s]:%d", h, port)
	}
	return fmt.Sprintf("%s:%d", h, port)
}
