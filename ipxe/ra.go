package ipxe

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv6"
)

// iPXE configures IPv6 alongside DHCPv4 and, on a segment without an IPv6
// router, waits for a router advertisement until its timeout (about 15 s in
// Debian's build) before it reports "Configuring (net0 …) ok" and goes on.
// RAResponder answers each router solicitation with an advertisement that
// offers nothing: router lifetime 0 (not a default router), no prefix, no
// flags. iPXE takes that as "no IPv6 here" and goes on at once; other hosts
// learn nothing from it. It answers only solicitations, never on its own.

// RAResponder answers IPv6 router solicitations on one interface.
type RAResponder struct {
	log *slog.Logger
	// minGap spaces advertisements: each goes to all nodes, so one answers
	// every solicitation of a burst.
	minGap time.Duration
}

// NewRAResponder builds a responder; log may be nil.
func NewRAResponder(log *slog.Logger) *RAResponder {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &RAResponder{log: log, minGap: 200 * time.Millisecond}
}

// raConn is the ICMPv6 socket of one interface.
type raConn struct {
	*icmp.PacketConn
	ifi *net.Interface
}

var allRouters = &net.UDPAddr{IP: net.ParseIP("ff02::2")}

// ListenRA opens a raw ICMPv6 socket that hears router solicitations on
// iface (needs CAP_NET_RAW), in the network namespace of the calling thread.
func ListenRA(iface string) (net.PacketConn, error) {
	ifi, err := net.InterfaceByName(iface)
	if err != nil {
		return nil, err
	}
	c, err := icmp.ListenPacket("ip6:ipv6-icmp", "::")
	if err != nil {
		return nil, fmt.Errorf("ICMPv6 socket: %w", err)
	}
	p := c.IPv6PacketConn()
	var f ipv6.ICMPFilter
	f.SetAll(true)
	f.Accept(ipv6.ICMPTypeRouterSolicitation)
	err = errors.Join(
		p.SetICMPFilter(&f),
		p.JoinGroup(ifi, allRouters),
		p.SetMulticastInterface(ifi),
		p.SetMulticastHopLimit(255), // RFC 4861: receivers drop anything else
		p.SetMulticastLoopback(false),
		p.SetControlMessage(ipv6.FlagInterface|ipv6.FlagHopLimit, true),
	)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("ICMPv6 socket on %s: %w", iface, err)
	}
	return &raConn{PacketConn: c, ifi: ifi}, nil
}

// advertisement is an RA with every field zero: hop limit unspecified, no
// M/O flags, router lifetime 0, reachable and retrans timers unspecified.
// The kernel fills in the checksum.
var advertisement = func() []byte {
	b, _ := (&icmp.Message{Type: ipv6.ICMPTypeRouterAdvertisement, Body: &icmp.RawBody{Data: make([]byte, 12)}}).Marshal(nil)
	return b
}()

// Serve answers solicitations on conn (from ListenRA) until ctx ends.
func (r *RAResponder) Serve(ctx context.Context, conn net.PacketConn) error {
	c, ok := conn.(*raConn)
	if !ok {
		conn.Close()
		return errors.New("ipxe: RAResponder.Serve wants a conn from ListenRA")
	}
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	p := c.IPv6PacketConn()
	dst := &net.IPAddr{IP: net.ParseIP("ff02::1"), Zone: c.ifi.Name}
	buf := make([]byte, 1500)
	var last time.Time
	for {
		n, cm, src, err := p.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("ipxe: router solicitations on %s: %w", c.ifi.Name, err)
		}
		// RFC 4861 6.1.1: hop limit 255 (never forwarded), code 0, 8+ bytes.
		if cm == nil || cm.IfIndex != c.ifi.Index || cm.HopLimit != 255 || n < 8 || buf[0] != byte(ipv6.ICMPTypeRouterSolicitation) || buf[1] != 0 {
			continue
		}
		if time.Since(last) < r.minGap {
			continue
		}
		last = time.Now()
		if _, err := p.WriteTo(advertisement, &ipv6.ControlMessage{HopLimit: 255, IfIndex: c.ifi.Index}, dst); err != nil {
			r.log.Warn("router advertisement not sent", "interface", c.ifi.Name, "err", err)
			continue
		}
		r.log.Debug("router advertisement (nothing offered) sent", "interface", c.ifi.Name, "solicited_by", src)
	}
}
