// Package nixsig checks the Nix metadata that comes with an imported image:
// .narinfo files, their ed25519 signatures against the trusted Nix public
// keys, and that the image's bytes are the NAR the .narinfo describes.
//
// A Nix signature covers the fingerprint
//
//	1;<store path>;<narHash>;<narSize>;<references>
//
// so a valid signature plus a matching NAR hash proves every byte of the
// store path came from whoever holds the signing key.
package nixsig

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"
)

// Errors, checked with errors.Is. Verification errors are *Error values
// that also name the store path and the keys.
var (
	// ErrMalformed: a .narinfo or key could not be parsed.
	ErrMalformed = errors.New("malformed Nix metadata")
	// ErrUnsigned: no .narinfo, or a .narinfo without signatures.
	ErrUnsigned = errors.New("not signed")
	// ErrUntrustedKey: signatures exist, none by a trusted key name.
	ErrUntrustedKey = errors.New("no signature by a trusted key")
	// ErrBadSignature: a signature by a trusted key name does not verify:
	// the path, narHash, narSize or references changed after signing, or
	// the trusted key of that name is not the one that signed.
	ErrBadSignature = errors.New("bad signature")
	// ErrContentMismatch: the image's bytes are not the NAR the .narinfo
	// describes (narHash or narSize differ).
	ErrContentMismatch = errors.New("content does not match narinfo")
)

// Error is a verification failure: which store path, which keys were
// trusted, which were found on the .narinfo.
type Error struct {
	StorePath string   // empty when no .narinfo came with the image
	Trusted   []string // names of the configured trusted keys
	Found     []string // names of the keys that signed the .narinfo
	Detail    string   // what exactly failed
	Err       error    // one of the sentinels above
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("nixsig: ")
	if e.StorePath != "" {
		b.WriteString(e.StorePath)
	} else {
		b.WriteString("image")
	}
	b.WriteString(": ")
	b.WriteString(e.Err.Error())
	if e.Detail != "" {
		b.WriteString(": " + e.Detail)
	}
	if e.Err != ErrContentMismatch {
		fmt.Fprintf(&b, " (trusted keys: %s; signed by: %s)", names(e.Trusted), names(e.Found))
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

func names(n []string) string {
	if len(n) == 0 {
		return "none"
	}
	return strings.Join(n, ", ")
}

// PublicKey is a named ed25519 public key, written name:base64(key) as in
// Nix's trusted-public-keys setting.
type PublicKey struct {
	Name string
	Key  ed25519.PublicKey
}

// String renders the key as Nix writes it.
func (k PublicKey) String() string {
	return signature.PublicKey{Name: k.Name, Data: k.Key}.String()
}

// ParsePublicKey parses "name:base64(32-byte ed25519 key)", e.g. the file
// "nix-store --generate-binary-cache-key" or "nix key convert-secret-to-public" writes.
func ParsePublicKey(s string) (PublicKey, error) {
	s = strings.TrimSpace(s)
	pk, err := signature.ParsePublicKey(s)
	if err != nil {
		return PublicKey{}, fmt.Errorf("nixsig: trusted key %q: %v; want name:base64 as written by nix-store --generate-binary-cache-key: %w",
			clip(s), err, ErrMalformed)
	}
	return PublicKey{Name: pk.Name, Key: ed25519.PublicKey(pk.Data)}, nil
}

// Keys is a set of trusted public keys, at most one per name.
type Keys struct {
	keys []PublicKey // sorted by name
}

// ParseTrustedKeys parses trusted keys. Each entry may hold several keys
// separated by white space, as Nix's trusted-public-keys does. Two
// different keys with one name are refused: a signature names its key, and
// mdc would not know which to check.
func ParseTrustedKeys(entries []string) (Keys, error) {
	var ks Keys
	for _, e := range entries {
		for _, f := range strings.Fields(e) {
			k, err := ParsePublicKey(f)
			if err != nil {
				return Keys{}, err
			}
			if old, ok := ks.Lookup(k.Name); ok {
				if old.Key.Equal(k.Key) {
					continue
				}
				return Keys{}, fmt.Errorf("nixsig: two different trusted keys are named %q; give each signing key its own name: %w",
					k.Name, ErrMalformed)
			}
			ks.keys = append(ks.keys, k)
		}
	}
	slices.SortFunc(ks.keys, func(a, b PublicKey) int { return strings.Compare(a.Name, b.Name) })
	return ks, nil
}

// Lookup returns the trusted key of that name.
func (ks Keys) Lookup(name string) (PublicKey, bool) {
	for _, k := range ks.keys {
		if k.Name == name {
			return k, true
		}
	}
	return PublicKey{}, false
}

// Names lists the trusted key names, sorted.
func (ks Keys) Names() []string {
	n := make([]string, len(ks.keys))
	for i, k := range ks.keys {
		n[i] = k.Name
	}
	return n
}

// Len is the number of trusted keys.
func (ks Keys) Len() int { return len(ks.keys) }

// Verified is what a successful check established.
type Verified struct {
	StorePath  string
	NarHash    string // sha256:<nix-base32>
	NarSize    uint64
	References []string
	Signed     bool   // false only when the policy let an unsigned image through
	KeyName    string // the trusted key whose signature verified
}

// Verify checks that at least one signature on ni is by a trusted key and
// verifies over ni's fingerprint. It says nothing about the image bytes:
// check those with VerifyNAR or VerifyPath.
func Verify(ni *NarInfo, trusted Keys) (Verified, error) {
	fail := func(err error, detail string) (Verified, error) {
		return Verified{}, &Error{StorePath: ni.StorePath, Trusted: trusted.Names(), Found: sigNames(ni), Detail: detail, Err: err}
	}
	if len(ni.Sigs) == 0 {
		return fail(ErrUnsigned, "the .narinfo has no Sig line; sign the path with `nix store sign --key-file KEY PATH` and export it again")
	}
	fp := []byte(ni.Fingerprint())
	var bad []string
	for _, s := range ni.Sigs {
		k, ok := trusted.Lookup(s.KeyName)
		if !ok {
			continue
		}
		if ed25519.Verify(k.Key, fp, s.Sig) {
			return Verified{
				StorePath:  ni.StorePath,
				NarHash:    ni.NarHashString(),
				NarSize:    ni.NarSize,
				References: slices.Clone(ni.References),
				Signed:     true,
				KeyName:    k.Name,
			}, nil
		}
		bad = append(bad, s.KeyName)
	}
	if len(bad) > 0 {
		return fail(ErrBadSignature, fmt.Sprintf("the signature by %s does not verify: the store path, narHash, narSize or references were changed after signing, or the trusted key %s is not the key that signed",
			strings.Join(bad, ", "), strings.Join(bad, ", ")))
	}
	if trusted.Len() == 0 {
		return fail(ErrUntrustedKey, "no trusted Nix keys are configured; add the signer's public key (name:base64) to the trusted keys")
	}
	return fail(ErrUntrustedKey, "add the signer's public key to the trusted keys, or sign the path with a trusted key")
}

func sigNames(ni *NarInfo) []string {
	if ni == nil {
		return nil
	}
	var n []string
	for _, s := range ni.Sigs {
		if !slices.Contains(n, s.KeyName) {
			n = append(n, s.KeyName)
		}
	}
	return n
}

// Policy is mdc's import rule: which keys are trusted, and whether unsigned
// images are refused (--require-signed).
type Policy struct {
	Trusted       Keys
	RequireSigned bool
}

// NewPolicy parses the trusted keys and checks that the combination makes
// sense, so that a bad configuration stops mdc before it starts.
func NewPolicy(trustedKeys []string, requireSigned bool) (Policy, error) {
	ks, err := ParseTrustedKeys(trustedKeys)
	if err != nil {
		return Policy{}, err
	}
	if requireSigned && ks.Len() == 0 {
		return Policy{}, errors.New("nixsig: --require-signed needs at least one trusted Nix public key (name:base64), or no image could be imported")
	}
	return Policy{Trusted: ks, RequireSigned: requireSigned}, nil
}

// Check applies the policy to the .narinfo that came with an image (nil if
// none came). A signature by a trusted key name that does not verify is
// always refused: that is tampering, not a missing signature. Without
// RequireSigned, an image that is unsigned or signed only by unknown keys
// passes with Signed false. The image bytes must still be checked against
// the .narinfo (VerifyNAR, VerifyPath) whenever one came.
func (p Policy) Check(ni *NarInfo) (Verified, error) {
	if ni == nil {
		if p.RequireSigned {
			return Verified{}, &Error{Trusted: p.Trusted.Names(), Err: ErrUnsigned,
				Detail: "no .narinfo came with the image and unsigned images are refused (--require-signed); export one with `nix copy --to file://DIR PATH`"}
		}
		return Verified{}, nil
	}
	v, err := Verify(ni, p.Trusted)
	if err == nil {
		return v, nil
	}
	if p.RequireSigned || errors.Is(err, ErrBadSignature) {
		return Verified{}, err
	}
	return Verified{
		StorePath:  ni.StorePath,
		NarHash:    ni.NarHashString(),
		NarSize:    ni.NarSize,
		References: slices.Clone(ni.References),
	}, nil
}
