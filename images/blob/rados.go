//go:build ceph

package blob

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ceph/go-ceph/rados"
)

// RADOS object names inside the store's namespace.
const (
	radosHeadPrefix       = Algorithm + "/" // sha256/<hex>: the head, visible blob
	radosDataPrefix       = "data/"         // data/<put id>/<chunk index>
	radosQuarantinePrefix = "quarantine/"   // quarantine/<hex>.<unix ns>: heads of corrupt blobs
)

// RADOS is the blob store in a Ceph RADOS pool, shared by several mdc
// instances. A blob is a set of data objects of ChunkSize bytes (a RADOS
// object is limited to 128 MiB, an initrd may not be) plus a small head
// object named by the digest, created in one exclusive operation after every
// chunk is written and the whole content hashed: a crashed import leaves
// only unnamed data objects, which Scrub removes. The head lists the SHA-256
// of every chunk; reads verify each chunk before releasing any of its bytes.
type RADOS struct {
	conn  *rados.Conn
	ioctx *rados.IOContext
	chunk int
	opts  Options
	pool  sync.Pool // chunk buffers
}

var _ Store = (*RADOS)(nil)

// radosHead is the JSON content of a head object.
type radosHead struct {
	Version   int       `json:"v"`
	Digest    Digest    `json:"digest"`
	Size      int64     `json:"size"`
	ChunkSize int64     `json:"chunk_size"`
	Data      string    `json:"data"` // the put id naming the data objects
	Chunks    []Digest  `json:"chunks"`
	Created   time.Time `json:"created"`
}

// NewRADOS connects to the pool cfg names.
func NewRADOS(ctx context.Context, cfg RADOSConfig, opts Options) (Store, error) {
	if cfg.Pool == "" {
		return nil, errors.New("blob store: rados backend needs a pool name")
	}
	if cfg.Namespace == "" {
		cfg.Namespace = "mdc-blobs"
	}
	if cfg.User == "" {
		cfg.User = "admin"
	}
	if cfg.ChunkSize == 0 {
		cfg.ChunkSize = 4 << 20
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 30 * time.Second
	}
	conn, err := rados.NewConnWithUser(cfg.User)
	if err != nil {
		return nil, fmt.Errorf("blob store: rados: %w", err)
	}
	conf := cfg.ConfFile
	if conf == "" {
		conf = os.Getenv("CEPH_CONF")
	}
	if conf != "" {
		err = conn.ReadConfigFile(conf)
	} else {
		err = conn.ReadDefaultConfigFile()
	}
	if err != nil {
		return nil, fmt.Errorf("blob store: rados: read ceph config %q: %w", conf, err)
	}
	secs := strconv.Itoa(max(1, int(cfg.Timeout.Seconds())))
	opt := map[string]string{"rados_mon_op_timeout": secs, "rados_osd_op_timeout": secs, "client_mount_timeout": secs}
	if cfg.Keyring != "" {
		opt["keyring"] = cfg.Keyring
	}
	for k, v := range opt {
		if err := conn.SetConfigOption(k, v); err != nil {
			return nil, fmt.Errorf("blob store: rados: set %s: %w", k, err)
		}
	}
	if err := conn.Connect(); err != nil {
		return nil, fmt.Errorf("blob store: rados: connect as client.%s with %q: %w; check the mon addresses and keyring", cfg.User, conf, err)
	}
	ioctx, err := conn.OpenIOContext(cfg.Pool)
	if err != nil {
		conn.Shutdown()
		return nil, fmt.Errorf("blob store: rados: open pool %q: %w; create it or fix the pool name", cfg.Pool, err)
	}
	ioctx.SetNamespace(cfg.Namespace)
	s := &RADOS{conn: conn, ioctx: ioctx, chunk: cfg.ChunkSize, opts: opts.withDefaults()}
	s.pool.New = func() any { b := make([]byte, s.chunk); return &b }
	return s, nil
}

func headOID(d Digest) string         { return radosHeadPrefix + d.Hex() }
func dataOID(id string, i int) string { return radosDataPrefix + id + "/" + strconv.Itoa(i) }
func newPutID() string                { var b [12]byte; rand.Read(b[:]); return hex.EncodeToString(b[:]) }
func (s *RADOS) buf() *[]byte         { return s.pool.Get().(*[]byte) }
func (s *RADOS) putBuf(b *[]byte)     { s.pool.Put(b) }
func (s *RADOS) deleteData(id string, n int) {
	for i := 0; i < n; i++ {
		_ = s.ioctx.Delete(dataOID(id, i))
	}
}

// Put implements Store.
func (s *RADOS) Put(ctx context.Context, r io.Reader, want Digest) (Info, error) {
	id := newPutID()
	bp := s.buf()
	defer s.putBuf(bp)
	buf := *bp
	whole := newHash()
	var chunks []Digest
	var size int64
	fail := func(result string, err error) (Info, error) {
		s.deleteData(id, len(chunks))
		s.opts.Metrics.put(result, size)
		return Info{}, err
	}
	for {
		n, err := io.ReadFull(ctxReader{ctx, r}, buf)
		if n > 0 {
			whole.Write(buf[:n])
			// Never WriteFull an empty slice (go-ceph panics): n > 0 here.
			if werr := s.ioctx.WriteFull(dataOID(id, len(chunks)), buf[:n]); werr != nil {
				return fail("error", fmt.Errorf("blob import: rados write chunk %d: %w", len(chunks), werr))
			}
			chunks = append(chunks, Sum(buf[:n]))
			size += int64(n)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			return fail("error", fmt.Errorf("blob import: copy after %d bytes: %w", size, err))
		}
	}
	got := digestOf(whole)
	if !want.IsZero() && got != want {
		return fail("mismatch", &MismatchError{Want: want, Got: got, Size: size})
	}
	h := radosHead{Version: 1, Digest: got, Size: size, ChunkSize: int64(s.chunk), Data: id, Chunks: chunks, Created: time.Now().UTC()}
	js, err := json.Marshal(h)
	if err != nil {
		return fail("error", err)
	}
	// One operation creates the head with its content: the blob appears
	// whole or not at all, and of two importers exactly one wins.
	op := rados.CreateWriteOp()
	defer op.Release()
	op.Create(rados.CreateExclusive)
	op.WriteFull(js)
	err = op.Operate(s.ioctx, headOID(got), rados.OperationNoFlag)
	if errors.Is(err, rados.ErrObjectExists) {
		s.deleteData(id, len(chunks))
		s.opts.Metrics.put("existed", size)
		return s.Stat(ctx, got)
	}
	if err != nil {
		return fail("error", fmt.Errorf("blob import: rados create head %s: %w", headOID(got), err))
	}
	s.opts.Metrics.put("stored", size)
	return Info{Digest: got, Size: size, ModTime: h.Created}, nil
}

// readHead reads and checks d's head object.
func (s *RADOS) readHead(ctx context.Context, d Digest) (radosHead, []byte, error) {
	oid := headOID(d)
	st, err := s.ioctx.Stat(oid)
	if errors.Is(err, rados.ErrNotFound) {
		return radosHead{}, nil, fmt.Errorf("open %s: %w", d, ErrNotFound)
	}
	if err != nil {
		return radosHead{}, nil, fmt.Errorf("open %s: rados stat: %w", d, err)
	}
	raw := make([]byte, st.Size)
	if len(raw) > 0 {
		n, err := s.ioctx.Read(oid, raw, 0)
		if errors.Is(err, rados.ErrNotFound) {
			return radosHead{}, nil, fmt.Errorf("open %s: %w", d, ErrNotFound)
		}
		if err != nil {
			return radosHead{}, nil, fmt.Errorf("open %s: rados read head: %w", d, err)
		}
		raw = raw[:n]
	}
	var h radosHead
	err = json.Unmarshal(raw, &h)
	if err == nil {
		err = h.check(d)
	}
	if err != nil {
		return radosHead{}, raw, s.corrupt(ctx, d, raw, Digest{}, h.Size, "head object: "+err.Error())
	}
	return h, raw, nil
}

func (h radosHead) check(d Digest) error {
	switch {
	case h.Version != 1:
		return fmt.Errorf("version %d, want 1", h.Version)
	case h.Digest != d:
		return fmt.Errorf("names %s", h.Digest)
	case h.ChunkSize <= 0 || h.Size < 0 || h.Data == "":
		return fmt.Errorf("chunk size %d, size %d, data %q", h.ChunkSize, h.Size, h.Data)
	case int64(len(h.Chunks)) != (h.Size+h.ChunkSize-1)/h.ChunkSize:
		return fmt.Errorf("%d chunks for %d bytes of %d", len(h.Chunks), h.Size, h.ChunkSize)
	}
	return nil
}

// corrupt quarantines d's head (raw, if read), reports and returns the error.
func (s *RADOS) corrupt(ctx context.Context, d Digest, raw []byte, got Digest, size int64, detail string) error {
	c := Corruption{Digest: d, Got: got, Size: size, Backend: BackendRADOS, Detail: detail}
	q := radosQuarantinePrefix + d.Hex() + "." + strconv.FormatInt(time.Now().UnixNano(), 10)
	var err error
	if len(raw) > 0 {
		err = s.ioctx.WriteFull(q, raw)
	} else {
		err = s.ioctx.Create(q, rados.CreateExclusive)
	}
	if err == nil {
		err = s.ioctx.Delete(headOID(d))
	}
	if err == nil || errors.Is(err, rados.ErrNotFound) {
		c.Quarantine = q
	} else {
		c.Detail += "; quarantine failed: " + err.Error()
	}
	s.opts.corrupt(ctx, c)
	return &CorruptError{c}
}

// Open implements Store. Chunks are verified as they are read.
func (s *RADOS) Open(ctx context.Context, d Digest) (Blob, error) {
	h, raw, err := s.readHead(ctx, d)
	if err != nil {
		return nil, err
	}
	return &radosBlob{s: s, ctx: ctx, h: h, raw: raw, cur: -1}, nil
}

// Stat implements Store.
func (s *RADOS) Stat(ctx context.Context, d Digest) (Info, error) {
	h, _, err := s.readHead(ctx, d)
	if err != nil {
		return Info{}, err
	}
	return Info{Digest: d, Size: h.Size, ModTime: h.Created}, nil
}

// Has implements Store.
func (s *RADOS) Has(ctx context.Context, d Digest) (bool, error) {
	_, err := s.ioctx.Stat(headOID(d))
	if errors.Is(err, rados.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("has %s: rados stat: %w", d, err)
	}
	return true, nil
}

// Delete implements Store: the head goes first, so the blob disappears at
// once; data objects a crash leaves behind are removed by Scrub.
func (s *RADOS) Delete(ctx context.Context, d Digest) error {
	h, _, err := s.readHead(ctx, d)
	if err != nil {
		return err
	}
	if err := s.ioctx.Delete(headOID(d)); errors.Is(err, rados.ErrNotFound) {
		return fmt.Errorf("delete %s: %w", d, ErrNotFound)
	} else if err != nil {
		return fmt.Errorf("delete %s: rados: %w", d, err)
	}
	s.deleteData(h.Data, len(h.Chunks))
	return nil
}

// objects lists the object names in the namespace.
func (s *RADOS) objects(ctx context.Context) ([]string, error) {
	it, err := s.ioctx.Iter()
	if err != nil {
		return nil, fmt.Errorf("rados list objects: %w", err)
	}
	defer it.Close()
	var names []string
	for it.Next() {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		names = append(names, it.Value())
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("rados list objects: %w", err)
	}
	return names, nil
}

// Walk implements Store.
func (s *RADOS) Walk(ctx context.Context, fn func(Info) error) error {
	names, err := s.objects(ctx)
	if err != nil {
		return err
	}
	for _, name := range names {
		hx, ok := strings.CutPrefix(name, radosHeadPrefix)
		if !ok {
			continue
		}
		d, err := ParseHex(hx)
		if err != nil {
			continue
		}
		info, err := s.Stat(ctx, d)
		if errors.Is(err, ErrNotFound) || errors.Is(err, ErrCorrupt) {
			continue
		}
		if err != nil {
			return err
		}
		if err := fn(info); err != nil {
			return err
		}
	}
	return nil
}

// Scrub implements Store: every chunk and every whole blob is re-hashed;
// data objects no head refers to (crashed imports) are removed once they are
// older than a minute.
func (s *RADOS) Scrub(ctx context.Context) (ScrubReport, error) {
	start := time.Now()
	var rep ScrubReport
	names, err := s.objects(ctx)
	if err != nil {
		return rep, err
	}
	used := map[string]bool{}
	for _, name := range names {
		if strings.HasPrefix(name, radosQuarantinePrefix) {
			// Keep the chunks of quarantined blobs for a look.
			if id := s.quarantinedData(name); id != "" {
				used[id] = true
			}
			continue
		}
		hx, ok := strings.CutPrefix(name, radosHeadPrefix)
		if !ok {
			continue
		}
		d, err := ParseHex(hx)
		if err != nil {
			continue
		}
		h, raw, err := s.readHead(ctx, d)
		var ce *CorruptError
		switch {
		case errors.As(err, &ce):
			rep.Checked++
			rep.Corrupt = append(rep.Corrupt, ce.Corruption)
			continue
		case errors.Is(err, ErrNotFound):
			continue
		case err != nil:
			return rep, fmt.Errorf("scrub: %w", err)
		}
		used[h.Data] = true
		b := &radosBlob{s: s, ctx: ctx, h: h, raw: raw, cur: -1}
		wh := newHash()
		n, err := io.Copy(wh, b)
		b.Close()
		rep.Checked++
		rep.Bytes += n
		if err == nil && digestOf(wh) != d {
			err = s.corrupt(ctx, d, raw, digestOf(wh), n, "chunks match the head but the whole content does not")
		}
		switch {
		case err == nil:
		case errors.As(err, &ce):
			rep.Corrupt = append(rep.Corrupt, ce.Corruption)
		default:
			return rep, fmt.Errorf("scrub %s: %w", d, err)
		}
	}
	for _, name := range names {
		rest, ok := strings.CutPrefix(name, radosDataPrefix)
		if !ok {
			continue
		}
		id, _, _ := strings.Cut(rest, "/")
		if used[id] {
			continue
		}
		st, err := s.ioctx.Stat(name)
		if err != nil || time.Since(st.ModTime) < leftoverAge {
			continue
		}
		if s.ioctx.Delete(name) == nil {
			rep.Leftover++
		}
	}
	rep.Duration = time.Since(start)
	s.opts.Logger.Info("blob scrub done", "backend", BackendRADOS, "checked", rep.Checked, "bytes", rep.Bytes,
		"corrupt", len(rep.Corrupt), "leftovers", rep.Leftover, "duration", rep.Duration)
	return rep, nil
}

// quarantinedData returns the data id a quarantined head refers to.
func (s *RADOS) quarantinedData(oid string) string {
	raw := make([]byte, 1<<20)
	n, err := s.ioctx.Read(oid, raw, 0)
	if err != nil {
		return ""
	}
	var h radosHead
	if json.Unmarshal(raw[:n], &h) != nil {
		return ""
	}
	return h.Data
}

// Close implements Store.
func (s *RADOS) Close() error {
	s.ioctx.Destroy()
	s.conn.Shutdown()
	return nil
}

// radosBlob reads a blob chunk by chunk; a chunk's bytes are released only
// after the chunk matched its hash in the head.
type radosBlob struct {
	s   *RADOS
	ctx context.Context
	h   radosHead
	raw []byte
	off int64
	cur int     // index of the chunk in buf; -1 none
	bp  *[]byte // holds chunk cur
	n   int     // bytes of chunk cur
	err error   // sticky corruption
}

func (b *radosBlob) Info() Info {
	return Info{Digest: b.h.Digest, Size: b.h.Size, ModTime: b.h.Created}
}

func (b *radosBlob) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	if b.off >= b.h.Size {
		return 0, io.EOF
	}
	idx := int(b.off / b.h.ChunkSize)
	if idx != b.cur {
		if err := b.load(idx); err != nil {
			b.err = err
			return 0, err
		}
	}
	n := copy(p, (*b.bp)[b.off-int64(idx)*b.h.ChunkSize:b.n])
	b.off += int64(n)
	return n, nil
}

func (b *radosBlob) load(idx int) error {
	if err := b.ctx.Err(); err != nil {
		return err
	}
	if b.bp == nil {
		b.bp = b.s.buf()
		if int64(len(*b.bp)) < b.h.ChunkSize {
			*b.bp = make([]byte, b.h.ChunkSize) // the store's chunk size changed since
		}
	}
	want := int(min(b.h.ChunkSize, b.h.Size-int64(idx)*b.h.ChunkSize))
	buf := (*b.bp)[:want]
	n, err := b.s.ioctx.Read(dataOID(b.h.Data, idx), buf, 0)
	b.s.opts.Metrics.verifiedBytes(BackendRADOS, int64(n))
	switch {
	case errors.Is(err, rados.ErrNotFound):
		return b.s.corrupt(b.ctx, b.h.Digest, b.raw, Digest{}, b.h.Size, fmt.Sprintf("chunk %d is missing", idx))
	case err != nil:
		return fmt.Errorf("read %s: rados chunk %d: %w", b.h.Digest, idx, err)
	case n != want:
		return b.s.corrupt(b.ctx, b.h.Digest, b.raw, Digest{}, b.h.Size, fmt.Sprintf("chunk %d has %d bytes, want %d", idx, n, want))
	case Sum(buf) != b.h.Chunks[idx]:
		return b.s.corrupt(b.ctx, b.h.Digest, b.raw, Digest{}, b.h.Size, fmt.Sprintf("chunk %d hashes to %s, the head says %s", idx, Sum(buf), b.h.Chunks[idx]))
	}
	b.cur, b.n = idx, n
	return nil
}

func (b *radosBlob) Seek(off int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		off += b.off
	case io.SeekEnd:
		off += b.h.Size
	default:
		return 0, fmt.Errorf("seek: bad whence %d", whence)
	}
	if off < 0 {
		return 0, fmt.Errorf("seek %s: negative offset %d", b.h.Digest, off)
	}
	b.off = off
	return off, nil
}

func (b *radosBlob) Close() error {
	if b.bp != nil {
		b.s.putBuf(b.bp)
		b.bp = nil
	}
	return nil
}
