package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"mime/multipart"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/microdc/mdc/api"
	"github.com/microdc/mdc/images"
	"github.com/microdc/mdc/images/blob"
	"github.com/microdc/mdc/images/nixsig"
	"github.com/microdc/mdc/machine"
)

// imageFlags are serve's settings for blobs, the catalog and signatures.
type imageFlags struct {
	backend       string
	rados         blob.RADOSConfig
	trustedKeys   listFlag
	requireSigned bool

	policy nixsig.Policy // parsed by validate
}

func (f *imageFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.backend, "blob-store", blob.BackendLocal, "where blobs live: local (<data-dir>/blobs) or rados (a Ceph pool several mdc share; needs a -tags ceph build)")
	fs.StringVar(&f.rados.Pool, "rados-pool", "", "--blob-store rados: the pool")
	fs.StringVar(&f.rados.Namespace, "rados-namespace", "mdc-blobs", "--blob-store rados: the RADOS namespace in the pool")
	fs.StringVar(&f.rados.User, "rados-user", "admin", "--blob-store rados: the cephx user, without client.")
	fs.StringVar(&f.rados.ConfFile, "rados-conf", "", "--blob-store rados: ceph.conf (default $CEPH_CONF, then /etc/ceph/ceph.conf)")
	fs.StringVar(&f.rados.Keyring, "rados-keyring", "", "--blob-store rados: the keyring file (default: what ceph.conf says)")
	fs.Var(&f.trustedKeys, "nix-trusted-key", "a trusted Nix signing key, name:base64 as in a .pub file (repeat, or separate with commas)")
	fs.BoolVar(&f.requireSigned, "require-signed", false, "refuse images without a valid signature by a trusted Nix key")
}

func (f *imageFlags) validate(dataDir string) error {
	cfg := f.blobConfig(dataDir)
	if err := cfg.Validate(); err != nil {
		return usagef("--blob-store: %v", err)
	}
	p, err := nixsig.NewPolicy(f.trustedKeys, f.requireSigned)
	if err != nil {
		return usagef("--nix-trusted-key: %v", err)
	}
	f.policy = p
	return nil
}

func (f *imageFlags) blobConfig(dataDir string) blob.Config {
	return blob.Config{Backend: f.backend, Dir: filepath.Join(dataDir, "blobs"), RADOS: f.rados}
}

// imageService is the blob store, the catalog and the importer, as the
// API sees them.
type imageService struct {
	*images.Catalog
	*images.Importer
	store   blob.Store
	metrics *blob.Metrics
	log     *slog.Logger
}

// blobHandler serves /blobs/sha256/{hex}; opts add telemetry (blob.OnServed).
func (s *imageService) blobHandler(opts ...blob.HandlerOption) http.Handler {
	return blob.Handler(s.store, s.log, s.metrics, opts...)
}

// openImages builds the blob store and the image catalog; Run the catalog.
func (f *imageFlags) open(ctx context.Context, dataDir string, nc *nats.Conn, replicas int,
	reg prometheus.Registerer, log *slog.Logger, machines func() []machine.Machine) (*imageService, error) {
	bm := blob.NewMetrics(reg)
	store, err := blob.New(ctx, f.blobConfig(dataDir), blob.Options{Logger: log.With("component", "blobs"), Metrics: bm})
	if err != nil {
		return nil, err
	}
	cat, err := images.OpenCatalog(ctx, nc, images.CatalogConfig{
		Replicas: replicas, Source: "mdc/api", InUse: images.MachinesUsing(machines), Logger: log,
	})
	if err != nil {
		store.Close()
		return nil, err
	}
	log.Info("image store", "backend", cmp.Or(f.backend, blob.BackendLocal), "trusted_nix_keys", f.policy.Trusted.Names(),
		"require_signed", f.policy.RequireSigned)
	return &imageService{
		Catalog:  cat,
		Importer: images.NewImporter(store, cat, f.policy, log),
		store:    store,
		metrics:  bm,
		log:      log,
	}, nil
}

// listFlag collects a repeatable flag whose values may also be comma lists.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(v string) error {
	for _, s := range strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == ' ' || r == '\n' }) {
		*l = append(*l, s)
	}
	return nil
}

var imageSubcommands = []string{"import", "list", "show", "delete"}

const imagesHelp = `Usage: mdc images import|list|show|delete …

  import DIR [--name N] [--role R]     a NixOS netboot build output (nix build .#netboot-<role>):
                                       bzImage, initrd, netboot.ipxe, and its .narinfo if one lies there
  import --kernel F --initrd F [--initrd F…] --cmdline S --name N --role R
                                       explicit files (unsigned)
         [--require-signed]            refuse unless a trusted Nix key signed it
  list [--role R]                      the catalog
  show NAME                            one image: files, digests, CIDs, Nix metadata, users
  delete NAME [--reason TEXT]          remove it from the catalog (refused while machines use it)

`

func imagesCmd(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, imagesHelp)
		return usagef("images: which subcommand? (import, list, show, delete)")
	}
	args = commandFirst(args, imageSubcommands)
	sub := args[0]
	var req images.Request
	var kernel, reason, role string
	var initrds listFlag
	c, pos, err := newClientCmd("images "+sub, imagesHelp, args[1:], stderr, getenv, func(fs *flag.FlagSet) {
		switch sub {
		case "import":
			fs.StringVar(&req.Name, "name", "", "the image's name (default: the directory's nix-support/mdc-image.json)")
			fs.StringVar(&req.Role, "role", "", "the role it boots (default: the directory's nix-support/mdc-image.json)")
			fs.StringVar(&req.Cmdline, "cmdline", "", "kernel command line (with --kernel)")
			fs.StringVar(&kernel, "kernel", "", "kernel file (instead of DIR)")
			fs.Var(&initrds, "initrd", "initrd file, repeat for several (with --kernel)")
			fs.BoolVar(&req.RequireSigned, "require-signed", false, "refuse the import unless a trusted Nix key signed it")
		case "list":
			fs.StringVar(&role, "role", "", "only images of this role")
		case "delete":
			fs.StringVar(&reason, "reason", "", "why, for the record")
		}
	})
	if err != nil {
		return err
	}
	switch sub {
	case "import":
		return importImage(ctx, c, req, pos, kernel, initrds, stdout, stderr)
	case "list":
		if len(pos) != 0 {
			return usagef("images list takes no arguments, got %q", pos)
		}
		path := "/api/v1/images"
		if role != "" {
			path += "?role=" + url.QueryEscape(role)
		}
		var list api.ImageList
		if err := c.call(ctx, "GET", path, nil, &list); err != nil {
			return err
		}
		if c.output == "json" {
			return printJSON(stdout, list)
		}
		return printImages(stdout, list.Images)
	case "show":
		if len(pos) != 1 {
			return usagef("images show takes one image name, got %d arguments", len(pos))
		}
		var d api.ImageDetail
		if err := c.call(ctx, "GET", "/api/v1/images/"+url.PathEscape(pos[0]), nil, &d); err != nil {
			return err
		}
		if c.output == "json" {
			return printJSON(stdout, d)
		}
		return printImage(stdout, d)
	case "delete":
		if len(pos) != 1 {
			return usagef("images delete takes one image name, got %d arguments", len(pos))
		}
		path := "/api/v1/images/" + url.PathEscape(pos[0])
		if reason != "" {
			path += "?reason=" + url.QueryEscape(reason)
		}
		var res api.DeleteResult
		if err := c.call(ctx, "DELETE", path, nil, &res); err != nil {
			return err
		}
		if c.output == "json" {
			return printJSON(stdout, res)
		}
		fmt.Fprintf(stdout, "deleted %s (role %s); its blobs stay in the store\n", res.Image.Name, res.Image.Role)
		return nil
	}
	return usagef("images: unknown subcommand %q (import, list, show, delete)", sub)
}

func importImage(ctx context.Context, c *client, req images.Request, pos []string, kernel string, initrds []string,
	stdout, stderr io.Writer) error {
	var what string // for messages: the directory or the kernel file
	var write func(*multipart.Writer) error
	var total int64
	switch {
	case kernel != "":
		if len(pos) != 0 {
			return usagef("images import: give a directory or --kernel, not both")
		}
		if len(initrds) == 0 || req.Cmdline == "" || req.Name == "" || req.Role == "" {
			return usagef("images import --kernel needs --initrd, --cmdline, --name and --role")
		}
		for _, p := range append([]string{kernel}, initrds...) {
			if st, err := os.Stat(p); err != nil || !st.Mode().IsRegular() {
				return usagef("images import: %s is not a readable file", p)
			}
		}
		what = kernel
		total = images.UploadSize(append([]string{kernel}, initrds...)...)
		write = func(mw *multipart.Writer) error { return images.WriteFilesUpload(mw, req, kernel, initrds) }
	case len(pos) == 1:
		if len(initrds) > 0 || req.Cmdline != "" {
			return usagef("images import DIR: --initrd and --cmdline come from the directory's netboot.ipxe")
		}
		dir := pos[0]
		if st, err := os.Stat(dir); err != nil || !st.IsDir() {
			return usagef("images import: %s is not a directory (a NixOS netboot output: bzImage, initrd, netboot.ipxe)", dir)
		}
		what = dir
		total = images.UploadSize(dir)
		write = func(mw *multipart.Writer) error { return images.WriteDirUpload(mw, req, dir) }
	default:
		return usagef("images import takes one directory, or --kernel/--initrd/--cmdline/--name/--role")
	}
	req.ImportedBy = whoami()

	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	var body io.Reader = pr
	bar := newProgress(stderr, total, "import "+filepath.Base(what))
	if bar != nil {
		body = io.TeeReader(pr, bar)
	}
	var wg sync.WaitGroup
	var writeErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		err := write(mw)
		if err == nil {
			err = mw.Close()
		}
		writeErr = err
		pw.CloseWithError(err)
	}()
	hreq, err := http.NewRequestWithContext(ctx, "POST", c.server+"/api/v1/images", body)
	if err != nil {
		return err
	}
	hreq.Header.Set("Content-Type", mw.FormDataContentType())
	if c.token != "" {
		hreq.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(hreq)
	pr.CloseWithError(errors.New("upload ended")) // stops the writer if the server stopped reading
	wg.Wait()
	bar.done()
	if err != nil {
		if writeErr != nil && !strings.Contains(writeErr.Error(), "upload ended") {
			return fmt.Errorf("import %s: %w", what, writeErr)
		}
		return fmt.Errorf("import %s: cannot reach mdc at %s (is mdc serve running? --server): %w", what, c.server, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("import %s: reading the answer: %w", what, err)
	}
	if resp.StatusCode/100 != 2 {
		var e struct{ Error api.Error }
		if json.Unmarshal(b, &e) == nil && e.Error.Code != "" {
			return fmt.Errorf("import %s: %w", what, &apiError{status: resp.StatusCode, body: e.Error})
		}
		return fmt.Errorf("import %s: HTTP %d: %s", what, resp.StatusCode, strings.TrimSpace(string(b)))
	}
	if writeErr != nil {
		return fmt.Errorf("import %s: %w", what, writeErr)
	}
	var res api.ImportResult
	if err := json.Unmarshal(b, &res); err != nil {
		return fmt.Errorf("import %s: unexpected answer: %w", what, err)
	}
	if c.output == "json" {
		return printJSON(stdout, res)
	}
	img := res.Image
	verb := "imported"
	if !res.Added {
		verb = "unchanged (already in the catalog):"
	}
	signed := "unsigned"
	if img.Nix != nil && img.Nix.Signed {
		signed = "signed by " + img.Nix.SignedBy
	}
	fmt.Fprintf(stdout, "%s %s (role %s, %s): kernel %s, %d initrd(s), %s\n", verb, img.Name, img.Role, signed,
		img.Kernel.Digest, len(img.Initrds), size(fileBytes(img)))
	return nil
}

func whoami() string {
	u := os.Getenv("USER")
	if u == "" {
		u = fmt.Sprintf("uid %d", os.Getuid())
	}
	if h, err := os.Hostname(); err == nil {
		return u + "@" + h
	}
	return u
}

func fileBytes(img images.Image) int64 {
	var n int64
	for _, f := range img.Files() {
		n += f.Size
	}
	return n
}

func size(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

func printImages(w io.Writer, list []images.Image) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tROLE\tKERNEL\tINITRDS\tSIZE\tSIGNED\tCREATED")
	for _, img := range list {
		signed := "no"
		if img.Nix != nil && img.Nix.Signed {
			signed = img.Nix.SignedBy
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\n", img.Name, img.Role, shortDigest(img.Kernel.Digest), len(img.Initrds),
			size(fileBytes(img)), signed, ago(img.Created))
	}
	return tw.Flush()
}

func shortDigest(d blob.Digest) string { return "sha256:" + d.Hex()[:12] }

func printImage(w io.Writer, d api.ImageDetail) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	row := func(k, v string) {
		if v != "" {
			fmt.Fprintf(tw, "%s:\t%s\n", k, v)
		}
	}
	row("Name", d.Name)
	row("Role", d.Role)
	if d.Current {
		row("Current", "yes: machines of role "+d.Role+" boot it")
	} else {
		row("Current", "no (a newer "+d.Role+" image was imported)")
	}
	if len(d.UsedBy) > 0 {
		row("Used by", strings.Join(d.UsedBy, ", "))
	}
	row("Cmdline", d.Cmdline)
	row("Created", d.Created.Local().Format(time.DateTime)+" ("+ago(d.Created)+")")
	row("Imported by", d.ImportedBy)
	if n := d.Nix; n != nil {
		row("Store path", n.StorePath)
		row("NarHash", fmt.Sprintf("%s (%d bytes)", n.NarHash, n.NarSize))
		if len(n.References) > 0 {
			row("References", strings.Join(n.References, " "))
		}
		if n.Signed {
			row("Signed", "yes, by "+n.SignedBy+" (trusted)")
		} else {
			row("Signed", "no trusted signature")
		}
		for _, s := range n.Signatures {
			name, _, _ := strings.Cut(s, ":")
			row("Signature", name)
		}
	} else {
		row("Signed", "no (no .narinfo came with it)")
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w, "\nFiles:")
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for i, f := range d.Files() {
		kind := "initrd"
		if i == 0 {
			kind = "kernel"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", kind, f.Name, f.Digest, size(f.Size))
		if f.IPFS != nil {
			leaves := "unixfs leaves"
			if f.IPFS.RawLeaves {
				leaves = "raw leaves"
			}
			fmt.Fprintf(tw, "  \t\tcid %s\t(cidv1, %s, %s, %d links, %s)\n", f.IPFS.CID, f.IPFS.Chunker, f.IPFS.Layout, f.IPFS.MaxLinks, leaves)
		}
		fmt.Fprintf(tw, "  \t\t%s\t\n", f.Digest.Path())
	}
	return tw.Flush()
}

// progress draws a progress bar on a terminal; nil (it does nothing)
// when w is not a terminal or the upload is small.
type progress struct {
	w     io.Writer
	label string
	total int64
	start time.Time

	mu   sync.Mutex
	n    int64
	last time.Time
}

const progressMin = 16 << 20

func newProgress(w io.Writer, total int64, label string) *progress {
	f, ok := w.(*os.File)
	if !ok || total < progressMin || !isTerminal(f) {
		return nil
	}
	return &progress{w: w, label: label, total: total, start: time.Now()}
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

func (p *progress) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.n += int64(len(b))
	if now := time.Now(); now.Sub(p.last) >= 100*time.Millisecond {
		p.last = now
		fmt.Fprint(p.w, "\r"+p.line(now))
	}
	return len(b), nil
}

func (p *progress) done() {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprint(p.w, "\r"+p.line(time.Now())+"\n")
}

// line renders "label [#####.....]  45%  135.0 MiB / 300.0 MiB  210.3 MiB/s".
func (p *progress) line(now time.Time) string {
	const width = 30
	frac := float64(p.n) / float64(p.total)
	frac = min(frac, 1)
	filled := int(frac * width)
	rate := float64(p.n) / max(now.Sub(p.start).Seconds(), 1e-3)
	return fmt.Sprintf("%s [%s%s] %3d%%  %s / %s  %s/s ", p.label, strings.Repeat("#", filled), strings.Repeat(".", width-filled),
		int(frac*100), size(p.n), size(p.total), size(int64(rate)))
}
