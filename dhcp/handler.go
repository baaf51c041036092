package dhcp

import (
	"context"
	"encoding/hex"
	"errors"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"

	"github.com/microdc/mdc/machine"
)

// Netboot says which boot client a request comes from.
type Netboot int

// Boot clients, told apart by option 60 and options 77/175.
const (
	NotNetboot Netboot = iota
	PXE                // firmware PXE: vendor class "PXEClient…"; gets a file over TFTP
	HTTPBoot           // UEFI HTTP boot: vendor class "HTTPClient…"; gets a URL
	IPXE               // iPXE itself (user class "iPXE" or option 175): gets boot.ipxe
)

func (n Netboot) String() string {
	return [...]string{"none", "pxe", "http", "ipxe"}[n]
}

// request is one packet and what the chain learns about it.
type request struct {
	ctx   context.Context
	pkt   *dhcpv4.DHCPv4
	peer  netip.AddrPort
	onPXE bool // arrived on the PXE port (4011)
	now   time.Time

	typ     dhcpv4.MessageType
	client  string // hex of chaddr: the lease's owner
	id      machine.ID
	relay   netip.Addr // giaddr, when relayed
	subnet  *Subnet
	arch    iana.Arch
	netboot Netboot
	known   bool
	lease   Lease // full mode: the lease offered or acked
	bootTo  string
	dest    netip.AddrPort
}

// step is one concern of the packet path. It returns the reply so far (nil:
// none yet) and whether to stop: a nil reply at the end means no answer.
type step func(r *request, resp *dhcpv4.DHCPv4) (*dhcpv4.DHCPv4, bool)

func (s *Server) chain() []step {
	steps := []step{s.classify, s.discover}
	if s.cfg.Mode == ModeFull {
		steps = append(steps, s.fullReply)
	} else {
		steps = append(steps, s.proxyReply)
	}
	return append(steps, s.bootFile, s.ipxeLoopBreak, s.destination, s.telemetry)
}

// handle runs the chain; nil means no reply.
func (s *Server) handle(r *request) *dhcpv4.DHCPv4 {
	var resp *dhcpv4.DHCPv4
	for _, st := range s.steps {
		var stop bool
		if resp, stop = st(r, resp); stop {
			break
		}
	}
	return resp
}

// classify fills in who is asking: message type, MAC, relay, subnet, client
// architecture and kind of boot client.
func (s *Server) classify(r *request, _ *dhcpv4.DHCPv4) (*dhcpv4.DHCPv4, bool) {
	p := r.pkt
	r.typ = p.MessageType()
	r.client = hex.EncodeToString(p.ClientHWAddr)
	if p.HWType == iana.HWTypeEthernet && len(p.ClientHWAddr) == 6 {
		r.id = machine.ID(r.client)
	}
	if g, ok := netip.AddrFromSlice(p.GatewayIPAddr.To4()); ok && !g.IsUnspecified() {
		r.relay = g
		r.subnet = s.cfg.subnetFor(g)
	} else {
		r.subnet = s.localSubnet
	}
	r.netboot, r.arch = detectClient(p)
	if r.id != "" && s.cfg.Machines != nil {
		_, r.known = s.cfg.Machines.LookupMAC(r.id)
	}
	if s.cfg.Mode == ModeProxy && r.netboot == NotNetboot {
		return nil, true // proxy mode never talks to other clients
	}
	return nil, false
}

// detectClient reads options 60, 77, 93 and 175.
func detectClient(p *dhcpv4.DHCPv4) (Netboot, iana.Arch) {
	vc := p.ClassIdentifier()
	arch := iana.INTEL_X86PC
	if a := p.ClientArch(); len(a) > 0 {
		arch = a[0]
	} else if _, rest, ok := strings.Cut(vc, ":Arch:"); ok && len(rest) >= 5 {
		// PXEClient:Arch:00007:UNDI:003016 from clients without option 93.
		if n, err := strconv.ParseUint(rest[:5], 10, 16); err == nil {
			arch = iana.Arch(n)
		}
	}
	if p.Options.Has(dhcpv4.GenericOptionCode(175)) {
		return IPXE, arch
	}
	if p.Options.Has(dhcpv4.OptionUserClassInformation) {
		for _, uc := range p.UserClass() {
			if uc == "iPXE" {
				return IPXE, arch
			}
		}
	}
	switch {
	case strings.HasPrefix(vc, "PXEClient"):
		return PXE, arch
	case strings.HasPrefix(vc, "HTTPClient"):
		return HTTPBoot, arch
	}
	return NotNetboot, arch
}

// discover queues one "discovered" event per unknown network-boot MAC.
func (s *Server) discover(r *request, resp *dhcpv4.DHCPv4) (*dhcpv4.DHCPv4, bool) {
	if r.known || r.id == "" || r.netboot == NotNetboot || r.typ != dhcpv4.MessageTypeDiscover {
		return resp, false
	}
	if !s.firstSighting(r.id) {
		return resp, false
	}
	d := machine.DiscoveredData{Via: "dhcp", Arch: archName(r.arch), VendorClass: r.pkt.ClassIdentifier(), Interface: s.cfg.Interface}
	if g := r.pkt.Options.Get(dhcpv4.OptionClientMachineIdentifier); len(g) == 17 {
		d.GUID = formatGUID(g[1:])
	}
	if r.relay.IsValid() {
		d.Relay = r.relay.String()
	}
	s.enqueue(queued{id: r.id, discovered: &d})
	return resp, false
}

// proxyReply answers PXE clients with boot information and no address: an
// OFFER to a DISCOVER on port 67, an ACK to a REQUEST on port 4011 (or on 67
// when the client names us as its server).
func (s *Server) proxyReply(r *request, _ *dhcpv4.DHCPv4) (*dhcpv4.DHCPv4, bool) {
	var mt dhcpv4.MessageType
	switch {
	case r.typ == dhcpv4.MessageTypeDiscover && !r.onPXE:
		mt = dhcpv4.MessageTypeOffer
	case r.typ == dhcpv4.MessageTypeRequest && (r.onPXE || s.isUs(r.pkt.ServerIdentifier())):
		mt = dhcpv4.MessageTypeAck
	default:
		return nil, true
	}
	resp := s.reply(r, mt)
	return resp, false
}

// reply starts a reply of type mt to r. Built by hand rather than with
// dhcpv4.NewReplyFromRequest, which draws a random xid from the kernel only
// to overwrite it (a syscall per packet).
func (s *Server) reply(r *request, mt dhcpv4.MessageType) *dhcpv4.DHCPv4 {
	p := r.pkt
	resp := &dhcpv4.DHCPv4{
		OpCode: dhcpv4.OpcodeBootReply, HWType: p.HWType, ClientHWAddr: p.ClientHWAddr,
		TransactionID: p.TransactionID, Flags: p.Flags, GatewayIPAddr: p.GatewayIPAddr,
		ClientIPAddr: net.IPv4zero, YourIPAddr: net.IPv4zero, ServerIPAddr: net.IPv4zero,
		Options: make(dhcpv4.Options, 12),
	}
	// Echoed as RFC 3046 and RFC 6842 ask; parse checked both are well-formed.
	for _, code := range []dhcpv4.OptionCode{dhcpv4.OptionRelayAgentInformation, dhcpv4.OptionClientIdentifier} {
		if v, ok := p.Options[code.Code()]; ok {
			resp.Options[code.Code()] = v
		}
	}
	resp.Options[dhcpv4.OptionDHCPMessageType.Code()] = messageTypes[mt]
	resp.Options[dhcpv4.OptionServerIdentifier.Code()] = s.advertise
	return resp
}

// messageTypes are the encoded values of option 53, shared by all replies.
var messageTypes = func() (t [256][]byte) {
	for i := range t {
		t[i] = []byte{byte(i)}
	}
	return t
}()

func (s *Server) isUs(ip net.IP) bool {
	a, ok := netip.AddrFromSlice(ip.To4())
	return ok && a == s.cfg.AdvertiseAddr
}

// fullReply is the address server of RFC 2131.
func (s *Server) fullReply(r *request, _ *dhcpv4.DHCPv4) (*dhcpv4.DHCPv4, bool) {
	if r.subnet == nil {
		if r.typ != dhcpv4.MessageTypeInform {
			s.log.Debug("dhcp: no subnet for request", "mac", r.id, "relay", r.relay)
			return nil, true
		}
	}
	switch r.typ {
	case dhcpv4.MessageTypeDiscover:
		return s.offer(r)
	case dhcpv4.MessageTypeRequest:
		return s.request(r)
	case dhcpv4.MessageTypeRelease:
		if sid := r.pkt.ServerIdentifier(); sid != nil && !s.isUs(sid) {
			return nil, true
		}
		a, _ := netip.AddrFromSlice(r.pkt.ClientIPAddr.To4())
		s.storeErr(r, s.cache.end(r.ctx, a, r.client, LeaseReleased, 0, r.now))
		return nil, true
	case dhcpv4.MessageTypeDecline:
		if sid := r.pkt.ServerIdentifier(); sid != nil && !s.isUs(sid) {
			return nil, true
		}
		a, _ := netip.AddrFromSlice(r.pkt.RequestedIPAddress().To4())
		s.log.Warn("dhcp: client declined its address (in use by someone else?)", "mac", r.id, "addr", a)
		s.storeErr(r, s.cache.end(r.ctx, a, r.client, LeaseDeclined, s.cfg.DeclineHold, r.now))
		return nil, true
	case dhcpv4.MessageTypeInform:
		resp := s.reply(r, dhcpv4.MessageTypeAck)
		if sn := s.informSubnet(r); sn != nil {
			s.subnetOptions(resp, sn, 0)
		}
		return resp, false
	}
	return nil, true
}

func (s *Server) informSubnet(r *request) *Subnet {
	if r.subnet != nil {
		return r.subnet
	}
	a, _ := netip.AddrFromSlice(r.pkt.ClientIPAddr.To4())
	return s.cfg.subnetFor(a)
}

func (s *Server) storeErr(r *request, err error) {
	if err != nil {
		s.metrics.storeErrors.Inc()
		s.log.Error("dhcp: lease store failed; the client will retry", "mac", r.id, "err", err)
	}
}

// reservation returns r's reserved address when it lies in r's subnet.
func (s *Server) reservation(r *request) netip.Addr {
	if a, ok := s.cfg.Reservations[r.id]; ok && r.subnet.contains(a) {
		return a
	}
	return netip.Addr{}
}

func (s *Server) offer(r *request) (*dhcpv4.DHCPv4, bool) {
	req, _ := netip.AddrFromSlice(r.pkt.RequestedIPAddress().To4())
	a, ok := s.cache.offer(r.subnet, r.client, s.reservation(r), req, r.now)
	if !ok {
		s.log.Warn("dhcp: no free address to offer", "subnet", r.subnet.Prefix, "mac", r.id)
		return nil, true
	}
	resp := s.reply(r, dhcpv4.MessageTypeOffer)
	resp.YourIPAddr = a.AsSlice()
	s.subnetOptions(resp, r.subnet, r.subnet.LeaseTime)
	r.lease = Lease{Addr: a, Client: r.client, Expires: r.now.Add(r.subnet.LeaseTime)}
	return resp, false
}

func (s *Server) request(r *request) (*dhcpv4.DHCPv4, bool) {
	p := r.pkt
	sid := p.ServerIdentifier()
	ciaddr, _ := netip.AddrFromSlice(p.ClientIPAddr.To4())
	reqIP, _ := netip.AddrFromSlice(p.RequestedIPAddress().To4())
	var a netip.Addr
	switch {
	case sid != nil: // SELECTING
		if !s.isUs(sid) {
			return nil, true // the client took another server's offer
		}
		if !reqIP.IsValid() {
			return nil, true
		}
		a = reqIP
	case ciaddr.IsUnspecified(): // INIT-REBOOT
		if !reqIP.IsValid() {
			return nil, true
		}
		a = reqIP
		if a != s.reservation(r) && r.subnet.inRange(a) {
			if cur, _, ok := s.cache.lookup(a); !ok || (cur.Client != r.client && !cur.ActiveAt(r.now)) {
				return nil, true // RFC 2131 4.3.2: no record of this client, stay silent
			}
		}
	default: // RENEWING (unicast) or REBINDING (broadcast)
		a = ciaddr
	}
	if !(r.subnet.inRange(a) || a == s.reservation(r)) {
		return s.nak(r, "address not in the client's subnet"), false
	}
	l, err := s.cache.commit(r.ctx, a, r.client, r.subnet.LeaseTime, r.now)
	if errors.Is(err, errTaken) {
		return s.nak(r, "address belongs to another client"), false
	}
	if err != nil {
		s.storeErr(r, err)
		return nil, true
	}
	resp := s.reply(r, dhcpv4.MessageTypeAck)
	resp.YourIPAddr = a.AsSlice()
	resp.ClientIPAddr = p.ClientIPAddr
	s.subnetOptions(resp, r.subnet, r.subnet.LeaseTime)
	r.lease = l
	return resp, false
}

func (s *Server) nak(r *request, why string) *dhcpv4.DHCPv4 {
	resp := s.reply(r, dhcpv4.MessageTypeNak)
	resp.UpdateOption(dhcpv4.OptMessage(why))
	if r.relay.IsValid() {
		resp.SetBroadcast() // RFC 2131 4.3.2: the relay must broadcast a NAK
	}
	return resp
}

// subnetOptions adds mask, router, DNS, domain and (lease > 0) lease times.
// They are the same for every reply of a subnet, so New encodes them once.
func (s *Server) subnetOptions(resp *dhcpv4.DHCPv4, sn *Subnet, lease time.Duration) {
	for _, o := range sn.opts {
		resp.Options[o.code] = o.value
	}
	if lease <= 0 {
		return
	}
	if lease == sn.LeaseTime {
		for _, o := range sn.leaseOpts {
			resp.Options[o.code] = o.value
		}
		return
	}
	for _, o := range leaseOptions(lease) {
		resp.Options[o.code] = o.value
	}
}

// rawOption is an encoded option; replies share the value (never changed).
type rawOption struct {
	code  uint8
	value []byte
}

func rawOptions(opts ...dhcpv4.Option) []rawOption {
	out := make([]rawOption, len(opts))
	for i, o := range opts {
		out[i] = rawOption{o.Code.Code(), o.Value.ToBytes()}
	}
	return out
}

// encodeOptions fills sn.opts and sn.leaseOpts for subnetOptions.
func (sn *Subnet) encodeOptions() {
	opts := []dhcpv4.Option{dhcpv4.OptGeneric(dhcpv4.OptionSubnetMask, sn.mask())}
	if sn.Router.IsValid() {
		opts = append(opts, dhcpv4.OptRouter(sn.Router.AsSlice()))
	}
	if len(sn.DNS) > 0 {
		ips := make([]net.IP, len(sn.DNS))
		for i, d := range sn.DNS {
			ips[i] = d.AsSlice()
		}
		opts = append(opts, dhcpv4.OptDNS(ips...))
	}
	if sn.Domain != "" {
		opts = append(opts, dhcpv4.OptDomainName(sn.Domain))
	}
	sn.opts = rawOptions(opts...)
	sn.leaseOpts = leaseOptions(sn.LeaseTime)
}

func leaseOptions(lease time.Duration) []rawOption {
	return rawOptions(dhcpv4.OptIPAddressLeaseTime(lease), dhcpv4.OptRenewTimeValue(lease/2), dhcpv4.OptRebindingTimeValue(lease*7/8))
}

// bootFile tells network-boot clients what to load: iPXE gets boot.ipxe,
// HTTP-boot firmware a URL to the iPXE build for its architecture, PXE
// firmware the build's name on TFTP. A client whose architecture has no
// build gets no boot answer (proxy) or a plain lease (full).
func (s *Server) bootFile(r *request, resp *dhcpv4.DHCPv4) (*dhcpv4.DHCPv4, bool) {
	if resp == nil || r.netboot == NotNetboot || resp.MessageType() == dhcpv4.MessageTypeNak {
		return resp, false
	}
	switch r.netboot {
	case IPXE:
		r.bootTo = s.cfg.HTTPBaseURL + "/boot.ipxe?mac=${net0/mac}&buildarch=${buildarch}&platform=${platform}"
		if s.cfg.Mode == ModeProxy {
			// iPXE takes an offer without an address as a ProxyDHCP offer
			// only with option 60 "PXEClient", and uses its answer only
			// with a next-server and a file name; otherwise it has
			// "nothing to boot" (QEMU's iPXE ROM beside dnsmasq).
			resp.UpdateOption(dhcpv4.OptClassIdentifier("PXEClient"))
			resp.ServerIPAddr = s.cfg.TFTPAddr.AsSlice()
		}
	case HTTPBoot:
		f := s.firmwareFile(r.arch)
		if f == "" {
			break
		}
		r.bootTo = s.cfg.HTTPBaseURL + "/ipxe/" + f
		resp.UpdateOption(dhcpv4.OptClassIdentifier("HTTPClient"))
	case PXE:
		f := s.firmwareFile(r.arch)
		if f == "" {
			break
		}
		r.bootTo = f
		resp.ServerIPAddr = s.cfg.TFTPAddr.AsSlice()
		resp.UpdateOption(dhcpv4.OptClassIdentifier("PXEClient"))
		// PXE discovery control 8: boot the file named here, no boot
		// server discovery.
		resp.UpdateOption(dhcpv4.OptGeneric(dhcpv4.OptionVendorSpecificInformation, []byte{6, 1, 8, 255}))
		if g := r.pkt.Options.Get(dhcpv4.OptionClientMachineIdentifier); g != nil {
			resp.UpdateOption(dhcpv4.OptGeneric(dhcpv4.OptionClientMachineIdentifier, g))
		}
	}
	if r.bootTo == "" {
		s.log.Debug("dhcp: no boot file for this client architecture", "mac", r.id, "arch", archName(r.arch))
		if s.cfg.Mode == ModeProxy {
			return nil, true
		}
		return resp, false
	}
	if len(r.bootTo) <= 127 {
		resp.BootFileName = r.bootTo
	} else {
		resp.UpdateOption(dhcpv4.OptBootFileName(r.bootTo))
	}
	return resp, false
}

// firmwareFile is the iPXE build for a firmware architecture, "" for none.
func (s *Server) firmwareFile(a iana.Arch) string {
	switch a {
	case iana.INTEL_X86PC:
		return s.cfg.BIOSBootfile
	case iana.EFI_X86_64, iana.EFI_BC, iana.EFI_X86_64_HTTP:
		return s.cfg.UEFIBootfile
	case iana.EFI_ARM64, iana.EFI_ARM64_HTTP:
		if s.hasARM64 {
			return s.cfg.ARM64Bootfile
		}
	}
	return ""
}

// ipxeLoopBreak: in full mode iPXE is told (option 175.176 = 1) not to wait
// ~2 s for a ProxyDHCP offer that will never come.
func (s *Server) ipxeLoopBreak(r *request, resp *dhcpv4.DHCPv4) (*dhcpv4.DHCPv4, bool) {
	if resp != nil && r.netboot == IPXE && s.cfg.Mode == ModeFull && resp.MessageType() != dhcpv4.MessageTypeNak {
		resp.UpdateOption(dhcpv4.OptGeneric(dhcpv4.GenericOptionCode(175), []byte{176, 1, 1}))
	}
	return resp, false
}

// destination picks where the reply goes (RFC 2131 4.1).
func (s *Server) destination(r *request, resp *dhcpv4.DHCPv4) (*dhcpv4.DHCPv4, bool) {
	if resp == nil {
		return nil, true
	}
	ciaddr, _ := netip.AddrFromSlice(r.pkt.ClientIPAddr.To4())
	bcast := netip.AddrPortFrom(s.cfg.BroadcastAddr, uint16(s.cfg.ClientPort))
	switch {
	case r.onPXE:
		r.dest = r.peer
	case r.relay.IsValid():
		r.dest = netip.AddrPortFrom(r.relay, uint16(s.cfg.RelayPort))
	case resp.MessageType() == dhcpv4.MessageTypeNak:
		r.dest = bcast
	case !ciaddr.IsUnspecified():
		r.dest = netip.AddrPortFrom(ciaddr, uint16(s.cfg.ClientPort))
	default:
		// Unicast to yiaddr would need an ARP entry we cannot make from a
		// UDP socket; broadcasting reaches the client as well.
		r.dest = bcast
	}
	return resp, false
}

// telemetry queues offers and acks of network-boot clients and known machines.
func (s *Server) telemetry(r *request, resp *dhcpv4.DHCPv4) (*dhcpv4.DHCPv4, bool) {
	mt := resp.MessageType()
	switch mt {
	case dhcpv4.MessageTypeOffer:
		s.metrics.offers.Inc()
	case dhcpv4.MessageTypeAck:
		s.metrics.acks.Inc()
	case dhcpv4.MessageTypeNak:
		s.metrics.naks.Inc()
		return resp, false
	}
	if r.id == "" || (r.netboot == NotNetboot && !r.known) {
		return resp, false
	}
	t := machine.DHCPOffered
	if mt == dhcpv4.MessageTypeAck {
		t = machine.DHCPAcked
	}
	d := TelemetryData{Mode: string(s.cfg.Mode), Client: r.netboot.String(), Bootfile: r.bootTo, Server: s.cfg.ServerName}
	if r.netboot != NotNetboot {
		// A booted OS names no firmware: the x86-bios default would
		// mislabel a UEFI machine's own DHCP.
		d.Arch = archName(r.arch)
	}
	if r.lease.Addr.IsValid() {
		d.Addr = r.lease.Addr.String()
	}
	if r.relay.IsValid() {
		d.Relay = r.relay.String()
	}
	s.enqueue(queued{id: r.id, event: t, data: d})
	return resp, false
}

// TelemetryData is the data of dhcp_offered and dhcp_acked events.
type TelemetryData struct {
	Addr     string `json:"addr,omitempty"` // full mode
	Bootfile string `json:"bootfile,omitempty"`
	Client   string `json:"client"` // pxe, http, ipxe, none
	Arch     string `json:"arch,omitempty"`
	Relay    string `json:"relay,omitempty"`
	Mode     string `json:"mode"`
	Server   string `json:"server,omitempty"`
}

func archName(a iana.Arch) string {
	switch a {
	case iana.INTEL_X86PC:
		return "x86-bios"
	case iana.EFI_X86_64, iana.EFI_BC:
		return "x86_64-efi"
	case iana.EFI_X86_64_HTTP:
		return "x86_64-efi-http"
	case iana.EFI_ARM64:
		return "arm64-efi"
	case iana.EFI_ARM64_HTTP:
		return "arm64-efi-http"
	}
	return "arch-" + strconv.Itoa(int(a))
}

// formatGUID prints a PXE client GUID (SMBIOS UUID, first three fields
// little-endian) the way dmidecode does.
func formatGUID(b []byte) string {
	g := []byte{b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6]}
	g = append(g, b[8:16]...)
	h := hex.EncodeToString(g)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}
