package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nix-community/go-nix/pkg/nar"

	"github.com/microdc/mdc/api"
)

// serveInProcess runs `mdc serve` through run() in this process and returns
// its URL; stop ends it and waits for it.
func serveInProcess(t *testing.T, dataDir string, extra ...string) (url string, stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	var stderr bytes.Buffer
	done := make(chan error, 1)
	args := append([]string{"serve", "--data-dir", dataDir, "--http-addr", "127.0.0.1:0", "--log-level", "warn"}, extra...)
	go func() {
		err := run(ctx, args, pw, &syncWriter{w: &stderr}, func(string) string { return "" })
		pw.Close()
		done <- err
	}()
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			if u, ok := strings.CutPrefix(sc.Text(), "mdc ready on "); ok {
				ready <- u
			}
		}
	}()
	select {
	case url = <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("mdc serve ended: %v\n%s", err, stderr.String())
	case <-time.After(60 * time.Second):
		cancel()
		t.Fatalf("mdc serve did not become ready:\n%s", stderr.String())
	}
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("mdc serve: %v", err)
		}
	}
	t.Cleanup(stop)
	return url, stop
}

// syncWriter lets serve's goroutines share one buffer.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// unpackNAR writes the tree a NAR holds to dir.
func unpackNAR(r io.Reader, dir string) error {
	nr, err := nar.NewReader(r)
	if err != nil {
		return err
	}
	defer nr.Close()
	for {
		h, err := nr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		p := filepath.Join(dir, filepath.FromSlash(h.Path))
		switch h.Type {
		case nar.TypeDirectory:
			err = os.MkdirAll(p, 0o755)
		case nar.TypeSymlink:
			err = os.Symlink(h.LinkTarget, p)
		case nar.TypeRegular:
			mode := os.FileMode(0o644)
			if h.Executable {
				mode = 0o755
			}
			var f *os.File
			if f, err = os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_EXCL, mode); err == nil {
				_, err = io.Copy(f, nr)
				f.Close()
			}
		}
		if err != nil {
			return err
		}
	}
}

// mdc runs a client command against url and returns its stdout.
func mdc(t *testing.T, url, dataDir string, args ...string) (string, error) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	args = append(args, "--server", url, "--data-dir", dataDir)
	err := run(context.Background(), args, &stdout, &stderr, func(string) string { return "" })
	if stderr.Len() > 0 {
		t.Logf("mdc %s stderr: %s", strings.Join(args, " "), stderr.String())
	}
	return stdout.String(), err
}

// realNixImage is the directory Nix signed in images/nixsig's TestRealNix,
// with the .narinfo that Nix wrote for it (testdata recorded from that run).
func realNixImage(t *testing.T) (dir, trustedKey string) {
	t.Helper()
	real := filepath.Join("..", "..", "images", "nixsig", "testdata", "real")
	nar, err := os.ReadFile(filepath.Join(real, "image.nar"))
	if err != nil {
		t.Fatal(err)
	}
	dir = filepath.Join(t.TempDir(), "result")
	// Unpack the NAR Nix exported: the image directory, byte for byte.
	if err := unpackNAR(bytes.NewReader(nar), dir); err != nil {
		t.Fatal(err)
	}
	ni, _ := os.ReadFile(filepath.Join(real, "image.narinfo"))
	if err := os.WriteFile(filepath.Join(dir, "68lsgbrq7z42sylqkacdnk4jlh414x3q.narinfo"), ni, 0o644); err != nil {
		t.Fatal(err)
	}
	key, _ := os.ReadFile(filepath.Join(real, "trusted.pub"))
	return dir, strings.TrimSpace(string(key))
}

func TestImagesCLI(t *testing.T) {
	dataDir := t.TempDir()
	dir, key := realNixImage(t)
	url, stop := serveInProcess(t, dataDir, "--nix-trusted-key", key, "--require-signed")

	// An image signed by the trusted key.
	out, err := mdc(t, url, dataDir, "images", "import", dir, "--name", "osd-1")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out, "imported osd-1 (role ceph-osd, signed by test-1): kernel sha256:") {
		t.Fatalf("import said %q", out)
	}
	out, err = mdc(t, url, dataDir, "images", "import", dir, "--name", "osd-1")
	if err != nil || !strings.HasPrefix(out, "unchanged (already in the catalog): osd-1") {
		t.Fatalf("re-import: %q %v", out, err)
	}

	// Unsigned: refused, naming the key expected and the directory.
	os.Remove(filepath.Join(dir, "68lsgbrq7z42sylqkacdnk4jlh414x3q.narinfo"))
	_, err = mdc(t, url, dataDir, "images", "import", dir, "--name", "osd-2")
	if err == nil || !strings.Contains(err.Error(), "not signed") || !strings.Contains(err.Error(), "test-1") ||
		!strings.Contains(err.Error(), dir) || exitCode(err, io.Discard) != 1 {
		t.Fatalf("unsigned import: %v", err)
	}
	// Explicit files carry no signature either.
	k := filepath.Join(t.TempDir(), "vmlinuz")
	os.WriteFile(k, []byte("kernel"), 0o644)
	_, err = mdc(t, url, dataDir, "images", "import", "--kernel", k, "--initrd", k, "--cmdline", "init=/init", "--name", "x", "--role", "y")
	if err == nil || !strings.Contains(err.Error(), "unsigned") {
		t.Fatalf("explicit files with --require-signed: %v", err)
	}
	// Usage mistakes exit 2.
	if _, err = mdc(t, url, dataDir, "images", "import", "--kernel", k, "--name", "x"); exitCode(err, io.Discard) != 2 {
		t.Fatalf("incomplete --kernel import: %v", err)
	}

	out, err = mdc(t, url, dataDir, "images", "list")
	if err != nil || !strings.Contains(out, "osd-1") || !strings.Contains(out, "test-1") || strings.Count(out, "\n") != 2 {
		t.Fatalf("list: %q %v", out, err)
	}
	out, err = mdc(t, url, dataDir, "images", "show", "osd-1")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Role:", "ceph-osd", "Current:", "yes", "/nix/store/68lsgbrq7z42sylqkacdnk4jlh414x3q-image",
		"yes, by test-1", "cid bafkrei", "size-262144", "balanced", "raw leaves", "/blobs/sha256/"} {
		if !strings.Contains(out, want) {
			t.Errorf("show lacks %q:\n%s", want, out)
		}
	}
	out, err = mdc(t, url, dataDir, "images", "show", "osd-1", "-o", "json")
	var d api.ImageDetail
	if err != nil || json.Unmarshal([]byte(out), &d) != nil || d.Kernel.IPFS == nil {
		t.Fatalf("show -o json: %v\n%s", err, out)
	}
	if _, err = mdc(t, url, dataDir, "images", "show", "nope"); err == nil || !strings.Contains(err.Error(), "no image") {
		t.Fatalf("show unknown: %v", err)
	}

	// A machine with the role boots the current image: delete is refused.
	if _, err := mdc(t, url, dataDir, "machines", "register", "52:54:00:00:00:01"); err != nil {
		t.Fatal(err)
	}
	if _, err := mdc(t, url, dataDir, "machines", "assign", "525400000001", "ceph-osd"); err != nil {
		t.Fatal(err)
	}
	_, err = mdc(t, url, dataDir, "images", "delete", "osd-1")
	if err == nil || !strings.Contains(err.Error(), "in use") || !strings.Contains(err.Error(), "525400000001") {
		t.Fatalf("delete in use: %v", err)
	}

	// The catalog survives a restart (replayed from the stream).
	stop()
	url, _ = serveInProcess(t, dataDir, "--nix-trusted-key", key)
	out, err = mdc(t, url, dataDir, "images", "show", "osd-1", "-o", "json")
	var after api.ImageDetail
	if err != nil || json.Unmarshal([]byte(out), &after) != nil {
		t.Fatalf("show after restart: %v %s", err, out)
	}
	if diff := cmp.Diff(d.Image, after.Image); diff != "" {
		t.Fatalf("image after restart (-before +after):\n%s", diff)
	}
	if _, err := mdc(t, url, dataDir, "machines", "retire", "525400000001"); err != nil {
		t.Fatal(err)
	}
	out, err = mdc(t, url, dataDir, "images", "delete", "osd-1", "--reason", "test")
	if err != nil || !strings.HasPrefix(out, "deleted osd-1") {
		t.Fatalf("delete: %q %v", out, err)
	}
}

// TestBlobServedWithSendfile imports a 32 MiB initrd into a real mdc
// serve process and counts its read-type system calls while it serves the
// blob: the API's wrappers must not hide the file from sendfile(2).
func TestBlobServedWithSendfile(t *testing.T) {
	if _, err := os.Stat("/proc/self/io"); err != nil {
		t.Skipf("no /proc/self/io (%v): cannot count system calls", err)
	}
	dataDir := t.TempDir()
	p := startServe(t, dataDir)
	files := t.TempDir()
	const size = 32 << 20
	big := make([]byte, size)
	rand.Read(big)
	os.WriteFile(filepath.Join(files, "initrd"), big, 0o644)
	os.WriteFile(filepath.Join(files, "vmlinuz"), []byte("kernel"), 0o644)
	out, err := mdc(t, p.url, dataDir, "images", "import", "--kernel", filepath.Join(files, "vmlinuz"),
		"--initrd", filepath.Join(files, "initrd"), "--cmdline", "init=/init", "--name", "big", "--role", "test", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var res api.ImportResult
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatal(err)
	}
	url := p.url + res.Image.Initrds[0].Digest.Path()
	fetch := func() int {
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		n, _ := io.Copy(io.Discard, resp.Body)
		return int(n)
	}
	fetch() // the first GET verifies (reads) the file
	before := syscr(t, p.cmd.Process.Pid)
	n := fetch()
	calls := syscr(t, p.cmd.Process.Pid) - before
	t.Logf("%d bytes through mdc serve's API handler with %d read-type system calls", n, calls)
	if n != size {
		t.Fatalf("got %d bytes, want %d", n, size)
	}
	// read(2) with a 32 KiB buffer would take 1024 calls; sendfile moves
	// megabytes a call.
	if calls > size/(32<<10)/4 {
		t.Fatalf("%d read-type system calls for %d bytes: the blob did not go out through sendfile", calls, n)
	}
}

func syscr(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/io")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "syscr: "); ok {
			n, _ := strconv.Atoi(v)
			return n
		}
	}
	t.Fatal("no syscr in /proc/<pid>/io")
	return 0
}

func TestServeImageFlags(t *testing.T) {
	k1 := "one-1:" + strings.Repeat("A", 43) + "="
	k2 := "two-1:" + strings.Repeat("B", 43) + "="
	cfg := filepath.Join(t.TempDir(), "mdc.yaml")
	os.WriteFile(cfg, []byte("nix-trusted-key: ["+k1+", "+k2+"]\nrequire-signed: true\nblob-store: local\n"), 0o644)
	noEnv := func(string) string { return "" }
	c, err := parseServe([]string{"--config", cfg, "--data-dir", "/tmp/x"}, io.Discard, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.images.policy.Trusted.Names(); !c.images.policy.RequireSigned || len(got) != 2 || got[0] != "one-1" {
		t.Fatalf("from the config file: %v, require %v", got, c.images.policy.RequireSigned)
	}
	env := func(k string) string {
		if k == "MDC_NIX_TRUSTED_KEY" {
			return k2
		}
		return ""
	}
	c, err = parseServe([]string{"--nix-trusted-key", k1, "--nix-trusted-key", k2 + "," + k1}, io.Discard, env)
	if err != nil || len(c.images.policy.Trusted.Names()) != 2 {
		t.Fatalf("repeated flags: %v %v", err, c)
	}
	for name, args := range map[string][]string{
		"require-signed without keys": {"--require-signed"},
		"bad key":                     {"--nix-trusted-key", "nonsense"},
		"unknown backend":             {"--blob-store", "s3"},
		"rados without pool":          {"--blob-store", "rados"},
	} {
		_, err := parseServe(args, io.Discard, noEnv)
		if exitCode(err, io.Discard) != 2 {
			t.Errorf("%s: %v, want a usage error", name, err)
		}
	}
}
