// Package machine is mdc's domain: machine ids, lifecycle states, event types
// and the pure fold from a machine's events to its current state. It does no
// I/O and imports nothing else of mdc.
package machine

import (
	"errors"
	"fmt"
	"strings"
)

// ID identifies a machine: its primary MAC as 12 lowercase hex digits.
type ID string

// ErrBadMAC is wrapped by every MAC parsing error.
var ErrBadMAC = errors.New("bad MAC address")

// ParseID accepts the common MAC spellings (aa:bb:cc:dd:ee:ff, AA-BB-CC-DD-EE-FF,
// aabb.ccdd.eeff, aabbccddeeff) and returns the canonical ID.
func ParseID(s string) (ID, error) {
	in := strings.TrimSpace(s)
	var hex []byte
	switch len(in) {
	case 12:
		hex = []byte(in)
	case 14: // aabb.ccdd.eeff
		if in[4] != '.' || in[9] != '.' {
			return "", badMAC(s, "expected groups of four separated by '.'")
		}
		hex = []byte(in[0:4] + in[5:9] + in[10:14])
	case 17: // six pairs separated by ':' or '-'
		sep := in[2]
		if sep != ':' && sep != '-' {
			return "", badMAC(s, "expected ':' or '-' between pairs")
		}
		for i := 2; i < 17; i += 3 {
			if in[i] != sep {
				return "", badMAC(s, "mixed or misplaced separators")
			}
		}
		for i := 0; i < 17; i += 3 {
			hex = append(hex, in[i], in[i+1])
		}
	default:
		return "", badMAC(s, "want 6 bytes, e.g. 52:54:00:12:34:56")
	}
	for i, c := range hex {
		switch {
		case c >= '0' && c <= '9', c >= 'a' && c <= 'f':
		case c >= 'A' && c <= 'F':
			hex[i] = c + ('a' - 'A')
		default:
			return "", badMAC(s, fmt.Sprintf("%q is not a hex digit", c))
		}
	}
	return ID(hex), nil
}

// MustParseID is for constants in tests and examples.
func MustParseID(s string) ID {
	id, err := ParseID(s)
	if err != nil {
		panic(err)
	}
	return id
}

func badMAC(s, why string) error {
	return fmt.Errorf("%w %q: %s", ErrBadMAC, s, why)
}

// MAC returns the colon-separated spelling, aa:bb:cc:dd:ee:ff.
func (id ID) MAC() string {
	if len(id) != 12 {
		return string(id)
	}
	var b strings.Builder
	b.Grow(17)
	for i := 0; i < 12; i += 2 {
		if i > 0 {
			b.WriteByte(':')
		}
		b.WriteString(string(id[i : i+2]))
	}
	return b.String()
}

// Valid reports whether id is in canonical form.
func (id ID) Valid() bool {
	if len(id) != 12 {
		return false
	}
	for i := 0; i < 12; i++ {
		c := id[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

func (id ID) String() string { return string(id) }
