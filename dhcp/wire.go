package dhcp

import (
	"net"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// appendReply encodes p as dhcpv4's ToBytes does (options in code order,
// relay agent information last, RFC 3396 splitting of long values, padded
// to BOOTP's 300 bytes), into dst without its intermediate buffers: it ran
// for every reply and cost a tenth of the packet path.
func appendReply(dst []byte, p *dhcpv4.DHCPv4) []byte {
	const bootpMinLen = 300
	start := len(dst)
	var hdr [240]byte
	hdr[0] = byte(p.OpCode)
	hdr[1] = byte(p.HWType)
	hdr[2] = byte(len(p.ClientHWAddr))
	hdr[3] = p.HopCount
	copy(hdr[4:8], p.TransactionID[:])
	hdr[8], hdr[9] = byte(p.NumSeconds>>8), byte(p.NumSeconds)
	hdr[10], hdr[11] = byte(p.Flags>>8), byte(p.Flags)
	putIP(hdr[12:16], p.ClientIPAddr)
	putIP(hdr[16:20], p.YourIPAddr)
	putIP(hdr[20:24], p.ServerIPAddr)
	putIP(hdr[24:28], p.GatewayIPAddr)
	copy(hdr[28:44], p.ClientHWAddr)
	copy(hdr[44:44+63], p.ServerHostName)
	copy(hdr[108:108+127], p.BootFileName)
	copy(hdr[236:240], magicCookie)
	dst = append(dst, hdr[:]...)

	// Codes in order; a reply has a dozen options, so insertion sort.
	var buf [32]uint8
	codes := buf[:0]
	relayInfo := false
	for c := range p.Options {
		switch c {
		case dhcpv4.OptionPad.Code(), dhcpv4.OptionEnd.Code():
			continue
		case dhcpv4.OptionRelayAgentInformation.Code():
			relayInfo = true
			continue
		}
		codes = append(codes, c)
		for i := len(codes) - 1; i > 0 && codes[i] < codes[i-1]; i-- {
			codes[i], codes[i-1] = codes[i-1], codes[i]
		}
	}
	if relayInfo { // RFC 3046 2.1: last
		codes = append(codes, dhcpv4.OptionRelayAgentInformation.Code())
	}
	for _, c := range codes {
		v := p.Options[c]
		if len(v) == 0 {
			dst = append(dst, c, 0)
			continue
		}
		for len(v) > 0 {
			n := min(len(v), 255)
			dst = append(dst, c, byte(n))
			dst = append(dst, v[:n]...)
			v = v[n:]
		}
	}
	dst = append(dst, dhcpv4.OptionEnd.Code())
	for len(dst)-start < bootpMinLen {
		dst = append(dst, dhcpv4.OptionPad.Code())
	}
	return dst
}

func putIP(b []byte, ip net.IP) {
	if v4 := ip.To4(); v4 != nil {
		copy(b, v4)
	}
}
