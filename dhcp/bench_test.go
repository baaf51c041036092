package dhcp

import (
	"context"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// BenchmarkDORAKV is the full-mode packet path with leases in an embedded
// JetStream, without sockets: one op is DISCOVER+REQUEST for a new MAC.
func BenchmarkDORAKV(b *testing.B) {
	_, js := startNATSB(b)
	store := kvStoreB(b, js)
	sn := Subnet{Prefix: netip.MustParsePrefix("10.0.0.0/8"), Start: netip.MustParseAddr("10.1.0.0"), End: netip.MustParseAddr("10.200.0.0"), LeaseTime: time.Hour}
	srv, err := New(Config{Mode: ModeFull, AdvertiseAddr: netip.MustParseAddr("10.0.0.1"), HTTPBaseURL: "http://10.0.0.1", Subnets: []Subnet{sn}, LeaseStore: store})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ready := make(chan struct{})
	go store.Watch(ctx, srv.cache.apply, func() { close(ready) })
	<-ready
	relay := dhcpv4.WithRelay(net.IPv4(10, 0, 0, 2))
	var n atomic.Int64
	b.SetParallelism(32)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := n.Add(1)
			hw := net.HardwareAddr{2, 0, byte(i >> 24), byte(i >> 16), byte(i >> 8), byte(i)}
			d, _ := dhcpv4.NewDiscovery(hw, relay)
			out, _ := srv.HandlePacket(ctx, d.ToBytes(), netip.AddrPort{}, false)
			offer, _ := dhcpv4.FromBytes(out)
			req, _ := dhcpv4.NewRequestFromOffer(offer, relay)
			out, _ = srv.HandlePacket(ctx, req.ToBytes(), netip.AddrPort{}, false)
			if out == nil {
				b.Error("no ack")
			}
		}
	})
}
