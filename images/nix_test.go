package images

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/microdc/mdc/images/blob"
	"github.com/microdc/mdc/images/nixsig"
)

// The .narinfo files and keys in ../nixsig/testdata/real were written by a
// live run of Nix (nix-store --add, nix store sign, nix copy; see
// images/nixsig/realnix_test.go) for the directory realNixImage makes,
// byte for byte.
const realData = "nixsig/testdata/real"

func readReal(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(realData, name))
	if err != nil {
		t.Fatalf("%v (regenerate with: go test ./images/nixsig -run TestRealNix -update)", err)
	}
	return b
}

// realNixImage writes the netboot-shaped directory that Nix signed in
// images/nixsig's TestRealNix (the same bytes as its makeImage).
func realNixImage(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "image")
	rng := rand.New(rand.NewPCG(1, 2))
	kernel := make([]byte, 8<<10)
	for i := range kernel {
		kernel[i] = byte(rng.Uint32())
	}
	files := map[string]string{
		"bzImage":                    string(kernel),
		"initrd":                     "pretend cpio archive\n",
		"netboot.ipxe":               "#!ipxe\nkernel bzImage init=/nix/store/00000000000000000000000000000000-nixos-system/init loglevel=4\ninitrd initrd\nboot\n",
		"nix-support/mdc-image.json": `{"role":"ceph-osd"}` + "\n",
	}
	for name, body := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "nix-support", "join"), []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("bzImage", filepath.Join(dir, "kernel")); err != nil {
		t.Fatal(err)
	}
	return dir
}

func withNarInfo(t *testing.T, dir, narinfo string) string {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "image.narinfo"), readReal(t, narinfo), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestSignedImports(t *testing.T) {
	trusted := strings.TrimSpace(string(readReal(t, "trusted.pub")))
	const storePath = "/nix/store/68lsgbrq7z42sylqkacdnk4jlh414x3q-image"
	ctx := context.Background()

	t.Run("signed by a trusted key", func(t *testing.T) {
		e := startEnv(t, t.TempDir(), mustPolicy(t, true, trusted))
		dir := withNarInfo(t, realNixImage(t), "image.narinfo")
		res, err := e.imp.ImportDir(ctx, Request{Name: "signed"}, dir)
		if err != nil {
			t.Fatal(err)
		}
		n := res.Image.Nix
		if n == nil || !n.Signed || n.SignedBy != "test-1" || n.StorePath != storePath || n.NarSize != 9816 ||
			n.NarHash != "sha256:07cpdw2i8hnmivp5vg6z0q7wb0yk4dsrs43n1rvxr90hz8ypskk3" || len(n.Signatures) != 2 {
			t.Fatalf("nix record %+v", n)
		}
		if res.Image.Role != "ceph-osd" || res.Image.Cmdline != "init=/nix/store/00000000000000000000000000000000-nixos-system/init loglevel=4" {
			t.Errorf("image %+v", res.Image)
		}
	})

	t.Run("unsigned is refused with require-signed", func(t *testing.T) {
		e := startEnv(t, t.TempDir(), mustPolicy(t, true, trusted))
		_, err := e.imp.ImportDir(ctx, Request{Name: "unsigned"}, realNixImage(t))
		if !errors.Is(err, nixsig.ErrUnsigned) || !strings.Contains(err.Error(), "test-1") {
			t.Fatalf("got %v, want not signed, naming the trusted key", err)
		}
		// Refused before any byte was stored.
		n := 0
		_ = e.store.Walk(ctx, func(blob.Info) error { n++; return nil })
		if n != 0 {
			t.Fatalf("%d blobs stored by a refused import", n)
		}
	})

	t.Run("unsigned passes without require-signed", func(t *testing.T) {
		e := startEnv(t, t.TempDir(), mustPolicy(t, false, trusted))
		res, err := e.imp.ImportDir(ctx, Request{Name: "unsigned"}, realNixImage(t))
		if err != nil || res.Image.Nix != nil {
			t.Fatalf("%+v %v", res.Image.Nix, err)
		}
		// ... unless this import asks for a signature itself.
		_, err = e.imp.ImportDir(ctx, Request{Name: "unsigned-2", RequireSigned: true}, realNixImage(t))
		if !errors.Is(err, nixsig.ErrUnsigned) {
			t.Fatalf("import with require_signed: %v", err)
		}
	})

	t.Run("signed by an unknown key", func(t *testing.T) {
		other := "other-1:" + strings.Repeat("B", 43) + "="
		e := startEnv(t, t.TempDir(), mustPolicy(t, true, other))
		_, err := e.imp.ImportDir(ctx, Request{Name: "x"}, withNarInfo(t, realNixImage(t), "image.narinfo"))
		if !errors.Is(err, nixsig.ErrUntrustedKey) {
			t.Fatalf("got %v", err)
		}
		for _, want := range []string{storePath, "trusted keys: other-1", "signed by: rogue-1, test-1"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not name %q", err, want)
			}
		}
	})

	t.Run("changed image bytes", func(t *testing.T) {
		e := startEnv(t, t.TempDir(), mustPolicy(t, false, trusted))
		dir := withNarInfo(t, realNixImage(t), "image.narinfo")
		if err := os.WriteFile(filepath.Join(dir, "initrd"), []byte("pretend cpio archive, changed\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := e.imp.ImportDir(ctx, Request{Name: "x"}, dir)
		if !errors.Is(err, nixsig.ErrContentMismatch) || !strings.Contains(err.Error(), storePath) || !strings.Contains(err.Error(), dir) {
			t.Fatalf("got %v, want a content mismatch naming the store path and the directory", err)
		}
		if len(e.cat.List("")) != 0 {
			t.Fatal("a changed image reached the catalog")
		}
	})

	t.Run("changed narinfo", func(t *testing.T) {
		e := startEnv(t, t.TempDir(), mustPolicy(t, false, trusted))
		dir := realNixImage(t)
		changed := bytes.Replace(readReal(t, "image.narinfo"), []byte("NarSize: 9816"), []byte("NarSize: 9817"), 1)
		if err := os.WriteFile(filepath.Join(dir, "image.narinfo"), changed, 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := e.imp.ImportDir(ctx, Request{Name: "x"}, dir)
		if !errors.Is(err, nixsig.ErrBadSignature) || !strings.Contains(err.Error(), "test-1") {
			t.Fatalf("got %v, want a bad signature by test-1", err)
		}
	})
}
