package tftp

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/pin/tftp/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
)

// fetch reads name with pin/tftp's client. size is the tsize the server
// announced, -1 if none.
func fetch(t *testing.T, addr, name string, blksize int, tsize bool) (data []byte, size int64, err error) {
	t.Helper()
	c, err := tftp.NewClient(addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetTimeout(5 * time.Second)
	c.SetBlockSize(blksize)
	c.RequestTSize(tsize)
	wt, err := c.Receive(name, "octet")
	if err != nil {
		return nil, -1, err
	}
	size = -1
	if n, ok := wt.(tftp.IncomingTransfer).Size(); ok {
		size = n
	}
	var buf bytes.Buffer
	_, err = wt.WriteTo(&buf)
	return buf.Bytes(), size, err
}

func TestServeFile(t *testing.T) {
	root := t.TempDir()
	// Sizes around the block boundaries: a file that is a multiple of the
	// block size ends with an empty DATA block.
	files := map[string][]byte{
		"ipxe.efi":          randomFile(t, root, "ipxe.efi", 300_001),
		"arm64/snponly.efi": randomFile(t, root, "arm64/snponly.efi", 8192*3),
		"empty":             randomFile(t, root, "empty", 0),
		"one-block":         randomFile(t, root, "one-block", 512),
	}
	ts := startServer(t, Config{Root: root})

	tests := []struct {
		name    string
		file    string
		blksize int // 0: no blksize option
		tsize   bool
	}{
		{"default 512", "ipxe.efi", 0, false},
		{"blksize 512 with tsize", "ipxe.efi", 512, true},
		{"blksize 1468", "ipxe.efi", 1468, true},
		{"blksize 8192", "ipxe.efi", 8192, true},
		{"blksize 65464", "ipxe.efi", 65464, false},
		{"subdirectory, size a multiple of blksize", "arm64/snponly.efi", 8192, true},
		{"cleaned name", "./arm64//snponly.efi", 1468, false},
		{"empty file", "empty", 0, true},
		{"exactly one block", "one-block", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(ts.rec.all())
			got, size, err := fetch(t, ts.addr, tt.file, tt.blksize, tt.tsize)
			if err != nil {
				t.Fatalf("fetch %s: %v", tt.file, err)
			}
			want := files[filepath.Clean(tt.file)]
			if !bytes.Equal(got, want) {
				t.Fatalf("fetch %s: got %d bytes, want %d, contents differ", tt.file, len(got), len(want))
			}
			wantSize := int64(-1)
			if tt.tsize {
				wantSize = int64(len(want))
			}
			if size != wantSize {
				t.Errorf("tsize = %d, want %d", size, wantSize)
			}
			// The client is done when it sends the last ACK; the server
			// records the transfer when that ACK arrives.
			served := ts.rec.wait(t, before+1)
			if len(served) != before+1 {
				t.Fatalf("recorder got %d events, want 1", len(served)-before)
			}
			f := served[len(served)-1]
			wantBlk := tt.blksize
			if wantBlk == 0 {
				wantBlk = 512
			}
			wantServed := Served{Local: netip.MustParseAddr("127.0.0.1"),
				Path: filepath.Clean(tt.file), Bytes: int64(len(want)), BlockSize: wantBlk}
			if diff := cmp.Diff(wantServed, f, cmpopts.IgnoreFields(Served{}, "Client", "Duration"), cmpopts.EquateComparable(netip.Addr{})); diff != "" {
				t.Errorf("Served (-want +got):\n%s", diff)
			}
			if f.Client.Addr() != netip.MustParseAddr("127.0.0.1") || f.Client.Port() == 0 || f.Duration <= 0 {
				t.Errorf("Served client %v duration %v: want 127.0.0.1 with a port and a duration", f.Client, f.Duration)
			}
		})
	}
	if got := value(ts.metrics.served); got != float64(len(tests)) {
		t.Errorf("files served metric = %v, want %d", got, len(tests))
	}
	var wantBytes int
	for _, tt := range tests {
		wantBytes += len(files[filepath.Clean(tt.file)])
	}
	if got := value(ts.metrics.bytes); got != float64(wantBytes) {
		t.Errorf("bytes metric = %v, want %d", got, wantBytes)
	}
}

// TestRefused covers every way a request is not served: each gets a TFTP
// ERROR at once (the raw client waits for the first reply and fails on a
// timeout), is counted by reason, and nothing outside the root leaks.
func TestRefused(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	secret := randomFile(t, dir, "secret", 100)
	randomFile(t, root, "ipxe.efi", 1000)
	randomFile(t, dir, "outside/file", 100)
	mustSymlink(t, filepath.Join(dir, "outside"), filepath.Join(root, "linkdir"))
	mustSymlink(t, dir, filepath.Join(root, "linktodir"))
	mustSymlink(t, filepath.Join(dir, "nowhere"), filepath.Join(root, "dangling"))
	if err := os.Mkdir(filepath.Join(root, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(root, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	ts := startServer(t, Config{Root: root})

	tests := []struct {
		name    string
		pkt     []byte
		reason  string
		message string
	}{
		{"missing file", rrq("nope.efi", "octet"), reasonNotFound, "file not found"},
		{"missing file with options", rrq("nope.efi", "octet", "blksize", "1468", "tsize", "0"), reasonNotFound, "file not found"},
		{"dotdot", rrq("../secret", "octet"), reasonRefusedPath, "access violation: '..' in file name"},
		{"dotdot etc passwd", rrq("../../../../../../etc/passwd", "octet"), reasonRefusedPath, "access violation: '..' in file name"},
		{"dotdot inside", rrq("sub/../ipxe.efi", "octet"), reasonRefusedPath, "access violation: '..' in file name"},
		{"absolute", rrq("/etc/passwd", "octet"), reasonRefusedPath, "access violation: absolute path"},
		{"absolute root file", rrq(filepath.Join(root, "ipxe.efi"), "octet"), reasonRefusedPath, "access violation: absolute path"},
		{"percent-encoded dotdot", rrq("%2e%2e/secret", "octet"), reasonRefusedPath, "access violation: '%' in file name"},
		{"percent-encoded slash", rrq("..%2fsecret", "octet"), reasonRefusedPath, "access violation: '%' in file name"},
		{"backslash", rrq("..\\secret", "octet"), reasonRefusedPath, "access violation: backslash"},
		{"NUL first", append([]byte{0, 1, 0}, rrq("../secret", "octet")[2:]...), reasonRefusedPath, "access violation: empty file name"},
		{"control character", rrq("ipxe.efi\n", "octet"), reasonRefusedPath, "access violation: control character"},
		{"not UTF-8", rrq("ipxe\xff.efi", "octet"), reasonRefusedPath, "access violation: file name is not UTF-8"},
		{"root directory", rrq(".", "octet"), reasonRefusedPath, "access violation: file name names the root"},
		{"directory", rrq("sub", "octet"), reasonNotRegular, "access violation: not a regular file"},
		{"fifo", rrq("fifo", "octet"), reasonNotRegular, "access violation: not a regular file"},
		{"symlink to a directory", rrq("linktodir", "octet"), reasonNotRegular, "access violation: not a regular file"},
		{"through a directory symlink out of the root", rrq("linkdir/file", "octet"), reasonRefusedPath, "access violation: path leaves the TFTP root"},
		{"dangling symlink", rrq("dangling", "octet"), reasonNotFound, "file not found"},
		{"write request", append([]byte{0, 2}, rrq("new.efi", "octet")[2:]...), reasonWrite, "access violation: this TFTP server is read-only"},
		{"write over a served file", append([]byte{0, 2}, rrq("ipxe.efi", "octet")[2:]...), reasonWrite, "access violation: this TFTP server is read-only"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := ts.errors(tt.reason)
			got := asError(t, rawRequest(t, ts.addr, tt.pkt))
			// pin/tftp sends each refusal with code 1; the message says why.
			if got.Code != 1 || !strings.HasPrefix(got.Msg, tt.message) {
				t.Errorf("error = %+v, want code 1 and a message starting %q", got, tt.message)
			}
			if bytes.Contains([]byte(got.Msg), []byte(dir)) {
				t.Errorf("error message %q shows a server path", got.Msg)
			}
			// The handler counts before it returns and pin/tftp sends the
			// error after, so the count is there once the reply is.
			if after := ts.errors(tt.reason); after != before+1 {
				t.Errorf("errors{reason=%q} went from %v to %v, want +1", tt.reason, before, after)
			}
		})
	}
	if got := ts.rec.all(); len(got) != 0 {
		t.Errorf("refused requests reached the recorder: %+v", got)
	}
	if _, err := os.Stat(filepath.Join(root, "new.efi")); err == nil {
		t.Error("a write request created new.efi in the root")
	}
	if got, err := os.ReadFile(filepath.Join(dir, "secret")); err != nil || !bytes.Equal(got, secret) {
		t.Error("the file outside the root changed")
	}
	// The server still serves after all that.
	if _, _, err := fetch(t, ts.addr, "ipxe.efi", 0, false); err != nil {
		t.Fatalf("fetch after refusals: %v", err)
	}
}

// TestWriteWithClient is the write refusal as pin/tftp's own client sees it.
func TestWriteWithClient(t *testing.T) {
	root := t.TempDir()
	ts := startServer(t, Config{Root: root})
	c, err := tftp.NewClient(ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	rf, err := c.Send("upload.bin", "octet")
	if err == nil {
		_, err = rf.ReadFrom(strings.NewReader("payload"))
	}
	if err == nil || !strings.Contains(err.Error(), "code=1") || !strings.Contains(err.Error(), "read-only") {
		t.Fatalf("write: err = %v, want TFTP error 1 saying the server is read-only", err)
	}
	if entries, _ := os.ReadDir(root); len(entries) != 0 {
		t.Errorf("root has %d entries after a refused write, want 0", len(entries))
	}
	if got := ts.errors(reasonWrite); got != 1 {
		t.Errorf("errors{reason=write_attempt} = %v, want 1", got)
	}
}

// TestMissingFileClient: pin/tftp's client with a long timeout gets error
// code 1 back rather than timing out.
func TestMissingFileClient(t *testing.T) {
	ts := startServer(t, Config{Root: t.TempDir()})
	_, _, err := fetch(t, ts.addr, "missing.efi", 1468, true)
	if err == nil || !strings.Contains(err.Error(), "code: 1, message: file not found") {
		t.Fatalf("fetch missing file: err = %v, want TFTP error code 1, file not found", err)
	}
}

// TestDebianSymlink: Debian's ipxe package links ipxe.efi to /boot; a symlink
// the operator put in the root is followed, an escape by name is not.
func TestDebianSymlink(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "ipxe")
	boot := randomFile(t, dir, "boot/ipxe.efi", 5000)
	mustSymlink(t, filepath.Join(dir, "boot/ipxe.efi"), filepath.Join(root, "ipxe.efi"))
	mustSymlink(t, "../boot/ipxe.efi", filepath.Join(root, "relative.efi"))
	ts := startServer(t, Config{Root: root})
	for _, name := range []string{"ipxe.efi", "relative.efi"} {
		got, _, err := fetch(t, ts.addr, name, 1468, false)
		if err != nil || !bytes.Equal(got, boot) {
			t.Errorf("fetch %s (symlink out of the root): %d bytes, err %v; want the %d bytes of its target", name, len(got), err, len(boot))
		}
	}
	if _, _, err := fetch(t, ts.addr, "../boot/ipxe.efi", 1468, false); err == nil {
		t.Error("fetch ../boot/ipxe.efi succeeded, want a refusal")
	}
}

// TestDefaultRoot serves from the iPXE binaries of Debian's ipxe package.
func TestDefaultRoot(t *testing.T) {
	if _, err := os.Stat(filepath.Join(DefaultRoot, "ipxe.efi")); err != nil {
		t.Skipf("needs Debian package ipxe (%v); run hack/install-deps.sh tftp", err)
	}
	ts := startServer(t, Config{})
	if ts.Root() != DefaultRoot {
		t.Fatalf("Root() = %q, want %q", ts.Root(), DefaultRoot)
	}
	for _, name := range []string{"ipxe.efi", "undionly.kpxe"} {
		want, err := os.ReadFile(filepath.Join(DefaultRoot, name))
		if err != nil {
			t.Fatal(err)
		}
		got, _, err := fetch(t, ts.addr, name, 1468, true)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("fetch %s: %d bytes, err %v; want its %d bytes", name, len(got), err, len(want))
		}
	}
}

func TestMalformedDatagrams(t *testing.T) {
	root := t.TempDir()
	randomFile(t, root, "ipxe.efi", 2000)
	ts := startServer(t, Config{Root: root})
	conn, err := net.Dial("udp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	junk := [][]byte{{}, {0}, {0, 9, 1, 2}, {0, 4, 0, 1}, {0, 3, 0, 1, 'x'}, {0, 5}}
	for _, p := range junk {
		if _, err := conn.Write(p); err != nil {
			t.Fatal(err)
		}
	}
	// The server still answers, and counted the datagrams it could not use
	// (the empty one never reaches pin/tftp's parser as an error).
	if _, _, err := fetch(t, ts.addr, "ipxe.efi", 0, false); err != nil {
		t.Fatalf("fetch after junk: %v", err)
	}
	if got := ts.errors(reasonMalformed); got < float64(len(junk)-1) {
		t.Errorf("errors{reason=malformed_packet} = %v, want at least %d", got, len(junk)-1)
	}
}

func TestNew(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	randomFile(t, dir, "file", 1)
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"missing root", Config{Root: filepath.Join(dir, "nope")}, "no such file or directory; point --ipxe-dir"},
		{"root is a file", Config{Root: file}, "is not a directory"},
		{"negative timeout", Config{Root: dir, Timeout: -1}, "negative timeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New: err = %v, want one containing %q", err, tt.want)
			}
		})
	}
	reg := prometheus.NewRegistry()
	if _, err := New(Config{Root: dir, Registerer: reg}); err != nil {
		t.Fatal(err)
	}
	if _, err := New(Config{Root: dir, Registerer: reg}); err == nil || !strings.Contains(err.Error(), "same registry") {
		t.Fatalf("second New on one registry: err = %v, want a registration error", err)
	}
}

// TestShutdown: cancelling the context ends Serve with nil, aborts a transfer
// whose client stopped acknowledging, and leaves no goroutine behind.
func TestShutdown(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	root := t.TempDir()
	randomFile(t, root, "big", 1<<20)
	s, err := New(Config{Root: root, Timeout: 200 * time.Millisecond, Retries: 2})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, conn) }()

	// A complete transfer, then one left hanging after its first block.
	if _, _, err := fetch(t, conn.LocalAddr().String(), "big", 8192, false); err != nil {
		t.Fatal(err)
	}
	first := rawRequest(t, conn.LocalAddr().String(), rrq("big", "octet"))
	if len(first) != 516 || first[1] != 3 {
		t.Fatalf("first reply is not DATA block 1: % x", first[:4])
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve returned %v after cancel, want nil", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Serve did not return 20 s after its context was cancelled")
	}
	// The listening socket is closed: nothing answers any more.
	c, err := net.Dial("udp", conn.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write(rrq("big", "octet"))
	c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if _, err := c.Read(make([]byte, 600)); err == nil {
		t.Error("a request after shutdown got an answer")
	}
}

func mustSymlink(t *testing.T, target, link string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}
