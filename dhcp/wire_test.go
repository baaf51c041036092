package dhcp

import (
	"bytes"
	"encoding/json"
	"net"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
)

// wirePackets are requests and replies of every shape the server meets.
func wirePackets(t testing.TB) []*dhcpv4.DHCPv4 {
	relay := dhcpv4.WithRelay(net.IPv4(10, 20, 0, 1))
	agent := dhcpv4.WithOption(dhcpv4.OptRelayAgentInfo(dhcpv4.OptGeneric(dhcpv4.GenericOptionCode(1), []byte("port1"))))
	long := dhcpv4.WithOption(dhcpv4.OptGeneric(dhcpv4.OptionBootfileName, bytes.Repeat([]byte("x"), 600)))
	ps := []*dhcpv4.DHCPv4{
		discover(t, mac(1)),
		discover(t, mac(2), pxeMods(iana.EFI_X86_64, "PXEClient:Arch:00007:UNDI:003016")...),
		discover(t, mac(3), relay, agent, dhcpv4.WithUserClass("iPXE", false)),
		discover(t, mac(4), long, dhcpv4.WithOption(dhcpv4.OptClientIdentifier([]byte{1, 2, 0, 0, 0, 0, 4}))),
	}
	offer := discover(t, mac(5))
	offer.YourIPAddr = net.IPv4(10, 20, 0, 100)
	offer.UpdateOption(dhcpv4.OptServerIdentifier(net.IPv4(10, 20, 0, 1)))
	ps = append(ps, requestFor(t, offer, relay, agent))
	named := discover(t, mac(6))
	named.ServerHostName, named.BootFileName = "tftp.example", "undionly.kpxe"
	named.Flags = 0x8000
	named.NumSeconds, named.HopCount = 7, 2
	ps = append(ps, named)
	return ps
}

// appendReply writes exactly what dhcpv4's ToBytes writes.
func TestAppendReplyMatchesToBytes(t *testing.T) {
	for i, p := range wirePackets(t) {
		if got, want := appendReply(nil, p), p.ToBytes(); !bytes.Equal(got, want) {
			t.Errorf("packet %d: appendReply\n%x\nwant ToBytes\n%x", i, got, want)
		}
		prefix := []byte("keep")
		if got := appendReply(prefix, p); !bytes.Equal(got[:4], prefix) || !bytes.Equal(got[4:], p.ToBytes()) {
			t.Errorf("packet %d: appendReply to a non-empty buffer differs", i)
		}
	}
}

// decodePacket reads what dhcpv4.FromBytes reads.
func TestDecodePacketMatchesFromBytes(t *testing.T) {
	ps := wirePackets(t)
	// A repeated option concatenates (RFC 3396), and bytes after END are
	// ignored.
	dup := append(ps[0].ToBytes()[:240], 53, 1, 1, 60, 3, 'P', 'X', 'E', 60, 6, 'C', 'l', 'i', 'e', 'n', 't', 255, 1, 2, 3)
	for i, b := range append(func() (bs [][]byte) {
		for _, p := range ps {
			bs = append(bs, p.ToBytes())
		}
		return bs
	}(), dup) {
		checkDecode(t, i, b)
	}
}

func checkDecode(t *testing.T, i int, b []byte) {
	t.Helper()
	want, werr := dhcpv4.FromBytes(b)
	got, ok := decodePacket(b)
	if werr != nil || !ok {
		if ok {
			t.Errorf("packet %d: decodePacket accepted what FromBytes refuses (%v)", i, werr)
		}
		return
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("packet %d: decodePacket\n%v\nwant FromBytes\n%v", i, got.Summary(), want.Summary())
	}
}

// FuzzWire: for any request-sized input, decodePacket agrees with
// dhcpv4.FromBytes, and appendReply with ToBytes on what was decoded.
func FuzzWire(f *testing.F) {
	for _, p := range wirePackets(f) {
		f.Add(p.ToBytes())
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) < 240 || len(b) > maxPacket || !bytes.Equal(b[236:240], magicCookie) {
			return
		}
		checkDecode(t, 0, b)
		if p, ok := decodePacket(b); ok {
			if got, want := appendReply(nil, p), p.ToBytes(); !bytes.Equal(got, want) {
				t.Errorf("appendReply\n%x\nwant\n%x", got, want)
			}
		}
	})
}

func testLeases() []Lease {
	exp := time.Date(2026, 12, 1, 23, 0, 0, 0, time.UTC)
	return []Lease{
		{Addr: netip.MustParseAddr("10.1.2.3"), Client: "020000000001", State: LeaseBound, Expires: exp, Server: "mdc-a"},
		{Addr: netip.MustParseAddr("10.1.2.4"), Client: "020000000002", State: LeaseReleased, Expires: exp.Add(time.Nanosecond)},
		{Addr: netip.MustParseAddr("10.1.2.5"), State: LeaseDeclined, Expires: exp.In(time.FixedZone("x", 3600)), Server: "host<&>"},
		{Addr: netip.MustParseAddr("10.1.2.6"), Client: "0a\"b", State: LeaseBound, Expires: exp, Server: "ünï"},
		{Addr: netip.MustParseAddr("10.1.2.7"), Client: "020000000001", State: LeaseBound, Expires: time.Time{}},
	}
}

// Lease records are the JSON encoding/json writes, and read back alike,
// whichever path wrote or read them.
func TestLeaseCodecMatchesJSON(t *testing.T) {
	for _, l := range testLeases() {
		want, _ := json.Marshal(l)
		got := encodeLease(l)
		if !bytes.Equal(got, want) {
			t.Errorf("encodeLease\n%s\nwant\n%s", got, want)
		}
		checkLeaseDecode(t, want)
	}
}

func checkLeaseDecode(t *testing.T, b []byte) {
	t.Helper()
	var want Lease
	jerr := json.Unmarshal(b, &want)
	got, err := decodeLease(b)
	if jerr != nil || !want.Addr.Is4() {
		if err == nil {
			t.Errorf("decodeLease(%q) accepted what encoding/json refuses (%v)", b, jerr)
		}
		return
	}
	if err != nil || got.Addr != want.Addr || got.Client != want.Client || got.State != want.State ||
		!got.Expires.Equal(want.Expires) || got.Server != want.Server {
		t.Errorf("decodeLease(%q) = %+v, %v; want %+v", b, got, err, want)
	}
}

// FuzzLeaseDecode: records in the bucket can be written by anyone; the fast
// reader agrees with encoding/json on all of them.
func FuzzLeaseDecode(f *testing.F) {
	for _, l := range testLeases() {
		f.Add(encodeLease(l))
	}
	f.Add([]byte(`{"addr":"10.0.0.1","client":"a\u0062","state":"bound","expires":"2026-01-01T00:00:00Z"}`))
	f.Add([]byte(`{"client":"ab","addr":"10.0.0.1","state":"bound","expires":"2026-01-01T00:00:00Z","server":"s"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		checkLeaseDecode(t, b)
	})
}
