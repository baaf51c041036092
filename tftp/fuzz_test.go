package tftp

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"
)

var pathSeeds = []string{
	"ipxe.efi", "undionly.kpxe", "snponly.efi", "arm64/snponly.efi", "pxelinux.cfg/01-52-54-00-12-34-56",
	"./ipxe.efi", "a//b", ".", "", "..", "../etc/passwd", "/etc/passwd", "%2e%2e/etc/passwd",
	"..%2f..%2fetc%2fpasswd", "..\\..\\windows", "ipxe.efi\x00../x", "....//", "a/./b/", ".hidden",
	"\u2025/x", "\u0085", "x/..", strings.Repeat("a/", 200),
}

// FuzzCleanPath: whatever the network sends, an accepted name is a clean,
// local path that cannot leave the root, and cleaning is idempotent.
func FuzzCleanPath(f *testing.F) {
	for _, s := range pathSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		clean, err := cleanPath(name)
		if err != nil {
			if !errors.Is(err, errRefused) || clean != "" {
				t.Fatalf("cleanPath(%q) = %q, %v: want errRefused and no path", name, clean, err)
			}
			return
		}
		switch {
		case !filepath.IsLocal(clean):
			t.Fatalf("cleanPath(%q) = %q is not local", name, clean)
		case path.Clean(clean) != clean || clean == ".":
			t.Fatalf("cleanPath(%q) = %q is not clean", name, clean)
		case !utf8.ValidString(clean):
			t.Fatalf("cleanPath(%q) = %q is not UTF-8", name, clean)
		case strings.ContainsAny(clean, "\\%") || strings.IndexFunc(clean, unicode.IsControl) >= 0:
			t.Fatalf("cleanPath(%q) = %q has a refused character", name, clean)
		case !strings.HasPrefix(filepath.Join("/srv/root", clean), "/srv/root/"):
			t.Fatalf("cleanPath(%q) = %q leaves the root", name, clean)
		}
		for elem := range strings.SplitSeq(clean, "/") {
			if elem == ".." || elem == "." || elem == "" {
				t.Fatalf("cleanPath(%q) = %q has element %q", name, clean, elem)
			}
		}
		if again, err := cleanPath(clean); err != nil || again != clean {
			t.Fatalf("cleanPath(%q) = %q, but cleanPath(%q) = %q, %v", name, clean, clean, again, err)
		}
	})
}

// FuzzRequest sends each input as one datagram to a live server whose root
// holds ipxe.efi and sits next to a secret file. The server must not crash,
// must answer every read and write request with ERROR, DATA or OACK, and must
// only ever send data for a name that the path rules accept.
func FuzzRequest(f *testing.F) {
	seeds := [][]byte{
		// iPXE and OVMF (EDK2 Mtftp4) read requests.
		rrq("ipxe.efi", "octet", "blksize", "1432", "tsize", "0"),
		rrq("snponly.efi", "octet", "tsize", "0", "blksize", "1468", "windowsize", "4"),
		rrq("ipxe.efi", "octet"),
		rrq("ipxe.efi", "netascii"),
		rrq("IPXE.EFI", "OCTET", "BLKSIZE", "8192"),
		rrq("ipxe.efi", "octet", "blksize", "1", "tsize", "-5"),
		rrq("ipxe.efi", "octet", "blksize", "99999999999999999999"),
		rrq("ipxe.efi", "octet", "tsize", strings.Repeat("9", 400)),
		rrq("../secret", "octet"),
		rrq("/etc/passwd", "octet"),
		rrq("%2e%2e/secret", "octet"),
		rrq("ipxe.efi\x00../secret", "octet"),
		append([]byte{0, 2}, rrq("ipxe.efi", "octet")[2:]...),
		{0, 1}, {0, 1, 0}, {0, 1, 'a'}, {0, 3, 0, 1, 'x'}, {0, 4, 0, 0}, {0, 5, 0, 1, 'x', 0}, {0, 6, 'a', 0},
		{0xff, 0xff}, {0, 1, 'i', 'p', 'x'},
	}
	for _, s := range seeds {
		f.Add(s)
	}
	dir := f.TempDir()
	root := filepath.Join(dir, "root")
	randomFile(f, root, "ipxe.efi", 3000)
	randomFile(f, dir, "secret", 10)
	s, err := New(Config{Root: root, Timeout: 100 * time.Millisecond, Retries: 1})
	if err != nil {
		f.Fatal(err)
	}
	conn, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, conn) }()
	f.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			f.Errorf("Serve: %v", err)
		}
	})
	server := conn.LocalAddr().(*net.UDPAddr)

	f.Fuzz(func(t *testing.T, pkt []byte) {
		if len(pkt) > 512 {
			pkt = pkt[:512] // a request datagram; pin/tftp reads 516 bytes
		}
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.WriteTo(pkt, server); err != nil {
			t.Fatal(err)
		}
		// pin/tftp drops what is not a request with a NUL-terminated name
		// (counted as malformed_packet): nothing to wait for.
		if len(pkt) < 4 || pkt[0] != 0 || (pkt[1] != 1 && pkt[1] != 2) || bytes.IndexByte(pkt[2:], 0) < 0 {
			return
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 65536)
		n, from, err := c.ReadFromUDP(buf)
		if err != nil {
			t.Fatalf("request % x got no answer: %v", pkt, err)
		}
		reply := buf[:n]
		if n < 2 {
			t.Fatalf("reply % x is too short", reply)
		}
		op := binary.BigEndian.Uint16(reply)
		if op == 5 {
			return
		}
		if op != 3 && op != 6 {
			t.Fatalf("request % x: reply opcode %d, want DATA, OACK or ERROR", pkt, op)
		}
		// pin/tftp takes the name up to the first NUL.
		name, _, _ := bytes.Cut(pkt[2:], []byte{0})
		clean, err := cleanPath(string(name))
		if pkt[1] == 2 || err != nil {
			t.Fatalf("request % x was answered with opcode %d", pkt, op)
		}
		if _, err := os.Stat(filepath.Join(root, clean)); err != nil {
			t.Fatalf("request % x was answered with data for %q: %v", pkt, clean, err)
		}
		// End the transfer rather than leave it waiting for an ACK.
		c.WriteTo([]byte{0, 5, 0, 0, 'd', 'o', 'n', 'e', 0}, from)
	})
}
