package blob

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// harness is one backend under the conformance suite.
type harness struct {
	Store Store
	// Corrupt changes the stored byte at off of d behind the store's back.
	Corrupt func(t *testing.T, d Digest, off int64)
	// Chunk is the backend's unit of storage (0: none), so that tests cross it.
	Chunk int
	// Backend is the label the backend uses in metrics.
	Backend string
}

type factory func(t *testing.T, opts Options) harness

// testStore is the suite every Store backend passes.
func testStore(t *testing.T, newHarness factory) {
	ctx := context.Background()
	open := func(t *testing.T) harness { return newHarness(t, Options{}) }

	t.Run("PutOpenStat", func(t *testing.T) {
		h := open(t)
		for _, n := range sizesFor(h) {
			content := randBytes(t, n)
			info, err := h.Store.Put(ctx, bytes.NewReader(content), Digest{})
			if err != nil {
				t.Fatalf("Put(%d bytes): %v", n, err)
			}
			if info.Digest != Sum(content) || info.Size != int64(n) {
				t.Fatalf("Put(%d bytes) = %s/%d, want %s/%d", n, info.Digest, info.Size, Sum(content), n)
			}
			if got := readAll(t, h.Store, info.Digest); !bytes.Equal(got, content) {
				t.Fatalf("read back %d bytes differ from the %d stored", len(got), n)
			}
			st, err := h.Store.Stat(ctx, info.Digest)
			if err != nil || st.Size != int64(n) || st.Digest != info.Digest {
				t.Fatalf("Stat = %+v, %v; want size %d", st, err, n)
			}
			if ok, err := h.Store.Has(ctx, info.Digest); !ok || err != nil {
				t.Fatalf("Has = %v, %v; want true", ok, err)
			}
		}
	})

	t.Run("ExpectedDigest", func(t *testing.T) {
		h := open(t)
		content := randBytes(t, 1000)
		if _, err := h.Store.Put(ctx, bytes.NewReader(content), Sum(content)); err != nil {
			t.Fatalf("Put with the right digest: %v", err)
		}
		other := randBytes(t, 1000)
		_, err := h.Store.Put(ctx, bytes.NewReader(other), Sum(content))
		var me *MismatchError
		if !errors.Is(err, ErrDigestMismatch) || !errors.As(err, &me) {
			t.Fatalf("Put with a wrong digest: %v, want ErrDigestMismatch", err)
		}
		if me.Got != Sum(other) || me.Want != Sum(content) || me.Size != 1000 {
			t.Errorf("MismatchError = %+v", me)
		}
		if ok, _ := h.Store.Has(ctx, Sum(other)); ok {
			t.Errorf("content with a mismatched digest was stored")
		}
		if got := list(t, h.Store); len(got) != 1 {
			t.Errorf("Walk lists %d blobs after one good and one refused Put, want 1", len(got))
		}
	})

	t.Run("PutTwice", func(t *testing.T) {
		h := open(t)
		content := randBytes(t, 5000)
		for i := 0; i < 2; i++ {
			if _, err := h.Store.Put(ctx, bytes.NewReader(content), Digest{}); err != nil {
				t.Fatalf("Put #%d: %v", i+1, err)
			}
		}
		if got := list(t, h.Store); len(got) != 1 {
			t.Errorf("Walk lists %d blobs after putting one content twice, want 1", len(got))
		}
	})

	t.Run("FailedReaderStoresNothing", func(t *testing.T) {
		h := open(t)
		boom := errors.New("source went away")
		r := io.MultiReader(bytes.NewReader(randBytes(t, 3*max(h.Chunk, 4096)+5)), errReader{boom})
		if _, err := h.Store.Put(ctx, r, Digest{}); !errors.Is(err, boom) {
			t.Fatalf("Put from a failing reader: %v, want %v", err, boom)
		}
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := h.Store.Put(cctx, bytes.NewReader(randBytes(t, 100)), Digest{}); !errors.Is(err, context.Canceled) {
			t.Fatalf("Put with a cancelled context: %v, want context.Canceled", err)
		}
		if got := list(t, h.Store); len(got) != 0 {
			t.Errorf("Walk lists %v after failed Puts, want nothing", got)
		}
	})

	t.Run("NotFound", func(t *testing.T) {
		h := open(t)
		d := Sum([]byte("never stored"))
		if _, err := h.Store.Open(ctx, d); !errors.Is(err, ErrNotFound) {
			t.Errorf("Open: %v, want ErrNotFound", err)
		}
		if _, err := h.Store.Stat(ctx, d); !errors.Is(err, ErrNotFound) {
			t.Errorf("Stat: %v, want ErrNotFound", err)
		}
		if err := h.Store.Delete(ctx, d); !errors.Is(err, ErrNotFound) {
			t.Errorf("Delete: %v, want ErrNotFound", err)
		}
		if ok, err := h.Store.Has(ctx, d); ok || err != nil {
			t.Errorf("Has = %v, %v; want false, nil", ok, err)
		}
	})

	t.Run("WalkDelete", func(t *testing.T) {
		h := open(t)
		want := map[Digest]int64{}
		for _, n := range []int{1, 10, 3*max(h.Chunk, 1) + 1} {
			info, err := h.Store.Put(ctx, bytes.NewReader(randBytes(t, n)), Digest{})
			if err != nil {
				t.Fatal(err)
			}
			want[info.Digest] = int64(n)
		}
		if diff := cmp.Diff(want, list(t, h.Store)); diff != "" {
			t.Fatalf("Walk (-want +got):\n%s", diff)
		}
		for d := range want {
			if err := h.Store.Delete(ctx, d); err != nil {
				t.Fatalf("Delete %s: %v", d, err)
			}
			if _, err := h.Store.Open(ctx, d); !errors.Is(err, ErrNotFound) {
				t.Fatalf("Open after Delete: %v, want ErrNotFound", err)
			}
		}
		if got := list(t, h.Store); len(got) != 0 {
			t.Errorf("Walk after deleting everything: %v", got)
		}
	})

	t.Run("Seek", func(t *testing.T) {
		h := open(t)
		content := randBytes(t, 3*max(h.Chunk, 4096)+7)
		info := put(t, h.Store, content)
		b, err := h.Store.Open(ctx, info.Digest)
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		if end, err := b.Seek(0, io.SeekEnd); err != nil || end != int64(len(content)) {
			t.Fatalf("Seek(0, End) = %d, %v; want %d", end, err, len(content))
		}
		for _, off := range []int64{int64(len(content)) - 1, 0, int64(len(content)) / 2, int64(max(h.Chunk, 1)) - 1} {
			if _, err := b.Seek(off, io.SeekStart); err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(io.LimitReader(b, 100))
			if err != nil {
				t.Fatalf("read at %d: %v", off, err)
			}
			if want := content[off:min(off+100, int64(len(content)))]; !bytes.Equal(got, want) {
				t.Fatalf("read at %d: got %d bytes that differ from the content", off, len(got))
			}
		}
		if _, err := b.Seek(-1, io.SeekStart); err == nil {
			t.Errorf("Seek to -1 succeeded")
		}
	})

	t.Run("ConcurrentReadersAndWriters", func(t *testing.T) {
		h := open(t)
		content := randBytes(t, 2*max(h.Chunk, 64<<10)+3)
		d := Sum(content)
		var wg sync.WaitGroup
		errs := make(chan error, 16)
		for i := 0; i < 4; i++ {
			wg.Go(func() {
				if _, err := h.Store.Put(ctx, bytes.NewReader(content), d); err != nil {
					errs <- fmt.Errorf("concurrent Put: %w", err)
				}
			})
		}
		wg.Wait()
		for i := 0; i < 8; i++ {
			wg.Go(func() {
				b, err := h.Store.Open(ctx, d)
				if err != nil {
					errs <- err
					return
				}
				defer b.Close()
				got, err := io.ReadAll(b)
				if err != nil || !bytes.Equal(got, content) {
					errs <- fmt.Errorf("concurrent read: %d bytes, %v", len(got), err)
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})

	t.Run("Corruption", func(t *testing.T) {
		reg := prometheus.NewRegistry()
		m := NewMetrics(reg)
		var mu sync.Mutex
		var reports []Corruption
		h := newHarness(t, Options{Metrics: m, Reporter: ReporterFunc(func(_ context.Context, c Corruption) {
			mu.Lock()
			reports = append(reports, c)
			mu.Unlock()
		})})
		content := randBytes(t, 3*max(h.Chunk, 64<<10)+11)
		info := put(t, h.Store, content)
		readAll(t, h.Store, info.Digest) // verified once, as on a normal first serve
		h.Corrupt(t, info.Digest, int64(len(content))-2)

		srv := httptest.NewServer(Handler(h.Store, nil, m))
		defer srv.Close()
		resp, err := http.Get(srv.URL + info.Digest.Path())
		if err != nil {
			t.Fatal(err)
		}
		body, rerr := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK && rerr == nil {
			t.Fatalf("corrupt blob served in full: 200 and %d bytes", len(body))
		}
		if resp.StatusCode/100 == 2 && !bytes.HasPrefix(content, body) {
			t.Fatalf("response carried bytes that are not the blob's content")
		}
		t.Logf("corrupt blob: status %d, %d body bytes, read error %v", resp.StatusCode, len(body), rerr)

		if ok, _ := h.Store.Has(ctx, info.Digest); ok {
			t.Errorf("corrupt blob still in the store, want it quarantined")
		}
		if code := get(t, srv.URL+info.Digest.Path(), nil).StatusCode; code != http.StatusNotFound {
			t.Errorf("GET after quarantine: %d, want 404", code)
		}
		if got := testutil.ToFloat64(m.corrupt.WithLabelValues(h.Backend)); got != 1 {
			t.Errorf("mdc_blob_corrupt_total{backend=%q} = %v, want 1", h.Backend, got)
		}
		mu.Lock()
		defer mu.Unlock()
		if len(reports) != 1 || reports[0].Digest != info.Digest || reports[0].Quarantine == "" || reports[0].Backend != h.Backend {
			t.Fatalf("reports = %+v, want one for %s with a quarantine place", reports, info.Digest)
		}
		// The store goes on working, and a good copy can come back.
		put(t, h.Store, content)
		if got := readAll(t, h.Store, info.Digest); !bytes.Equal(got, content) {
			t.Fatalf("re-imported blob reads back differently")
		}
	})

	t.Run("Scrub", func(t *testing.T) {
		var mu sync.Mutex
		var reports []Corruption
		h := newHarness(t, Options{Reporter: ReporterFunc(func(_ context.Context, c Corruption) {
			mu.Lock()
			reports = append(reports, c)
			mu.Unlock()
		})})
		good := put(t, h.Store, randBytes(t, 2*max(h.Chunk, 1)+1))
		bad := put(t, h.Store, randBytes(t, 2*max(h.Chunk, 1)+1))
		h.Corrupt(t, bad.Digest, 0)
		rep, err := h.Store.Scrub(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if rep.Checked != 2 || len(rep.Corrupt) != 1 || rep.Corrupt[0].Digest != bad.Digest {
			t.Fatalf("Scrub report = %+v, want 2 checked and %s corrupt", rep, bad.Digest)
		}
		if ok, _ := h.Store.Has(ctx, bad.Digest); ok {
			t.Errorf("scrubbed corrupt blob still in the store")
		}
		if ok, _ := h.Store.Has(ctx, good.Digest); !ok {
			t.Errorf("good blob gone after Scrub")
		}
		mu.Lock()
		defer mu.Unlock()
		if len(reports) != 1 {
			t.Errorf("%d reports, want 1", len(reports))
		}
	})

	t.Run("HTTP", func(t *testing.T) { testHTTP(t, open(t)) })
}

func testHTTP(t *testing.T, h harness) {
	ctx := context.Background()
	var mu sync.Mutex
	var served []Served
	srv := httptest.NewServer(Handler(h.Store, nil, nil, OnServed(func(_ context.Context, s Served) {
		mu.Lock()
		served = append(served, s)
		mu.Unlock()
	})))
	defer srv.Close()
	chunk := max(h.Chunk, 64<<10)
	content := randBytes(t, 3*chunk+100)
	n := len(content)
	info, err := h.Store.Put(ctx, bytes.NewReader(content), Digest{})
	if err != nil {
		t.Fatal(err)
	}
	url := srv.URL + info.Digest.Path()
	etag := `"` + info.Digest.String() + `"`
	size := strconv.Itoa(n)

	for _, tc := range []struct {
		name    string
		method  string
		header  map[string]string
		status  int
		body    []byte // nil: not checked
		headers map[string]string
	}{
		{name: "full", status: 200, body: content, headers: map[string]string{
			"Content-Length": size, "ETag": etag, "Cache-Control": "public, max-age=31536000, immutable",
			"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}},
		{name: "head", method: "HEAD", status: 200, body: []byte{}, headers: map[string]string{
			"Content-Length": size, "ETag": etag, "Content-Type": "application/octet-stream"}},
		{name: "first byte", header: map[string]string{"Range": "bytes=0-0"}, status: 206, body: content[:1],
			headers: map[string]string{"Content-Range": "bytes 0-0/" + size, "Content-Length": "1"}},
		{name: "last byte", header: map[string]string{"Range": fmt.Sprintf("bytes=%d-%d", n-1, n-1)}, status: 206,
			body: content[n-1:], headers: map[string]string{"Content-Range": fmt.Sprintf("bytes %d-%d/%s", n-1, n-1, size)}},
		{name: "suffix", header: map[string]string{"Range": "bytes=-10"}, status: 206, body: content[n-10:],
			headers: map[string]string{"Content-Range": fmt.Sprintf("bytes %d-%d/%s", n-10, n-1, size)}},
		{name: "open end", header: map[string]string{"Range": fmt.Sprintf("bytes=%d-", n-5)}, status: 206, body: content[n-5:]},
		{name: "across chunks", header: map[string]string{"Range": fmt.Sprintf("bytes=%d-%d", chunk-3, 2*chunk+2)}, status: 206,
			body: content[chunk-3 : 2*chunk+3]},
		{name: "unsatisfiable", header: map[string]string{"Range": fmt.Sprintf("bytes=%d-", n)}, status: 416,
			headers: map[string]string{"Content-Range": "bytes */" + size}},
		{name: "if-none-match", header: map[string]string{"If-None-Match": etag}, status: 304, body: []byte{}},
		{name: "if-range match", header: map[string]string{"If-Range": etag, "Range": "bytes=5-9"}, status: 206, body: content[5:10]},
		{name: "if-range other", header: map[string]string{"If-Range": `"sha256:00"`, "Range": "bytes=5-9"}, status: 200, body: content},
		{name: "head range", method: "HEAD", header: map[string]string{"Range": "bytes=0-99"}, status: 206, body: []byte{},
			headers: map[string]string{"Content-Length": "100"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			method := tc.method
			if method == "" {
				method = "GET"
			}
			req, _ := http.NewRequest(method, url, nil)
			for k, v := range tc.header {
				req.Header.Set(k, v)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d (body %.200q)", resp.StatusCode, tc.status, body)
			}
			if tc.body != nil && !bytes.Equal(body, tc.body) {
				t.Errorf("body: %d bytes, want %d (equal content: %v)", len(body), len(tc.body), bytes.Equal(body, tc.body))
			}
			for k, v := range tc.headers {
				if got := resp.Header.Get(k); got != v {
					t.Errorf("%s: %q, want %q", k, got, v)
				}
			}
		})
	}

	t.Run("multirange", func(t *testing.T) {
		resp := get(t, url, map[string]string{"Range": "bytes=0-0,-1"})
		if resp.StatusCode != 206 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "multipart/byteranges") {
			t.Fatalf("status %d, Content-Type %q; want 206 multipart/byteranges", resp.StatusCode, resp.Header.Get("Content-Type"))
		}
	})

	for _, tc := range []struct {
		name, method, path string
		status             int
		code               string
	}{
		{"unknown", "GET", Sum([]byte("nope")).Path(), 404, "not_found"},
		{"short hex", "GET", "/blobs/sha256/abc", 400, "bad_digest"},
		{"upper hex", "GET", "/blobs/sha256/" + strings.ToUpper(info.Digest.Hex()), 400, "bad_digest"},
		{"other algorithm", "GET", "/blobs/md5/" + info.Digest.Hex(), 400, "bad_digest"},
		{"traversal", "GET", "/blobs/sha256/..%2f..%2fetc%2fpasswd", 400, "bad_digest"},
		{"no digest", "GET", "/blobs/sha256/", 404, "not_found"},
		{"post", "POST", info.Digest.Path(), 405, "method_not_allowed"},
		{"delete", "DELETE", info.Digest.Path(), 405, "method_not_allowed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, srv.URL+tc.path, nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var e errorBody
			if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
				t.Fatalf("status %d, body is not the JSON error: %v", resp.StatusCode, err)
			}
			if resp.StatusCode != tc.status || e.Error.Code != tc.code || e.Error.Message == "" {
				t.Errorf("got %d %+v, want %d code %q with a message", resp.StatusCode, e, tc.status, tc.code)
			}
			if tc.status == 405 && resp.Header.Get("Allow") != "GET, HEAD" {
				t.Errorf("Allow: %q", resp.Header.Get("Allow"))
			}
		})
	}

	t.Run("concurrent", func(t *testing.T) {
		var wg sync.WaitGroup
		errs := make(chan error, 32)
		for i := 0; i < 16; i++ {
			wg.Go(func() {
				from := (i * 7919) % n
				resp := get(t, url, map[string]string{"Range": fmt.Sprintf("bytes=%d-", from)})
				if i%2 == 0 {
					resp = get(t, url, nil)
					from = 0
				}
				if !bytes.Equal(resp.body, content[from:]) {
					errs <- fmt.Errorf("reader %d: %d bytes from %d differ", i, len(resp.body), from)
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})

	t.Run("served hook", func(t *testing.T) {
		mu.Lock()
		served = nil
		mu.Unlock()
		get(t, url, map[string]string{"Range": "bytes=0-99"})
		// The hook runs after the handler returns, which may be after the
		// client has the body; calls of the earlier subtests' requests may
		// still arrive. Count only this request's (the only GET of 0-99).
		var mine []Served
		deadline := time.Now().Add(2 * time.Second)
		for {
			mu.Lock()
			mine = mine[:0]
			for _, s := range served {
				if s.Method == "GET" && s.Range == "bytes=0-99" {
					mine = append(mine, s)
				}
			}
			mu.Unlock()
			if len(mine) > 0 || time.Now().After(deadline) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if len(mine) != 1 {
			t.Fatalf("%d hook calls for the request, want 1", len(mine))
		}
		s := mine[0]
		if s.Digest != info.Digest || s.Status != 206 || s.Bytes != 100 || s.Size != int64(n) || !s.Remote.Addr().IsLoopback() {
			t.Errorf("hook got %+v", s)
		}
	})
}

type response struct {
	*http.Response
	body []byte
}

func get(t *testing.T, url string, header map[string]string) response {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Error(err)
		return response{Response: &http.Response{}}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Error(err)
	}
	return response{resp, body}
}

func sizesFor(h harness) []int {
	s := []int{0, 1, 4095, 1 << 20}
	if h.Chunk > 0 {
		s = append(s, h.Chunk-1, h.Chunk, h.Chunk+1, 3*h.Chunk)
	}
	return s
}

func randBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func put(t *testing.T, s Store, content []byte) Info {
	t.Helper()
	info, err := s.Put(context.Background(), bytes.NewReader(content), Sum(content))
	if err != nil {
		t.Fatalf("Put: %v", err)
	}
	return info
}

func readAll(t *testing.T, s Store, d Digest) []byte {
	t.Helper()
	b, err := s.Open(context.Background(), d)
	if err != nil {
		t.Fatalf("Open %s: %v", d, err)
	}
	defer b.Close()
	if b.Info().Digest != d {
		t.Errorf("Info().Digest = %s, want %s", b.Info().Digest, d)
	}
	got, err := io.ReadAll(b)
	if err != nil {
		t.Fatalf("read %s: %v", d, err)
	}
	if int64(len(got)) != b.Info().Size {
		t.Errorf("read %d bytes, Info().Size = %d", len(got), b.Info().Size)
	}
	return got
}

func list(t *testing.T, s Store) map[Digest]int64 {
	t.Helper()
	got := map[Digest]int64{}
	if err := s.Walk(context.Background(), func(i Info) error { got[i.Digest] = i.Size; return nil }); err != nil {
		t.Fatalf("Walk: %v", err)
	}
	return got
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }
