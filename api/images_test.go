package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/microdc/mdc/images"
	"github.com/microdc/mdc/images/blob"
	"github.com/microdc/mdc/images/nixsig"
	"github.com/microdc/mdc/machine"
)

// imageService is what mdc serve hands the API: catalog and importer.
type imageService struct {
	*images.Catalog
	*images.Importer
}

type imageFixture struct {
	*fixture
	cat   *images.Catalog
	store blob.Store
	mu    sync.Mutex
	users []machine.Machine
}

func newImageFixture(t *testing.T, policy nixsig.Policy) *imageFixture {
	t.Helper()
	ctx, nc, store, reg := startStore(t)
	f := &imageFixture{}
	cat, err := images.OpenCatalog(ctx, nc, images.CatalogConfig{InUse: images.MachinesUsing(func() []machine.Machine {
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.users
	})})
	if err != nil {
		t.Fatal(err)
	}
	blobs, err := blob.NewLocal(filepath.Join(t.TempDir(), "blobs"), blob.Options{})
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- cat.Run(cctx) }()
	t.Cleanup(func() { // before the store's: the catalog needs the connection
		cancel()
		if err := <-done; err != nil {
			t.Errorf("catalog: %v", err)
		}
	})
	if err := cat.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	s := New(Config{Machines: store, Token: token, Reads: ReadLoopback, Registry: reg, Gatherer: reg, Version: "test",
		Images: imageService{cat, images.NewImporter(blobs, cat, policy, nil)}, Blobs: blob.Handler(blobs, nil, nil)})
	f.fixture, f.cat, f.store = serve(t, s, store), cat, blobs
	return f
}

// upload POSTs a multipart body written by write.
func (f *imageFixture) upload(t *testing.T, tok string, write func(*multipart.Writer) error) (int, []byte) {
	t.Helper()
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	go func() {
		err := write(mw)
		if err == nil {
			err = mw.Close()
		}
		pw.CloseWithError(err)
	}()
	req, _ := http.NewRequest("POST", f.srv.URL+"/api/v1/images", pr)
	req.Header.Set("Content-Type", mw.FormDataContentType())
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := http.DefaultClient.Do(req)
	pr.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// netboot writes a NixOS-netboot-shaped directory.
func netboot(t *testing.T, seed uint64, role string, kernelSize, initrdSize int) string {
	t.Helper()
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(seed, 1))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	files := map[string][]byte{
		"bzImage":                    random(kernelSize),
		"initrd":                     random(initrdSize),
		"netboot.ipxe":               []byte("#!ipxe\nkernel bzImage init=/nix/store/aaaabbbbccccddddeeeeffffgggghhhh-nixos-system/init initrd=initrd loglevel=4 ${cmdline}\ninitrd initrd\nboot\n"),
		"nix-support/mdc-image.json": []byte(fmt.Sprintf(`{"format":1,"name":"%s-%d","role":"%s"}`, role, seed, role)),
	}
	for name, b := range files {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func decode[T any](t *testing.T, b []byte) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
	return v
}

func errorCode(t *testing.T, b []byte) Error {
	t.Helper()
	return decode[struct{ Error Error }](t, b).Error
}

func TestImagesNotConfigured(t *testing.T) {
	f := newFixture(t)
	for _, path := range []string{"/api/v1/images", "/api/v1/images/x", "/blobs/sha256/" + strings.Repeat("a", 64)} {
		code, b := f.do(t, "GET", path, token, "")
		if code != 503 || errorCode(t, b).Code != CodeNoImages {
			t.Errorf("GET %s: %d %s", path, code, b)
		}
	}
}

func TestImageUploadListShowDelete(t *testing.T) {
	f := newImageFixture(t, nixsig.Policy{})
	dir := netboot(t, 1, "ceph-osd", 600<<10, 2<<20)

	code, b := f.upload(t, token, func(mw *multipart.Writer) error {
		return images.WriteDirUpload(mw, images.Request{ImportedBy: "tester"}, dir)
	})
	if code != 201 {
		t.Fatalf("upload: %d %s", code, b)
	}
	res := decode[ImportResult](t, b)
	img := res.Image
	kernel, _ := os.ReadFile(filepath.Join(dir, "bzImage"))
	if !res.Added || img.Name != "ceph-osd-1" || img.Kernel.Digest != blob.Sum(kernel) ||
		!strings.HasPrefix(img.ImportedBy, "tester from 127.0.0.1") || img.Cmdline != "init=/nix/store/aaaabbbbccccddddeeeeffffgggghhhh-nixos-system/init initrd=initrd loglevel=4" {
		t.Fatalf("import result %+v", res)
	}
	seq := f.cat.Applied()

	// The same again: 200, nothing appended.
	code, b = f.upload(t, token, func(mw *multipart.Writer) error { return images.WriteDirUpload(mw, images.Request{}, dir) })
	if code != 200 || decode[ImportResult](t, b).Added || f.cat.Applied() != seq {
		t.Fatalf("re-upload: %d %s (applied %d, was %d)", code, b, f.cat.Applied(), seq)
	}

	// Explicit files: a kernel and two initrds.
	files := t.TempDir()
	for name, body := range map[string]string{"vmlinuz": "kernel", "base.cpio": "base", "agent.cpio": "agent"} {
		os.WriteFile(filepath.Join(files, name), []byte(body), 0o644)
	}
	code, b = f.upload(t, token, func(mw *multipart.Writer) error {
		return images.WriteFilesUpload(mw, images.Request{Name: "commissioning-1", Role: "commissioning", Cmdline: "console=ttyS0"},
			filepath.Join(files, "vmlinuz"), []string{filepath.Join(files, "base.cpio"), filepath.Join(files, "agent.cpio")})
	})
	if code != 201 {
		t.Fatalf("files upload: %d %s", code, b)
	}
	if fi := decode[ImportResult](t, b).Image; fi.Kernel.Name != "vmlinuz" || len(fi.Initrds) != 2 || fi.Initrds[1].Name != "agent.cpio" {
		t.Fatalf("files image %+v", fi)
	}

	code, b = f.do(t, "GET", "/api/v1/images", "", "")
	list := decode[ImageList](t, b)
	if code != 200 || list.Count != 2 || list.Images[0].Name != "ceph-osd-1" || list.Images[1].Name != "commissioning-1" {
		t.Fatalf("list: %d %s", code, b)
	}
	code, b = f.do(t, "GET", "/api/v1/images?role=commissioning", "", "")
	if code != 200 || decode[ImageList](t, b).Count != 1 {
		t.Fatalf("list by role: %d %s", code, b)
	}
	code, b = f.do(t, "GET", "/api/v1/images/ceph-osd-1", "", "")
	d := decode[ImageDetail](t, b)
	if code != 200 || !d.Current || d.Kernel.IPFS == nil || !strings.HasPrefix(d.Kernel.IPFS.CID, "bafybei") ||
		d.Kernel.IPFS.Chunker != "size-262144" || !strings.Contains(string(b), `"current": true`) {
		t.Fatalf("show: %d %s", code, b)
	}

	// The blobs are served by hash, whole and in ranges.
	initrd, _ := os.ReadFile(filepath.Join(dir, "initrd"))
	resp, err := http.Get(f.srv.URL + img.Initrds[0].Digest.Path())
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Equal(got, initrd) || resp.Header.Get("ETag") != `"`+img.Initrds[0].Digest.String()+`"` {
		t.Fatalf("GET blob: %d, %d bytes, etag %s", resp.StatusCode, len(got), resp.Header.Get("ETag"))
	}
	req, _ := http.NewRequest("GET", f.srv.URL+img.Initrds[0].Digest.Path(), nil)
	req.Header.Set("Range", "bytes=-100")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	got, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 206 || !bytes.Equal(got, initrd[len(initrd)-100:]) {
		t.Fatalf("range: %d, %d bytes", resp.StatusCode, len(got))
	}
	resp, err = http.Head(f.srv.URL + img.Kernel.Digest.Path())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.ContentLength != int64(len(kernel)) {
		t.Fatalf("HEAD: %d, length %d", resp.StatusCode, resp.ContentLength)
	}

	// Delete: refused while a machine boots it, then allowed.
	f.mu.Lock()
	f.users = []machine.Machine{{ID: "525400aa0001", State: machine.Running, Role: "ceph-osd"}}
	f.mu.Unlock()
	code, b = f.do(t, "DELETE", "/api/v1/images/ceph-osd-1", token, "")
	if e := errorCode(t, b); code != 409 || e.Code != CodeInUse || !strings.Contains(e.Message, "525400aa0001") {
		t.Fatalf("delete in use: %d %s", code, b)
	}
	code, b = f.do(t, "GET", "/api/v1/images/ceph-osd-1", "", "")
	if d := decode[ImageDetail](t, b); len(d.UsedBy) != 1 {
		t.Fatalf("show lists no user: %s", b)
	}
	f.mu.Lock()
	f.users = nil
	f.mu.Unlock()
	if code, b = f.do(t, "DELETE", "/api/v1/images/ceph-osd-1", "", ""); code != 401 {
		t.Fatalf("delete without token: %d %s", code, b)
	}
	if code, b = f.do(t, "DELETE", "/api/v1/images/ceph-osd-1?reason=old", token, ""); code != 200 {
		t.Fatalf("delete: %d %s", code, b)
	}
	if code, b = f.do(t, "GET", "/api/v1/images/ceph-osd-1", "", ""); code != 404 || errorCode(t, b).Code != CodeNotFound {
		t.Fatalf("after delete: %d %s", code, b)
	}
}

func TestBadUploads(t *testing.T) {
	trusted := strings.TrimSpace(string(mustRead(t, "../images/nixsig/testdata/real/trusted.pub")))
	policy, err := nixsig.NewPolicy([]string{trusted}, true)
	if err != nil {
		t.Fatal(err)
	}
	f := newImageFixture(t, policy)
	dir := netboot(t, 2, "nats", 1000, 1000)
	part := func(name, body string) func(*multipart.Writer) error {
		return func(mw *multipart.Writer) error {
			w, err := mw.CreateFormField(name)
			if err == nil {
				_, err = io.WriteString(w, body)
			}
			return err
		}
	}
	tests := map[string]struct {
		tok    string
		write  func(*multipart.Writer) error
		status int
		code   string
		says   string
	}{
		"no token": {"", func(mw *multipart.Writer) error { return images.WriteDirUpload(mw, images.Request{}, dir) },
			401, CodeUnauthorized, "admin token"},
		"unsigned, require-signed": {token, func(mw *multipart.Writer) error { return images.WriteDirUpload(mw, images.Request{}, dir) },
			422, CodeUnsigned, "trusted keys: test-1"},
		"no image part":  {token, part("nar", "x"), 400, CodeBadImage, `first part must be "image"`},
		"bad image JSON": {token, part("image", `{"name":1}`), 400, CodeBadImage, "image"},
		"unknown field":  {token, part("image", `{"colour":"red"}`), 400, CodeBadImage, "colour"},
		"nothing after image": {token, part("image", `{"name":"a","role":"b"}`), 400, CodeBadImage,
			`"nar" or a "kernel" part, got the end of the body`},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			code, b := f.upload(t, tc.tok, tc.write)
			e := errorCode(t, b)
			if code != tc.status || e.Code != tc.code || !strings.Contains(e.Message, tc.says) {
				t.Fatalf("got %d %+v, want %d %s saying %q", code, e, tc.status, tc.code, tc.says)
			}
		})
	}
	code, b := f.do(t, "POST", "/api/v1/images", token, `{"name":"x"}`)
	if code != 415 {
		t.Fatalf("JSON body: %d %s", code, b)
	}
	if n := len(f.cat.List("")); n != 0 {
		t.Fatalf("%d images after bad uploads", n)
	}
	n := 0
	_ = f.store.Walk(context.Background(), func(blob.Info) error { n++; return nil })
	if n != 0 {
		t.Fatalf("bad uploads stored %d blobs", n)
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// notReady is a catalog still replaying; only Ready is called.
type notReady struct{ Images }

func (notReady) Ready() bool { return false }

// /readyz waits for the image catalog too: a boot script rendered before it
// has replayed would not find the images.
func TestReadyWaitsForCatalog(t *testing.T) {
	f := newFixture(t)
	h := New(Config{Machines: f.store, Token: token, Images: notReady{}}).Handler()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
	if rec.Code != 503 || !strings.Contains(rec.Body.String(), "image catalog") {
		t.Fatalf("/readyz with the catalog replaying: %d %q", rec.Code, rec.Body)
	}
}
