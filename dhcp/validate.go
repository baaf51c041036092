package dhcp

import (
	"bytes"
	"net/netip"

	"github.com/insomniacslk/dhcp/dhcpv4"
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
	// Walk the options ourselves: the TLVs must fit and END must be there.
	// Whatever follows END is padding by RFC 2131 and is ignored.
	end := false
	for i := 240; i < len(b); {
		code := b[i]
		if code == 0 {
			i++
			continue
		}
		if code == 255 {
			end = true
			break
		}
		if i+1 >= len(b) || i+2+int(b[i+1]) > len(b) {
			return nil, badOptions
		}
		i += 2 + int(b[i+1])
	}
	if !end {
		return nil, badOptions
	}
	p, err := dhcpv4.FromBytes(b)
	if err != nil {
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
