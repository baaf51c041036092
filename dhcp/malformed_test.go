package dhcp

import (
	"bytes"
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
)

// validDiscover is a PXE DISCOVER as bytes, with END right after the options.
func validDiscover(t testing.TB) []byte {
	p := discover(t, mac(77), pxeMods(iana.EFI_X86_64, "PXEClient:Arch:00007:UNDI:003016")...)
	b := p.ToBytes()
	return trimPad(b)
}

func trimPad(b []byte) []byte {
	for len(b) > 240 && b[len(b)-1] == 0 {
		b = b[:len(b)-1]
	}
	return b
}

// withOptions replaces the options of a valid DISCOVER with raw bytes.
func withOptions(t testing.TB, opts ...byte) []byte {
	b := validDiscover(t)[:240]
	return append(append([]byte{}, b...), opts...)
}

// disc is option 53 = DISCOVER.
var disc = []byte{53, 1, 1}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func mutate(t testing.TB, f func(b []byte) []byte) []byte {
	return f(append([]byte{}, validDiscover(t)...))
}

func TestMalformedPackets(t *testing.T) {
	end := []byte{255}
	pxe := []byte{60, 9, 'P', 'X', 'E', 'C', 'l', 'i', 'e', 'n', 't'}
	cases := []struct {
		name   string
		pkt    []byte
		answer bool // a well-formed reply is right (the packet is odd but legal)
	}{
		{"empty", nil, false},
		{"one byte", []byte{1}, false},
		{"truncated header", mutate(t, func(b []byte) []byte { return b[:100] }), false},
		{"no magic cookie", mutate(t, func(b []byte) []byte { return b[:236] }), false},
		{"cookie but no options", mutate(t, func(b []byte) []byte { return b[:240] }), false},
		{"bad magic cookie", mutate(t, func(b []byte) []byte { b[236] = 0x42; return b }), false},
		{"zero magic cookie", mutate(t, func(b []byte) []byte { copy(b[236:240], []byte{0, 0, 0, 0}); return b }), false},
		{"option length overruns", withOptions(t, cat(disc, pxe, []byte{12, 200, 'x'})...), false},
		{"option code without length", withOptions(t, cat(disc, pxe, []byte{12})...), false},
		{"second option overruns into end", withOptions(t, cat(disc, []byte{60, 20, 'P', 'X', 'E'}, end)...), false},
		{"no end option", withOptions(t, cat(disc, pxe)...), false},
		{"only padding", withOptions(t, cat(disc, pxe, make([]byte, 30))...), false},
		{"missing option 53", withOptions(t, cat(pxe, end)...), false},
		{"option 53 empty", withOptions(t, cat([]byte{53, 0}, pxe, end)...), false},
		{"option 53 two bytes", withOptions(t, cat([]byte{53, 2, 1, 1}, pxe, end)...), false},
		{"message type 0", withOptions(t, cat([]byte{53, 1, 0}, pxe, end)...), false},
		{"OFFER sent to the server", withOptions(t, cat([]byte{53, 1, 2}, pxe, end)...), false},
		{"ACK sent to the server", withOptions(t, cat([]byte{53, 1, 5}, pxe, end)...), false},
		{"message type 200", withOptions(t, cat([]byte{53, 1, 200}, pxe, end)...), false},
		{"BOOTREPLY opcode", mutate(t, func(b []byte) []byte { b[0] = 2; return b }), false},
		{"opcode 0", mutate(t, func(b []byte) []byte { b[0] = 0; return b }), false},
		{"oversized", mutate(t, func(b []byte) []byte { return append(b, make([]byte, 2000)...) }), false},
		{"jumbo oversized", mutate(t, func(b []byte) []byte { return append(b, bytes.Repeat([]byte{0xff}, 9000)...) }), false},
		{"hlen 0", mutate(t, func(b []byte) []byte { b[2] = 0; return b }), false},
		{"hlen 200", mutate(t, func(b []byte) []byte { b[2] = 200; return b }), false},
		{"ethernet with hlen 4", mutate(t, func(b []byte) []byte { b[2] = 4; return b }), false},
		{"all-zero chaddr", mutate(t, func(b []byte) []byte { copy(b[28:44], make([]byte, 16)); return b }), false},
		{"17 hops", mutate(t, func(b []byte) []byte { b[3] = 17; return b }), false},
		{"relay option 82 sub-option overruns", withOptions(t, cat(disc, pxe, []byte{82, 4, 1, 9, 'a', 'b'}, end)...), false},
		{"relay option 82 of one byte", withOptions(t, cat(disc, pxe, []byte{82, 1, 1}, end)...), false},
		{"relay option 82 with pad inside", withOptions(t, cat(disc, pxe, []byte{82, 5, 0, 1, 2, 1, 'x'}, end)...), false},
		{"relay option 82 with end inside", withOptions(t, cat(disc, pxe, []byte{82, 4, 1, 1, 'x', 255}, end)...), false},
		{"requested address of 3 bytes", withOptions(t, cat(disc, pxe, []byte{50, 3, 10, 20, 0}, end)...), false},
		{"server identifier of 5 bytes", withOptions(t, cat(disc, pxe, []byte{54, 5, 127, 0, 0, 1, 1}, end)...), false},
		{"client identifier of 1 byte", withOptions(t, cat(disc, pxe, []byte{61, 1, 1}, end)...), false},
		{"client arch of 3 bytes", withOptions(t, cat(disc, pxe, []byte{93, 3, 0, 7, 0}, end)...), false},
		{"client guid of 10 bytes", withOptions(t, cat(disc, pxe, []byte{97, 10}, make([]byte, 10), end)...), false},
		{"client guid of wrong type", withOptions(t, cat(disc, pxe, []byte{97, 17, 1}, make([]byte, 16), end)...), false},
		{"max message size 100", withOptions(t, cat(disc, pxe, []byte{57, 2, 0, 100}, end)...), false},
		{"giaddr broadcast", mutate(t, func(b []byte) []byte { copy(b[24:28], []byte{255, 255, 255, 255}); return b }), false},
		{"giaddr multicast", mutate(t, func(b []byte) []byte { copy(b[24:28], []byte{224, 0, 0, 1}); return b }), false},
		{"ciaddr broadcast", mutate(t, func(b []byte) []byte { copy(b[12:16], []byte{255, 255, 255, 255}); return b }), false},
		// Legal oddities: answered, and the answer is well-formed.
		{"garbage after END", mutate(t, func(b []byte) []byte { return append(b, 0xde, 0xad, 0xbe, 0xef, 12, 200) }), true},
		{"pad between options", withOptions(t, cat(disc, []byte{0, 0, 0}, pxe, []byte{0}, end)...), true},
		{"option 175 malformed inside (not echoed)", withOptions(t, cat(disc, pxe, []byte{175, 3, 19, 9, 1}, end)...), true},
	}
	if len(cases) < 30 {
		t.Fatalf("only %d cases", len(cases))
	}
	for _, mode := range []Mode{ModeProxy, ModeFull} {
		big := testSubnet()
		big.End = netip.MustParseAddr("10.20.0.250")
		h := startServer(t, Config{Mode: mode, Subnets: []Subnet{big}})
		for i, tc := range cases {
			t.Run(string(mode)+"/"+tc.name, func(t *testing.T) {
				h.t = t
				h.send(tc.pkt, false)
				// Then a normal client: the server must still answer it. The
				// malformed packet's answer, if any, comes before or just after.
				p := discover(t, mac(3000+i), pxeMods(iana.INTEL_X86PC, "PXEClient:Arch:00000")...)
				h.send(p.ToBytes(), false)
				var normal bool
				var others []*dhcpv4.DHCPv4
				for wait := 3 * time.Second; ; wait = 50 * time.Millisecond {
					got := h.recv(wait) // recv checks every reply is well-formed
					if got == nil {
						break
					}
					if got.TransactionID == p.TransactionID {
						normal = true
						continue
					}
					others = append(others, got)
				}
				if !normal {
					t.Error("no answer to a normal DISCOVER after it")
				}
				if tc.answer && len(others) == 0 {
					t.Error("no answer to a legal packet")
				}
				if !tc.answer && len(others) > 0 {
					t.Errorf("answered a malformed packet with %s", others[0].MessageType())
				}
				for _, o := range others {
					if o.Options.Has(dhcpv4.GenericOptionCode(175)) && mode == ModeProxy {
						t.Error("option 175 echoed")
					}
				}
			})
		}
	}
}

// FuzzHandlePacket feeds arbitrary bytes through the whole packet path of a
// proxy and a full server: no panic, and any reply is well-formed.
func FuzzHandlePacket(f *testing.F) {
	b := validDiscover(f)
	f.Add(b, false)
	offer := discover(f, mac(1), pxeMods(iana.EFI_X86_64, "PXEClient")...)
	offer.YourIPAddr = netip.MustParseAddr("10.20.0.100").AsSlice()
	offer.UpdateOption(dhcpv4.OptServerIdentifier(loopback.AsSlice()))
	f.Add(requestFor(f, offer).ToBytes(), true)
	f.Add(discover(f, mac(2), dhcpv4.WithUserClass("iPXE", false), dhcpv4.WithRelay(netip.MustParseAddr("10.20.0.1").AsSlice()),
		dhcpv4.WithOption(dhcpv4.OptRelayAgentInfo(dhcpv4.OptGeneric(dhcpv4.GenericOptionCode(1), []byte("p1"))))).ToBytes(), false)
	rel, _ := dhcpv4.New(dhcpv4.WithHwAddr(mac(3)), dhcpv4.WithMessageType(dhcpv4.MessageTypeRelease), dhcpv4.WithClientIP(netip.MustParseAddr("10.20.0.100").AsSlice()))
	f.Add(rel.ToBytes(), false)
	inf, _ := dhcpv4.New(dhcpv4.WithHwAddr(mac(3)), dhcpv4.WithMessageType(dhcpv4.MessageTypeInform), dhcpv4.WithClientIP(netip.MustParseAddr("10.20.0.7").AsSlice()))
	f.Add(inf.ToBytes(), false)
	f.Add(withOptions(f, 53, 1, 1, 82, 4, 1, 9, 'a', 'b', 255), false)

	var servers []*Server
	for _, m := range []Mode{ModeProxy, ModeFull} {
		s, err := New(Config{Mode: m, AdvertiseAddr: loopback, HTTPBaseURL: "http://127.0.0.1:8080", Subnets: []Subnet{testSubnet()}})
		if err != nil {
			f.Fatal(err)
		}
		servers = append(servers, s)
	}
	f.Fuzz(func(t *testing.T, pkt []byte, onPXE bool) {
		for _, s := range servers {
			out, _ := s.HandlePacket(context.Background(), pkt, netip.MustParseAddrPort("127.0.0.1:68"), onPXE)
			if out != nil {
				checkWellFormed(t, out)
			}
		}
	})
}
