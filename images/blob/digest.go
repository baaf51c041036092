// Package blob is mdc's content-addressed blob store: kernels, initrds and
// other boot artifacts named by their SHA-256, stored once, verified on the
// way in and on the way out, and served over HTTP with Range support.
//
// Two backends implement [Store]: a local directory ([NewLocal]) and a Ceph
// RADOS pool ([NewRADOS], compiled only with the `ceph` build tag) that
// several mdc instances can share.
package blob

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"strings"
)

// Algorithm is the only digest algorithm the store knows.
const Algorithm = "sha256"

// Digest is the SHA-256 of a blob's content. The zero value means "unknown".
type Digest [sha256.Size]byte

// ErrBadDigest means a string is not a sha256 digest.
var ErrBadDigest = errors.New("malformed digest")

// ParseDigest reads "sha256:<64 lowercase hex>" or the bare 64 hex digits.
// Upper-case hex is refused so that one blob has exactly one name (and one
// URL, one ETag).
func ParseDigest(s string) (Digest, error) {
	if rest, ok := strings.CutPrefix(s, Algorithm+":"); ok {
		s = rest
	} else if i := strings.IndexByte(s, ':'); i >= 0 {
		return Digest{}, fmt.Errorf("%w: algorithm %q is not supported, use sha256", ErrBadDigest, truncate(s[:i]))
	}
	return ParseHex(s)
}

// ParseHex reads exactly 64 lowercase hex digits.
func ParseHex(s string) (Digest, error) {
	var d Digest
	if len(s) != 2*len(d) {
		return Digest{}, fmt.Errorf("%w: %q has %d characters, want %d lowercase hex digits", ErrBadDigest, truncate(s), len(s), 2*len(d))
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return Digest{}, fmt.Errorf("%w: %q: character %d is not a lowercase hex digit", ErrBadDigest, truncate(s), i+1)
		}
	}
	if _, err := hex.Decode(d[:], []byte(s)); err != nil {
		return Digest{}, fmt.Errorf("%w: %q: %v", ErrBadDigest, truncate(s), err)
	}
	return d, nil
}

// MustParseDigest is ParseDigest for constants in tests and tables.
func MustParseDigest(s string) Digest {
	d, err := ParseDigest(s)
	if err != nil {
		panic(err)
	}
	return d
}

// Sum returns the digest of b.
func Sum(b []byte) Digest { return Digest(sha256.Sum256(b)) }

// IsZero reports whether d is the zero ("unknown") digest.
func (d Digest) IsZero() bool { return d == Digest{} }

// Hex returns the 64 lowercase hex digits.
func (d Digest) Hex() string { return hex.EncodeToString(d[:]) }

// String returns "sha256:<hex>".
func (d Digest) String() string { return Algorithm + ":" + d.Hex() }

// Path returns the URL path the HTTP handler serves d at.
func (d Digest) Path() string { return "/blobs/" + Algorithm + "/" + d.Hex() }

// MarshalText implements encoding.TextMarshaler ("sha256:<hex>").
func (d Digest) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Digest) UnmarshalText(b []byte) error {
	v, err := ParseDigest(string(b))
	if err != nil {
		return err
	}
	*d = v
	return nil
}

// newHash returns the hash the store names blobs by.
func newHash() hash.Hash { return sha256.New() }

func digestOf(h hash.Hash) Digest {
	var d Digest
	h.Sum(d[:0])
	return d
}

// truncate keeps error messages about network input short.
func truncate(s string) string {
	const max = 80
	if len(s) > max {
		return s[:max] + "…"
	}
	return s
}
