package images

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/microdc/mdc/events"
	"github.com/microdc/mdc/images/blob"
	"github.com/microdc/mdc/images/nixsig"
	"github.com/microdc/mdc/machine"
)

// env is an embedded NATS on a data directory with a catalog, a local blob
// store and an importer, as mdc serve builds them.
type env struct {
	dir     string
	conn    *events.Conn
	cat     *Catalog
	store   *blob.Local
	imp     *Importer
	users   *users
	stop    func()
	stopped bool
}

// users is a settable InUseFunc: the machines that use which image.
type users struct {
	mu sync.Mutex
	m  []machine.Machine
}

func (u *users) set(ms ...machine.Machine) {
	u.mu.Lock()
	u.m = ms
	u.mu.Unlock()
}

func (u *users) list() []machine.Machine {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.m
}

func startEnv(t testing.TB, dir string, policy nixsig.Policy) *env {
	t.Helper()
	ctx := context.Background()
	conn, err := events.Connect(ctx, events.NATSConfig{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	u := &users{}
	cat, err := OpenCatalog(ctx, conn.NC, CatalogConfig{Source: "test", InUse: MachinesUsing(u.list)})
	if err != nil {
		conn.Close()
		t.Fatal(err)
	}
	store, err := blob.NewLocal(filepath.Join(dir, "blobs"), blob.Options{})
	if err != nil {
		conn.Close()
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- cat.Run(runCtx) }()
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	defer wcancel()
	if err := cat.WaitReady(wctx); err != nil {
		cancel()
		conn.Close()
		t.Fatalf("catalog not ready: %v", err)
	}
	e := &env{dir: dir, conn: conn, cat: cat, store: store, imp: NewImporter(store, cat, policy, nil), users: u}
	var once sync.Once
	e.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("catalog run: %v", err)
			}
			conn.Close()
			e.stopped = true
		})
	}
	t.Cleanup(e.stop)
	return e
}

func (e *env) lastSeq(t testing.TB) uint64 {
	t.Helper()
	info, err := e.cat.stream.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.LastSeq
}

// netbootDir writes a directory shaped like the flake's netboot-<role>
// output: a kernel and an initrd big enough to span several CID chunks,
// NixOS's netboot.ipxe, nix-support/mdc-image.json, and a `kernel` symlink.
func netbootDir(t *testing.T, seed uint64, role string) string {
	t.Helper()
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(seed, 7))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	files := map[string][]byte{
		"bzImage": random(700 << 10),
		"initrd":  random(1<<20 + 12345),
		"netboot.ipxe": []byte("#!ipxe\n# Use the cmdline variable to allow the user to specify custom kernel params\n" +
			"# when chainloading this script from other iPXE scripts like netboot.xyz\n" +
			"kernel bzImage init=/nix/store/q8a4b7r0m0j1n2k3l4z5x6c7v8b9n0m1-nixos-system-" + role + "-25.05/init initrd=initrd console=ttyS0,115200 panic=30 ${cmdline}\n" +
			"initrd initrd\nboot\n"),
		"nix-support/mdc-image.json": []byte(`{"format":1,"name":"` + role + `-25.05.20250601.abcdef0","role":"` + role + `","system":"x86_64-linux"}`),
	}
	for name, b := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o444); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("bzImage", filepath.Join(dir, "kernel")); err != nil {
		t.Fatal(err)
	}
	return dir
}

func sha(t *testing.T, path string) blob.Digest {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return blob.Digest(sha256.Sum256(b))
}

func TestImportNetbootDir(t *testing.T) {
	e := startEnv(t, t.TempDir(), nixsig.Policy{})
	ctx := context.Background()
	dir := netbootDir(t, 1, "ceph-osd")

	res, err := e.imp.ImportDir(ctx, Request{ImportedBy: "tester@host"}, dir)
	if err != nil {
		t.Fatal(err)
	}
	img := res.Image
	if !res.Added || img.Name != "ceph-osd-25.05.20250601.abcdef0" || img.Role != "ceph-osd" || img.ImportedBy != "tester@host" {
		t.Fatalf("result %+v", res)
	}
	wantCmdline := "init=/nix/store/q8a4b7r0m0j1n2k3l4z5x6c7v8b9n0m1-nixos-system-ceph-osd-25.05/init initrd=initrd console=ttyS0,115200 panic=30"
	if img.Cmdline != wantCmdline {
		t.Errorf("cmdline %q, want %q", img.Cmdline, wantCmdline)
	}
	if img.Kernel.Name != "bzImage" || img.Kernel.Digest != sha(t, filepath.Join(dir, "bzImage")) || img.Kernel.Size != 700<<10 {
		t.Errorf("kernel %+v", img.Kernel)
	}
	if len(img.Initrds) != 1 || img.Initrds[0].Digest != sha(t, filepath.Join(dir, "initrd")) {
		t.Fatalf("initrds %+v", img.Initrds)
	}
	if img.Nix != nil {
		t.Errorf("no .narinfo came, but Nix is %+v", img.Nix)
	}
	// Every file is in the store, byte for byte, with its CID.
	for _, f := range img.Files() {
		b, err := e.store.Open(ctx, f.Digest)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(b)
		b.Close()
		want, _ := os.ReadFile(filepath.Join(dir, f.Name))
		if !bytes.Equal(got, want) {
			t.Errorf("%s: stored content differs", f.Name)
		}
		wantCID, err := ComputeCID(ctx, bytes.NewReader(want))
		if err != nil {
			t.Fatal(err)
		}
		if f.IPFS == nil || *f.IPFS != wantCID || !strings.HasPrefix(f.IPFS.CID, "bafybei") {
			t.Errorf("%s: ipfs %+v, want %+v", f.Name, f.IPFS, wantCID)
		}
	}
	got, ok := e.cat.Get(img.Name)
	if !ok || !cmp.Equal(got, img) {
		t.Fatalf("catalog has %+v", got)
	}
	if cur, ok := e.cat.Current("ceph-osd"); !ok || cur.Name != img.Name {
		t.Errorf("current ceph-osd image %+v", cur)
	}
	// The event is CloudEvents JSON on mdc.image.<name with _>.imported.
	hist, err := e.cat.History(ctx, img.Name)
	if err != nil || len(hist) != 1 || hist[0].Type != Imported || hist[0].Source != "test" {
		t.Fatalf("history %+v, %v", hist, err)
	}
	if s := Subject(img.Name, Imported); s != "mdc.image.ceph-osd-25_05_20250601_abcdef0.imported" {
		t.Errorf("subject %s", s)
	}
}

func TestReimportChangesNothing(t *testing.T) {
	e := startEnv(t, t.TempDir(), nixsig.Policy{})
	ctx := context.Background()
	dir := netbootDir(t, 2, "nats")
	first, err := e.imp.ImportDir(ctx, Request{}, dir)
	if err != nil {
		t.Fatal(err)
	}
	seq := e.lastSeq(t)
	again, err := e.imp.ImportDir(ctx, Request{ImportedBy: "someone else"}, dir)
	if err != nil {
		t.Fatal(err)
	}
	if again.Added || !cmp.Equal(again.Image, first.Image) {
		t.Fatalf("re-import: added %v, image %+v, want the first %+v", again.Added, again.Image, first.Image)
	}
	if got := e.lastSeq(t); got != seq {
		t.Fatalf("re-import appended %d events", got-seq)
	}
	// Other content under the same name is refused; under a new name it is
	// a new image.
	other := netbootDir(t, 3, "nats")
	_, err = e.imp.ImportDir(ctx, Request{}, other)
	if !errors.Is(err, ErrExists) {
		t.Fatalf("other content, same name: %v", err)
	}
	res, err := e.imp.ImportDir(ctx, Request{Name: "nats-2"}, other)
	if err != nil || !res.Added {
		t.Fatalf("new name: %+v %v", res, err)
	}
	if cur, _ := e.cat.Current("nats"); cur.Name != "nats-2" {
		t.Errorf("current nats image is %s, want the newest, nats-2", cur.Name)
	}
}

func TestDeleteRefusedWhileInUse(t *testing.T) {
	e := startEnv(t, t.TempDir(), nixsig.Policy{})
	ctx := context.Background()
	old, err := e.imp.ImportDir(ctx, Request{Name: "osd-1"}, netbootDir(t, 4, "ceph-osd"))
	if err != nil {
		t.Fatal(err)
	}
	cur, err := e.imp.ImportDir(ctx, Request{Name: "osd-2"}, netbootDir(t, 5, "ceph-osd"))
	if err != nil {
		t.Fatal(err)
	}
	e.users.set(
		machine.Machine{ID: "525400000001", State: machine.Running, Role: "ceph-osd", Image: old.Image.Name},
		machine.Machine{ID: "525400000002", State: machine.StRetired, Role: "ceph-osd", Image: cur.Image.Name},
	)
	seq := e.lastSeq(t)
	// osd-1 is named by a running machine's boot; osd-2 is the role's
	// current image and the running machine has that role.
	for _, name := range []string{"osd-1", "osd-2"} {
		_, err := e.cat.Delete(ctx, name, DeletedData{By: "test"})
		if !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), "525400000001") {
			t.Fatalf("delete %s: %v, want in use by 525400000001", name, err)
		}
	}
	if e.lastSeq(t) != seq {
		t.Fatal("a refused delete appended an event")
	}
	if u, _ := e.cat.Usage("osd-2"); !u.Current || len(u.UsedBy) != 1 {
		t.Errorf("usage of osd-2: %+v", u)
	}
	// The machine is retired: nothing uses either image now.
	e.users.set(machine.Machine{ID: "525400000001", State: machine.StRetired, Role: "ceph-osd", Image: "osd-1"})
	if _, err := e.cat.Delete(ctx, "osd-1", DeletedData{By: "test", Reason: "old"}); err != nil {
		t.Fatal(err)
	}
	if _, ok := e.cat.Get("osd-1"); ok {
		t.Fatal("deleted image still listed")
	}
	if _, err := e.cat.Delete(ctx, "osd-1", DeletedData{}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
	// The blobs stay: another image may share them.
	if ok, _ := e.store.Has(ctx, old.Image.Kernel.Digest); !ok {
		t.Error("delete removed a blob")
	}
	// After a delete the name may carry new content.
	if _, err := e.imp.ImportDir(ctx, Request{Name: "osd-1"}, netbootDir(t, 6, "ceph-osd")); err != nil {
		t.Fatalf("reuse of a deleted name: %v", err)
	}
}

func TestCatalogSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	e := startEnv(t, dir, nixsig.Policy{})
	ctx := context.Background()
	a, err := e.imp.ImportDir(ctx, Request{}, netbootDir(t, 7, "ipfs"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := e.imp.ImportDir(ctx, Request{Name: "gone"}, netbootDir(t, 8, "ipfs"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.cat.Delete(ctx, b.Image.Name, DeletedData{}); err != nil {
		t.Fatal(err)
	}
	before := e.cat.List("")
	e.stop()

	e2 := startEnv(t, dir, nixsig.Policy{})
	after := e2.cat.List("")
	if diff := cmp.Diff(before, after); diff != "" {
		t.Fatalf("catalog after restart differs (-before +after):\n%s", diff)
	}
	if len(after) != 1 || after[0].Name != a.Image.Name {
		t.Fatalf("after restart: %+v", after)
	}
	// The replayed catalog still knows the image: a re-import is a no-op.
	res, err := e2.imp.ImportDir(ctx, Request{}, netbootDir(t, 7, "ipfs"))
	if err != nil || res.Added {
		t.Fatalf("re-import after restart: %+v %v", res, err)
	}
}

// Two writers adding one name at once: exactly one event, both see it.
func TestConcurrentAddsOfOneImage(t *testing.T) {
	e := startEnv(t, t.TempDir(), nixsig.Policy{})
	ctx := context.Background()
	res, err := e.imp.ImportDir(ctx, Request{Name: "tmp"}, netbootDir(t, 9, "nats"))
	if err != nil {
		t.Fatal(err)
	}
	img := res.Image
	img.Name, img.Seq = "race", 0
	seq := e.lastSeq(t)
	var wg sync.WaitGroup
	added := make(chan bool, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, ok, err := e.cat.Add(ctx, img)
			if err != nil {
				t.Error(err)
			}
			added <- ok
		}()
	}
	wg.Wait()
	close(added)
	n := 0
	for ok := range added {
		if ok {
			n++
		}
	}
	if n != 1 || e.lastSeq(t) != seq+1 {
		t.Fatalf("%d writers added, %d events appended; want 1 and 1", n, e.lastSeq(t)-seq)
	}
}

func TestImportFiles(t *testing.T) {
	e := startEnv(t, t.TempDir(), nixsig.Policy{})
	ctx := context.Background()
	kernel, initrd1, initrd2 := []byte("kernel bytes"), []byte("first initrd"), bytes.Repeat([]byte("x"), 300<<10)
	parts := []FilePart{{"vmlinuz", bytes.NewReader(kernel)}, {"initrd.img", bytes.NewReader(initrd1)}, {"agent.cpio", bytes.NewReader(initrd2)}}
	next := func() (FilePart, error) {
		if len(parts) == 0 {
			return FilePart{}, io.EOF
		}
		p := parts[0]
		parts = parts[1:]
		return p, nil
	}
	res, err := e.imp.ImportFiles(ctx, Request{Name: "debian-test", Role: "commissioning", Cmdline: "console=ttyS0 rdinit=/init"}, next)
	if err != nil {
		t.Fatal(err)
	}
	img := res.Image
	if img.Kernel.Digest != blob.Sum(kernel) || len(img.Initrds) != 2 || img.Initrds[1].Digest != blob.Sum(initrd2) ||
		img.Initrds[0].Name != "initrd.img" || img.Cmdline != "console=ttyS0 rdinit=/init" {
		t.Fatalf("image %+v", img)
	}
	// A file of one chunk is one raw block: its CID is the raw codec's.
	if !strings.HasPrefix(img.Kernel.IPFS.CID, "bafkrei") || !strings.HasPrefix(img.Initrds[1].IPFS.CID, "bafybei") {
		t.Errorf("CIDs %s %s", img.Kernel.IPFS.CID, img.Initrds[1].IPFS.CID)
	}
	// Explicit files carry no signature: refused when one is required,
	// before a byte is stored.
	parts = []FilePart{{"k", strings.NewReader("never stored")}}
	_, err = e.imp.ImportFiles(ctx, Request{Name: "x", Role: "y", Cmdline: "init=/x", RequireSigned: true}, next)
	if !errors.Is(err, nixsig.ErrUntrustedKey) {
		t.Fatalf("require signed without trusted keys: %v", err)
	}
	strict := NewImporter(e.store, e.cat, mustPolicy(t, true), nil)
	_, err = strict.ImportFiles(ctx, Request{Name: "x", Role: "y", Cmdline: "init=/x"}, next)
	if !errors.Is(err, nixsig.ErrUnsigned) {
		t.Fatalf("require-signed server: %v", err)
	}
	if ok, _ := e.store.Has(ctx, blob.Sum([]byte("never stored"))); ok {
		t.Error("a refused import stored a blob")
	}
}

func TestImportRefusesBadDirectories(t *testing.T) {
	e := startEnv(t, t.TempDir(), nixsig.Policy{})
	ctx := context.Background()
	tests := map[string]struct {
		edit func(dir string)
		req  Request
		want string
	}{
		"no netboot.ipxe": {func(d string) { os.Remove(filepath.Join(d, "netboot.ipxe")) }, Request{}, "no netboot.ipxe"},
		"no init=": {func(d string) {
			os.Remove(filepath.Join(d, "netboot.ipxe"))
			os.WriteFile(filepath.Join(d, "netboot.ipxe"), []byte("#!ipxe\nkernel bzImage quiet\ninitrd initrd\nboot\n"), 0o644)
		}, Request{}, "no init="},
		"kernel not in the directory": {func(d string) {
			os.Remove(filepath.Join(d, "netboot.ipxe"))
			os.WriteFile(filepath.Join(d, "netboot.ipxe"), []byte("#!ipxe\nkernel vmlinuz init=/init\ninitrd initrd\nboot\n"), 0o644)
		}, Request{}, "vmlinuz, which is not a file"},
		"wrong role": {func(string) {}, Request{Role: "nats"}, `built for role "ceph-osd"`},
		"bad name":   {func(string) {}, Request{Name: "Bad Name"}, `name "Bad Name"`},
		"cmdline":    {func(string) {}, Request{Cmdline: "quiet"}, "drop --cmdline"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			dir := netbootDir(t, 10, "ceph-osd")
			tc.edit(dir)
			_, err := e.imp.ImportDir(ctx, tc.req, dir)
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), dir) {
				t.Fatalf("got %v, want ErrInvalid mentioning %q and the directory", err, tc.want)
			}
		})
	}
	if n := len(e.cat.List("")); n != 0 {
		t.Fatalf("%d images in the catalog after bad imports", n)
	}
}

func mustPolicy(t *testing.T, requireSigned bool, keys ...string) nixsig.Policy {
	t.Helper()
	if requireSigned && len(keys) == 0 {
		keys = []string{"unrelated-1:" + strings.Repeat("A", 43) + "="}
	}
	p, err := nixsig.NewPolicy(keys, requireSigned)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
