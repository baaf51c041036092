package blob

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"
)

// Errors callers check with errors.Is.
var (
	// ErrNotFound: no blob with that digest in the store.
	ErrNotFound = errors.New("blob not found")
	// ErrDigestMismatch: Put was told to expect one digest and read content
	// with another; nothing was stored. The error is a *MismatchError.
	ErrDigestMismatch = errors.New("content does not match the expected digest")
	// ErrCorrupt: a stored blob no longer matches its digest. It has been
	// quarantined and reported; re-import it.
	ErrCorrupt = errors.New("stored blob is corrupt")
	// ErrNotCompiled: the RADOS backend was asked for in a binary built
	// without the `ceph` tag.
	ErrNotCompiled = errors.New("the RADOS blob backend is not compiled into this binary; rebuild with -tags ceph,pacific")
)

// MismatchError says what Put expected and what it read.
type MismatchError struct {
	Want, Got Digest
	Size      int64
}

func (e *MismatchError) Error() string {
	return fmt.Sprintf("blob import: read %d bytes hashing to %s, expected %s; check the source file", e.Size, e.Got, e.Want)
}

func (e *MismatchError) Unwrap() error { return ErrDigestMismatch }

// Info describes a stored blob.
type Info struct {
	Digest  Digest
	Size    int64
	ModTime time.Time // when it was stored
}

// Blob is an open, verified blob. Read and Seek move through its content;
// Close releases it. A local blob also exposes its file descriptor (it
// implements syscall.Conn) so that net/http sends it with sendfile(2).
type Blob interface {
	io.ReadSeekCloser
	Info() Info
}

// Store is a content-addressed blob store. Blobs are never changed once
// stored: a digest names exactly one content, forever.
type Store interface {
	// Put stores the content of r, hashing it while it is written, and
	// returns its Info. If want is not zero and the content hashes to
	// something else, Put stores nothing and returns a *MismatchError.
	// Storing content that is already there succeeds and changes nothing.
	// A partly written blob is never visible, not even after a crash.
	Put(ctx context.Context, r io.Reader, want Digest) (Info, error)
	// Open returns the verified content of d, ErrNotFound, or ErrCorrupt
	// (after quarantining and reporting the bad copy).
	Open(ctx context.Context, d Digest) (Blob, error)
	// Stat returns d's metadata without verifying its content.
	Stat(ctx context.Context, d Digest) (Info, error)
	// Has reports whether d is stored.
	Has(ctx context.Context, d Digest) (bool, error)
	// Delete removes d; ErrNotFound if it is not there.
	Delete(ctx context.Context, d Digest) error
	// Walk calls fn for every stored blob, in no particular order, until fn
	// returns an error (which Walk returns).
	Walk(ctx context.Context, fn func(Info) error) error
	// Scrub re-hashes every blob, quarantines and reports those that no
	// longer match, and removes what crashed writers left behind.
	Scrub(ctx context.Context) (ScrubReport, error)
	// Close releases the backend's resources.
	Close() error
}

// ScrubReport is what one Scrub found.
type ScrubReport struct {
	Checked  int          // blobs re-hashed
	Bytes    int64        // bytes re-hashed
	Corrupt  []Corruption // blobs that failed and were quarantined
	Leftover int          // leftovers of interrupted writes removed
	Duration time.Duration
}

// Corruption describes a stored blob that failed verification.
type Corruption struct {
	Digest     Digest // the name the blob was stored under
	Got        Digest // what its content hashes to now; zero when unknown (e.g. a chunk failed)
	Size       int64
	Backend    string // "local" or "rados"
	Quarantine string // where the bad copy was moved; empty if it could not be moved
	Detail     string
}

// CorruptError is the error for a blob that failed verification.
type CorruptError struct{ Corruption }

func (e *CorruptError) Error() string {
	msg := fmt.Sprintf("%v: %s (%s backend): %s", ErrCorrupt, e.Digest, e.Backend, e.Detail)
	if e.Quarantine != "" {
		msg += "; moved to " + e.Quarantine
	}
	return msg + "; re-import it"
}

func (e *CorruptError) Unwrap() error { return ErrCorrupt }

// Reporter hears about corrupt blobs. mdc turns each into an event; it is
// called after the blob was quarantined, from the goroutine that found it.
type Reporter interface {
	BlobCorrupt(ctx context.Context, c Corruption)
}

// ReporterFunc adapts a function to Reporter.
type ReporterFunc func(ctx context.Context, c Corruption)

// BlobCorrupt calls f.
func (f ReporterFunc) BlobCorrupt(ctx context.Context, c Corruption) { f(ctx, c) }

// Options are what both backends share. The zero value works: logs are
// discarded, nothing is counted, corruption is only logged.
type Options struct {
	Logger   *slog.Logger
	Metrics  *Metrics
	Reporter Reporter
}

func (o Options) withDefaults() Options {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Reporter == nil {
		o.Reporter = ReporterFunc(func(context.Context, Corruption) {})
	}
	return o
}

// corrupt quarantines nothing itself: the backend has done that. It logs,
// counts and reports c.
func (o Options) corrupt(ctx context.Context, c Corruption) {
	o.Logger.Error("blob failed verification; quarantined, will not be served",
		"digest", c.Digest.String(), "got", gotString(c.Got), "size", c.Size,
		"backend", c.Backend, "quarantine", c.Quarantine, "detail", c.Detail)
	o.Metrics.corrupted(c.Backend)
	o.Reporter.BlobCorrupt(ctx, c)
}

func gotString(d Digest) string {
	if d.IsZero() {
		return "unknown"
	}
	return d.String()
}

// Backend names accepted in Config.Backend.
const (
	BackendLocal = "local"
	BackendRADOS = "rados"
)

// Config chooses and configures a backend (mdc's config file and flags fill it).
type Config struct {
	Backend string      // "local" (the default) or "rados"
	Dir     string      // local: the blob directory, normally <data-dir>/blobs
	RADOS   RADOSConfig // rados: where the shared pool is
}

// RADOSConfig says how to reach the Ceph pool that holds shared blobs.
type RADOSConfig struct {
	Pool      string        // required
	Namespace string        // RADOS namespace inside the pool; default "mdc-blobs"
	User      string        // cephx user without "client."; default "admin"
	ConfFile  string        // ceph.conf; default $CEPH_CONF, then /etc/ceph/ceph.conf
	Keyring   string        // keyring file; default: what ceph.conf says
	ChunkSize int           // bytes per data object; default 4 MiB
	Timeout   time.Duration // mon and OSD operation timeout; default 30 s
}

// Validate reports a config that cannot work, before anything starts.
func (c Config) Validate() error {
	switch c.Backend {
	case "", BackendLocal:
		if c.Dir == "" {
			return errors.New("blob store: local backend needs a directory (--data-dir)")
		}
	case BackendRADOS:
		if c.RADOS.Pool == "" {
			return errors.New("blob store: rados backend needs a pool name")
		}
		if c.RADOS.ChunkSize < 0 || c.RADOS.ChunkSize > 64<<20 {
			return fmt.Errorf("blob store: rados chunk size %d out of range (1 B to 64 MiB)", c.RADOS.ChunkSize)
		}
	default:
		return fmt.Errorf("blob store: unknown backend %q, want %q or %q", c.Backend, BackendLocal, BackendRADOS)
	}
	return nil
}

// New opens the backend cfg chooses.
func New(ctx context.Context, cfg Config, opts Options) (Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Backend == BackendRADOS {
		return NewRADOS(ctx, cfg.RADOS, opts)
	}
	return NewLocal(cfg.Dir, opts)
}

// ctxReader stops a long copy when ctx is cancelled.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
