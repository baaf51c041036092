package tftp

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Interop with the real clients from Debian: atftp, tftp-hpa's tftp and
// curl. tftp-hpa's client sends no options, so it always runs at 512.

// client is one real TFTP client.
type client struct {
	name    string
	bin     string
	pkg     string
	blksize bool // can ask for a block size
	// get fetches name into out; put sends local as name.
	get func(ctx context.Context, host, port, name, out string, blksize int) *exec.Cmd
	put func(ctx context.Context, host, port, local, name string) *exec.Cmd
}

var clients = []client{
	{
		name: "atftp", bin: "atftp", pkg: "atftp", blksize: true,
		get: func(ctx context.Context, host, port, name, out string, blksize int) *exec.Cmd {
			return exec.CommandContext(ctx, "atftp", "--option", fmt.Sprintf("blksize %d", blksize),
				"-g", "-r", name, "-l", out, host, port)
		},
		put: func(ctx context.Context, host, port, local, name string) *exec.Cmd {
			return exec.CommandContext(ctx, "atftp", "-p", "-l", local, "-r", name, host, port)
		},
	},
	{
		name: "tftp-hpa", bin: "tftp", pkg: "tftp-hpa",
		get: func(ctx context.Context, host, port, name, out string, _ int) *exec.Cmd {
			return exec.CommandContext(ctx, "tftp", "-m", "binary", host, port, "-c", "get", name, out)
		},
		put: func(ctx context.Context, host, port, local, name string) *exec.Cmd {
			return exec.CommandContext(ctx, "tftp", "-m", "binary", host, port, "-c", "put", local, name)
		},
	},
	{
		name: "curl", bin: "curl", pkg: "curl", blksize: true,
		// -v prints the server's TFTP error text; --path-as-is keeps "..".
		get: func(ctx context.Context, host, port, name, out string, blksize int) *exec.Cmd {
			return exec.CommandContext(ctx, "curl", "-v", "--path-as-is", "--tftp-blksize", fmt.Sprint(blksize),
				"-o", out, "tftp://"+net.JoinHostPort(host, port)+"/"+name)
		},
		put: func(ctx context.Context, host, port, local, name string) *exec.Cmd {
			return exec.CommandContext(ctx, "curl", "-v", "-T", local, "tftp://"+net.JoinHostPort(host, port)+"/"+name)
		},
	},
}

func needClient(t *testing.T, c client) {
	t.Helper()
	if _, err := exec.LookPath(c.bin); err != nil {
		t.Skipf("needs %s from Debian package %s; run hack/install-deps.sh tftp", c.bin, c.pkg)
	}
}

func sum(b []byte) string { return fmt.Sprintf("%x", sha256.Sum256(b)) }

func TestInteropFetch(t *testing.T) {
	root := t.TempDir()
	// Not a multiple of any block size, so the last block is short.
	small := randomFile(t, root, "ipxe.efi", 1_000_003)
	// 32 MiB at 512 bytes is 65,536 full blocks and an empty one: the block
	// number wraps from 65,535 to 0.
	big := randomFile(t, root, "big.bin", 32<<20)
	ts := startServer(t, Config{Root: root})
	host, port, _ := net.SplitHostPort(ts.addr)

	type fetchCase struct {
		file    string
		want    []byte
		blksize int
	}
	for _, c := range clients {
		t.Run(c.name, func(t *testing.T) {
			needClient(t, c)
			cases := []fetchCase{{"big.bin", big, 512}}
			for _, b := range []int{512, 1468, 8192} {
				if b == 512 || c.blksize {
					cases = append(cases, fetchCase{"ipxe.efi", small, b})
				}
			}
			for _, fc := range cases {
				t.Run(fmt.Sprintf("%s/blksize_%d", fc.file, fc.blksize), func(t *testing.T) {
					before := len(ts.rec.all())
					out := filepath.Join(t.TempDir(), "out")
					ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
					defer cancel()
					cmd := c.get(ctx, host, port, fc.file, out, fc.blksize)
					output, err := cmd.CombinedOutput()
					if err != nil {
						t.Fatalf("%s: %v\n%s", cmd, err, tail(output))
					}
					got, err := os.ReadFile(out)
					if err != nil {
						t.Fatal(err)
					}
					if sum(got) != sum(fc.want) {
						t.Fatalf("%s: got %d bytes sha256 %.16s, want %d bytes sha256 %.16s",
							cmd, len(got), sum(got), len(fc.want), sum(fc.want))
					}
					served := ts.rec.wait(t, before+1)
					if len(served) != before+1 {
						t.Fatalf("recorder got %d events, want 1", len(served)-before)
					}
					if f := served[before]; f.Path != fc.file || f.Bytes != int64(len(fc.want)) || f.BlockSize != fc.blksize {
						t.Errorf("Served = %+v, want path %s, %d bytes, blksize %d", f, fc.file, len(fc.want), fc.blksize)
					}
				})
			}
		})
	}
}

// TestInteropRefused: traversal attempts and writes from each real client
// get a TFTP error, and the client writes nothing it fetched.
func TestInteropRefused(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	randomFile(t, root, "ipxe.efi", 1000)
	secret := randomFile(t, dir, "secret", 100)
	ts := startServer(t, Config{Root: root})
	host, port, _ := net.SplitHostPort(ts.addr)
	local := filepath.Join(dir, "upload")
	if err := os.WriteFile(local, []byte("payload"), 0o644); err != nil {
		t.Fatal(err)
	}

	for _, c := range clients {
		t.Run(c.name, func(t *testing.T) {
			needClient(t, c)
			tests := []struct {
				name string
				file string
				want string
			}{
				{"dotdot", "../secret", "access violation: '..' in file name"},
				{"etc passwd", "../../../../../../../../etc/passwd", "access violation: '..' in file name"},
				{"absolute", "/etc/passwd", "access violation: absolute path"},
				{"missing", "missing.efi", "file not found"},
			}
			if c.name == "curl" {
				// curl decodes the URL: the server sees "../secret".
				tests = append(tests, struct{ name, file, want string }{"percent-encoded", "%2e%2e/secret", "access violation: '..' in file name"})
			} else {
				tests = append(tests, struct{ name, file, want string }{"percent-encoded", "%2e%2e/secret", "access violation: '%' in file name"})
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					out := filepath.Join(t.TempDir(), "out")
					ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
					defer cancel()
					cmd := c.get(ctx, host, port, tt.file, out, 512)
					output, err := cmd.CombinedOutput()
					checkRefused(t, c, cmd, output, err, tt.want)
					if got, _ := os.ReadFile(out); len(got) != 0 || bytes.Contains(got, secret) {
						t.Errorf("%s wrote %d bytes", cmd, len(got))
					}
				})
			}
			t.Run("write", func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				cmd := c.put(ctx, host, port, local, "uploaded.efi")
				output, err := cmd.CombinedOutput()
				checkRefused(t, c, cmd, output, err, "access violation: this TFTP server is read-only")
				if _, err := os.Stat(filepath.Join(root, "uploaded.efi")); err == nil {
					t.Error("a refused write created a file in the root")
				}
			})
		})
	}
}

// checkRefused asserts that a client reported the server's TFTP error 1 with
// the given message. Each client says so its own way.
func checkRefused(t *testing.T, c client, cmd *exec.Cmd, output []byte, err error, msg string) {
	t.Helper()
	var want string
	switch c.name {
	case "atftp":
		want = "error received from server <" + msg
	case "tftp-hpa": // exits 0 even on errors
		want = "Error code 1: " + msg
	case "curl": // exit 68 is TFTP error 1, "file not found"
		want = "TFTP error: " + msg
		if cmd.ProcessState == nil || cmd.ProcessState.ExitCode() != 68 {
			t.Errorf("%s: exit %v, want 68 (TFTP error code 1)", cmd, err)
		}
	}
	if c.name != "tftp-hpa" && err == nil {
		t.Errorf("%s succeeded, want a failure", cmd)
	}
	if !strings.Contains(string(output), want) {
		t.Errorf("%s: output lacks %q:\n%s", cmd, want, tail(output))
	}
}

func tail(b []byte) string {
	const n = 2000
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
