package dhcp

import (
	"encoding/json"
	"net"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"

	"github.com/microdc/mdc/machine"
)

// bootReply is what a boot client reads from an offer or ack.
type bootReply struct {
	Type     string
	YIAddr   string
	SIAddr   string
	File     string
	Vendor   string // option 60
	ServerID string
	PXEOpts  []byte // option 43
	GUID     []byte // option 97
	IPXENoPD []byte // option 175
	Chaddr   string
}

func readBoot(p *dhcpv4.DHCPv4) bootReply {
	return bootReply{
		Type: p.MessageType().String(), YIAddr: p.YourIPAddr.String(), SIAddr: p.ServerIPAddr.String(),
		File: p.BootFileName, Vendor: p.ClassIdentifier(), ServerID: p.ServerIdentifier().String(),
		PXEOpts: p.Options.Get(dhcpv4.OptionVendorSpecificInformation), GUID: p.Options.Get(dhcpv4.OptionClientMachineIdentifier),
		IPXENoPD: p.Options.Get(dhcpv4.GenericOptionCode(175)), Chaddr: p.ClientHWAddr.String(),
	}
}

var pxeDiscoveryControl = []byte{6, 1, 8, 255}

func TestProxyBootFiles(t *testing.T) {
	ipxeDir := t.TempDir()
	writeFile(t, ipxeDir, DefaultARM64Bootfile)
	h := startServer(t, Config{Mode: ModeProxy, IPXEDir: ipxeDir, UEFIBootfile: "custom.efi"})
	hNoARM := startServer(t, Config{Mode: ModeProxy})

	tests := []struct {
		name string
		h    *harness
		mods []dhcpv4.Modifier
		want *bootReply // nil: no answer
	}{
		{"bios pxe gets undionly over tftp", h, pxeMods(iana.INTEL_X86PC, "PXEClient:Arch:00000:UNDI:002001"),
			&bootReply{File: "undionly.kpxe", Vendor: "PXEClient", SIAddr: "127.0.0.1", PXEOpts: pxeDiscoveryControl}},
		{"uefi x64 (7) gets the configured efi", h, pxeMods(iana.EFI_X86_64, "PXEClient:Arch:00007:UNDI:003016"),
			&bootReply{File: "custom.efi", Vendor: "PXEClient", SIAddr: "127.0.0.1", PXEOpts: pxeDiscoveryControl}},
		{"uefi x64 (9) gets the configured efi", h, pxeMods(iana.EFI_BC, "PXEClient:Arch:00009:UNDI:003016"),
			&bootReply{File: "custom.efi", Vendor: "PXEClient", SIAddr: "127.0.0.1", PXEOpts: pxeDiscoveryControl}},
		{"arch read from the vendor class without option 93", h, []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00007:UNDI:003016"))},
			&bootReply{File: "custom.efi", Vendor: "PXEClient", SIAddr: "127.0.0.1", PXEOpts: pxeDiscoveryControl}},
		{"guid is echoed", h, append(pxeMods(iana.EFI_X86_64, "PXEClient"), dhcpv4.WithGeneric(dhcpv4.OptionClientMachineIdentifier, testGUID)),
			&bootReply{File: "custom.efi", Vendor: "PXEClient", SIAddr: "127.0.0.1", PXEOpts: pxeDiscoveryControl, GUID: testGUID}},
		{"arm64 gets the arm64 build when present", h, pxeMods(iana.EFI_ARM64, "PXEClient:Arch:00011"),
			&bootReply{File: DefaultARM64Bootfile, Vendor: "PXEClient", SIAddr: "127.0.0.1", PXEOpts: pxeDiscoveryControl}},
		{"arm64 without the build gets nothing", hNoARM, pxeMods(iana.EFI_ARM64, "PXEClient:Arch:00011"), nil},
		{"uefi ia32 has no build", h, pxeMods(iana.EFI_IA32, "PXEClient:Arch:00006"), nil},
		{"uefi http boot gets a URL", h, pxeMods(iana.EFI_X86_64_HTTP, "HTTPClient:Arch:00016:UNDI:003001"),
			&bootReply{File: "http://127.0.0.1:8080/ipxe/custom.efi", Vendor: "HTTPClient", SIAddr: "0.0.0.0"}},
		{"arm64 http boot gets the arm64 URL", h, pxeMods(iana.EFI_ARM64_HTTP, "HTTPClient:Arch:00019"),
			&bootReply{File: "http://127.0.0.1:8080/ipxe/" + DefaultARM64Bootfile, Vendor: "HTTPClient", SIAddr: "0.0.0.0"}},
		{"ipxe by user class gets boot.ipxe", h, append(pxeMods(iana.INTEL_X86PC, "PXEClient:Arch:00000:UNDI:002001"), dhcpv4.WithUserClass("iPXE", false)),
			&bootReply{File: "http://127.0.0.1:8080/boot.ipxe?mac=${net0/mac}&buildarch=${buildarch}&platform=${platform}", Vendor: "PXEClient", SIAddr: "127.0.0.1"}},
		{"ipxe by option 175 gets boot.ipxe", h, append(pxeMods(iana.EFI_X86_64, "PXEClient:Arch:00007:UNDI:003016"), dhcpv4.WithGeneric(dhcpv4.GenericOptionCode(175), []byte{19, 1, 1})),
			&bootReply{File: "http://127.0.0.1:8080/boot.ipxe?mac=${net0/mac}&buildarch=${buildarch}&platform=${platform}", Vendor: "PXEClient", SIAddr: "127.0.0.1"}},
		{"plain dhcp client is ignored", h, nil, nil},
		{"other vendor class is ignored", h, []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptClassIdentifier("MSFT 5.0"))}, nil},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.h.t = t
			hw := mac(100 + i)
			d := discover(t, hw, tc.mods...)
			if tc.want == nil {
				tc.h.noReply(d, false)
				return
			}
			got := readBoot(tc.h.exchange(d, false))
			want := *tc.want
			want.Type, want.YIAddr, want.ServerID, want.Chaddr = "OFFER", "0.0.0.0", "127.0.0.1", hw.String()
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("proxy offer (-want +got):\n%s", diff)
			}
		})
	}
}

func TestProxyRequests(t *testing.T) {
	h := startServer(t, Config{Mode: ModeProxy})
	hw := mac(1)
	offer := h.exchange(discover(t, hw, pxeMods(iana.EFI_X86_64, "PXEClient:Arch:00007")...), false)

	// The PXE client asks the proxy on port 4011 from its new address; the
	// ACK goes back to where the request came from.
	req := requestFor(t, offer, pxeMods(iana.EFI_X86_64, "PXEClient:Arch:00007")...)
	ack := h.exchange(req, true)
	if diff := cmp.Diff(bootReply{Type: "ACK", YIAddr: "0.0.0.0", SIAddr: "127.0.0.1", File: "snponly.efi", Vendor: "PXEClient",
		ServerID: "127.0.0.1", PXEOpts: pxeDiscoveryControl, Chaddr: hw.String()}, readBoot(ack)); diff != "" {
		t.Errorf("proxy ack on the PXE port (-want +got):\n%s", diff)
	}

	// On port 67 a REQUEST naming us is answered, one naming the real DHCP
	// server is not ours to answer.
	if got := h.exchange(req, false); got.MessageType() != dhcpv4.MessageTypeAck {
		t.Errorf("request naming us on port 67: got %s, want ACK", got.MessageType())
	}
	other := requestFor(t, offer, append(pxeMods(iana.EFI_X86_64, "PXEClient"), dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(10, 9, 9, 9))))...)
	h.noReply(other, false)

	// DISCOVER on 4011, RELEASE, INFORM: never answered by a proxy.
	h.noReply(discover(t, hw, pxeMods(iana.EFI_X86_64, "PXEClient")...), true)
	rel, _ := dhcpv4.New(dhcpv4.WithHwAddr(hw), dhcpv4.WithMessageType(dhcpv4.MessageTypeRelease), dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient")))
	h.noReply(rel, false)
}

func TestProxyRelayed(t *testing.T) {
	h := startServer(t, Config{Mode: ModeProxy})
	hw := mac(2)
	// giaddr is the relay (here our loopback client socket's address): the
	// reply is unicast to it on the relay port, with option 82 echoed.
	d := discover(t, hw, append(pxeMods(iana.INTEL_X86PC, "PXEClient:Arch:00000"),
		dhcpv4.WithRelay(net.IPv4(127, 0, 0, 1)),
		dhcpv4.WithOption(dhcpv4.OptRelayAgentInfo(dhcpv4.OptGeneric(dhcpv4.GenericOptionCode(1), []byte("eth0/7")))))...)
	d.HopCount = 1
	got := h.exchange(d, false)
	if !got.GatewayIPAddr.Equal(net.IPv4(127, 0, 0, 1)) {
		t.Errorf("giaddr %v, want 127.0.0.1", got.GatewayIPAddr)
	}
	if got.BootFileName != "undionly.kpxe" {
		t.Errorf("file %q, want undionly.kpxe", got.BootFileName)
	}
	if diff := cmp.Diff([]byte{1, 6, 'e', 't', 'h', '0', '/', '7'}, got.Options.Get(dhcpv4.OptionRelayAgentInformation)); diff != "" {
		t.Errorf("option 82 not echoed (-want +got):\n%s", diff)
	}
}

func TestDiscoveredOncePerMAC(t *testing.T) {
	known := mac(3)
	h := startServer(t, Config{Mode: ModeProxy, Machines: fakeMachines{"525400aa0003": {}}})
	unknown := mac(4)
	for range 3 {
		d := discover(t, unknown, append(pxeMods(iana.EFI_X86_64, "PXEClient:Arch:00007:UNDI:003016"),
			dhcpv4.WithGeneric(dhcpv4.OptionClientMachineIdentifier, testGUID), dhcpv4.WithRelay(net.IPv4(127, 0, 0, 1)))...)
		h.exchange(d, false)
	}
	h.exchange(discover(t, known, pxeMods(iana.INTEL_X86PC, "PXEClient")...), false)
	// 1 discovered + 4 offers.
	waitFor(t, "events", func() bool { h.rec.mu.Lock(); defer h.rec.mu.Unlock(); return len(h.rec.telemetry) == 4 })
	h.rec.mu.Lock()
	defer h.rec.mu.Unlock()
	want := []machine.DiscoveredData{{Via: "dhcp", Arch: "x86_64-efi", VendorClass: "PXEClient:Arch:00007:UNDI:003016",
		GUID: "00112233-4455-6677-8899-aabbccddeeff", Relay: "127.0.0.1"}}
	if diff := cmp.Diff(want, h.rec.discovered); diff != "" {
		t.Errorf("discovered events (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]machine.ID{"525400aa0004"}, h.rec.ids); diff != "" {
		t.Errorf("discovered ids (-want +got):\n%s", diff)
	}
	last := h.rec.telemetry[3]
	var d TelemetryData
	if err := json.Unmarshal(last.Data, &d); err != nil {
		t.Fatal(err)
	}
	if last.Type != machine.DHCPOffered || last.Machine != "525400aa0003" || d.Bootfile != "undionly.kpxe" || d.Mode != "proxy" {
		t.Errorf("telemetry %+v %+v: want dhcp_offered for 525400aa0003 with undionly.kpxe in proxy mode", last, d)
	}
}
