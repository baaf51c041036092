package blob

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"strconv"
	"time"
)

// Served describes one blob response, for telemetry (mdc turns it into a
// machine.BlobServed event).
type Served struct {
	Digest   Digest
	Method   string
	Status   int
	Bytes    int64  // body bytes sent
	Size     int64  // the blob's size
	Range    string // the request's Range header, if any
	Remote   netip.AddrPort
	Duration time.Duration
}

// HandlerOption configures Handler.
type HandlerOption func(*handler)

// OnServed sets a function called after every GET or HEAD of a stored blob,
// from the request's goroutine. It must not block for long.
func OnServed(fn func(ctx context.Context, s Served)) HandlerOption {
	return func(h *handler) { h.onServed = fn }
}

// Handler serves GET and HEAD /blobs/sha256/{hex} from s: Range requests,
// ETag and If-None-Match through http.ServeContent, and, for the local
// backend, the kernel's sendfile path. Mount it on a mux at "/blobs/".
// log and m may be nil.
func Handler(s Store, log *slog.Logger, m *Metrics, opts ...HandlerOption) http.Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h := &handler{store: s, log: log, metrics: m}
	for _, o := range opts {
		o(h)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/blobs/{alg}/{hex}", h.serve)
	mux.HandleFunc("/blobs/", func(w http.ResponseWriter, r *http.Request) {
		h.error(w, http.StatusNotFound, "not_found", "no such path; blobs are at /blobs/sha256/<64 hex digits>")
	})
	return mux
}

type handler struct {
	store    Store
	log      *slog.Logger
	metrics  *Metrics
	onServed func(context.Context, Served)
}

func (h *handler) serve(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		h.error(w, http.StatusMethodNotAllowed, "method_not_allowed", r.Method+" is not allowed on blobs; use GET or HEAD")
		return
	}
	alg, hex := r.PathValue("alg"), r.PathValue("hex")
	if alg != Algorithm {
		h.error(w, http.StatusBadRequest, "bad_digest", fmt.Sprintf("digest algorithm %q is not supported; use /blobs/sha256/<hex>", truncate(alg)))
		return
	}
	d, err := ParseHex(hex)
	if err != nil {
		h.error(w, http.StatusBadRequest, "bad_digest", err.Error())
		return
	}
	b, err := h.store.Open(r.Context(), d)
	switch {
	case errors.Is(err, ErrNotFound):
		h.error(w, http.StatusNotFound, "not_found", "blob "+d.String()+" is not in the store; import it first")
		return
	case errors.Is(err, ErrCorrupt):
		h.error(w, http.StatusInternalServerError, "blob_corrupt", "blob "+d.String()+" failed verification and was quarantined; re-import it")
		return
	case err != nil:
		h.log.Error("open blob", "digest", d.String(), "err", err)
		h.error(w, http.StatusInternalServerError, "internal", "cannot read blob "+d.String()+"; see the server log")
		return
	}
	defer b.Close()

	hd := w.Header()
	hd.Set("ETag", `"`+d.String()+`"`)
	hd.Set("Cache-Control", "public, max-age=31536000, immutable")
	hd.Set("Content-Type", "application/octet-stream")
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Repr-Digest", "sha-256=:"+base64.StdEncoding.EncodeToString(d[:])+":")
	cw := &countingWriter{ResponseWriter: w}
	// The *os.File inside a local blob reaches net's sendfile: ServeContent
	// wraps it in an io.LimitedReader, countingWriter.ReadFrom hands that to
	// the http.response's ReadFrom, and net.TCPConn.ReadFrom unwraps it.
	http.ServeContent(cw, r, "", time.Time{}, b)

	if cw.status == 0 {
		cw.status = http.StatusOK
	}
	h.metrics.served(strconv.Itoa(cw.status), cw.n)
	if h.onServed != nil {
		remote, _ := netip.ParseAddrPort(r.RemoteAddr)
		h.onServed(r.Context(), Served{Digest: d, Method: r.Method, Status: cw.status, Bytes: cw.n,
			Size: b.Info().Size, Range: r.Header.Get("Range"), Remote: remote, Duration: time.Since(start)})
	}
}

type errorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

func (h *handler) error(w http.ResponseWriter, status int, code, msg string) {
	var e errorBody
	e.Error.Code, e.Error.Message = code, msg
	b, _ := json.Marshal(e)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)+1))
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
	h.metrics.served(strconv.Itoa(status), 0)
}

// countingWriter counts body bytes and keeps the ResponseWriter's ReadFrom
// (and with it sendfile) reachable.
type countingWriter struct {
	http.ResponseWriter
	status int
	n      int64
}

func (c *countingWriter) WriteHeader(code int) {
	if c.status == 0 {
		c.status = code
	}
	c.ResponseWriter.WriteHeader(code)
}

func (c *countingWriter) Write(p []byte) (int, error) {
	if c.status == 0 {
		c.status = http.StatusOK
	}
	n, err := c.ResponseWriter.Write(p)
	c.n += int64(n)
	return n, err
}

func (c *countingWriter) ReadFrom(r io.Reader) (int64, error) {
	if c.status == 0 {
		c.status = http.StatusOK
	}
	var n int64
	var err error
	if rf, ok := c.ResponseWriter.(io.ReaderFrom); ok {
		n, err = rf.ReadFrom(r)
	} else {
		n, err = io.Copy(struct{ io.Writer }{c.ResponseWriter}, r)
	}
	c.n += n
	return n, err
}

// Unwrap lets http.ResponseController reach the real writer.
func (c *countingWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }
