package ipxe

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// /ipxe/<file> serves the iPXE binaries as TFTP does: only regular files in
// the directory, a final symlink followed, every escape refused.
func TestIPXEFiles(t *testing.T) {
	outside := t.TempDir()
	if err := os.WriteFile(filepath.Join(outside, "secret"), []byte("secret"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(outside, "ipxe.efi"), []byte("linked efi"), 0o644); err != nil {
		t.Fatal(err)
	}
	dir := writeFiles(t, map[string]string{"snponly.efi": "efi binary", "undionly.kpxe": "bios binary"})
	if err := os.Mkdir(filepath.Join(dir, "arm64"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "arm64", "snponly.efi"), []byte("arm efi"), 0o644); err != nil {
		t.Fatal(err)
	}
	// As Debian's package does: ipxe.efi -> /boot/ipxe.efi.
	if err := os.Symlink(filepath.Join(outside, "ipxe.efi"), filepath.Join(dir, "ipxe.efi")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(dir, "out")); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("fifo", filepath.Join(dir, "fifolink")); err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, Config{IPXEDir: dir})
	for path, want := range map[string]struct {
		code int
		body string
	}{
		"/ipxe/snponly.efi":                    {200, "efi binary"},
		"/ipxe/undionly.kpxe":                  {200, "bios binary"},
		"/ipxe/arm64/snponly.efi":              {200, "arm efi"},
		"/ipxe/ipxe.efi":                       {200, "linked efi"},
		"/ipxe/missing.efi":                    {404, "no such iPXE file"},
		"/ipxe/out/secret":                     {403, ""},
		"/ipxe/%2e%2e/secret":                  {400, "'..'"},
		"/ipxe/arm64/%2e%2e/%2e%2e/etc/passwd": {400, "'..'"},
		"/ipxe/a%5cb":                          {400, "character"},
		"/ipxe/a%00b":                          {400, "character"},
		"/ipxe/fifo":                           {403, ""},
		"/ipxe/fifolink":                       {403, ""},
		"/ipxe/arm64":                          {403, ""},
	} {
		code, body := f.get(t, path)
		if code != want.code || !strings.Contains(body, want.body) {
			t.Errorf("GET %s: %d %q, want %d %q", path, code, body, want.code, want.body)
		}
	}
	// Range, as UEFI HTTP boot may ask.
	req := httptestRequest("/ipxe/snponly.efi")
	req.Header.Set("Range", "bytes=4-")
	rec := serveRec(f, req)
	if rec.Code != 206 || rec.Body.String() != "binary" {
		t.Errorf("Range: %d %q", rec.Code, rec.Body)
	}
}
