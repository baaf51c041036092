package nixsig

import (
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/nix-community/go-nix/pkg/nar"
)

// VerifyNAR reads an uncompressed NAR (the file at the .narinfo's URL when
// Compression is "none") and checks it against NarHash and NarSize.
func VerifyNAR(ni *NarInfo, r io.Reader) error {
	h := sha256.New()
	n, err := io.Copy(h, r)
	if err != nil {
		return fmt.Errorf("nixsig: %s: reading NAR: %w", ni.StorePath, err)
	}
	var sum [32]byte
	h.Sum(sum[:0])
	return compare(ni, sum, uint64(n), "the NAR")
}

// VerifyPath serialises a directory or file as Nix does (NAR: names, file
// bytes, the executable bit, symlink targets; not owners or times) and
// checks it against NarHash and NarSize. Use it on the image directory
// itself, e.g. the "result" link of nix build.
func VerifyPath(ni *NarInfo, p string) error {
	sum, n, err := NarHashPath(p)
	if err != nil {
		return fmt.Errorf("nixsig: %s: %w", ni.StorePath, err)
	}
	return compare(ni, sum, n, p)
}

// NarHashPath is the sha256 and size of p's NAR serialisation, what Nix
// records as narHash and narSize when p is added to a store. A symlink at
// p itself is followed (result -> /nix/store/...); symlinks inside are not.
// Files named *.narinfo directly in p are left out: that is where an
// image's .narinfo may be put (see FindNarInfo).
func NarHashPath(p string) (sum [32]byte, size uint64, err error) {
	root, err := filepath.EvalSymlinks(p)
	if err != nil {
		return sum, 0, fmt.Errorf("hashing %s as NAR: %w", p, err)
	}
	h := sha256.New()
	cw := &countWriter{w: h}
	// A .narinfo placed beside the image files is not part of the image.
	skip := func(p string, t nar.NodeType) bool {
		return !(t == nar.TypeRegular && filepath.Dir(p) == root && strings.HasSuffix(p, ".narinfo"))
	}
	if err := nar.DumpPathFilter(cw, root, skip); err != nil {
		return sum, 0, fmt.Errorf("hashing %s as NAR: %w", p, err)
	}
	h.Sum(sum[:0])
	return sum, cw.n, nil
}

func compare(ni *NarInfo, sum [32]byte, n uint64, what string) error {
	if sum == ni.NarHash && n == ni.NarSize {
		return nil
	}
	return &Error{
		StorePath: ni.StorePath,
		Found:     sigNames(ni),
		Err:       ErrContentMismatch,
		Detail: fmt.Sprintf("%s has narHash %s and narSize %d, the .narinfo says %s and %d; the image was changed or the .narinfo is for another path",
			what, FormatNarHash(sum), n, ni.NarHashString(), ni.NarSize),
	}
}

type countWriter struct {
	w io.Writer
	n uint64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += uint64(n)
	return n, err
}

// FindNarInfo finds the .narinfo that came with an image: a file
// *.narinfo directly in dir (the image files copied together with the
// .narinfo that `nix copy --to file://...` wrote for them). It returns nil
// and no error when there is none, and an error when there are several.
func FindNarInfo(dir string) (*NarInfo, string, error) {
	cands, err := filepath.Glob(filepath.Join(dir, "*.narinfo"))
	if err != nil {
		return nil, "", err
	}
	switch len(cands) {
	case 0:
		return nil, "", nil
	case 1:
	default:
		return nil, "", fmt.Errorf("nixsig: %s: several .narinfo files (%s); keep only the image's: %w",
			dir, strings.Join(cands, ", "), ErrMalformed)
	}
	f, err := os.Open(cands[0])
	if err != nil {
		return nil, "", fmt.Errorf("nixsig: %w", err)
	}
	defer f.Close()
	ni, err := ParseNarInfo(f)
	if err != nil {
		return nil, "", fmt.Errorf("%s: %w", cands[0], err)
	}
	return ni, cands[0], nil
}
