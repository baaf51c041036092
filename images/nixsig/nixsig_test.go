package nixsig

import (
	"encoding/base64"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/nix-community/go-nix/pkg/nixbase32"
)

// recorded reads a file of the recorded live Nix run.
func recorded(t testing.TB, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "real", name))
	if err != nil {
		t.Fatalf("%v (regenerate with: go test ./images/nixsig -run TestRealNix -update)", err)
	}
	return string(b)
}

func recordedKeys(t *testing.T) Keys {
	t.Helper()
	ks, err := ParseTrustedKeys([]string{recorded(t, "trusted.pub")})
	if err != nil {
		t.Fatal(err)
	}
	return ks
}

func TestParsePublicKey(t *testing.T) {
	key32 := base64.StdEncoding.EncodeToString(make([]byte, 32))
	key64 := base64.StdEncoding.EncodeToString(make([]byte, 64))
	tests := map[string]struct {
		in       string
		wantName string
		wantErr  string
	}{
		"nix format":         {in: "cache.example.org-1:" + key32, wantName: "cache.example.org-1"},
		"trailing newline":   {in: "k:" + key32 + "\n", wantName: "k"},
		"no name":            {in: ":" + key32, wantErr: "name is missing"},
		"no colon":           {in: key32, wantErr: "invalid number of fields"},
		"not base64":         {in: "k:!!!", wantErr: "data is corrupt"},
		"secret key instead": {in: "k:" + key64, wantErr: "expected 32 but got 64"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			k, err := ParsePublicKey(tc.in)
			if tc.wantErr != "" {
				if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParsePublicKey(%q) = %v, want ErrMalformed containing %q", tc.in, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if k.Name != tc.wantName || k.String() != strings.TrimSpace(tc.in) {
				t.Errorf("ParsePublicKey(%q) = %s (name %q), want name %q and the same text back", tc.in, k, k.Name, tc.wantName)
			}
		})
	}
}

func TestParseTrustedKeys(t *testing.T) {
	a := "a-1:" + base64.StdEncoding.EncodeToString(make([]byte, 32))
	b := "b-1:" + base64.StdEncoding.EncodeToString([]byte(strings.Repeat("b", 32)))
	otherA := "a-1:" + base64.StdEncoding.EncodeToString([]byte(strings.Repeat("x", 32)))
	tests := map[string]struct {
		in      []string
		want    []string
		wantErr string
	}{
		"one per entry":            {in: []string{b, a}, want: []string{"a-1", "b-1"}},
		"space separated like nix": {in: []string{a + " " + b}, want: []string{"a-1", "b-1"}},
		"same key twice":           {in: []string{a, a}, want: []string{"a-1"}},
		"none":                     {in: nil, want: []string{}},
		"two keys one name":        {in: []string{a, otherA}, wantErr: `two different trusted keys are named "a-1"`},
		"bad key":                  {in: []string{a, "b-1:short"}, wantErr: `trusted key "b-1:short"`},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			ks, err := ParseTrustedKeys(tc.in)
			if tc.wantErr != "" {
				if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want ErrMalformed containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, ks.Names()); diff != "" {
				t.Errorf("Names() (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseNarInfo(t *testing.T) {
	refs := recorded(t, "refs.narinfo")
	replace := func(old, new string) string {
		if !strings.Contains(refs, old) {
			t.Fatalf("refs.narinfo has no %q", old)
		}
		return strings.Replace(refs, old, new, 1)
	}
	line := func(key string) string {
		for _, l := range strings.Split(refs, "\n") {
			if strings.HasPrefix(l, key+": ") {
				return l
			}
		}
		t.Fatalf("refs.narinfo has no %s line", key)
		return ""
	}
	tests := map[string]struct {
		in      string
		wantErr string
	}{
		"as nix wrote it":   {in: refs},
		"no final newline":  {in: strings.TrimSuffix(refs, "\n")},
		"no StorePath":      {in: replace(line("StorePath")+"\n", ""), wantErr: "no StorePath line"},
		"no NarHash":        {in: replace(line("NarHash")+"\n", ""), wantErr: "has no NarHash line"},
		"no NarSize":        {in: replace(line("NarSize")+"\n", ""), wantErr: "no NarSize line"},
		"NarSize 0":         {in: replace(line("NarSize"), "NarSize: 0"), wantErr: "no NarSize line (or NarSize 0)"},
		"NarSize not count": {in: replace(line("NarSize"), "NarSize: -1"), wantErr: `line 7: NarSize "-1" is not a byte count`},
		"StorePath elsewhere": {
			in:      replace("StorePath: /nix/store/", "StorePath: /gnu/store/"),
			wantErr: "line 1: StorePath \"/gnu/store/",
		},
		"StorePath traversal": {
			in:      replace(line("StorePath"), "StorePath: /nix/store/../../etc/passwd-aaaaaaaaaaaaaaaaaaaaaaaa"),
			wantErr: "is not a store path under /nix/store",
		},
		"StorePath cleaned by go-nix": {
			in:      replace(line("StorePath"), line("StorePath")+"/."),
			wantErr: "contains a slash",
		},
		"reference with slash": {
			in:      replace(line("References"), line("References")+"/."),
			wantErr: "contains a slash",
		},
		"StorePath twice": {
			in:      refs + "StorePath: /nix/store/00000000000000000000000000000000-x\n",
			wantErr: "line 11: StorePath appears twice (first on line 1)",
		},
		"NarHash twice":      {in: refs + line("NarHash") + "\n", wantErr: "NarHash appears twice"},
		"NarHash md5":        {in: replace(line("NarHash"), "NarHash: md5:"+strings.Repeat("0", 32)), wantErr: "is not sha256"},
		"NarHash garbage":    {in: replace(line("NarHash"), "NarHash: sha256:xyz"), wantErr: "line 6: NarHash \"sha256:xyz\""},
		"bad reference":      {in: replace(line("References"), "References: ../etc"), wantErr: `reference "../etc" is not a store path name`},
		"bad signature":      {in: replace(line("Sig"), "Sig: test-1:AAAA"), wantErr: "line 9: Sig"},
		"signature no name":  {in: replace("Sig: test-1:", "Sig: :"), wantErr: "name is missing"},
		"not key value":      {in: "hello world\n", wantErr: `line 1: "hello world" is not "Key: value"`},
		"empty":              {in: "", wantErr: "no StorePath line"},
		"too large":          {in: refs + strings.Repeat("X-Padding: y\n", MaxNarInfoSize/13+1), wantErr: "larger than"},
		"unknown key is ok":  {in: refs + "X-Mirror: http://example.org\n"},
		"bare References: ":  {in: replace(line("References"), "References:")},
		"unknown deriver ok": {in: refs + "Deriver: unknown-deriver\n"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			ni, err := ParseNarInfo(strings.NewReader(tc.in))
			if tc.wantErr != "" {
				if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParseNarInfo = %v, want ErrMalformed containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if ni.StorePath == "" || ni.NarSize == 0 {
				t.Fatalf("parsed %+v", ni)
			}
		})
	}
}

func TestParseNarInfoFields(t *testing.T) {
	ni, err := ParseNarInfo(strings.NewReader(recorded(t, "refs.narinfo")))
	if err != nil {
		t.Fatal(err)
	}
	hash, _ := strings.CutPrefix(strings.TrimSuffix(ni.URL, ".nar"), "nar/")
	want := &NarInfo{
		StorePath:   ni.StorePath,
		URL:         "nar/" + hash + ".nar",
		Compression: "none",
		FileHash:    "sha256:" + hash,
		FileSize:    240,
		NarHash:     ni.NarHash,
		NarSize:     240,
		References:  ni.References,
		CA:          ni.CA,
		Sigs:        ni.Sigs,
	}
	if diff := cmp.Diff(want, ni); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	if got := ni.NarHashString(); got != "sha256:"+hash {
		t.Errorf("NarHashString = %s, want sha256:%s (Compression none: NarHash = FileHash)", got, hash)
	}
	if got := ni.HashPart() + "-refs"; filepath.Base(ni.StorePath) != got {
		t.Errorf("HashPart = %s, store path %s", ni.HashPart(), ni.StorePath)
	}
	if len(ni.Sigs) != 1 || ni.Sigs[0].KeyName != "test-1" {
		t.Errorf("Sigs = %v, want one by test-1", ni.Sigs)
	}
	if !strings.HasPrefix(ni.CA, "text:sha256:") {
		t.Errorf("CA = %q", ni.CA)
	}
	if diff := cmp.Diff(ni.String(), recorded(t, "refs.narinfo")); diff != "" {
		t.Errorf("String() is not the file Nix wrote (-String +file):\n%s", diff)
	}
}

// Nix normalises what it signs; files written differently but meaning the
// same must still verify against Nix's signature.
func TestVerifyNormalises(t *testing.T) {
	trusted := recordedKeys(t)
	refs := recorded(t, "refs.narinfo")
	ni, err := ParseNarInfo(strings.NewReader(refs))
	if err != nil {
		t.Fatal(err)
	}
	nb32 := strings.TrimPrefix(ni.NarHashString(), "sha256:")
	digest, err := nixbase32.DecodeString(nb32)
	if err != nil {
		t.Fatal(err)
	}
	refLine := "References: " + strings.Join(ni.References, " ")
	variants := map[string]string{
		"NarHash in base16":       strings.Replace(refs, "NarHash: sha256:"+nb32, "NarHash: sha256:"+hex.EncodeToString(digest), 1),
		"NarHash in SRI":          strings.Replace(refs, "NarHash: sha256:"+nb32, "NarHash: sha256-"+base64.StdEncoding.EncodeToString(digest), 1),
		"references out of order": strings.Replace(refs, refLine, "References: "+ni.References[1]+" "+ni.References[0], 1),
		"reference repeated":      strings.Replace(refs, refLine, refLine+" "+ni.References[0], 1),
		"unsigned fields changed": strings.Replace(strings.Replace(refs, "Compression: none", "Compression: xz", 1), "FileSize: 240", "FileSize: 1", 1),
	}
	for name, text := range variants {
		t.Run(name, func(t *testing.T) {
			if text == refs {
				t.Fatal("variant did not change the file")
			}
			ni, err := ParseNarInfo(strings.NewReader(text))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := Verify(ni, trusted); err != nil {
				t.Errorf("Verify: %v", err)
			}
		})
	}
}

func TestPolicy(t *testing.T) {
	pub := strings.TrimSpace(recorded(t, "trusted.pub"))
	parse := func(name string) *NarInfo {
		ni, err := ParseNarInfo(strings.NewReader(recorded(t, name)))
		if err != nil {
			t.Fatal(err)
		}
		return ni
	}
	signed, rogue, unsigned := parse("refs.narinfo"), parse("other.narinfo"), parse("unsigned.narinfo")
	tampered := parse("refs.narinfo")
	tampered.NarSize++

	tests := map[string]struct {
		keys       []string
		require    bool
		ni         *NarInfo
		wantErr    error
		wantSigned bool
		wantInErr  []string
	}{
		"require, signed":            {keys: []string{pub}, require: true, ni: signed, wantSigned: true},
		"require, no narinfo":        {keys: []string{pub}, require: true, ni: nil, wantErr: ErrUnsigned, wantInErr: []string{"no .narinfo", "test-1"}},
		"require, unsigned":          {keys: []string{pub}, require: true, ni: unsigned, wantErr: ErrUnsigned, wantInErr: []string{unsigned.StorePath, "test-1"}},
		"require, untrusted":         {keys: []string{pub}, require: true, ni: rogue, wantErr: ErrUntrustedKey, wantInErr: []string{rogue.StorePath, "rogue-1", "test-1"}},
		"require, tampered":          {keys: []string{pub}, require: true, ni: tampered, wantErr: ErrBadSignature, wantInErr: []string{tampered.StorePath, "test-1"}},
		"lax, signed":                {keys: []string{pub}, ni: signed, wantSigned: true},
		"lax, no narinfo":            {keys: []string{pub}, ni: nil},
		"lax, unsigned":              {keys: []string{pub}, ni: unsigned},
		"lax, untrusted":             {keys: []string{pub}, ni: rogue},
		"lax, tampered still fails":  {keys: []string{pub}, ni: tampered, wantErr: ErrBadSignature},
		"lax, no keys, signed":       {ni: signed},
		"lax, no keys, unsigned":     {ni: unsigned},
		"lax, no keys, tampered too": {ni: tampered},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			p, err := NewPolicy(tc.keys, tc.require)
			if err != nil {
				t.Fatal(err)
			}
			v, err := p.Check(tc.ni)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("Check = %v, want %v", err, tc.wantErr)
				}
				var e *Error
				if !errors.As(err, &e) {
					t.Fatalf("error %v is not a *nixsig.Error", err)
				}
				for _, s := range tc.wantInErr {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error does not name %q: %v", s, err)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("Check: %v", err)
			}
			if v.Signed != tc.wantSigned {
				t.Errorf("Signed = %v, want %v", v.Signed, tc.wantSigned)
			}
			if tc.ni != nil && v.StorePath != tc.ni.StorePath {
				t.Errorf("StorePath = %q, want %q", v.StorePath, tc.ni.StorePath)
			}
		})
	}
}

func TestNewPolicyRefusesRequireWithoutKeys(t *testing.T) {
	_, err := NewPolicy(nil, true)
	if err == nil || !strings.Contains(err.Error(), "--require-signed needs at least one trusted") {
		t.Fatalf("NewPolicy(no keys, require) = %v, want a configuration error", err)
	}
	if _, err := NewPolicy([]string{"garbage"}, false); !errors.Is(err, ErrMalformed) {
		t.Fatalf("NewPolicy(bad key) = %v, want ErrMalformed", err)
	}
}

func TestVerifyNoKeysConfigured(t *testing.T) {
	ni, err := ParseNarInfo(strings.NewReader(recorded(t, "refs.narinfo")))
	if err != nil {
		t.Fatal(err)
	}
	_, err = Verify(ni, Keys{})
	if !errors.Is(err, ErrUntrustedKey) || !strings.Contains(err.Error(), "no trusted Nix keys are configured") {
		t.Fatalf("Verify(no keys) = %v, want ErrUntrustedKey saying no keys are configured", err)
	}
}

func TestVerifyPathMissing(t *testing.T) {
	ni, err := ParseNarInfo(strings.NewReader(recorded(t, "image.narinfo")))
	if err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(t.TempDir(), "result")
	err = VerifyPath(ni, missing)
	if err == nil || errors.Is(err, ErrContentMismatch) || !strings.Contains(err.Error(), missing) {
		t.Fatalf("VerifyPath(missing dir) = %v, want an error naming %s", err, missing)
	}
}

// An image copied together with its .narinfo: the .narinfo is found, and
// it is not counted as part of the image.
func TestFindNarInfo(t *testing.T) {
	trusted := recordedKeys(t)
	dir := filepath.Join(t.TempDir(), "image")
	makeImage(t, dir)
	if ni, p, err := FindNarInfo(dir); ni != nil || p != "" || err != nil {
		t.Fatalf("FindNarInfo(no narinfo) = %v, %q, %v; want nothing", ni, p, err)
	}
	name := filepath.Join(dir, "abc.narinfo")
	if err := os.WriteFile(name, []byte(recorded(t, "image.narinfo")), 0o644); err != nil {
		t.Fatal(err)
	}
	ni, p, err := FindNarInfo(dir)
	if err != nil || p != name {
		t.Fatalf("FindNarInfo = %q, %v; want %s", p, err, name)
	}
	if _, err := Verify(ni, trusted); err != nil {
		t.Errorf("Verify: %v", err)
	}
	if err := VerifyPath(ni, dir); err != nil {
		t.Errorf("VerifyPath with the .narinfo beside the image files: %v", err)
	}
	// Only a top-level .narinfo is left out; one deeper is image content.
	if err := os.WriteFile(filepath.Join(dir, "nix-support", "x.narinfo"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := VerifyPath(ni, dir); !errors.Is(err, ErrContentMismatch) {
		t.Errorf("VerifyPath with an extra nix-support/x.narinfo = %v, want ErrContentMismatch", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "def.narinfo"), []byte(recorded(t, "refs.narinfo")), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := FindNarInfo(dir); !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "several .narinfo files") {
		t.Errorf("FindNarInfo(two narinfos) = %v, want an error saying there are several", err)
	}
}
