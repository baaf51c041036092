package images

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/nix-community/go-nix/pkg/nar"

	"github.com/microdc/mdc/images/blob"
	"github.com/microdc/mdc/images/nixsig"
)

// Request is what an import is asked for, besides the files.
type Request struct {
	// Name and Role label the image. For a netboot directory they default
	// to what its nix-support/mdc-image.json says.
	Name string `json:"name,omitempty"`
	Role string `json:"role,omitempty"`
	// Cmdline is the kernel command line of an import of explicit files; a
	// netboot directory's comes from its netboot.ipxe.
	Cmdline string `json:"cmdline,omitempty"`
	// RequireSigned refuses this import unless a trusted key signed it,
	// whatever the server's policy.
	RequireSigned bool `json:"require_signed,omitempty"`
	// ImportedBy is recorded with the image (user@host of the CLI).
	ImportedBy string `json:"imported_by,omitempty"`
}

// Result is what an import did.
type Result struct {
	Image Image `json:"image"`
	// Added is false when the catalog already had this exact image: the
	// import changed nothing.
	Added bool `json:"added"`
}

// Importer stores an image's files as blobs, checks its Nix metadata, and
// records it in the catalog.
type Importer struct {
	store   blob.Store
	catalog *Catalog
	policy  nixsig.Policy
	log     *slog.Logger
}

// NewImporter returns an importer into store and catalog that applies
// policy to Nix signatures. log may be nil.
func NewImporter(store blob.Store, catalog *Catalog, policy nixsig.Policy, log *slog.Logger) *Importer {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Importer{store: store, catalog: catalog, policy: policy, log: log}
}

// Blob sizes kept in memory while a NAR streams past: the script and the
// metadata, and small top-level files that may turn out to be boot files
// once netboot.ipxe (which sorts after them) has been read.
const (
	smallFile = 64 << 10
	maxSmall  = 4 << 20
)

// ImportNAR imports a netboot directory serialised as a NAR (what `nix-store
// --dump DIR` writes), read as it arrives. narinfo is the .narinfo that came
// with it, nil if none: its signature is checked against the trusted keys
// before any byte is read, and the NAR's hash and size against it once the
// last byte is in. Top-level files are stored as they pass, so nothing is
// held in memory but small files.
func (im *Importer) ImportNAR(ctx context.Context, req Request, narinfo []byte, r io.Reader) (Result, error) {
	if !im.catalog.Ready() {
		return Result{}, ErrNotReady
	}
	var ni *nixsig.NarInfo
	if narinfo != nil {
		var err error
		if ni, err = nixsig.ParseNarInfo(bytes.NewReader(narinfo)); err != nil {
			return Result{}, fmt.Errorf("%w: the .narinfo: %v", ErrInvalid, err)
		}
	}
	v, err := im.checkPolicy(req, ni)
	if err != nil {
		return Result{}, err
	}
	if req.Cmdline != "" {
		return Result{}, fmt.Errorf("%w: a netboot directory's command line comes from its netboot.ipxe (which its signature covers); drop --cmdline", ErrInvalid)
	}

	nr := newNARReader(r)
	root, err := nr.Next()
	if err != nil {
		return Result{}, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if root.Type != "directory" {
		return Result{}, fmt.Errorf("%w: the upload is a single %s, not a netboot directory", ErrInvalid, root.Type)
	}
	stored := map[string]File{}  // big top-level files, already blobs
	small := map[string][]byte{} // small files by NAR path
	links := map[string]string{} // top-level symlinks
	var smallBytes int64
	for {
		e, err := nr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return Result{}, fmt.Errorf("%w: %v", ErrInvalid, err)
		}
		top := path.Dir(e.Path) == "/"
		name := path.Base(e.Path)
		switch {
		case e.Type == "symlink" && top:
			links[name] = e.Target
		case e.Type != "regular":
		case e.Size <= smallFile && (top || e.Path == "/nix-support/mdc-image.json"):
			if smallBytes += e.Size; smallBytes > maxSmall {
				return Result{}, fmt.Errorf("%w: more than %d bytes of small files at the top of the directory; is this a netboot image?", ErrInvalid, maxSmall)
			}
			b, err := io.ReadAll(nr)
			if err != nil {
				return Result{}, fmt.Errorf("%w: %s: %v", ErrInvalid, e.Path, err)
			}
			small[e.Path] = b
		case top:
			f, err := im.put(ctx, name, nr)
			if err != nil {
				return Result{}, err
			}
			stored[name] = f
		}
	}
	sum, size := nr.Sum()
	if ni != nil && (sum != ni.NarHash || size != ni.NarSize) {
		return Result{}, &nixsig.Error{StorePath: ni.StorePath, Trusted: im.policy.Trusted.Names(), Found: sigNames(ni),
			Err: nixsig.ErrContentMismatch,
			Detail: fmt.Sprintf("the uploaded directory has narHash %s and narSize %d, the .narinfo says %s and %d; the image was changed or the .narinfo is for another path",
				nixsig.FormatNarHash(sum), size, ni.NarHashString(), ni.NarSize)}
	}

	script, ok := small["/netboot.ipxe"]
	if !ok {
		return Result{}, fmt.Errorf("%w: the directory has no netboot.ipxe (a NixOS netboot output has one); for other images give --kernel, --initrd and --cmdline", ErrInvalid)
	}
	nb, err := ParseNetbootIPXE(script)
	if err != nil {
		return Result{}, err
	}
	if b, ok := small["/nix-support/mdc-image.json"]; ok {
		meta, err := parseImageMeta(b)
		if err != nil {
			return Result{}, err
		}
		if req.Role != "" && meta.Role != "" && req.Role != meta.Role {
			return Result{}, fmt.Errorf("%w: the image was built for role %q (nix-support/mdc-image.json), not %q", ErrInvalid, meta.Role, req.Role)
		}
		req.Name = cmp.Or(req.Name, meta.Name)
		req.Role = cmp.Or(req.Role, meta.Role)
	}
	if req.Name == "" || req.Role == "" {
		return Result{}, fmt.Errorf("%w: give the image a --name and a --role (the directory has no nix-support/mdc-image.json saying them)", ErrInvalid)
	}
	file := func(name string) (File, error) {
		for hops := 0; ; hops++ {
			target, ok := links[name]
			if !ok {
				break
			}
			if hops == 8 || plainName(target) != nil {
				return File{}, fmt.Errorf("%w: netboot.ipxe names %s, a symlink to %q outside the image directory", ErrInvalid, name, clip(target))
			}
			name = target
		}
		if f, ok := stored[name]; ok {
			return f, nil
		}
		if b, ok := small["/"+name]; ok {
			return im.put(ctx, name, bytes.NewReader(b))
		}
		return File{}, fmt.Errorf("%w: netboot.ipxe names %s, which is not a file in the directory", ErrInvalid, name)
	}
	img := Image{Name: req.Name, Role: req.Role, Cmdline: nb.Cmdline, ImportedBy: req.ImportedBy}
	if img.Kernel, err = file(nb.Kernel); err != nil {
		return Result{}, err
	}
	img.Kernel.Name = nb.Kernel
	for _, n := range nb.Initrds {
		f, err := file(n)
		if err != nil {
			return Result{}, err
		}
		f.Name = n
		img.Initrds = append(img.Initrds, f)
	}
	if ni != nil {
		img.Nix = nixRecord(ni, v)
	}
	return im.add(ctx, img)
}

// FilePart is one explicit file of an import.
type FilePart struct {
	Name string // as the image calls it
	R    io.Reader
}

// ImportFiles imports explicit files: a kernel, initrds in order, and
// req.Cmdline. next returns the files one by one (kernel first) and io.EOF
// after the last, so that each can stream from the network in turn. Such an
// image carries no Nix signature: with RequireSigned it is refused before
// anything is read.
func (im *Importer) ImportFiles(ctx context.Context, req Request, next func() (FilePart, error)) (Result, error) {
	if !im.catalog.Ready() {
		return Result{}, ErrNotReady
	}
	if _, err := im.checkPolicy(req, nil); err != nil {
		return Result{}, err
	}
	if err := ValidName(req.Name); err != nil {
		return Result{}, err
	}
	if err := ValidRole(req.Role); err != nil {
		return Result{}, err
	}
	if req.Cmdline == "" {
		return Result{}, fmt.Errorf("%w: give the kernel command line (--cmdline); a kernel without init= rarely boots", ErrInvalid)
	}
	img := Image{Name: req.Name, Role: req.Role, Cmdline: req.Cmdline, ImportedBy: req.ImportedBy}
	for i := 0; ; i++ {
		p, err := next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return Result{}, err
		}
		if plainName(p.Name) != nil {
			p.Name = fmt.Sprintf("file%d", i)
		}
		f, err := im.put(ctx, p.Name, p.R)
		if err != nil {
			return Result{}, err
		}
		if i == 0 {
			img.Kernel = f
		} else {
			img.Initrds = append(img.Initrds, f)
		}
	}
	if img.Kernel.Digest.IsZero() || len(img.Initrds) == 0 {
		return Result{}, fmt.Errorf("%w: an image needs a kernel and at least one initrd", ErrInvalid)
	}
	return im.add(ctx, img)
}

// ImportDir imports a netboot directory on this machine, with the .narinfo
// lying in it if there is one: the same path an upload takes.
func (im *Importer) ImportDir(ctx context.Context, req Request, dir string) (Result, error) {
	narinfo, _, err := ReadNarInfo(dir)
	if err != nil {
		return Result{}, err
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(WriteNAR(pw, dir)) }()
	res, err := im.ImportNAR(ctx, req, narinfo, pr)
	pr.CloseWithError(errors.New("import ended")) // stops the writer if the import stopped early
	if err != nil {
		return res, fmt.Errorf("import %s: %w", dir, err)
	}
	return res, nil
}

// ReadNarInfo returns the raw .narinfo lying directly in dir, and its
// path; nil when there is none, an error when there are several or it does
// not parse.
func ReadNarInfo(dir string) ([]byte, string, error) {
	_, p, err := nixsig.FindNarInfo(dir)
	if err != nil || p == "" {
		return nil, "", err
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, "", err
	}
	return b, p, nil
}

// WriteNAR serialises dir as Nix does (nix-store --dump), leaving out
// *.narinfo files directly in it, as nixsig.NarHashPath does: this is what
// the .narinfo's NarHash covers. A symlink at dir itself (nix build's
// result) is followed.
func WriteNAR(w io.Writer, dir string) error {
	root, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return err
	}
	st, err := os.Stat(root)
	if err != nil {
		return err
	}
	if !st.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	keep := func(p string, t nar.NodeType) bool {
		return !(t == nar.TypeRegular && filepath.Dir(p) == root && strings.HasSuffix(p, ".narinfo"))
	}
	return nar.DumpPathFilter(w, root, keep)
}

// checkPolicy applies the trusted keys and --require-signed (the server's,
// or this request's) to the .narinfo that came, if any.
func (im *Importer) checkPolicy(req Request, ni *nixsig.NarInfo) (nixsig.Verified, error) {
	p := im.policy
	if req.RequireSigned && !p.RequireSigned {
		if p.Trusted.Len() == 0 {
			return nixsig.Verified{}, &nixsig.Error{Err: nixsig.ErrUntrustedKey,
				Detail: "the import asks for a signed image, but this mdc trusts no Nix key; start mdc serve with --nix-trusted-key name:base64"}
		}
		p.RequireSigned = true
	}
	return p.Check(ni)
}

// put stores one file, computing its CID from the same pass over the bytes.
func (im *Importer) put(ctx context.Context, name string, r io.Reader) (File, error) {
	h := newHandoff(8)
	type cidResult struct {
		ipfs IPFS
		err  error
	}
	done := make(chan cidResult, 1)
	go func() {
		ipfs, err := ComputeCID(ctx, h)
		h.stop(err) // a failed CID stops the Put
		done <- cidResult{ipfs, err}
	}()
	info, err := im.store.Put(ctx, io.TeeReader(r, h), blob.Digest{})
	h.close(err) // nil: the CID side sees EOF
	c := <-done
	if err != nil {
		return File{}, fmt.Errorf("store %s: %w", name, err)
	}
	if c.err != nil {
		return File{}, fmt.Errorf("CID of %s: %w", name, c.err)
	}
	im.log.Debug("blob stored", "file", name, "digest", info.Digest.String(), "size", info.Size, "cid", c.ipfs.CID)
	return File{Name: name, Digest: info.Digest, Size: info.Size, IPFS: &c.ipfs}, nil
}

func (im *Importer) add(ctx context.Context, img Image) (Result, error) {
	got, added, err := im.catalog.Add(ctx, img)
	if err != nil {
		return Result{}, err
	}
	if added {
		im.log.Info("image imported", "name", got.Name, "role", got.Role, "kernel", got.Kernel.Digest.String(),
			"signed", got.Nix != nil && got.Nix.Signed, "by", got.ImportedBy)
	}
	return Result{Image: got, Added: added}, nil
}

func nixRecord(ni *nixsig.NarInfo, v nixsig.Verified) *Nix {
	n := &Nix{StorePath: ni.StorePath, NarHash: ni.NarHashString(), NarSize: ni.NarSize,
		References: slices.Clone(ni.References), Signed: v.Signed, SignedBy: v.KeyName}
	for _, s := range ni.Sigs {
		n.Signatures = append(n.Signatures, s.String())
	}
	return n
}

func sigNames(ni *nixsig.NarInfo) []string {
	var n []string
	for _, s := range ni.Sigs {
		if !slices.Contains(n, s.KeyName) {
			n = append(n, s.KeyName)
		}
	}
	return n
}

// handoff passes copies of what is written to one reader through a short
// queue, so that the writer (the blob store hashing and writing) and the
// reader (the CID) run on two cores instead of taking turns, as they would
// through an io.Pipe.
type handoff struct {
	ch      chan []byte
	stopped chan struct{}
	once    sync.Once
	rerr    error // why the reader stopped
	werr    error // why the writer closed; nil: EOF
	cur     []byte
	buf     *[]byte // cur's backing array, back to the pool once read
	pool    sync.Pool
}

func newHandoff(depth int) *handoff {
	return &handoff{ch: make(chan []byte, depth), stopped: make(chan struct{})}
}

// Write queues a copy of p; it fails once the reader stopped.
func (h *handoff) Write(p []byte) (int, error) {
	bp, _ := h.pool.Get().(*[]byte)
	if bp == nil || cap(*bp) < len(p) {
		b := make([]byte, max(len(p), 1<<20))
		bp = &b
	}
	*bp = append((*bp)[:0], p...)
	select {
	case h.ch <- *bp:
		return len(p), nil
	case <-h.stopped:
		return 0, fmt.Errorf("CID: %w", h.rerr)
	}
}

// close ends the stream: the reader sees err, or io.EOF when err is nil.
func (h *handoff) close(err error) {
	h.werr = err
	close(h.ch)
}

func (h *handoff) Read(p []byte) (int, error) {
	for len(h.cur) == 0 {
		if h.buf != nil {
			h.pool.Put(h.buf)
			h.buf = nil
		}
		b, ok := <-h.ch
		if !ok {
			if h.werr != nil {
				return 0, h.werr
			}
			return 0, io.EOF
		}
		h.cur, h.buf = b, &b
	}
	n := copy(p, h.cur)
	h.cur = h.cur[n:]
	return n, nil
}

// stop is the reader's: writes fail with err from now on.
func (h *handoff) stop(err error) {
	h.once.Do(func() {
		if err == nil {
			err = errors.New("the CID was computed before the end of the data")
		}
		h.rerr = err
		close(h.stopped)
	})
}
