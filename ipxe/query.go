package ipxe

import (
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/microdc/mdc/machine"
)

// Request is what a boot script request says about the machine asking.
type Request struct {
	MAC       machine.ID
	Platform  string // iPXE's ${platform}: "efi" or "pcbios"; "" when not said
	Buildarch string // iPXE's ${buildarch}: "x86_64", "i386", "arm64" …; "" when not said
}

// ErrNoMAC means the request names no MAC at all: the answer is a script that
// asks again with iPXE's own ${netX/mac}.
var ErrNoMAC = errors.New("no mac parameter")

// ErrBadQuery is wrapped by every other parsing error.
var ErrBadQuery = errors.New("bad boot script request")

// maxQuery bounds what is parsed; a real request is under 100 bytes.
const maxQuery = 1024

// ParseQuery reads the query of GET /boot.ipxe: mac in any common spelling
// (52:54:00:12:34:56 as ${net0/mac} expands, 52-54-00-12-34-56 as
// ${net0/mac:hexhyp}, 525400123456 as ${net0/mac:hexraw}, upper or lower
// case), and optionally platform and buildarch. A mac that iPXE left
// unexpanded ("${net0/mac}") counts as no mac. Unknown parameters are
// ignored, so an operator's own DHCP configuration may add its own.
func ParseQuery(raw string) (Request, error) {
	if len(raw) > maxQuery {
		return Request{}, fmt.Errorf("%w: query longer than %d bytes", ErrBadQuery, maxQuery)
	}
	q, err := url.ParseQuery(raw)
	if err != nil {
		return Request{}, fmt.Errorf("%w: %v", ErrBadQuery, err)
	}
	macs, ok := q["mac"]
	if !ok || len(macs) == 1 && strings.Contains(macs[0], "${") {
		return Request{}, ErrNoMAC
	}
	if len(macs) != 1 {
		return Request{}, fmt.Errorf("%w: %d mac parameters, want one", ErrBadQuery, len(macs))
	}
	if macs[0] == "" {
		return Request{}, fmt.Errorf("%w: mac is empty (did ${net0/mac} expand to nothing?)", ErrBadQuery)
	}
	id, err := machine.ParseID(macs[0])
	if err != nil {
		return Request{}, fmt.Errorf("%w: mac: %w", ErrBadQuery, err)
	}
	r := Request{MAC: id}
	switch p := q.Get("platform"); p {
	case "efi", "pcbios":
		r.Platform = p
	}
	if a := q.Get("buildarch"); isWord(a) {
		r.Buildarch = a
	}
	return r, nil
}

// isWord: a short lowercase name such as x86_64 or arm64.
func isWord(s string) bool {
	if s == "" || len(s) > 16 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// arch names the firmware as package dhcp does (x86_64-efi, x86-bios, …).
func (r Request) arch() string {
	switch {
	case r.Platform == "pcbios":
		return "x86-bios"
	case r.Platform == "efi" && (r.Buildarch == "x86_64" || r.Buildarch == ""):
		return "x86_64-efi"
	case r.Platform == "efi" && r.Buildarch == "arm64":
		return "arm64-efi"
	case r.Platform == "efi":
		return r.Buildarch + "-efi"
	}
	return ""
}

// query is the query of this machine's own boot script URL.
func (r Request) query() string {
	v := url.Values{}
	v.Set("mac", r.MAC.MAC())
	if r.Platform != "" {
		v.Set("platform", r.Platform)
	}
	if r.Buildarch != "" {
		v.Set("buildarch", r.Buildarch)
	}
	// iPXE takes ':' in a query as it is; keep the URL readable.
	return strings.ReplaceAll(v.Encode(), "%3A", ":")
}
