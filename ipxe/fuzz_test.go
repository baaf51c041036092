package ipxe

import (
	"errors"
	"testing"

	"github.com/microdc/mdc/machine"
)

// FuzzParseQuery: the query of /boot.ipxe comes from the network. Whatever
// it is, parsing returns a canonical MAC or an error, never a panic, and a
// request's own script URL parses back to the same request.
func FuzzParseQuery(f *testing.F) {
	for _, s := range []string{
		"mac=52:54:00:12:34:56&buildarch=x86_64&platform=efi",
		"mac=52-54-00-12-34-56&platform=pcbios&buildarch=i386",
		"mac=525400123456",
		"mac=5254.0012.3456",
		"mac=${net0/mac}",
		"mac=52%3A54%3A00%3A12%3A34%3A56",
		"mac=&mac=",
		"mac=52:54:00:12:34:5%",
		"platform=efi",
		"mac=52:54:00:12:34:56&buildarch=${buildarch}&platform=${platform}",
		"mac=52:54:00:12:34:56;x=1",
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		r, err := ParseQuery(raw)
		if err != nil {
			if !errors.Is(err, ErrNoMAC) && !errors.Is(err, ErrBadQuery) {
				t.Fatalf("error %v wraps neither ErrNoMAC nor ErrBadQuery", err)
			}
			return
		}
		if !r.MAC.Valid() {
			t.Fatalf("ParseQuery(%q) = MAC %q, not canonical", raw, r.MAC)
		}
		if r.Platform != "" && r.Platform != "efi" && r.Platform != "pcbios" {
			t.Fatalf("platform %q", r.Platform)
		}
		if r.Buildarch != "" && !isWord(r.Buildarch) {
			t.Fatalf("buildarch %q", r.Buildarch)
		}
		back, err := ParseQuery(r.query())
		if err != nil || back != r {
			t.Fatalf("round trip of %q: %+v, %v; want %+v", r.query(), back, err, r)
		}
		if id, err := machine.ParseID(r.MAC.MAC()); err != nil || id != r.MAC {
			t.Fatalf("MAC %s does not parse back", r.MAC)
		}
	})
}
