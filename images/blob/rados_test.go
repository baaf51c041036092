//go:build ceph

package blob

import (
	"bytes"
	"context"
	"errors"
	"os"
	"testing"

	"github.com/ceph/go-ceph/rados"
)

// radosHarness gives each test its own RADOS namespace in $CEPH_POOL, with
// small chunks so that blobs span several data objects.
func radosHarness(t *testing.T, opts Options) harness {
	conf, pool := os.Getenv("CEPH_CONF"), os.Getenv("CEPH_POOL")
	if conf == "" {
		t.Skip("CEPH_CONF is not set: start a cluster with ../shared/ceph/ceph-up.sh (hack/test-ceph.sh does)")
	}
	if pool == "" {
		pool = "testpool"
	}
	const chunk = 64 << 10
	ns := "mdc-test-" + newPutID()
	st, err := NewRADOS(context.Background(), RADOSConfig{Pool: pool, Namespace: ns, ChunkSize: chunk}, opts)
	if err != nil {
		t.Fatal(err)
	}
	s := st.(*RADOS)
	t.Cleanup(func() {
		names, _ := s.objects(context.Background())
		for _, n := range names {
			s.ioctx.Delete(n)
		}
		s.Close()
	})
	return harness{Store: s, Backend: BackendRADOS, Chunk: chunk, Corrupt: func(t *testing.T, d Digest, off int64) {
		h, _, err := s.readHead(context.Background(), d)
		if err != nil {
			t.Fatal(err)
		}
		oid, at := dataOID(h.Data, int(off/h.ChunkSize)), uint64(off%h.ChunkSize)
		b := []byte{0}
		if _, err := s.ioctx.Read(oid, b, at); err != nil {
			t.Fatal(err)
		}
		b[0] ^= 0x40
		if err := s.ioctx.Write(oid, b, at); err != nil {
			t.Fatal(err)
		}
	}}
}

func TestRADOSStore(t *testing.T) { testStore(t, radosHarness) }

// TestRADOSCrashedImport: data objects written by an import that never made
// its head are invisible, and Scrub removes them once they are old.
func TestRADOSCrashedImport(t *testing.T) {
	h := radosHarness(t, Options{})
	s := h.Store.(*RADOS)
	// What a writer killed before its head leaves behind.
	id := newPutID()
	for i := 0; i < 3; i++ {
		if err := s.ioctx.WriteFull(dataOID(id, i), randBytes(t, h.Chunk)); err != nil {
			t.Fatal(err)
		}
	}
	if got := list(t, s); len(got) != 0 {
		t.Fatalf("Walk lists %v with only orphan data objects, want nothing", got)
	}
	rep, err := s.Scrub(context.Background())
	if err != nil || rep.Leftover != 0 {
		t.Fatalf("Scrub = %+v, %v; young orphans must stay (their writer may be alive)", rep, err)
	}
	good := put(t, s, randBytes(t, 2*h.Chunk+1))
	if _, err := s.Open(context.Background(), good.Digest); err != nil {
		t.Fatal(err)
	}
}

// TestRADOSBadHead: a head that is not valid JSON is corrupt, not a crash.
func TestRADOSBadHead(t *testing.T) {
	h := radosHarness(t, Options{})
	s := h.Store.(*RADOS)
	info := put(t, s, []byte("some blob"))
	if err := s.ioctx.WriteFull(headOID(info.Digest), []byte("{not json")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Open(context.Background(), info.Digest); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open with a broken head: %v, want ErrCorrupt", err)
	}
	if ok, _ := s.Has(context.Background(), info.Digest); ok {
		t.Errorf("blob with a broken head still visible")
	}
	if _, err := s.ioctx.Stat(headOID(info.Digest)); !errors.Is(err, rados.ErrNotFound) {
		t.Errorf("head not moved to quarantine: %v", err)
	}
	put(t, s, []byte("some blob"))
	if got := readAll(t, s, info.Digest); !bytes.Equal(got, []byte("some blob")) {
		t.Errorf("re-imported blob reads %q", got)
	}
}
