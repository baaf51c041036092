package images

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"path"
	"strings"
)

// ErrBadNAR is wrapped by every NAR parsing error.
var ErrBadNAR = errors.New("malformed NAR")

// narEntry is one node of a NAR: a directory, a regular file (its content
// is read from the narReader) or a symlink.
type narEntry struct {
	Path       string // "/" for the root, "/bzImage", "/nix-support/x"
	Type       string // "directory", "regular", "symlink"
	Size       int64
	Executable bool
	Target     string
}

// Limits that no image comes near and that keep a hostile NAR small.
const (
	narMaxDepth  = 32
	narMaxName   = 255
	narMaxTarget = 4095
	narMaxToken  = 16
)

// narReader reads a NAR (Nix ARchive) as it arrives, without goroutines
// and without holding any file in memory: Next moves to the next node,
// Read reads a regular file's content. It hashes exactly the bytes of the
// NAR, which is what a .narinfo's NarHash and NarSize are about; anything
// after the archive is an error. Names must come in Nix's order (sorted,
// no duplicates), so one tree has one NAR.
type narReader struct {
	r       *bufio.Reader
	h       hash.Hash
	n       int64 // NAR bytes consumed
	started bool
	inFile  bool
	left    int64 // content bytes of the current file not read yet
	pad     int   // padding after it
	stack   []narDir
	err     error
}

type narDir struct {
	path    string
	last    string // previous entry name, for the order check
	inEntry bool   // an entry's node is open: its ")" is still to come
}

func newNARReader(r io.Reader) *narReader {
	return &narReader{r: bufio.NewReaderSize(r, 64<<10), h: sha256.New()}
}

// Sum is the sha256 and size of the NAR bytes read so far; after Next
// returned io.EOF, of the whole archive.
func (n *narReader) Sum() (sum [32]byte, size uint64) {
	n.h.Sum(sum[:0])
	return sum, uint64(n.n)
}

// Next returns the next node, or io.EOF after the archive's last byte when
// nothing follows it.
func (n *narReader) Next() (*narEntry, error) {
	if n.err != nil {
		return nil, n.err
	}
	e, err := n.next()
	switch {
	case err == nil:
	case err == errNAREnd:
		err = io.EOF
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		err = fmt.Errorf("%w: the archive ends early after %d bytes", ErrBadNAR, n.n)
	case !errors.Is(err, ErrBadNAR):
		err = fmt.Errorf("reading NAR after %d bytes: %w", n.n, err)
	}
	if err != nil {
		n.err = err
	}
	return e, err
}

// errNAREnd is next's way of saying the archive ended where it may.
var errNAREnd = errors.New("end of NAR")

func (n *narReader) next() (*narEntry, error) {
	if !n.started {
		n.started = true
		if err := n.expect("nix-archive-1"); err != nil {
			return nil, err
		}
		return n.node("/")
	}
	if n.inFile {
		if _, err := io.CopyN(io.Discard, fileReader{n}, n.left); err != nil {
			return nil, err
		}
		n.inFile = false
		if err := n.expect(")"); err != nil {
			return nil, err
		}
	}
	for {
		if len(n.stack) == 0 {
			// The root node is complete: nothing may follow.
			if _, err := n.r.ReadByte(); err != io.EOF {
				if err == nil {
					return nil, fmt.Errorf("%w: data after the end of the archive (%d bytes)", ErrBadNAR, n.n)
				}
				return nil, err
			}
			return nil, errNAREnd
		}
		top := &n.stack[len(n.stack)-1]
		if top.inEntry {
			if err := n.expect(")"); err != nil {
				return nil, err
			}
			top.inEntry = false
		}
		tok, err := n.str(narMaxToken)
		if err != nil {
			return nil, err
		}
		switch tok {
		case ")":
			n.stack = n.stack[:len(n.stack)-1]
			continue
		case "entry":
		default:
			return nil, fmt.Errorf("%w: in %s: %q where an entry or the directory's end belongs", ErrBadNAR, top.path, tok)
		}
		if err := n.expect("("); err != nil {
			return nil, err
		}
		if err := n.expect("name"); err != nil {
			return nil, err
		}
		name, err := n.str(narMaxName)
		if err != nil {
			return nil, err
		}
		if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
			return nil, fmt.Errorf("%w: in %s: entry name %q", ErrBadNAR, top.path, clip(name))
		}
		if top.last != "" && name <= top.last {
			return nil, fmt.Errorf("%w: in %s: entry %q after %q: names must be sorted and unique", ErrBadNAR, top.path, clip(name), clip(top.last))
		}
		top.last = name
		if err := n.expect("node"); err != nil {
			return nil, err
		}
		top.inEntry = true
		return n.node(path.Join(top.path, name))
	}
}

// node reads a node's header. A directory is pushed; a regular file's
// content is left for Read.
func (n *narReader) node(p string) (*narEntry, error) {
	if err := n.expect("("); err != nil {
		return nil, err
	}
	if err := n.expect("type"); err != nil {
		return nil, err
	}
	t, err := n.str(narMaxToken)
	if err != nil {
		return nil, err
	}
	e := &narEntry{Path: p, Type: t}
	switch t {
	case "regular":
		tok, err := n.str(narMaxToken)
		if err != nil {
			return nil, err
		}
		if tok == "executable" {
			if err := n.expect(""); err != nil {
				return nil, err
			}
			e.Executable = true
			if tok, err = n.str(narMaxToken); err != nil {
				return nil, err
			}
		}
		if tok != "contents" {
			return nil, fmt.Errorf("%w: %s: %q where \"contents\" belongs", ErrBadNAR, p, tok)
		}
		size, err := n.u64()
		if err != nil {
			return nil, err
		}
		if size > 1<<62 {
			return nil, fmt.Errorf("%w: %s: size %d", ErrBadNAR, p, size)
		}
		e.Size = int64(size)
		n.inFile, n.left, n.pad = true, e.Size, padding(size)
	case "symlink":
		if err := n.expect("target"); err != nil {
			return nil, err
		}
		if e.Target, err = n.str(narMaxTarget); err != nil {
			return nil, err
		}
		if e.Target == "" || strings.Contains(e.Target, "\x00") {
			return nil, fmt.Errorf("%w: %s: symlink target %q", ErrBadNAR, p, clip(e.Target))
		}
		if err := n.expect(")"); err != nil {
			return nil, err
		}
	case "directory":
		if len(n.stack) >= narMaxDepth {
			return nil, fmt.Errorf("%w: %s: more than %d directory levels", ErrBadNAR, p, narMaxDepth)
		}
		n.stack = append(n.stack, narDir{path: p})
	default:
		return nil, fmt.Errorf("%w: %s: node type %q", ErrBadNAR, p, t)
	}
	return e, nil
}

// Read reads the current regular file's content.
func (n *narReader) Read(p []byte) (int, error) {
	if n.err != nil {
		return 0, n.err
	}
	if !n.inFile || n.left == 0 && n.pad == 0 {
		return 0, io.EOF
	}
	k, err := fileReader{n}.Read(p)
	switch {
	case err == nil || err == io.EOF:
	case errors.Is(err, io.ErrUnexpectedEOF):
		n.err = fmt.Errorf("%w: the archive ends early after %d bytes", ErrBadNAR, n.n)
	case errors.Is(err, ErrBadNAR):
		n.err = err
	default:
		n.err = fmt.Errorf("reading NAR after %d bytes: %w", n.n, err)
	}
	if n.err != nil {
		return k, n.err
	}
	return k, err
}

// fileReader reads the rest of the current file and then its padding.
type fileReader struct{ n *narReader }

func (f fileReader) Read(p []byte) (int, error) {
	n := f.n
	if n.left == 0 {
		if err := n.skipPad(n.pad); err != nil {
			return 0, err
		}
		n.pad = 0
		return 0, io.EOF
	}
	if int64(len(p)) > n.left {
		p = p[:n.left]
	}
	k, err := n.r.Read(p)
	n.h.Write(p[:k])
	n.n += int64(k)
	n.left -= int64(k)
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	if n.left == 0 && err == nil {
		if err := n.skipPad(n.pad); err != nil {
			return k, err
		}
		n.pad = 0
	}
	return k, err
}

func padding(size uint64) int { return int((8 - size%8) % 8) }

func (n *narReader) full(b []byte) error {
	k, err := io.ReadFull(n.r, b)
	n.h.Write(b[:k])
	n.n += int64(k)
	return err
}

func (n *narReader) u64() (uint64, error) {
	var b [8]byte
	if err := n.full(b[:]); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(b[:]), nil
}

func (n *narReader) skipPad(k int) error {
	var b [8]byte
	if err := n.full(b[:k]); err != nil {
		return err
	}
	for _, c := range b[:k] {
		if c != 0 {
			return fmt.Errorf("%w: non-zero padding at byte %d", ErrBadNAR, n.n)
		}
	}
	return nil
}

// str reads a length-prefixed, zero-padded string of at most max bytes.
func (n *narReader) str(max int) (string, error) {
	l, err := n.u64()
	if err != nil {
		return "", err
	}
	if l > uint64(max) {
		return "", fmt.Errorf("%w: a string of %d bytes at byte %d, at most %d expected here", ErrBadNAR, l, n.n, max)
	}
	b := make([]byte, l)
	if err := n.full(b); err != nil {
		return "", err
	}
	return string(b), n.skipPad(padding(l))
}

func (n *narReader) expect(want string) error {
	got, err := n.str(max(len(want), narMaxToken))
	if err != nil {
		return err
	}
	if got != want {
		return fmt.Errorf("%w: %q at byte %d where %q belongs", ErrBadNAR, clip(got), n.n, want)
	}
	return nil
}
