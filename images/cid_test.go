package images

import (
	"bytes"
	"context"
	"encoding/binary"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/ipfs/go-cid"
	mh "github.com/multiformats/go-multihash"
)

// cidSizes are file sizes around the chunker's and the tree's edges: one
// raw block, one level of 2..174 leaves, and two levels.
var cidSizes = []int{0, 1, cidChunkSize - 1, cidChunkSize, cidChunkSize + 1, 3<<20 + 17,
	cidMaxLinks * cidChunkSize, cidMaxLinks*cidChunkSize + 1}

func cidTestFile(t *testing.T, dir string, size int) string {
	t.Helper()
	rng := rand.New(rand.NewPCG(uint64(size), 42))
	b := make([]byte, size)
	for i := 0; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], rng.Uint64())
	}
	for i := len(b) &^ 7; i < len(b); i++ {
		b[i] = byte(rng.Uint32())
	}
	p := filepath.Join(dir, "f"+strconv.Itoa(size))
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// ipfsBinary finds kubo's ipfs: $MDC_IPFS, the repository's bin/ipfs (make
// tools builds it from hack/tools), or PATH.
func ipfsBinary(t *testing.T) string {
	if p := os.Getenv("MDC_IPFS"); p != "" {
		return p
	}
	if p, err := filepath.Abs(filepath.Join("..", "bin", "ipfs")); err == nil {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := exec.LookPath("ipfs"); err == nil {
		return p
	}
	t.Skip("kubo's ipfs binary not found (bin/ipfs, MDC_IPFS or PATH): build it with " +
		"`make tools` (cd hack/tools && go build -o ../../bin/ipfs github.com/ipfs/kubo/cmd/ipfs) to compare CIDs with kubo")
	return ""
}

// TestCIDMatchesKubo compares ComputeCID with what kubo prints for
// `ipfs add --cid-version=1 --only-hash --raw-leaves --chunker=size-262144`.
func TestCIDMatchesKubo(t *testing.T) {
	ipfs := ipfsBinary(t)
	dir := t.TempDir()
	repo := filepath.Join(dir, "repo")
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(ipfs, args...)
		cmd.Env = append(os.Environ(), "IPFS_PATH="+repo)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("ipfs %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return strings.TrimSpace(string(out))
	}
	t.Logf("kubo: %s", run("version", "--all"))
	// A throwaway repository (the test profile: no network, no bootstrap);
	// add --only-hash stores nothing in it.
	run("init", "--profile=test", "--empty-repo")
	for _, size := range cidSizes {
		p := cidTestFile(t, dir, size)
		want := run("add", "--cid-version=1", "--only-hash", "--raw-leaves", "--chunker=size-262144", "--quieter", p)
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		got, err := ComputeCID(context.Background(), f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		if got.CID != want {
			t.Errorf("%d bytes: mdc %s, kubo %s", size, got.CID, want)
		} else {
			t.Logf("%d bytes: %s", size, want)
		}
	}
}

// TestCIDIndependent computes the CIDs of files of up to 174 chunks a
// second way, from the specs rather than boxo: a raw block's CID is
// CIDv1(raw, sha2-256(bytes)); a larger file is one dag-pb node linking its
// raw leaves, with a UnixFS File header giving the sizes.
func TestCIDIndependent(t *testing.T) {
	dir := t.TempDir()
	for _, size := range cidSizes[:len(cidSizes)-1] {
		b, err := os.ReadFile(cidTestFile(t, dir, size))
		if err != nil {
			t.Fatal(err)
		}
		got, err := ComputeCID(context.Background(), bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		if want := specCID(t, b); got.CID != want {
			t.Errorf("%d bytes: ComputeCID %s, from the specs %s", size, got.CID, want)
		}
	}
	want := IPFS{Chunker: "size-262144", Layout: "balanced", MaxLinks: 174, RawLeaves: true}
	if got := CIDSettings(); got != want {
		t.Errorf("settings %+v", got)
	}
}

func specCID(t *testing.T, b []byte) string {
	raw := func(p []byte) cid.Cid {
		h, err := mh.Sum(p, mh.SHA2_256, -1)
		if err != nil {
			t.Fatal(err)
		}
		return cid.NewCidV1(cid.Raw, h)
	}
	if len(b) <= cidChunkSize {
		return raw(b).String()
	}
	if len(b) > cidMaxLinks*cidChunkSize {
		t.Fatalf("specCID handles one level only")
	}
	// dag-pb (https://ipld.io/specs/codecs/dag-pb/spec/): Links (field 2)
	// are written before Data (field 1); each PBLink is Hash (1), Name (2,
	// empty), Tsize (3). UnixFS Data: Type (1) = File (2), filesize (3),
	// blocksizes (4), one per leaf.
	var node, unixfs []byte
	unixfs = protoVarint(unixfs, 1, 2)
	unixfs = protoVarint(unixfs, 3, uint64(len(b)))
	for off := 0; off < len(b); off += cidChunkSize {
		chunk := b[off:min(off+cidChunkSize, len(b))]
		var link []byte
		link = protoBytes(link, 1, raw(chunk).Bytes())
		link = protoBytes(link, 2, nil)
		link = protoVarint(link, 3, uint64(len(chunk)))
		node = protoBytes(node, 2, link)
		unixfs = protoVarint(unixfs, 4, uint64(len(chunk)))
	}
	node = protoBytes(node, 1, unixfs)
	h, err := mh.Sum(node, mh.SHA2_256, -1)
	if err != nil {
		t.Fatal(err)
	}
	return cid.NewCidV1(cid.DagProtobuf, h).String()
}

func protoVarint(b []byte, field int, v uint64) []byte {
	b = binary.AppendUvarint(b, uint64(field)<<3)
	return binary.AppendUvarint(b, v)
}

func protoBytes(b []byte, field int, v []byte) []byte {
	b = binary.AppendUvarint(b, uint64(field)<<3|2)
	b = binary.AppendUvarint(b, uint64(len(v)))
	return append(b, v...)
}
