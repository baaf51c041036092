package dhcp

import (
	"context"
	"encoding/json"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"

	"github.com/microdc/mdc/machine"
)

// leaseReply is what a plain DHCP client reads from an offer or ack.
type leaseReply struct {
	Type      string
	YIAddr    string
	Mask      string
	Router    string
	DNS       string
	Domain    string
	Lease     time.Duration
	T1, T2    time.Duration
	ServerID  string
	File      string
	IPXENoPxe []byte
}

func readLease(p *dhcpv4.DHCPv4) leaseReply {
	r := leaseReply{Type: p.MessageType().String(), YIAddr: p.YourIPAddr.String(), ServerID: p.ServerIdentifier().String(),
		Domain: p.DomainName(), Lease: p.IPAddressLeaseTime(0), T1: p.IPAddressRenewalTime(0), T2: p.IPAddressRebindingTime(0),
		File: p.BootFileName, IPXENoPxe: p.Options.Get(dhcpv4.GenericOptionCode(175))}
	if m := p.SubnetMask(); m != nil {
		r.Mask = net.IP(m).String()
	}
	if rt := p.Router(); len(rt) > 0 {
		r.Router = rt[0].String()
	}
	var dns []string
	for _, d := range p.DNS() {
		dns = append(dns, d.String())
	}
	r.DNS = strings.Join(dns, ",")
	return r
}

func plainLease(typ, addr string) leaseReply {
	return leaseReply{Type: typ, YIAddr: addr, Mask: "255.255.255.0", Router: "10.20.0.1", DNS: "10.20.0.53,10.20.0.54",
		Domain: "rack.example", Lease: 10 * time.Minute, T1: 5 * time.Minute, T2: 525 * time.Second, ServerID: "127.0.0.1"}
}

// dora runs DISCOVER-OFFER-REQUEST-ACK for hw and returns the ack.
func (h *harness) dora(hw net.HardwareAddr, mods ...dhcpv4.Modifier) (offer, ack *dhcpv4.DHCPv4) {
	h.t.Helper()
	offer = h.exchange(discover(h.t, hw, mods...), false)
	if offer.MessageType() != dhcpv4.MessageTypeOffer {
		h.t.Fatalf("got %s, want OFFER", offer.MessageType())
	}
	ack = h.exchange(requestFor(h.t, offer, mods...), false)
	return offer, ack
}

func fullConfig() Config {
	return Config{Mode: ModeFull, Subnets: []Subnet{testSubnet()}}
}

func TestFullLeaseCycle(t *testing.T) {
	h := startServer(t, fullConfig())
	hw := mac(1)
	offer, ack := h.dora(hw)
	if diff := cmp.Diff(plainLease("OFFER", "10.20.0.100"), readLease(offer)); diff != "" {
		t.Errorf("offer (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(plainLease("ACK", "10.20.0.100"), readLease(ack)); diff != "" {
		t.Errorf("ack (-want +got):\n%s", diff)
	}

	// A second client gets another address; asking for the first one's is
	// answered with another offer, and requesting it outright is NAKed.
	o2 := h.exchange(discover(t, mac(2), dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IPv4(10, 20, 0, 100)))), false)
	if got := ip(o2.YourIPAddr); got == netip.MustParseAddr("10.20.0.100") || !got.IsValid() {
		t.Fatalf("second client offered %v", got)
	}
	steal := requestFor(t, offer)
	steal.ClientHWAddr = mac(2)
	nak := h.exchange(steal, false)
	if nak.MessageType() != dhcpv4.MessageTypeNak || !nak.YourIPAddr.IsUnspecified() {
		t.Errorf("stealing an address: got %s yiaddr %v, want NAK without an address", nak.MessageType(), nak.YourIPAddr)
	}

	// Renewing (unicast, ciaddr set) and rebinding (broadcast) extend the
	// lease; the reply goes to ciaddr.
	renew, _ := dhcpv4.NewRenewFromAck(ack)
	out, dest := h.srv.HandlePacket(context.Background(), renew.ToBytes(), netip.MustParseAddrPort("10.20.0.100:68"), false)
	checkWellFormed(t, out)
	got, _ := dhcpv4.FromBytes(out)
	if diff := cmp.Diff(plainLease("ACK", "10.20.0.100"), readLease(got)); diff != "" {
		t.Errorf("renew ack (-want +got):\n%s", diff)
	}
	if dest.String() != "10.20.0.100:"+itoa(h.srv.cfg.ClientPort) {
		t.Errorf("renew ack sent to %v, want the client's address", dest)
	}
	renew.SetBroadcast()
	if out, _ := h.srv.HandlePacket(context.Background(), renew.ToBytes(), netip.AddrPort{}, false); out == nil {
		t.Error("no answer to a rebinding request")
	}

	// INIT-REBOOT: a known client gets its address confirmed; an unknown one
	// gets silence; one on the wrong network a NAK.
	reboot, _ := dhcpv4.New(dhcpv4.WithHwAddr(hw), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IPv4(10, 20, 0, 100))), dhcpv4.WithBroadcast(true))
	if got := h.exchange(reboot, false); got.MessageType() != dhcpv4.MessageTypeAck {
		t.Errorf("init-reboot of a known lease: %s, want ACK", got.MessageType())
	}
	reboot.ClientHWAddr = mac(9)
	reboot.UpdateOption(dhcpv4.OptRequestedIPAddress(net.IPv4(10, 20, 0, 105)))
	h.noReply(reboot, false)
	reboot.UpdateOption(dhcpv4.OptRequestedIPAddress(net.IPv4(192, 0, 2, 7)))
	if got := h.exchange(reboot, false); got.MessageType() != dhcpv4.MessageTypeNak {
		t.Errorf("init-reboot on the wrong network: %s, want NAK", got.MessageType())
	}

	// RELEASE frees it: the same client gets it back first (a machine keeps
	// its address), and it is free in the pool meanwhile.
	rel, _ := dhcpv4.NewReleaseFromACK(ack)
	h.noReply(rel, false)
	l, _, _ := h.srv.cache.lookup(netip.MustParseAddr("10.20.0.100"))
	if l.State != LeaseReleased {
		t.Errorf("after RELEASE the lease is %q, want released", l.State)
	}
	if o := h.exchange(discover(t, hw), false); ip(o.YourIPAddr) != netip.MustParseAddr("10.20.0.100") {
		t.Errorf("after release the client was offered %v, want its old 10.20.0.100", o.YourIPAddr)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

func TestFullSelectingAnotherServer(t *testing.T) {
	h := startServer(t, fullConfig())
	offer := h.exchange(discover(t, mac(1)), false)
	req := requestFor(t, offer, dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(10, 20, 0, 2))))
	h.noReply(req, false)
	// The hold is not kept for a client that chose someone else: asking with
	// no server id and no address is simply dropped.
	bare, _ := dhcpv4.New(dhcpv4.WithHwAddr(mac(1)), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest))
	h.noReply(bare, false)
}

func TestFullDeclineAndInform(t *testing.T) {
	h := startServer(t, fullConfig())
	_, ack := h.dora(mac(1))
	decline, _ := dhcpv4.New(dhcpv4.WithHwAddr(mac(1)), dhcpv4.WithMessageType(dhcpv4.MessageTypeDecline),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(ack.YourIPAddr)), dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(127, 0, 0, 1))))
	h.noReply(decline, false)
	// The declined address is offered to nobody, the decliner included.
	for i := range 12 {
		o := h.srv.handle(&request{ctx: context.Background(), pkt: discover(t, mac(1+i)), now: time.Now()})
		if o != nil && o.YourIPAddr.Equal(ack.YourIPAddr) {
			t.Fatalf("declined address %v offered to %v", ack.YourIPAddr, mac(1+i))
		}
	}

	inform, _ := dhcpv4.New(dhcpv4.WithHwAddr(mac(50)), dhcpv4.WithMessageType(dhcpv4.MessageTypeInform), dhcpv4.WithClientIP(net.IPv4(10, 20, 0, 30)))
	out, dest := h.srv.HandlePacket(context.Background(), inform.ToBytes(), netip.MustParseAddrPort("10.20.0.30:68"), false)
	checkWellFormed(t, out)
	got, _ := dhcpv4.FromBytes(out)
	want := plainLease("ACK", "0.0.0.0")
	want.Lease, want.T1, want.T2 = 0, 0, 0
	if diff := cmp.Diff(want, readLease(got)); diff != "" {
		t.Errorf("inform ack (-want +got):\n%s", diff)
	}
	if dest.Addr() != netip.MustParseAddr("10.20.0.30") {
		t.Errorf("inform ack to %v, want ciaddr", dest)
	}
}

func TestFullReservation(t *testing.T) {
	cfg := fullConfig()
	cfg.Reservations = map[machine.ID]netip.Addr{"525400aa0007": netip.MustParseAddr("10.20.0.100"), "525400aa0008": netip.MustParseAddr("10.20.0.20")}
	h := startServer(t, cfg)
	// Others never get a reserved address, even asking for it.
	for i := range 3 {
		_, ack := h.dora(mac(20+i), dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IPv4(10, 20, 0, 100))))
		if a := ip(ack.YourIPAddr); a == netip.MustParseAddr("10.20.0.100") {
			t.Fatalf("%v got reserved address %v", mac(20+i), a)
		}
	}
	for _, tc := range []struct {
		hw   net.HardwareAddr
		want string
	}{{mac(7), "10.20.0.100"}, {mac(8), "10.20.0.20"}} {
		if _, ack := h.dora(tc.hw); ack.YourIPAddr.String() != tc.want {
			t.Errorf("%v got %v, want its reservation %s", tc.hw, ack.YourIPAddr, tc.want)
		}
	}
}

func TestFullNetbootClients(t *testing.T) {
	ipxeDir := t.TempDir()
	h := startServer(t, Config{Mode: ModeFull, Subnets: []Subnet{testSubnet()}, IPXEDir: ipxeDir})
	ipxeURL := "http://127.0.0.1:8080/boot.ipxe?mac=${net0/mac}&buildarch=${buildarch}&platform=${platform}"
	for i, tc := range []struct {
		name     string
		mods     []dhcpv4.Modifier
		file     string
		noProxyD []byte
	}{
		{"plain client gets a plain lease", nil, "", nil},
		{"bios firmware", pxeMods(iana.INTEL_X86PC, "PXEClient:Arch:00000:UNDI:002001"), "undionly.kpxe", nil},
		{"uefi firmware", pxeMods(iana.EFI_X86_64, "PXEClient:Arch:00007:UNDI:003016"), "snponly.efi", nil},
		{"arm64 without a build gets a plain lease", pxeMods(iana.EFI_ARM64, "PXEClient:Arch:00011"), "", nil},
		{"ipxe gets boot.ipxe and no proxy wait", append(pxeMods(iana.EFI_X86_64, "PXEClient:Arch:00007:UNDI:003016"), dhcpv4.WithUserClass("iPXE", false)), ipxeURL, []byte{176, 1, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h.t = t
			offer, ack := h.dora(mac(60+i), tc.mods...)
			for _, p := range []*dhcpv4.DHCPv4{offer, ack} {
				got := readLease(p)
				if !netip.MustParsePrefix("10.20.0.0/24").Contains(ip(p.YourIPAddr)) || got.Lease != 10*time.Minute {
					t.Errorf("%s: address %v lease %v, want a lease from the pool", got.Type, got.YIAddr, got.Lease)
				}
				if got.File != tc.file || !cmp.Equal(got.IPXENoPxe, tc.noProxyD) {
					t.Errorf("%s: file %q option 175 %v, want %q %v", got.Type, got.File, got.IPXENoPxe, tc.file, tc.noProxyD)
				}
			}
		})
	}
}

func TestFullRelayedSubnet(t *testing.T) {
	second := Subnet{Prefix: netip.MustParsePrefix("10.30.0.0/16"), Start: netip.MustParseAddr("10.30.5.1"), End: netip.MustParseAddr("10.30.5.9"),
		Router: netip.MustParseAddr("10.30.0.1"), LeaseTime: time.Hour}
	// The relay's giaddr picks the subnet. Replies go to the relay; here the
	// relay address is 127.0.0.1, so that subnet is 127.0.0.0/8.
	relaySubnet := Subnet{Prefix: netip.MustParsePrefix("127.0.0.0/8"), Start: netip.MustParseAddr("127.0.9.1"), End: netip.MustParseAddr("127.0.9.9"),
		Router: netip.MustParseAddr("127.0.9.254"), LeaseTime: time.Hour}
	h := startServer(t, Config{Mode: ModeFull, Subnets: []Subnet{testSubnet(), second, relaySubnet}, AdvertiseAddr: loopback})
	relayed := []dhcpv4.Modifier{dhcpv4.WithRelay(net.IPv4(127, 0, 0, 1)),
		dhcpv4.WithOption(dhcpv4.OptRelayAgentInfo(dhcpv4.OptGeneric(dhcpv4.GenericOptionCode(1), []byte("port7"))))}
	offer, ack := h.dora(mac(1), relayed...)
	for _, p := range []*dhcpv4.DHCPv4{offer, ack} {
		if ip(p.YourIPAddr) != netip.MustParseAddr("127.0.9.1") || p.Router()[0].String() != "127.0.9.254" || !p.GatewayIPAddr.Equal(net.IPv4(127, 0, 0, 1)) {
			t.Errorf("relayed %s: yiaddr %v router %v giaddr %v, want 127.0.9.1 from the relay's subnet via 127.0.0.1",
				p.MessageType(), p.YourIPAddr, p.Router(), p.GatewayIPAddr)
		}
		if string(p.Options.Get(dhcpv4.OptionRelayAgentInformation)) != "\x01\x05port7" {
			t.Errorf("relayed %s: option 82 not echoed", p.MessageType())
		}
	}
	// The same request through a relay in 10.30.0.0/16 is served from there
	// (the reply goes to that relay, not to us: check the decision in-process).
	d := discover(t, mac(2), dhcpv4.WithRelay(net.IPv4(10, 30, 0, 1)))
	out, dest := h.srv.HandlePacket(context.Background(), d.ToBytes(), netip.MustParseAddrPort("10.30.0.1:67"), false)
	got, _ := dhcpv4.FromBytes(out)
	if ip(got.YourIPAddr) != netip.MustParseAddr("10.30.5.1") || dest.String() != "10.30.0.1:"+itoa(h.srv.cfg.RelayPort) {
		t.Errorf("relay 10.30.0.1: offered %v sent to %v, want 10.30.5.1 via the relay", got.YourIPAddr, dest)
	}
	// A relay in no subnet gets nothing.
	d = discover(t, mac(3), dhcpv4.WithRelay(net.IPv4(192, 0, 2, 1)))
	if out, _ := h.srv.HandlePacket(context.Background(), d.ToBytes(), netip.MustParseAddrPort("192.0.2.1:67"), false); out != nil {
		t.Error("answered a relay outside every subnet")
	}
	// A NAK through a relay carries the broadcast flag.
	bad, _ := dhcpv4.New(dhcpv4.WithHwAddr(mac(4)), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest), dhcpv4.WithRelay(net.IPv4(127, 0, 0, 1)),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(127, 0, 0, 1))), dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IPv4(10, 20, 0, 100))))
	if nak := h.exchange(bad, false); nak.MessageType() != dhcpv4.MessageTypeNak || !nak.IsBroadcast() {
		t.Errorf("relayed bad request: %s broadcast=%v, want NAK with the broadcast flag", nak.MessageType(), nak.IsBroadcast())
	}
}

func TestFullPoolExhausted(t *testing.T) {
	h := startServer(t, fullConfig())
	seen := map[string]bool{}
	for i := range 10 {
		_, ack := h.dora(mac(i))
		if seen[ack.YourIPAddr.String()] {
			t.Fatalf("address %v handed out twice", ack.YourIPAddr)
		}
		seen[ack.YourIPAddr.String()] = true
	}
	h.noReply(discover(t, mac(11)), false)
}

func TestConfigErrors(t *testing.T) {
	ok := Config{Mode: ModeFull, AdvertiseAddr: loopback, HTTPBaseURL: "http://127.0.0.1:8080", Subnets: []Subnet{testSubnet()}}
	for name, tc := range map[string]struct {
		mut  func(*Config)
		want string
	}{
		"bad mode":          {func(c *Config) { c.Mode = "relay" }, `unknown DHCP mode "relay"`},
		"no advertise":      {func(c *Config) { c.AdvertiseAddr = netip.Addr{} }, "advertise address"},
		"no http url":       {func(c *Config) { c.HTTPBaseURL = "" }, "HTTP base URL"},
		"full without pool": {func(c *Config) { c.Subnets = nil }, "--dhcp-range"},
		"range outside":     {func(c *Config) { c.Subnets[0].End = netip.MustParseAddr("10.21.0.1") }, "must lie inside"},
		"router outside":    {func(c *Config) { c.Subnets[0].Router = netip.MustParseAddr("10.21.0.1") }, "router 10.21.0.1 is not in it"},
		"reversed range":    {func(c *Config) { c.Subnets[0].Start = netip.MustParseAddr("10.20.0.200") }, "before start"},
		"short lease":       {func(c *Config) { c.Subnets[0].LeaseTime = time.Second }, "lease time"},
		"reservation out": {func(c *Config) {
			c.Reservations = map[machine.ID]netip.Addr{"525400000001": netip.MustParseAddr("192.0.2.1")}
		}, "in no configured subnet"},
		"bad port": {func(c *Config) { c.ClientPort = 70000 }, "client port"},
	} {
		t.Run(name, func(t *testing.T) {
			c := ok
			c.Subnets = []Subnet{testSubnet()}
			tc.mut(&c)
			_, err := New(c)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New: %v, want an error containing %q", err, tc.want)
			}
		})
	}
	if _, err := New(ok); err != nil {
		t.Errorf("valid config: %v", err)
	}
	sn, err := ParseRange("10.0.0.100-10.0.0.200")
	if err != nil || sn.Prefix.String() != "10.0.0.0/24" || sn.End.String() != "10.0.0.200" {
		t.Errorf("ParseRange: %+v %v", sn, err)
	}
	if _, err := ParseRange("10.0.0.100"); err == nil {
		t.Error("ParseRange accepted a range without an end")
	}
}

// The DHCP of a booted OS (no PXE vendor class, no option 93) carries no
// firmware label; a firmware's does.
func TestTelemetryArchOnlyForFirmware(t *testing.T) {
	cfg := fullConfig()
	cfg.Machines = fakeMachines{"525400aa0001": {}, "525400aa0002": {}}
	h := startServer(t, cfg)
	h.dora(mac(1))
	h.dora(mac(2), pxeMods(iana.EFI_X86_64, "PXEClient:Arch:00007:UNDI:003016")...)
	waitFor(t, "telemetry", func() bool { h.rec.mu.Lock(); defer h.rec.mu.Unlock(); return len(h.rec.telemetry) == 4 })
	h.rec.mu.Lock()
	defer h.rec.mu.Unlock()
	for _, e := range h.rec.telemetry {
		var d TelemetryData
		if err := json.Unmarshal(e.Data, &d); err != nil {
			t.Fatal(err)
		}
		want := ""
		if e.Machine == "525400aa0002" {
			want = "x86_64-efi"
		}
		if d.Arch != want {
			t.Errorf("%s %s: arch %q, want %q", e.Machine, e.Type, d.Arch, want)
		}
	}
}
