package blob

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// The test binary doubles as the helper processes the crash and sendfile
// tests need: BLOB_TEST_CHILD picks the role.
func TestMain(m *testing.M) {
	switch os.Getenv("BLOB_TEST_CHILD") {
	case "writer":
		childWriter(os.Getenv("BLOB_TEST_DIR"))
		return
	case "server":
		childServer(os.Getenv("BLOB_TEST_DIR"))
		return
	}
	goleak.VerifyTestMain(m)
}

func localHarness(t *testing.T, opts Options) harness {
	s, err := NewLocal(t.TempDir(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return harness{Store: s, Backend: BackendLocal, Corrupt: func(t *testing.T, d Digest, off int64) {
		flipByte(t, s.Path(d), off)
	}}
}

// flipByte changes one byte the way a stray tool or an attacker would:
// make the file writable, write, make it read-only again.
func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := []byte{0}
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x40
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := os.Chmod(path, 0o444); err != nil {
		t.Fatal(err)
	}
}

func TestLocalStore(t *testing.T) { testStore(t, localHarness) }

func TestLocalLayout(t *testing.T) {
	dir := t.TempDir()
	s, err := NewLocal(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	info := put(t, s, []byte("hello\n"))
	const hex = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
	path := filepath.Join(dir, "sha256", "58", hex)
	if info.Digest.Hex() != hex || s.Path(info.Digest) != path {
		t.Fatalf("stored at %s as %s, want %s", s.Path(info.Digest), info.Digest, path)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o444 {
		t.Errorf("blob file mode %v, want read-only 0444", fi.Mode().Perm())
	}
	if left, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(left) != 0 {
		t.Errorf("temp files left after Put: %v", left)
	}
}

// TestLocalReverifiesChangedFile: the verified mark belongs to one file
// identity; a file changed after it was verified is hashed again before it
// is served, even when its size stays the same.
func TestLocalReverifiesChangedFile(t *testing.T) {
	h := localHarness(t, Options{})
	s := h.Store.(*Local)
	content := randBytes(t, 100000)
	info := put(t, s, content)
	readAll(t, s, info.Digest)
	h.Corrupt(t, info.Digest, 500)
	if _, err := s.Open(context.Background(), info.Digest); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open of a file changed after verification: %v, want ErrCorrupt", err)
	}
	q, _ := filepath.Glob(filepath.Join(s.Dir(), "quarantine", info.Digest.Hex()+".*"))
	if len(q) != 1 {
		t.Errorf("quarantine holds %v, want the one bad copy", q)
	}
}

// TestLocalScrubFindsBitRot: bit rot changes no timestamp, so only Scrub
// sees it. Simulated by telling the cache the changed file is verified.
func TestLocalScrubFindsBitRot(t *testing.T) {
	h := localHarness(t, Options{})
	s := h.Store.(*Local)
	info := put(t, s, randBytes(t, 10000))
	h.Corrupt(t, info.Digest, 0)
	fi, _ := os.Stat(s.Path(info.Digest))
	s.mu.Lock()
	s.verified[info.Digest] = idOf(fi)
	s.mu.Unlock()
	rep, err := s.Scrub(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Corrupt) != 1 || rep.Corrupt[0].Got.IsZero() {
		t.Fatalf("Scrub report %+v, want one corruption with the digest found", rep)
	}
	if _, err := s.Open(context.Background(), info.Digest); !errors.Is(err, ErrNotFound) {
		t.Errorf("Open after Scrub quarantined it: %v, want ErrNotFound", err)
	}
}

// TestLocalCrashDuringWrite kills a writer process in the middle of a Put:
// nothing partial may be visible, and the store must go on working.
func TestLocalCrashDuringWrite(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "BLOB_TEST_CHILD=writer", "BLOB_TEST_DIR="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "written" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("writer said %q, %v", line, err)
	}
	tmps, _ := filepath.Glob(filepath.Join(dir, "tmp", "put-*"))
	if len(tmps) != 1 {
		t.Fatalf("temp files while writing: %v, want 1", tmps)
	}
	if fi, err := os.Stat(tmps[0]); err != nil || fi.Size() < crashPrefix {
		t.Fatalf("temp file holds %v bytes (%v), want at least %d: the writer is not mid-write", fi.Size(), err, crashPrefix)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()

	s, err := NewLocal(dir, Options{})
	if err != nil {
		t.Fatalf("reopen after crash: %v", err)
	}
	if got := list(t, s); len(got) != 0 {
		t.Fatalf("after the crash the store lists %v, want nothing", got)
	}
	full := crashContent()
	if ok, _ := s.Has(context.Background(), Sum(full)); ok {
		t.Fatalf("the interrupted blob is visible")
	}
	// A young unlocked temp file stays (its writer might have only just
	// created it); an old one is removed.
	old := time.Now().Add(-2 * leftoverAge)
	os.Chtimes(tmps[0], old, old)
	rep, err := s.Scrub(context.Background())
	if err != nil || rep.Leftover != 1 {
		t.Fatalf("Scrub = %+v, %v; want the crashed writer's temp file removed", rep, err)
	}
	put(t, s, full)
	if got := readAll(t, s, Sum(full)); !bytes.Equal(got, full) {
		t.Fatal("blob written after the crash reads back differently")
	}
}

const crashPrefix = 4 << 20

func crashContent() []byte {
	b := bytes.Repeat([]byte("0123456789abcdef"), (crashPrefix+1<<20)/16)
	return b
}

// childWriter puts crashContent, stalling after crashPrefix bytes until it
// is killed.
func childWriter(dir string) {
	s, err := NewLocal(dir, Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	full := crashContent()
	r := io.MultiReader(bytes.NewReader(full[:crashPrefix]), stallReader{}, bytes.NewReader(full[crashPrefix:]))
	s.Put(context.Background(), r, Sum(full))
	os.Exit(3) // not reached: the parent kills us
}

type stallReader struct{}

func (stallReader) Read([]byte) (int, error) {
	// Every earlier chunk is in the temp file by now.
	fmt.Println("written")
	select {}
}

// childServer serves dir's store on 127.0.0.1:0, prints the address and
// stops when stdin closes.
func childServer(dir string) {
	s, err := NewLocal(dir, Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	fmt.Println(ln.Addr())
	go http.Serve(ln, Handler(s, nil, nil))
	io.Copy(io.Discard, os.Stdin)
	os.Exit(0)
}

// TestLocalSendfile checks that a local blob goes out through sendfile(2)
// and not through read(2)+write(2): it counts the server process's read
// system calls (sendfile counts as one per call) in /proc/<pid>/io.
func TestLocalSendfile(t *testing.T) {
	if _, err := os.Stat("/proc/self/io"); err != nil {
		t.Skipf("no /proc/self/io (%v): cannot count system calls", err)
	}
	dir := t.TempDir()
	s, err := NewLocal(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	const size = 32 << 20
	content := randBytes(t, size)
	info := put(t, s, content)

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "BLOB_TEST_CHILD=server", "BLOB_TEST_DIR="+dir)
	stdin, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); cmd.Wait() }()
	addr, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + strings.TrimSpace(addr) + info.Digest.Path()
	get(t, url, nil) // the first GET verifies (reads) the file

	for _, tc := range []struct {
		name  string
		rng   string
		bytes int
	}{{"full", "", size}, {"range", "bytes=1000-", size - 1000}} {
		before := syscr(t, cmd.Process.Pid)
		resp := get(t, url, map[string]string{"Range": tc.rng})
		calls := syscr(t, cmd.Process.Pid) - before
		if len(resp.body) != tc.bytes {
			t.Fatalf("%s: got %d bytes, want %d", tc.name, len(resp.body), tc.bytes)
		}
		// read(2) with net/http's 32 KiB buffer would take 1024 calls for
		// 32 MiB; sendfile moves up to 4 MiB a call (more calls when the
		// socket buffer is full and it waits).
		t.Logf("%s: %d bytes with %d read-type system calls", tc.name, tc.bytes, calls)
		if calls > size/(32<<10)/4 {
			t.Errorf("%s: %d read-type system calls for %d bytes: the blob did not go out through sendfile", tc.name, calls, tc.bytes)
		}
	}
}

func syscr(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "syscr: "); ok {
			n, _ := strconv.Atoi(v)
			return n
		}
	}
	t.Fatalf("no syscr in /proc/%d/io", pid)
	return 0
}
