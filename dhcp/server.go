// Package dhcp is mdc's DHCPv4 server: ProxyDHCP beside an existing DHCP
// server, or a full server with leases in JetStream; relayed requests;
// client-architecture detection and iPXE loop breaking.
//
// The packet path is an ordered chain of steps (see chain). It does no I/O
// except the lease store in full mode: machine lookups are in memory, and
// events go through a bounded queue.
package dhcp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4/server4"

	"github.com/microdc/mdc/machine"
)

// Server is a DHCPv4 server. Build it with New.
type Server struct {
	cfg         Config
	log         *slog.Logger
	steps       []step
	advertise   net.IP
	localSubnet *Subnet
	hasARM64    bool
	cache       *leaseCache
	metrics     *metrics

	events chan queued
	seenMu sync.Mutex
	seen   map[machine.ID]struct{}
}

type queued struct {
	id         machine.ID
	discovered *machine.DiscoveredData
	event      machine.EventType
	data       TelemetryData
}

// New validates cfg and builds a server.
func New(cfg Config) (*Server, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("DHCP config: %w", err)
	}
	if cfg.LeaseStore == nil {
		cfg.LeaseStore = NewMemoryStore()
	}
	for i := range cfg.Subnets {
		cfg.Subnets[i].encodeOptions()
	}
	reserved := make(map[netip.Addr]string, len(cfg.Reservations))
	for id, a := range cfg.Reservations {
		reserved[a] = string(id)
	}
	s := &Server{
		cfg:       cfg,
		log:       cfg.Logger,
		advertise: cfg.AdvertiseAddr.AsSlice(),
		hasARM64:  fileExists(cfg.IPXEDir, cfg.ARM64Bootfile),
		cache:     newLeaseCache(cfg.LeaseStore, cfg.ServerName, cfg.OfferHold, reserved),
		events:    make(chan queued, cfg.EventQueue),
		seen:      make(map[machine.ID]struct{}),
	}
	// Clients that are not relayed belong to the subnet of our own address,
	// or to the only subnet there is.
	s.localSubnet = s.cfg.subnetFor(cfg.AdvertiseAddr)
	if s.localSubnet == nil && len(s.cfg.Subnets) == 1 {
		s.localSubnet = &s.cfg.Subnets[0]
	}
	m, err := newMetrics(cfg.Registry, &s.cfg, s.cache)
	if err != nil {
		return nil, err
	}
	s.metrics = m
	s.steps = s.chain()
	return s, nil
}

// socketBuffer is the size ListenAndServe asks for its sockets' buffers:
// about 4000 queued requests.
const socketBuffer = 4 << 20

// ListenAndServe opens the DHCP port (and in proxy mode the PXE port) on
// cfg.Interface and serves until ctx ends.
func (s *Server) ListenAndServe(ctx context.Context) error {
	open := func(port int) (net.PacketConn, error) {
		c, err := server4.NewIPv4UDPConn(s.cfg.Interface, &net.UDPAddr{IP: s.cfg.ListenAddr.AsSlice(), Port: port})
		if err != nil {
			return nil, fmt.Errorf("listen for DHCP on %s port %d: %w (needs root or CAP_NET_BIND_SERVICE and CAP_NET_RAW)", s.ifaceName(), port, err)
		}
		growBuffers(c, socketBuffer)
		return c, nil
	}
	conn, err := open(s.cfg.ServerPort)
	if err != nil {
		return err
	}
	conns := []net.PacketConn{conn}
	if s.cfg.Mode == ModeProxy {
		pxe, err := open(s.cfg.PXEPort)
		if err != nil {
			conn.Close()
			return err
		}
		conns = append(conns, pxe)
	}
	return s.Serve(ctx, conns...)
}

func (s *Server) ifaceName() string {
	if s.cfg.Interface == "" {
		return "all interfaces"
	}
	return "interface " + s.cfg.Interface
}

// Serve answers DHCP on conns until ctx ends, then closes them and returns
// nil once everything it started has stopped. conns[0] is the DHCP server
// port (67); an optional conns[1] is the PXE port (4011, proxy mode).
func (s *Server) Serve(ctx context.Context, conns ...net.PacketConn) error {
	if len(conns) == 0 || len(conns) > 2 {
		return errors.New("dhcp: Serve wants the DHCP conn and optionally the PXE conn")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	go func() {
		<-ctx.Done()
		for _, c := range conns {
			c.Close()
		}
	}()

	// Full mode: load the leases before the first answer, and follow the
	// store so other instances' leases are seen.
	if s.cfg.Mode == ModeFull {
		ready := make(chan struct{})
		watchErr := make(chan error, 1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			var once sync.Once
			err := s.cfg.LeaseStore.Watch(ctx, s.cache.apply, func() { once.Do(func() { close(ready) }) })
			watchErr <- err
			if err != nil {
				s.log.Error("dhcp: lease watch stopped; stopping the DHCP server", "err", err)
				cancel()
			}
		}()
		select {
		case <-ready:
		case err := <-watchErr:
			if err == nil {
				err = ctx.Err()
			}
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("dhcp: load leases: %w", err)
		case <-ctx.Done():
			return nil
		}
	}

	wg.Add(1)
	go func() { defer wg.Done(); s.drainEvents(ctx) }()

	errs := make(chan error, len(conns)*s.cfg.Workers)
	for i, c := range conns {
		for range s.cfg.Workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := s.readLoop(ctx, c, i == 1); err != nil {
					errs <- err
					cancel()
				}
			}()
		}
	}
	<-ctx.Done()
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
		return nil
	}
}

func (s *Server) readLoop(ctx context.Context, conn net.PacketConn, onPXE bool) error {
	buf := make([]byte, maxPacket+1)
	outBuf := make([]byte, 0, 576)
	uc, _ := conn.(*net.UDPConn)
	for {
		var n int
		var peer netip.AddrPort
		var err error
		if uc != nil {
			n, peer, err = uc.ReadFromUDPAddrPort(buf)
		} else {
			var a net.Addr
			n, a, err = conn.ReadFrom(buf)
			if ua, ok := a.(*net.UDPAddr); ok {
				peer = ua.AddrPort()
			}
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("dhcp: read: %w", err)
		}
		out, dest := s.handlePacket(ctx, buf[:n], netip.AddrPortFrom(peer.Addr().Unmap(), peer.Port()), onPXE, outBuf[:0])
		if out == nil {
			continue
		}
		if s.log.Enabled(ctx, slog.LevelDebug) {
			s.log.Debug("dhcp: reply", "to", dest, "bytes", len(out), "from", peer)
		}
		if _, err := conn.WriteTo(out, net.UDPAddrFromAddrPort(dest)); err != nil {
			s.log.Warn("dhcp: send reply", "to", dest, "err", err)
		}
	}
}

// HandlePacket is the whole packet path without sockets: it returns the
// reply's bytes and where they go, or nil for no reply.
func (s *Server) HandlePacket(ctx context.Context, b []byte, peer netip.AddrPort, onPXE bool) ([]byte, netip.AddrPort) {
	return s.handlePacket(ctx, b, peer, onPXE, nil)
}

// handlePacket is HandlePacket appending the reply to dst (a read loop
// reuses one buffer).
func (s *Server) handlePacket(ctx context.Context, b []byte, peer netip.AddrPort, onPXE bool, dst []byte) ([]byte, netip.AddrPort) {
	p, bad := parse(b)
	if bad != "" {
		s.metrics.malformed.WithLabelValues(bad).Inc()
		s.metrics.packet("unknown", 0, resMalformed).Inc()
		return nil, netip.AddrPort{}
	}
	r := &request{ctx: ctx, pkt: p, peer: peer, onPXE: onPXE, now: time.Now()}
	resp := s.handle(r)
	if resp == nil {
		s.metrics.packet(r.typ.String(), r.typ, resIgnored).Inc()
		return nil, netip.AddrPort{}
	}
	s.metrics.packet(r.typ.String(), r.typ, resReplied).Inc()
	return appendReply(dst, resp), r.dest
}

// firstSighting reports whether id was not announced before by this server.
func (s *Server) firstSighting(id machine.ID) bool {
	s.seenMu.Lock()
	defer s.seenMu.Unlock()
	if _, ok := s.seen[id]; ok {
		return false
	}
	if len(s.seen) >= 1<<16 { // bounded; the projection knows them by now
		clear(s.seen)
	}
	s.seen[id] = struct{}{}
	return true
}

func (s *Server) enqueue(q queued) {
	select {
	case s.events <- q:
	default:
		s.metrics.eventsDropped.Inc()
	}
}

func (s *Server) drainEvents(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case q := <-s.events:
			if s.cfg.Recorder == nil {
				continue
			}
			if q.discovered != nil {
				s.cfg.Recorder.Discovered(ctx, q.id, *q.discovered)
				continue
			}
			e, err := machine.NewEvent(q.id, q.event, "mdc/dhcp", q.data)
			if err != nil {
				s.log.Error("dhcp: build telemetry event", "err", err)
				continue
			}
			s.cfg.Recorder.Telemetry(ctx, e)
		}
	}
}

// Config returns the validated configuration with defaults filled in.
func (s *Server) Config() Config { return s.cfg }
