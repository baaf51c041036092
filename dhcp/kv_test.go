package dhcp

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// Leases written by one server are there for a new server on the same
// bucket after a restart of both mdc and NATS.
func TestKVLeasesSurviveRestart(t *testing.T) {
	dir := t.TempDir()
	ns, js := startNATS(t, dir)
	cfg := fullConfig()
	cfg.LeaseStore = kvStore(t, js)
	h := startServer(t, cfg)
	_, ack1 := h.dora(mac(1))
	_, ack2 := h.dora(mac(2))

	// Stop NATS (the mdc server keeps running, it is simply abandoned) and
	// start everything anew on the same directory.
	ns.Shutdown()
	ns.WaitForShutdown()
	_, js2 := startNATS(t, dir)
	cfg = fullConfig()
	cfg.LeaseStore = kvStore(t, js2)
	reg := prometheus.NewRegistry()
	cfg.Registry = reg
	h2 := startServer(t, cfg)

	if o := h2.exchange(discover(t, mac(1)), false); !o.YourIPAddr.Equal(ack1.YourIPAddr) {
		t.Errorf("after restart mac 1 was offered %v, want its lease %v", o.YourIPAddr, ack1.YourIPAddr)
	}
	o3 := h2.exchange(discover(t, mac(3)), false)
	if o3.YourIPAddr.Equal(ack1.YourIPAddr) || o3.YourIPAddr.Equal(ack2.YourIPAddr) {
		t.Errorf("after restart a new client was offered %v, a leased address", o3.YourIPAddr)
	}
	// Init-reboot of a client known only from the store is acknowledged.
	reboot, _ := dhcpv4.New(dhcpv4.WithHwAddr(mac(2)), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(ack2.YourIPAddr)))
	if got := h2.exchange(reboot, false); got.MessageType() != dhcpv4.MessageTypeAck {
		t.Errorf("init-reboot after restart: %s, want ACK", got.MessageType())
	}
	if free := testutil.ToFloat64(collectorFor(t, reg, "mdc_dhcp_pool_free")); free != 8 {
		t.Errorf("pool free %v, want 8 of 10", free)
	}
}

func collectorFor(t *testing.T, reg *prometheus.Registry, name string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			g := prometheus.NewGauge(prometheus.GaugeOpts{Name: name})
			g.Set(mf.GetMetric()[0].GetGauge().GetValue())
			return g
		}
	}
	t.Fatalf("metric %s not found", name)
	return nil
}

// Two servers on one bucket, many clients racing for a small pool through
// both at once: no address is ever acked to two clients.
func TestKVTwoServersNeverShareAnAddress(t *testing.T) {
	_, js := startNATS(t, t.TempDir())
	var servers []*Server
	for _, name := range []string{"mdc-a", "mdc-b"} {
		cfg := fullConfig() // 10 addresses
		cfg.LeaseStore = kvStore(t, js)
		cfg.ServerName = name
		servers = append(servers, startServer(t, cfg).srv)
	}
	const clients = 40
	type grant struct {
		client string
		addr   netip.Addr
	}
	var mu sync.Mutex
	var grants []grant
	var wg sync.WaitGroup
	ctx := context.Background()
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			hw := mac(1000 + i)
			for try := range 4 {
				// Offer from one server, request through the other: the
				// worst case for a stale in-memory copy.
				a, b := servers[(i+try)%2], servers[(i+try+1)%2]
				out, _ := a.HandlePacket(ctx, discover(t, hw).ToBytes(), netip.AddrPort{}, false)
				if out == nil {
					continue
				}
				offer, _ := dhcpv4.FromBytes(out)
				out, _ = b.HandlePacket(ctx, requestFor(t, offer).ToBytes(), netip.AddrPort{}, false)
				if out == nil {
					continue
				}
				ack, _ := dhcpv4.FromBytes(out)
				if ack.MessageType() == dhcpv4.MessageTypeAck {
					mu.Lock()
					grants = append(grants, grant{hw.String(), ip(ack.YourIPAddr)})
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	owner := map[netip.Addr]string{}
	for _, g := range grants {
		if o, ok := owner[g.addr]; ok && o != g.client {
			t.Errorf("address %v acked to both %s and %s", g.addr, o, g.client)
		}
		owner[g.addr] = g.client
	}
	if len(owner) < 8 {
		t.Errorf("only %d of 10 addresses were handed out to %d clients", len(owner), clients)
	}
	// The store agrees with every grant.
	store := kvStore(t, js)
	for a, c := range owner {
		l, _, err := store.Get(ctx, a)
		if err != nil || l.Client != hexMAC(c) || !l.ActiveAt(time.Now()) {
			t.Errorf("store has %+v (%v) for %v, want an active lease of %s", l, err, a, c)
		}
	}
}

func hexMAC(s string) string {
	out := make([]byte, 0, 12)
	for i := 0; i < len(s); i++ {
		if s[i] != ':' {
			out = append(out, s[i])
		}
	}
	return string(out)
}
