package tftp

import (
	"errors"
	"fmt"
	"path"
	"strings"
	"unicode"
	"unicode/utf8"
)

// errRefused marks a requested name that breaks the path rules.
var errRefused = errors.New("access violation")

// maxNameLen bounds a requested name; a request datagram holds at most 512
// bytes anyway, and no boot loader needs more.
const maxNameLen = 255

// cleanPath turns the file name of a read request into a path relative to the
// root, or refuses it. The rules are strict on purpose: boot loaders ask for
// plain names like "ipxe.efi" or "arm64/snponly.efi", so anything that could
// reach outside the root, or mean different things to different layers, is
// refused rather than repaired:
//   - empty names, names longer than 255 bytes, and invalid UTF-8;
//   - absolute names ("/etc/passwd");
//   - any ".." element, even one that would stay inside the root;
//   - backslashes (DOS separators), NUL and other control characters;
//   - '%' (percent-encoding: "%2e%2e/" must not become "../" anywhere).
//
// What is left is cleaned ("a//./b" becomes "a/b") and is always local in the
// sense of filepath.IsLocal.
func cleanPath(name string) (string, error) {
	switch {
	case name == "":
		return "", fmt.Errorf("%w: empty file name", errRefused)
	case len(name) > maxNameLen:
		return "", fmt.Errorf("%w: file name longer than %d bytes", errRefused, maxNameLen)
	case !utf8.ValidString(name):
		return "", fmt.Errorf("%w: file name is not UTF-8", errRefused)
	case name[0] == '/':
		return "", fmt.Errorf("%w: absolute path; ask for a name relative to the TFTP root", errRefused)
	}
	for _, r := range name {
		switch {
		case r == '\\':
			return "", fmt.Errorf("%w: backslash in file name; use '/'", errRefused)
		case r == '%':
			return "", fmt.Errorf("%w: '%%' in file name (no percent-encoding)", errRefused)
		case unicode.IsControl(r):
			return "", fmt.Errorf("%w: control character in file name", errRefused)
		}
	}
	for elem := range strings.SplitSeq(name, "/") {
		if elem == ".." {
			return "", fmt.Errorf("%w: '..' in file name", errRefused)
		}
	}
	clean := path.Clean(name)
	if clean == "." {
		return "", fmt.Errorf("%w: file name names the root directory", errRefused)
	}
	return clean, nil
}
