package dhcp

import (
	"bytes"
	"net"
	"net/netip"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
)

// Largest request accepted: one Ethernet frame's worth. DHCP clients send far
// less; anything bigger is not a DHCP client.
const maxPacket = 1500

var magicCookie = []byte{99, 130, 83, 99}

// Reasons a packet is dropped as malformed (label values of the metric).
const (
	badTruncated   = "truncated"
	badOversized   = "oversized"
	badOp          = "not_bootrequest"
	badCookie      = "bad_cookie"
	badOptions     = "bad_options"
	badHardware    = "bad_hardware_address"
	badHops        = "too_many_hops"
	badMsgType     = "bad_message_type"
	badOption      = "bad_option_value"
	badRelayOption = "bad_relay_agent_option"
	badAddr        = "bad_address_field"
)

// parse decodes a request and checks everything the server reads or echoes,
// so no reply can carry a malformed option back. reason is "" when ok.
func parse(b []byte) (*dhcpv4.DHCPv4, string) {
	switch {
	case len(b) < 240:
		return nil, badTruncated
	case len(b) > maxPacket:
		return nil, badOversized
	case b[0] != byte(dhcpv4.OpcodeBootRequest):
		return nil, badOp
	case !bytes.Equal(b[236:240], magicCookie):
		return nil, badCookie
	}
	p, ok := decodePacket(b)
	if !ok {
		return nil, badOptions
	}
	hlen := b[2]
	if hlen == 0 || hlen > 16 || (p.HWType == 1 && hlen != 6) {
		return nil, badHardware
	}
	zero := true
	for _, c := range p.ClientHWAddr {
		if c != 0 {
			zero = false
		}
	}
	if zero {
		return nil, badHardware
	}
	if p.HopCount > 16 {
		return nil, badHops
	}
	mt := p.Options.Get(dhcpv4.OptionDHCPMessageType)
	if len(mt) != 1 {
		return nil, badMsgType
	}
	switch dhcpv4.MessageType(mt[0]) {
	case dhcpv4.MessageTypeDiscover, dhcpv4.MessageTypeRequest, dhcpv4.MessageTypeDecline,
		dhcpv4.MessageTypeRelease, dhcpv4.MessageTypeInform:
	default:
		return nil, badMsgType
	}
	lenIs := func(code dhcpv4.OptionCode, ok func(v []byte) bool) bool {
		v, present := p.Options[code.Code()]
		return !present || ok(v)
	}
	four := func(v []byte) bool { return len(v) == 4 }
	if !lenIs(dhcpv4.OptionRequestedIPAddress, four) ||
		!lenIs(dhcpv4.OptionServerIdentifier, four) ||
		!lenIs(dhcpv4.OptionClientIdentifier, func(v []byte) bool { return len(v) >= 2 }) ||
		!lenIs(dhcpv4.OptionClientSystemArchitectureType, func(v []byte) bool { return len(v) >= 2 && len(v)%2 == 0 }) ||
		!lenIs(dhcpv4.OptionClientMachineIdentifier, func(v []byte) bool { return len(v) == 17 && v[0] == 0 }) ||
		!lenIs(dhcpv4.OptionMaximumDHCPMessageSize, func(v []byte) bool { return len(v) == 2 && int(v[0])<<8|int(v[1]) >= 576 }) {
		return nil, badOption
	}
	if v, ok := p.Options[dhcpv4.OptionRelayAgentInformation.Code()]; ok && !validRelayInfo(v) {
		return nil, badRelayOption
	}
	for _, ip := range [][]byte{p.ClientIPAddr, p.GatewayIPAddr} {
		a, _ := netip.AddrFromSlice(ip)
		if a.IsMulticast() || a == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
			return nil, badAddr
		}
	}
	return p, ""
}

// validRelayInfo: option 82 is sub-option TLVs that fill it exactly
// (RFC 3046 has no pad or end inside it). It is echoed back to the relay.
func validRelayInfo(v []byte) bool {
	if len(v) < 2 {
		return false
	}
	for i := 0; i < len(v); {
		if v[i] == 0 || v[i] == 255 || i+1 >= len(v) || i+2+int(v[i+1]) > len(v) {
			return false
		}
		i += 2 + int(v[i+1])
	}
	return true
}

// decodePacket is dhcpv4.FromBytes for a request of at least 240 bytes with
// the magic cookie, with the same result, but walking the options once and
// with three allocations instead of a dozen (one copy of the packet, which
// every field and option value points into, the struct and the options
// map). The
// option TLVs must fit and END must be there; whatever follows END is
// padding by RFC 2131 and is ignored.
func decodePacket(b []byte) (*dhcpv4.DHCPv4, bool) {
	c := bytes.Clone(b)
	p := &dhcpv4.DHCPv4{}
	n := 0
	end := false
	for i := 240; i < len(c); {
		code := c[i]
		if code == 0 {
			i++
			continue
		}
		if code == 255 {
			end = true
			break
		}
		if i+1 >= len(c) || i+2+int(c[i+1]) > len(c) {
			return nil, false
		}
		n++
		i += 2 + int(c[i+1])
	}
	if !end {
		return nil, false
	}
	p.Options = make(dhcpv4.Options, n)
	for i := 240; ; {
		code := c[i]
		if code == 0 {
			i++
			continue
		}
		if code == 255 {
			break
		}
		l := int(c[i+1])
		v := c[i+2 : i+2+l : i+2+l]
		if l == 0 {
			v = nil // as FromBytes stores an empty option (append of nothing)
		}
		if prev, dup := p.Options[code]; dup {
			// RFC 2131 4.1 and RFC 3396: repeated options concatenate.
			v = append(prev[:len(prev):len(prev)], v...)
		}
		p.Options[code] = v
		i += 2 + l
	}
	p.OpCode = dhcpv4.OpcodeType(c[0])
	p.HWType = iana.HWType(c[1])
	p.HopCount = c[3]
	copy(p.TransactionID[:], c[4:8])
	p.NumSeconds = uint16(c[8])<<8 | uint16(c[9])
	p.Flags = uint16(c[10])<<8 | uint16(c[11])
	p.ClientIPAddr = net.IP(c[12:16:16])
	p.YourIPAddr = net.IP(c[16:20:20])
	p.ServerIPAddr = net.IP(c[20:24:24])
	p.GatewayIPAddr = net.IP(c[24:28:28])
	p.ClientHWAddr = net.HardwareAddr(c[28 : 28+min(int(c[2]), 16) : 28+min(int(c[2]), 16)])
	p.ServerHostName = cString(c[44:108])
	p.BootFileName = cString(c[108:236])
	return p, true
}

// cString is the text of a NUL-terminated field.
func cString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	if len(b) == 0 {
		return ""
	}
	return string(b)
}
