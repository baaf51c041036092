package bmc

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"regexp"
	"strconv"
	"strings"
)

// Protocol is how mdc talks to a BMC.
type Protocol string

// Protocols.
const (
	Redfish Protocol = "redfish"
	IPMI    Protocol = "ipmi"
)

// Endpoint is where a BMC listens. It holds no credentials.
type Endpoint struct {
	Protocol Protocol
	Host     string
	Port     int
	TLS      bool // redfish only: https
	// System selects one ComputerSystem (by its Name, as bmclib matches it)
	// on a Redfish service that presents several; "" means the only one.
	System string
}

// Default ports.
const (
	defaultIPMIPort      = 623
	defaultRedfishPort   = 80
	defaultRedfishsPort  = 443
	maxSystemNameLength  = 128
	errURLFormatExamples = "want redfish://host[:port], redfishs://host[:port] or ipmi://host[:port]"
)

// ParseURL parses a BMC URL: redfish://host[:port] (HTTP),
// redfishs://host[:port] (HTTPS), ipmi://host[:port] (IPMI v2 lanplus,
// default port 623). A Redfish URL may name one system with ?system=NAME.
func ParseURL(s string) (Endpoint, error) {
	u, err := url.Parse(strings.TrimSpace(s))
	if err != nil {
		// url's error quotes the input, which may carry user:password@.
		return Endpoint{}, fmt.Errorf("bmc URL: not a URL; %s", errURLFormatExamples)
	}
	var ep Endpoint
	switch strings.ToLower(u.Scheme) {
	case "redfish":
		ep = Endpoint{Protocol: Redfish, Port: defaultRedfishPort}
	case "redfishs":
		ep = Endpoint{Protocol: Redfish, Port: defaultRedfishsPort, TLS: true}
	case "ipmi":
		ep = Endpoint{Protocol: IPMI, Port: defaultIPMIPort}
	case "":
		return Endpoint{}, fmt.Errorf("bmc URL %q: no scheme; %s", redactURL(u), errURLFormatExamples)
	default:
		return Endpoint{}, fmt.Errorf("bmc URL %q: unknown scheme %q; %s", redactURL(u), u.Scheme, errURLFormatExamples)
	}
	if u.User != nil {
		return Endpoint{}, fmt.Errorf("bmc URL %q: credentials do not belong in the URL; give --bmc-user and --bmc-password-file", redactURL(u))
	}
	if u.Opaque != "" || u.Host == "" {
		return Endpoint{}, fmt.Errorf("bmc URL %q: no host; %s", redactURL(u), errURLFormatExamples)
	}
	if u.Path != "" && u.Path != "/" {
		return Endpoint{}, fmt.Errorf("bmc URL %q: unexpected path %q; %s", redactURL(u), u.Path, errURLFormatExamples)
	}
	if u.Fragment != "" {
		return Endpoint{}, fmt.Errorf("bmc URL %q: unexpected fragment", redactURL(u))
	}
	ep.Host = u.Hostname()
	if ep.Host == "" {
		return Endpoint{}, fmt.Errorf("bmc URL %q: no host; %s", redactURL(u), errURLFormatExamples)
	}
	if !validHost(ep.Host) {
		return Endpoint{}, fmt.Errorf("bmc URL %q: bad host %q (an IP address, [IPv6], or a DNS name)", redactURL(u), ep.Host)
	}
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return Endpoint{}, fmt.Errorf("bmc URL %q: bad port %q (1-65535)", redactURL(u), p)
		}
		ep.Port = n
	} else if strings.HasSuffix(u.Host, ":") {
		return Endpoint{}, fmt.Errorf("bmc URL %q: empty port", redactURL(u))
	}
	q := u.Query()
	for k, v := range q {
		switch {
		case k == "system" && ep.Protocol == Redfish && len(v) == 1 && v[0] != "" && len(v[0]) <= maxSystemNameLength:
			ep.System = v[0]
		case k == "system" && ep.Protocol == Redfish:
			return Endpoint{}, fmt.Errorf("bmc URL %q: give one non-empty system name", redactURL(u))
		default:
			return Endpoint{}, fmt.Errorf("bmc URL %q: unknown parameter %q", redactURL(u), k)
		}
	}
	return ep, nil
}

var hostnamePattern = regexp.MustCompile(`^[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?$`)

// validHost accepts an IP address without a zone or a DNS name.
func validHost(h string) bool {
	if a, err := netip.ParseAddr(h); err == nil {
		return a.Zone() == ""
	}
	return len(h) <= 253 && hostnamePattern.MatchString(h)
}

// redactURL drops any userinfo so an error message never echoes a password.
func redactURL(u *url.URL) string {
	c := *u
	c.User = nil
	return c.String()
}

// Addr is host:port, as a dialer wants it.
func (e Endpoint) Addr() string {
	return net.JoinHostPort(e.Host, strconv.Itoa(e.Port))
}

// String gives the URL back; it never carries credentials.
func (e Endpoint) String() string {
	scheme := string(e.Protocol)
	if e.Protocol == Redfish && e.TLS {
		scheme = "redfishs"
	}
	s := scheme + "://" + e.Addr()
	if e.System != "" {
		s += "?" + url.Values{"system": {e.System}}.Encode()
	}
	return s
}

// Validate reports whether e could have come from ParseURL.
func (e Endpoint) Validate() error {
	switch {
	case e.Protocol != Redfish && e.Protocol != IPMI:
		return fmt.Errorf("bmc endpoint: unknown protocol %q", e.Protocol)
	case !validHost(e.Host):
		return fmt.Errorf("bmc endpoint: bad host %q", e.Host)
	case e.Port < 1 || e.Port > 65535:
		return fmt.Errorf("bmc endpoint %s: bad port %d", e.Host, e.Port)
	case e.Protocol == IPMI && (e.TLS || e.System != ""):
		return fmt.Errorf("bmc endpoint %s: TLS and system apply to redfish only", e.Addr())
	}
	return nil
}
