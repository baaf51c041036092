// Package images is mdc's image catalog: what a role boots (a kernel, its
// initrds and a command line, stored as content-addressed blobs in
// images/blob), where it came from (Nix metadata checked by images/nixsig),
// and the IPFS CID of every file. Catalog changes are events on NATS
// JetStream (stream MDC_IMAGES, subjects mdc.image.<name>.<event>), so they
// replicate with the rest of mdc; the catalog in memory is their fold.
package images

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/microdc/mdc/images/blob"
)

// Errors callers check with errors.Is.
var (
	// ErrNotFound: no image of that name.
	ErrNotFound = errors.New("image not found")
	// ErrExists: an image of that name exists with other content. Names
	// are labels of one exact content: pick a new name, or delete first.
	ErrExists = errors.New("an image of that name exists with different content")
	// ErrInUse: machines use the image, so it cannot be deleted.
	ErrInUse = errors.New("image is in use")
	// ErrInvalid: the image or the upload is malformed; the message says how.
	ErrInvalid = errors.New("invalid image")
	// ErrConflict: another writer changed the image at the same time.
	ErrConflict = errors.New("the image was changed by another writer")
	// ErrNotReady: the catalog is still replaying its stream.
	ErrNotReady = errors.New("the image catalog is still replaying its event stream")
)

// Image is one entry of the catalog: everything a machine of Role needs to
// boot, by content.
type Image struct {
	Name       string    `json:"name"`
	Role       string    `json:"role"`
	Kernel     File      `json:"kernel"`
	Initrds    []File    `json:"initrds"`
	Cmdline    string    `json:"cmdline"`
	Nix        *Nix      `json:"nix,omitempty"`
	Created    time.Time `json:"created"`
	ImportedBy string    `json:"imported_by,omitempty"`
	// Seq is the stream sequence of the event that imported the image.
	Seq uint64 `json:"seq,omitempty"`
}

// File is one boot file of an image: a blob, and its IPFS address.
type File struct {
	Name   string      `json:"name"` // as the image called it: bzImage, initrd
	Digest blob.Digest `json:"digest"`
	Size   int64       `json:"size"`
	IPFS   *IPFS       `json:"ipfs,omitempty"`
}

// Nix is what the Nix metadata that came with an image says, after checks.
type Nix struct {
	StorePath  string   `json:"store_path"`
	NarHash    string   `json:"nar_hash"` // sha256:<nix-base32>
	NarSize    uint64   `json:"nar_size"`
	References []string `json:"references,omitempty"`
	Signatures []string `json:"signatures,omitempty"` // name:base64, as on the .narinfo
	Signed     bool     `json:"signed"`               // a trusted key's signature verified
	SignedBy   string   `json:"signed_by,omitempty"`  // that key's name
}

// Files returns the kernel and then the initrds.
func (img Image) Files() []File { return append([]File{img.Kernel}, img.Initrds...) }

// sameContent reports whether two records boot the same thing: importing
// the same content twice changes nothing.
func (img Image) sameContent(o Image) bool {
	if img.Name != o.Name || img.Role != o.Role || img.Cmdline != o.Cmdline ||
		!sameFile(img.Kernel, o.Kernel) || len(img.Initrds) != len(o.Initrds) {
		return false
	}
	for i := range img.Initrds {
		if !sameFile(img.Initrds[i], o.Initrds[i]) {
			return false
		}
	}
	return true
}

func sameFile(a, b File) bool { return a.Digest == b.Digest && a.Size == b.Size }

// Names: lowercase letters, digits, '-' and '.', starting with a letter or
// digit. A NixOS label (ceph-osd-25.05.20250601.abcdef0) fits. Roles are
// DNS labels, as in the machine API.
var (
	nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{0,99}$`)
	roleRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
)

// ValidName checks an image name.
func ValidName(name string) error {
	if !nameRE.MatchString(name) || strings.Contains(name, "..") || strings.HasSuffix(name, ".") {
		return fmt.Errorf("%w: name %q: use lowercase letters, digits, '-' and '.', up to 100, starting with a letter or digit", ErrInvalid, clip(name))
	}
	return nil
}

// ValidRole checks a role name.
func ValidRole(role string) error {
	if !roleRE.MatchString(role) {
		return fmt.Errorf("%w: role %q: use lowercase letters, digits and '-', up to 63", ErrInvalid, clip(role))
	}
	return nil
}

// maxCmdline is Linux's COMMAND_LINE_SIZE on x86 (2048) with room for what
// mdc appends at boot.
const maxCmdline = 1536

// validate checks a record before it becomes an event.
func (img Image) validate() error {
	if err := ValidName(img.Name); err != nil {
		return err
	}
	if err := ValidRole(img.Role); err != nil {
		return err
	}
	if img.Kernel.Digest.IsZero() {
		return fmt.Errorf("%w: %s has no kernel", ErrInvalid, img.Name)
	}
	if len(img.Initrds) == 0 {
		return fmt.Errorf("%w: %s has no initrd", ErrInvalid, img.Name)
	}
	if len(img.Cmdline) > maxCmdline {
		return fmt.Errorf("%w: %s: command line is %d bytes, at most %d", ErrInvalid, img.Name, len(img.Cmdline), maxCmdline)
	}
	if strings.ContainsAny(img.Cmdline, "\n\r\x00") {
		return fmt.Errorf("%w: %s: command line has a line break or NUL", ErrInvalid, img.Name)
	}
	for _, f := range img.Files() {
		if f.Digest.IsZero() || f.Size < 0 {
			return fmt.Errorf("%w: %s: file %q has no digest", ErrInvalid, img.Name, f.Name)
		}
	}
	return nil
}

func (img Image) clone() Image {
	img.Initrds = slices.Clone(img.Initrds)
	if img.Nix != nil {
		n := *img.Nix
		n.References = slices.Clone(n.References)
		n.Signatures = slices.Clone(n.Signatures)
		img.Nix = &n
	}
	return img
}

// clip keeps error messages about outside input short.
func clip(s string) string {
	const max = 80
	if len(s) > max {
		return s[:max] + "…"
	}
	return s
}
