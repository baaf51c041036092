package dhcp

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"
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

// BenchmarkServerDORAKV is BenchmarkDORAKV without the client's cost: the
// DISCOVER and REQUEST are templates patched with the MAC and the offered
// address, so the profile shows the server alone (parse, lease choice, the
// durable KV write, the replies).
func BenchmarkServerDORAKV(b *testing.B) {
	_, js := startNATSB(b)
	benchServerDORA(b, kvStoreB(b, js))
}

// BenchmarkServerDORAMemory is BenchmarkServerDORAKV with leases in memory:
// the difference is what persisting a lease in JetStream costs.
func BenchmarkServerDORAMemory(b *testing.B) {
	benchServerDORA(b, NewMemoryStore())
}

func benchServerDORA(b *testing.B, store LeaseStore) {
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
	hw0 := net.HardwareAddr{2, 0, 0, 0, 0, 0}
	d, _ := dhcpv4.NewDiscovery(hw0, relay)
	req, _ := dhcpv4.NewRequestFromOffer(&dhcpv4.DHCPv4{ClientHWAddr: hw0, YourIPAddr: net.IPv4(10, 255, 255, 254),
		Options: dhcpv4.OptionsFromList(dhcpv4.OptServerIdentifier(net.IPv4(10, 0, 0, 1)))}, relay)
	discT, reqT := d.ToBytes(), req.ToBytes()
	yi := bytes.Index(reqT[240:], []byte{50, 4, 10, 255, 255, 254}) + 240 + 2
	var n atomic.Int64
	b.SetParallelism(32)
	defer reportCPU(b)()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		disc, rq := bytes.Clone(discT), bytes.Clone(reqT)
		for pb.Next() {
			i := n.Add(1)
			for _, p := range [][]byte{disc, rq} {
				binary.BigEndian.PutUint32(p[4:], uint32(i))  // xid
				binary.BigEndian.PutUint32(p[30:], uint32(i)) // chaddr[2:6]
			}
			out, _ := srv.HandlePacket(ctx, disc, netip.AddrPort{}, false)
			if out == nil {
				b.Error("no offer")
				return
			}
			copy(rq[yi:yi+4], out[16:20])
			if out, _ = srv.HandlePacket(ctx, rq, netip.AddrPort{}, false); out == nil || !bytes.Contains(out[240:], []byte{53, 1, byte(dhcpv4.MessageTypeAck)}) {
				b.Error("no ack")
				return
			}
		}
	})
}

// reportCPU adds the process's CPU time per op (all goroutines, NATS
// included): on a shared machine it moves far less than ns/op.
func reportCPU(b *testing.B) func() {
	cpu := func() time.Duration {
		var ru syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	start := cpu()
	return func() {
		b.ReportMetric(float64((cpu()-start).Microseconds())/float64(b.N), "cpu-µs/op")
	}
}
