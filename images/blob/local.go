package blob

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// leftoverAge is how old an unlocked temp file must be before it counts as
// the leftover of a crashed writer (the age closes the short window between
// a writer creating its temp file and locking it).
const leftoverAge = time.Minute

// Local is the blob store in a local directory:
//
//	<dir>/sha256/ab/ab12…   blobs, mode 0444, named by their hex digest
//	<dir>/tmp/put-*         imports being written (locked while written)
//	<dir>/quarantine/…      blobs that failed verification, kept for a look
//
// A blob is verified (re-hashed) the first time it is opened and again
// whenever its file's identity (device, inode, size, mtime, ctime) changes;
// any write to the file changes mtime and ctime. Scrub re-hashes everything
// to catch bit rot, which changes none of them.
type Local struct {
	dir  string
	opts Options

	mu       sync.Mutex
	verified map[Digest]fileID
	inflight map[Digest]*verifyCall
}

var _ Store = (*Local)(nil)

// fileID is what changes when anyone writes to, truncates or replaces a file.
type fileID struct {
	dev, ino     uint64
	size         int64
	mtime, ctime int64 // ns
}

type verifyCall struct {
	done chan struct{}
	id   fileID
	err  error
}

// NewLocal opens (creating if needed) the blob directory dir and removes the
// leftovers of writers that crashed long enough ago.
func NewLocal(dir string, opts Options) (*Local, error) {
	if dir == "" {
		return nil, errors.New("blob store: empty directory")
	}
	for _, sub := range []string{"sha256", "tmp", "quarantine"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			return nil, fmt.Errorf("blob store: create %s: %w", filepath.Join(dir, sub), err)
		}
	}
	s := &Local{dir: dir, opts: opts.withDefaults(), verified: map[Digest]fileID{}, inflight: map[Digest]*verifyCall{}}
	if n, err := s.removeLeftovers(); err != nil {
		return nil, err
	} else if n > 0 {
		s.opts.Logger.Info("removed leftovers of interrupted blob imports", "count", n, "dir", s.tmpDir())
	}
	return s, nil
}

// Dir returns the store's directory.
func (s *Local) Dir() string { return s.dir }

func (s *Local) tmpDir() string { return filepath.Join(s.dir, "tmp") }

// Path returns where d's file is (or would be).
func (s *Local) Path(d Digest) string {
	h := d.Hex()
	return filepath.Join(s.dir, Algorithm, h[:2], h)
}

// Put implements Store: temp file, hash while writing, fsync, read-only,
// rename into place, fsync the directory.
func (s *Local) Put(ctx context.Context, r io.Reader, want Digest) (Info, error) {
	f, err := os.CreateTemp(s.tmpDir(), "put-*")
	if err != nil {
		s.opts.Metrics.put("error", 0)
		return Info{}, fmt.Errorf("blob import: create temp file: %w", err)
	}
	tmp := f.Name()
	done := false
	defer func() {
		if !done {
			f.Close()
			os.Remove(tmp)
		}
	}()
	// The lock tells removeLeftovers that a live process owns the file; the
	// kernel drops it when the process dies, however it dies.
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		s.opts.Metrics.put("error", 0)
		return Info{}, fmt.Errorf("blob import: lock %s: %w", tmp, err)
	}
	h := newHash()
	buf := make([]byte, 1<<20)
	n, err := io.CopyBuffer(io.MultiWriter(f, h), ctxReader{ctx, r}, buf)
	if err != nil {
		s.opts.Metrics.put("error", n)
		return Info{}, fmt.Errorf("blob import: copy after %d bytes: %w", n, err)
	}
	got := digestOf(h)
	if !want.IsZero() && got != want {
		s.opts.Metrics.put("mismatch", n)
		return Info{}, &MismatchError{Want: want, Got: got, Size: n}
	}
	if err := f.Sync(); err != nil {
		s.opts.Metrics.put("error", n)
		return Info{}, fmt.Errorf("blob import: fsync %s: %w", tmp, err)
	}
	if err := f.Chmod(0o444); err != nil {
		s.opts.Metrics.put("error", n)
		return Info{}, fmt.Errorf("blob import: chmod %s: %w", tmp, err)
	}
	final := s.Path(got)
	if err := s.mkdirShard(final); err != nil {
		s.opts.Metrics.put("error", n)
		return Info{}, err
	}
	if fi, err := os.Stat(final); err == nil {
		// Same content already stored (and verified when first served).
		s.opts.Metrics.put("existed", n)
		return Info{Digest: got, Size: fi.Size(), ModTime: fi.ModTime()}, nil
	}
	if err := os.Rename(tmp, final); err != nil {
		s.opts.Metrics.put("error", n)
		return Info{}, fmt.Errorf("blob import: rename into place: %w", err)
	}
	done = true
	defer f.Close()
	if err := syncDir(filepath.Dir(final)); err != nil {
		s.opts.Metrics.put("error", n)
		return Info{}, fmt.Errorf("blob import: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		return Info{}, fmt.Errorf("blob import: stat %s: %w", final, err)
	}
	// We hashed exactly these bytes: the file is verified as it is now.
	s.mu.Lock()
	s.verified[got] = idOf(fi)
	s.mu.Unlock()
	s.opts.Metrics.put("stored", n)
	return Info{Digest: got, Size: n, ModTime: fi.ModTime()}, nil
}

// mkdirShard creates sha256/ab/ and makes its directory entry durable.
func (s *Local) mkdirShard(final string) error {
	shard := filepath.Dir(final)
	err := os.Mkdir(shard, 0o755)
	if errors.Is(err, fs.ErrExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("blob import: create %s: %w", shard, err)
	}
	if err := syncDir(filepath.Dir(shard)); err != nil {
		return fmt.Errorf("blob import: %w", err)
	}
	return nil
}

// Open implements Store. The returned blob is the open file, verified.
func (s *Local) Open(ctx context.Context, d Digest) (Blob, error) {
	f, err := os.Open(s.Path(d))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("open %s: %w", d, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", d, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open %s: %w", d, err)
	}
	// Verify through this very descriptor: what we checked is what we send.
	if err := s.verify(ctx, d, f, idOf(fi)); err != nil {
		f.Close()
		return nil, err
	}
	return &localBlob{f: f, info: Info{Digest: d, Size: fi.Size(), ModTime: fi.ModTime()}}, nil
}

// verify makes sure f (identity id) hashes to d, re-hashing only when id is
// not the identity last verified. Concurrent opens of one blob share one
// hash run.
func (s *Local) verify(ctx context.Context, d Digest, f *os.File, id fileID) error {
	for {
		s.mu.Lock()
		if v, ok := s.verified[d]; ok && v == id {
			s.mu.Unlock()
			return nil
		}
		if c := s.inflight[d]; c != nil {
			s.mu.Unlock()
			select {
			case <-c.done:
			case <-ctx.Done():
				return ctx.Err()
			}
			if c.id == id && errors.Is(c.err, ErrCorrupt) {
				return c.err
			}
			continue // verified now, or the other run was cancelled: look again
		}
		c := &verifyCall{done: make(chan struct{}), id: id}
		s.inflight[d] = c
		s.mu.Unlock()

		c.err = s.check(ctx, d, f, id)

		s.mu.Lock()
		delete(s.inflight, d)
		if c.err == nil {
			s.verified[d] = id
		}
		s.mu.Unlock()
		close(c.done)
		return c.err
	}
}

// check hashes f; on a mismatch it quarantines the file and reports it.
func (s *Local) check(ctx context.Context, d Digest, f *os.File, id fileID) error {
	h := newHash()
	n, err := io.CopyBuffer(h, ctxReader{ctx, io.NewSectionReader(f, 0, 1<<62)}, make([]byte, 1<<20))
	s.opts.Metrics.verifiedBytes(BackendLocal, n)
	if err != nil {
		return fmt.Errorf("verify %s: read: %w", d, err)
	}
	got := digestOf(h)
	if got == d {
		return nil
	}
	s.mu.Lock()
	delete(s.verified, d)
	s.mu.Unlock()
	q, qerr := s.quarantine(d, id)
	c := Corruption{Digest: d, Got: got, Size: n, Backend: BackendLocal, Quarantine: q,
		Detail: fmt.Sprintf("content of %s hashes to %s", s.Path(d), got)}
	if qerr != nil {
		c.Detail += "; quarantine failed: " + qerr.Error()
	}
	s.opts.corrupt(ctx, c)
	return &CorruptError{c}
}

// quarantine moves d's file aside, unless it is no longer the file we
// checked (a good copy re-imported meanwhile stays).
func (s *Local) quarantine(d Digest, id fileID) (string, error) {
	path := s.Path(d)
	fi, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	if cur := idOf(fi); cur.dev != id.dev || cur.ino != id.ino {
		return "", errors.New("file was replaced while it was checked")
	}
	q := filepath.Join(s.dir, "quarantine", d.Hex()+"."+strconv.FormatInt(time.Now().UnixNano(), 10))
	if err := os.Rename(path, q); err != nil {
		return "", err
	}
	_ = syncDir(filepath.Dir(path))
	return q, nil
}

// Stat implements Store.
func (s *Local) Stat(ctx context.Context, d Digest) (Info, error) {
	fi, err := os.Stat(s.Path(d))
	if errors.Is(err, fs.ErrNotExist) {
		return Info{}, fmt.Errorf("stat %s: %w", d, ErrNotFound)
	}
	if err != nil {
		return Info{}, fmt.Errorf("stat %s: %w", d, err)
	}
	return Info{Digest: d, Size: fi.Size(), ModTime: fi.ModTime()}, nil
}

// Has implements Store.
func (s *Local) Has(ctx context.Context, d Digest) (bool, error) {
	_, err := s.Stat(ctx, d)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// Delete implements Store.
func (s *Local) Delete(ctx context.Context, d Digest) error {
	path := s.Path(d)
	err := os.Remove(path)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("delete %s: %w", d, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("delete %s: %w", d, err)
	}
	s.mu.Lock()
	delete(s.verified, d)
	s.mu.Unlock()
	return syncDir(filepath.Dir(path))
}

// Walk implements Store.
func (s *Local) Walk(ctx context.Context, fn func(Info) error) error {
	root := filepath.Join(s.dir, Algorithm)
	shards, err := os.ReadDir(root)
	if err != nil {
		return fmt.Errorf("walk %s: %w", root, err)
	}
	for _, shard := range shards {
		if !shard.IsDir() || len(shard.Name()) != 2 {
			continue
		}
		entries, err := os.ReadDir(filepath.Join(root, shard.Name()))
		if err != nil {
			return fmt.Errorf("walk %s: %w", root, err)
		}
		for _, e := range entries {
			if err := ctx.Err(); err != nil {
				return err
			}
			d, err := ParseHex(e.Name())
			if err != nil || e.Name()[:2] != shard.Name() || !e.Type().IsRegular() {
				continue // not ours
			}
			fi, err := e.Info()
			if errors.Is(err, fs.ErrNotExist) {
				continue // deleted meanwhile
			}
			if err != nil {
				return fmt.Errorf("walk %s: %w", root, err)
			}
			if err := fn(Info{Digest: d, Size: fi.Size(), ModTime: fi.ModTime()}); err != nil {
				return err
			}
		}
	}
	return nil
}

// Scrub implements Store: every blob is re-hashed, whatever the cache says.
func (s *Local) Scrub(ctx context.Context) (ScrubReport, error) {
	start := time.Now()
	var rep ScrubReport
	n, err := s.removeLeftovers()
	rep.Leftover = n
	if err != nil {
		return rep, err
	}
	var all []Digest
	if err := s.Walk(ctx, func(i Info) error { all = append(all, i.Digest); return nil }); err != nil {
		return rep, err
	}
	for _, d := range all {
		f, err := os.Open(s.Path(d))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return rep, fmt.Errorf("scrub %s: %w", d, err)
		}
		fi, err := f.Stat()
		if err != nil {
			f.Close()
			return rep, fmt.Errorf("scrub %s: %w", d, err)
		}
		s.mu.Lock()
		delete(s.verified, d) // force the re-hash
		s.mu.Unlock()
		err = s.verify(ctx, d, f, idOf(fi))
		f.Close()
		rep.Checked++
		rep.Bytes += fi.Size()
		var ce *CorruptError
		switch {
		case err == nil:
		case errors.As(err, &ce):
			rep.Corrupt = append(rep.Corrupt, ce.Corruption)
		default:
			return rep, fmt.Errorf("scrub: %w", err)
		}
	}
	rep.Duration = time.Since(start)
	s.opts.Logger.Info("blob scrub done", "checked", rep.Checked, "bytes", rep.Bytes,
		"corrupt", len(rep.Corrupt), "leftovers", rep.Leftover, "duration", rep.Duration)
	return rep, nil
}

// removeLeftovers deletes temp files no live writer holds.
func (s *Local) removeLeftovers() (int, error) {
	entries, err := os.ReadDir(s.tmpDir())
	if err != nil {
		return 0, fmt.Errorf("blob store: list %s: %w", s.tmpDir(), err)
	}
	n := 0
	for _, e := range entries {
		path := filepath.Join(s.tmpDir(), e.Name())
		fi, err := e.Info()
		if err != nil || time.Since(fi.ModTime()) < leftoverAge {
			continue
		}
		f, err := os.Open(path)
		if err != nil {
			continue
		}
		if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) == nil {
			if os.Remove(path) == nil {
				n++
			}
		}
		f.Close()
	}
	return n, nil
}

// Close implements Store.
func (s *Local) Close() error { return nil }

func idOf(fi fs.FileInfo) fileID {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		// Not Linux: fall back to what FileInfo has (no ctime, no inode).
		return fileID{size: fi.Size(), mtime: fi.ModTime().UnixNano()}
	}
	return fileID{dev: uint64(st.Dev), ino: st.Ino, size: st.Size,
		mtime: st.Mtim.Nano(), ctime: st.Ctim.Nano()}
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("fsync directory %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync directory %s: %w", dir, err)
	}
	return nil
}

// localBlob is an open blob file. SyscallConn lets net/http's sendfile path
// reach the descriptor through http.ServeContent's io.LimitedReader.
type localBlob struct {
	f    *os.File
	info Info
}

func (b *localBlob) Info() Info                                { return b.info }
func (b *localBlob) Read(p []byte) (int, error)                { return b.f.Read(p) }
func (b *localBlob) ReadAt(p []byte, off int64) (int, error)   { return b.f.ReadAt(p, off) }
func (b *localBlob) Seek(off int64, whence int) (int64, error) { return b.f.Seek(off, whence) }
func (b *localBlob) Close() error                              { return b.f.Close() }
func (b *localBlob) SyscallConn() (syscall.RawConn, error)     { return b.f.SyscallConn() }
