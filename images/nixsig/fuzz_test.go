package nixsig

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// FuzzParseNarInfo: .narinfo files come with imports from outside. Parsing
// must never panic, and what parses must render and parse back the same,
// and verify (or not) without panicking.
func FuzzParseNarInfo(f *testing.F) {
	seeds, _ := filepath.Glob(filepath.Join("testdata", "real", "*.narinfo"))
	for _, s := range seeds {
		b, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(string(b))
	}
	f.Add("StorePath: /nix/store/00000000000000000000000000000000-x\nNarHash: sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\nNarSize: 1\nReferences:\n")
	f.Add("Sig: a:b\n")
	f.Add(":\n: \n")
	pub := strings.TrimSpace(recorded(f, "trusted.pub"))
	trusted, err := ParseTrustedKeys([]string{pub})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, in string) {
		ni, err := ParseNarInfo(strings.NewReader(in))
		if err != nil {
			return
		}
		again, err := ParseNarInfo(strings.NewReader(ni.String()))
		if err != nil {
			t.Fatalf("String() does not parse back: %v\n%s", err, ni.String())
		}
		if diff := cmp.Diff(ni, again); diff != "" {
			t.Fatalf("round trip changed the narinfo (-first +again):\n%s", diff)
		}
		if ni.Fingerprint() != again.Fingerprint() {
			t.Fatal("fingerprint changed in the round trip")
		}
		_, _ = Verify(ni, trusted)
		_, _ = Policy{Trusted: trusted, RequireSigned: true}.Check(ni)
	})
}
