package dhcp

import (
	"context"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/microdc/mdc/machine"
)

var loopback = netip.MustParseAddr("127.0.0.1")

// fakeMachines is the in-memory machine table.
type fakeMachines map[machine.ID]machine.Machine

func (f fakeMachines) LookupMAC(id machine.ID) (machine.Machine, bool) {
	m, ok := f[id]
	return m, ok
}

// fakeRecorder keeps what the server reported.
type fakeRecorder struct {
	mu         sync.Mutex
	discovered []machine.DiscoveredData
	ids        []machine.ID
	telemetry  []machine.Event
	got        chan struct{}
}

func newFakeRecorder() *fakeRecorder { return &fakeRecorder{got: make(chan struct{}, 1000)} }

func (f *fakeRecorder) Discovered(_ context.Context, id machine.ID, d machine.DiscoveredData) {
	f.mu.Lock()
	f.ids = append(f.ids, id)
	f.discovered = append(f.discovered, d)
	f.mu.Unlock()
	f.got <- struct{}{}
}

func (f *fakeRecorder) Telemetry(_ context.Context, e machine.Event) {
	f.mu.Lock()
	f.telemetry = append(f.telemetry, e)
	f.mu.Unlock()
	f.got <- struct{}{}
}

// waitFor polls cond until it holds or 5 s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// harness runs a Server on loopback sockets and plays the client (and the
// relay: replies to relays come to the same socket).
type harness struct {
	t      *testing.T
	srv    *Server
	conn   *net.UDPConn // server's DHCP port
	pxe    *net.UDPConn // server's PXE port (proxy mode)
	client *net.UDPConn
	rec    *fakeRecorder
}

func listenLoopback(t *testing.T) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// testSubnet is the default full-mode pool.
func testSubnet() Subnet {
	return Subnet{
		Prefix: netip.MustParsePrefix("10.20.0.0/24"), Start: netip.MustParseAddr("10.20.0.100"), End: netip.MustParseAddr("10.20.0.109"),
		Router: netip.MustParseAddr("10.20.0.1"), DNS: []netip.Addr{netip.MustParseAddr("10.20.0.53"), netip.MustParseAddr("10.20.0.54")},
		Domain: "rack.example", LeaseTime: 10 * time.Minute,
	}
}

func startServer(t *testing.T, cfg Config) *harness {
	t.Helper()
	h := &harness{t: t, conn: listenLoopback(t), pxe: listenLoopback(t), client: listenLoopback(t), rec: newFakeRecorder()}
	t.Cleanup(func() { h.client.Close() })
	cport := h.client.LocalAddr().(*net.UDPAddr).Port
	cfg.AdvertiseAddr = loopback
	cfg.ClientPort, cfg.RelayPort, cfg.BroadcastAddr = cport, cport, loopback
	if cfg.HTTPBaseURL == "" {
		cfg.HTTPBaseURL = "http://127.0.0.1:8080"
	}
	if cfg.Recorder == nil {
		cfg.Recorder = h.rec
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.srv = srv
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	conns := []net.PacketConn{h.conn}
	if cfg.Mode != ModeFull {
		conns = append(conns, h.pxe)
	}
	go func() { done <- srv.Serve(ctx, conns...) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve returned %v after cancel, want nil", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Serve did not return after cancel")
		}
		h.pxe.Close()
	})
	return h
}

// send sends raw bytes to the server's DHCP port (pxe: its PXE port).
func (h *harness) send(b []byte, pxe bool) {
	h.t.Helper()
	to := h.conn.LocalAddr()
	if pxe {
		to = h.pxe.LocalAddr()
	}
	if _, err := h.client.WriteTo(b, to); err != nil {
		h.t.Fatal(err)
	}
}

// recv waits up to d for one reply; nil when none came.
func (h *harness) recv(d time.Duration) *dhcpv4.DHCPv4 {
	h.t.Helper()
	buf := make([]byte, 4096)
	h.client.SetReadDeadline(time.Now().Add(d))
	n, _, err := h.client.ReadFrom(buf)
	if err != nil {
		return nil
	}
	checkWellFormed(h.t, buf[:n])
	p, err := dhcpv4.FromBytes(buf[:n])
	if err != nil {
		h.t.Fatalf("reply does not decode: %v", err)
	}
	return p
}

// exchange sends p and returns the reply, failing if none comes.
func (h *harness) exchange(p *dhcpv4.DHCPv4, pxe bool) *dhcpv4.DHCPv4 {
	h.t.Helper()
	h.send(p.ToBytes(), pxe)
	r := h.recv(3 * time.Second)
	if r == nil {
		h.t.Fatalf("no reply to %s", p.MessageType())
	}
	if r.TransactionID != p.TransactionID {
		h.t.Fatalf("reply xid %v, want %v", r.TransactionID, p.TransactionID)
	}
	return r
}

// noReply sends p and fails if anything answers within 300 ms.
func (h *harness) noReply(p *dhcpv4.DHCPv4, pxe bool) {
	h.t.Helper()
	h.send(p.ToBytes(), pxe)
	if r := h.recv(300 * time.Millisecond); r != nil {
		h.t.Fatalf("got %s, want no reply to %s", r.MessageType(), p.MessageType())
	}
}

// checkWellFormed fails unless b is a BOOTREPLY whose options are TLVs that
// fit, end with END, and whose relay option (if any) is well-formed.
func checkWellFormed(t testing.TB, b []byte) {
	t.Helper()
	if err := wellFormedReply(b); err != "" {
		t.Fatalf("malformed reply: %s\n% x", err, b)
	}
}

func wellFormedReply(b []byte) string {
	if len(b) < 300 || len(b) > maxPacket {
		return "length out of range"
	}
	if b[0] != 2 {
		return "not a BOOTREPLY"
	}
	if string(b[236:240]) != string(magicCookie) {
		return "bad cookie"
	}
	for i := 240; ; {
		if i >= len(b) {
			return "no END option"
		}
		switch b[i] {
		case 0:
			i++
			continue
		case 255:
			for _, c := range b[i+1:] {
				if c != 0 {
					return "garbage after END"
				}
			}
			p, err := dhcpv4.FromBytes(b)
			if err != nil {
				return "does not decode: " + err.Error()
			}
			if v := p.Options.Get(dhcpv4.OptionRelayAgentInformation); v != nil && !validRelayInfo(v) {
				return "malformed relay agent option"
			}
			if mt := p.Options.Get(dhcpv4.OptionDHCPMessageType); len(mt) != 1 {
				return "bad message type option"
			}
			return ""
		}
		if i+1 >= len(b) || i+2+int(b[i+1]) > len(b) {
			return "option overruns the packet"
		}
		i += 2 + int(b[i+1])
	}
}

// mac returns a fresh MAC for each call.
func mac(n int) net.HardwareAddr {
	return net.HardwareAddr{0x52, 0x54, 0x00, 0xaa, byte(n >> 8), byte(n)}
}

func discover(t testing.TB, hw net.HardwareAddr, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	t.Helper()
	p, err := dhcpv4.NewDiscovery(hw, mods...)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func pxeMods(arch iana.Arch, vendor string) []dhcpv4.Modifier {
	return []dhcpv4.Modifier{
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier(vendor)),
		dhcpv4.WithOption(dhcpv4.OptClientArch(arch)),
	}
}

var testGUID = []byte{0, 0x33, 0x22, 0x11, 0x00, 0x55, 0x44, 0x77, 0x66, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff}

// request builds a SELECTING request for the offer's address.
func requestFor(t testing.TB, offer *dhcpv4.DHCPv4, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	t.Helper()
	p, err := dhcpv4.NewRequestFromOffer(offer, mods...)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func ip(p net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(p.To4())
	return a
}

// startNATS runs an embedded JetStream server in dir and returns a JetStream
// client connected in-process.
func startNATSB(b *testing.B) (*server.Server, jetstream.JetStream) {
	return startNATSTB(b, b.TempDir())
}

func kvStoreB(b *testing.B, js jetstream.JetStream) *KVStore {
	s, err := NewKVStore(context.Background(), js, "")
	if err != nil {
		b.Fatal(err)
	}
	return s
}

func startNATS(t *testing.T, dir string) (*server.Server, jetstream.JetStream) {
	return startNATSTB(t, dir)
}

func startNATSTB(t testing.TB, dir string) (*server.Server, jetstream.JetStream) {
	t.Helper()
	ns, err := server.NewServer(&server.Options{JetStream: true, StoreDir: dir, DontListen: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("embedded NATS not ready")
	}
	nc, err := nats.Connect("", nats.InProcessServer(ns))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close(); ns.Shutdown(); ns.WaitForShutdown() })
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return ns, js
}

func kvStore(t *testing.T, js jetstream.JetStream) *KVStore {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := NewKVStore(ctx, js, "")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func writeFile(t *testing.T, dir, name string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte("ipxe"), 0o644); err != nil {
		t.Fatal(err)
	}
}
