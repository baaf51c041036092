package ipfs

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"strconv"
	"strings"

	"github.com/ipfs/go-cid"
	mh "github.com/multiformats/go-multihash"
)

// The evidence keys the join hook reports (and, where the agent sends
// them, the Configure report keys).
const (
	EvidencePeerID = "peer_id" // `ipfs id -f '<id>'`
	EvidenceAddrs  = "addrs"   // JSON array (or space-separated) of the node's swarm multiaddrs
	EvidenceRPC    = "rpc"     // the kubo RPC base URL mdc can reach, http://IP:PORT
)

const (
	maxAddrs   = 32
	maxAddrLen = 256
)

// libp2pKeyCodec is the multicodec of a peer id written as a CID.
const libp2pKeyCodec = 0x72

// parsePeerID accepts a libp2p peer id in base58 (12D3KooW…, Qm…) or as a
// CIDv1 of codec libp2p-key, and returns its base58 form.
func parsePeerID(s string) (string, error) {
	if s == "" || len(s) > 128 {
		return "", errors.New("peer id: empty or too long")
	}
	var h mh.Multihash
	if strings.HasPrefix(s, "1") || strings.HasPrefix(s, "Qm") {
		m, err := mh.FromB58String(s)
		if err != nil {
			return "", fmt.Errorf("peer id %q: %w", s, err)
		}
		h = m
	} else {
		c, err := cid.Decode(s)
		if err != nil {
			return "", fmt.Errorf("peer id %q: %w", s, err)
		}
		if c.Type() != libp2pKeyCodec {
			return "", fmt.Errorf("peer id %q: a CID of codec %#x, not libp2p-key", s, c.Type())
		}
		h = c.Hash()
	}
	d, err := mh.Decode(h)
	if err != nil {
		return "", fmt.Errorf("peer id %q: %w", s, err)
	}
	switch {
	case d.Code == mh.IDENTITY && d.Length <= 42: // an inlined public key (Ed25519, secp256k1)
	case d.Code == mh.SHA2_256 && d.Length == 32: // the hash of a larger key (RSA)
	default:
		return "", fmt.Errorf("peer id %q: multihash %#x of %d bytes is not a peer id", s, d.Code, d.Length)
	}
	return h.B58String(), nil
}

// parseAddr accepts a TCP multiaddr as kubo prints it
// (/ip4|ip6|dns|dns4|dns6/HOST/tcp/PORT[/p2p/ID]) and returns it without
// /p2p, with the peer id it named ("" if none). Anything else (QUIC,
// WebTransport, relays) has no place in a TCP-only private swarm.
func parseAddr(s string) (addr, id string, err error) {
	if len(s) > maxAddrLen {
		return "", "", errors.New("multiaddr too long")
	}
	p := strings.Split(s, "/")
	if len(p) != 5 && len(p) != 7 || p[0] != "" {
		return "", "", fmt.Errorf("multiaddr %q: want /ip4|ip6|dns/HOST/tcp/PORT[/p2p/ID]", s)
	}
	switch p[1] {
	case "ip4", "ip6":
		a, err := netip.ParseAddr(p[2])
		if err != nil || a.Zone() != "" || (p[1] == "ip4") != a.Is4() {
			return "", "", fmt.Errorf("multiaddr %q: bad %s address", s, p[1])
		}
		p[2] = a.String()
	case "dns", "dns4", "dns6":
		if !validHostname(p[2]) {
			return "", "", fmt.Errorf("multiaddr %q: bad host name", s)
		}
	default:
		return "", "", fmt.Errorf("multiaddr %q: not an IP or DNS address", s)
	}
	if p[3] != "tcp" {
		return "", "", fmt.Errorf("multiaddr %q: not TCP (the swarm is TCP only)", s)
	}
	port, err := strconv.ParseUint(p[4], 10, 16)
	if err != nil || port == 0 || p[4][0] == '0' {
		return "", "", fmt.Errorf("multiaddr %q: bad port", s)
	}
	if len(p) == 7 {
		if p[5] != "p2p" && p[5] != "ipfs" {
			return "", "", fmt.Errorf("multiaddr %q: want /p2p/ID after the port", s)
		}
		if id, err = parsePeerID(p[6]); err != nil {
			return "", "", fmt.Errorf("multiaddr %q: %w", s, err)
		}
	}
	return strings.Join(p[:5], "/"), id, nil
}

func validHostname(h string) bool {
	if h == "" || len(h) > 253 {
		return false
	}
	for _, l := range strings.Split(h, ".") {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for _, r := range l {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				return false
			}
		}
	}
	return true
}

// parseAddrs reads the addrs evidence: a JSON array of strings (what the
// agent makes of a hook's array) or addresses separated by spaces or
// commas. Addresses of another peer are refused; loopback addresses are
// dropped unless there is nothing else (nodes on one host, as in tests).
func parseAddrs(s, peerID string) ([]string, error) {
	var raw []string
	if t := strings.TrimSpace(s); strings.HasPrefix(t, "[") {
		if err := json.Unmarshal([]byte(t), &raw); err != nil {
			return nil, fmt.Errorf("addrs: %w", err)
		}
	} else {
		raw = strings.FieldsFunc(t, func(r rune) bool { return r == ' ' || r == ',' || r == '\n' || r == '\t' })
	}
	if len(raw) > maxAddrs {
		return nil, fmt.Errorf("addrs: %d addresses, at most %d", len(raw), maxAddrs)
	}
	var all, routable []string
	seen := make(map[string]bool)
	for _, r := range raw {
		a, id, err := parseAddr(r)
		if err != nil {
			return nil, err
		}
		if id != "" && id != peerID {
			return nil, fmt.Errorf("addrs: %s names peer %s, not %s", r, id, peerID)
		}
		if seen[a] {
			continue
		}
		seen[a] = true
		all = append(all, a)
		if !isLoopback(a) {
			routable = append(routable, a)
		}
	}
	if len(all) == 0 {
		return nil, errors.New("addrs: no TCP address")
	}
	if len(routable) > 0 {
		return routable, nil
	}
	return all, nil
}

func isLoopback(addr string) bool {
	p := strings.Split(addr, "/")
	if p[1] == "ip4" || p[1] == "ip6" {
		a, err := netip.ParseAddr(p[2])
		return err == nil && (a.IsLoopback() || a.IsUnspecified())
	}
	return p[2] == "localhost"
}

// parseRPC accepts the node's kubo RPC base URL: http, a host and port,
// nothing else (mdc appends the fixed /api/v0 paths itself).
func parseRPC(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil {
		return "", fmt.Errorf("rpc %q: %w", s, err)
	}
	if u.Scheme != "http" || u.Host == "" || u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
		return "", fmt.Errorf("rpc %q: want http://HOST:PORT", s)
	}
	port := u.Port()
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return "", fmt.Errorf("rpc %q: want http://HOST:PORT", s)
	}
	return "http://" + u.Host, nil
}

// nodeEvidence is what a join hook reported, checked.
type nodeEvidence struct {
	peerID string
	addrs  []string
	rpc    string
}

func parseEvidence(ev map[string]string) (nodeEvidence, error) {
	var n nodeEvidence
	var err error
	if n.peerID, err = parsePeerID(ev[EvidencePeerID]); err != nil {
		return n, err
	}
	if n.addrs, err = parseAddrs(ev[EvidenceAddrs], n.peerID); err != nil {
		return n, err
	}
	if n.rpc, err = parseRPC(ev[EvidenceRPC]); err != nil {
		return n, err
	}
	return n, nil
}
