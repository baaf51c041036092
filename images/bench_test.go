package images

import (
	"context"
	"crypto/rand"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/microdc/mdc/images/blob"
	"github.com/microdc/mdc/images/nixsig"
)

// benchFile writes size random bytes once per benchmark.
func benchFile(b *testing.B, size int64) string {
	b.Helper()
	p := filepath.Join(b.TempDir(), "initrd")
	f, err := os.Create(p)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := io.CopyN(f, rand.Reader, size); err != nil {
		b.Fatal(err)
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	return p
}

// BenchmarkImportFile is what an import does with one file: the blob
// store's Put (hash, write, fsync, rename) and the CID, from one pass over
// the bytes. hack/bench-images.sh compares its MB/s with sha256sum's.
func BenchmarkImportFile(b *testing.B) {
	for _, bc := range []struct {
		name string
		cid  bool
		put  bool
	}{{"cid", true, false}, {"put", false, true}, {"put+cid", true, true}} {
		b.Run(bc.name, func(b *testing.B) {
			const size = 256 << 20
			p := benchFile(b, size)
			store, err := blob.NewLocal(filepath.Join(b.TempDir(), "blobs"), blob.Options{})
			if err != nil {
				b.Fatal(err)
			}
			im := &Importer{store: store, log: slog.New(slog.DiscardHandler)}
			ctx := context.Background()
			b.SetBytes(size)
			b.ResetTimer()
			for range b.N {
				f, err := os.Open(p)
				if err != nil {
					b.Fatal(err)
				}
				switch {
				case bc.cid && bc.put:
					var fi File
					if fi, err = im.put(ctx, "initrd", f); err == nil {
						err = store.Delete(ctx, fi.Digest) // the next round stores again
					}
				case bc.cid:
					_, err = ComputeCID(ctx, f)
				default:
					var info blob.Info
					if info, err = store.Put(ctx, f, blob.Digest{}); err == nil {
						err = store.Delete(ctx, info.Digest)
					}
				}
				f.Close()
				if err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkImportDir is a whole netboot-directory import as mdc serve does
// it: NAR serialisation, the streaming NAR reader, Put and CID of every
// file, the catalog. The same directory each round: the blobs exist after
// the first, the catalog is unchanged, the bytes still take the full path.
func BenchmarkImportDir(b *testing.B) {
	const size = 256 << 20
	dir := b.TempDir()
	if err := os.Rename(benchFile(b, size), filepath.Join(dir, "initrd")); err != nil {
		b.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "bzImage"), []byte("kernel"), 0o644)
	os.WriteFile(filepath.Join(dir, "netboot.ipxe"), []byte("#!ipxe\nkernel bzImage init=/init\ninitrd initrd\nboot\n"), 0o644)
	e := startEnv(b, b.TempDir(), nixsig.Policy{})
	ctx := context.Background()
	b.SetBytes(size)
	b.ResetTimer()
	for range b.N {
		if _, err := e.imp.ImportDir(ctx, Request{Name: "bench", Role: "bench"}, dir); err != nil {
			b.Fatal(err)
		}
	}
}
