package images

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/microdc/mdc/images/blob"
	"github.com/microdc/mdc/images/nixsig"
)

type narNode struct {
	Path, Type, Target string
	Exec               bool
	Content            string
}

func readAllNAR(r io.Reader) ([]narNode, *narReader, error) {
	nr := newNARReader(r)
	var out []narNode
	for {
		e, err := nr.Next()
		if err == io.EOF {
			return out, nr, nil
		}
		if err != nil {
			return out, nr, err
		}
		n := narNode{Path: e.Path, Type: e.Type, Target: e.Target, Exec: e.Executable}
		if e.Type == "regular" {
			b, err := io.ReadAll(nr)
			if err != nil {
				return out, nr, err
			}
			if len(b) <= 64 {
				n.Content = string(b)
			} else {
				n.Content = "sha256:" + blobSum(b)
			}
		}
		out = append(out, n)
	}
}

func blobSum(b []byte) string { return blob.Sum(b).Hex() }

// TestNARReaderReadsWhatNixWrote reads the NAR that Nix itself exported
// for the signed test image and checks the hash against Nix's .narinfo.
func TestNARReaderReadsWhatNixWrote(t *testing.T) {
	b := readReal(t, "image.nar")
	nodes, nr, err := readAllNAR(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, n := range nodes {
		paths = append(paths, n.Path+" "+n.Type)
	}
	want := []string{"/ directory", "/bzImage regular", "/initrd regular", "/kernel symlink", "/netboot.ipxe regular",
		"/nix-support directory", "/nix-support/join regular", "/nix-support/mdc-image.json regular"}
	if diff := cmp.Diff(want, paths); diff != "" {
		t.Fatalf("nodes (-want +got):\n%s", diff)
	}
	if nodes[3].Target != "bzImage" || !nodes[6].Exec || nodes[2].Content != "pretend cpio archive\n" {
		t.Errorf("nodes %+v", nodes)
	}
	ni, err := nixsig.ParseNarInfo(bytes.NewReader(readReal(t, "image.narinfo")))
	if err != nil {
		t.Fatal(err)
	}
	sum, size := nr.Sum()
	if sum != ni.NarHash || size != ni.NarSize {
		t.Fatalf("NAR hash %s size %d, Nix says %s %d", nixsig.FormatNarHash(sum), size, ni.NarHashString(), ni.NarSize)
	}
}

// TestWriteNARRoundTrip: what WriteNAR (go-nix's dumper) writes, the reader
// reads back, and its hash is nixsig's NAR hash of the directory.
func TestWriteNARRoundTrip(t *testing.T) {
	dir := netbootDir(t, 11, "ipfs")
	if err := os.WriteFile(filepath.Join(dir, "x.narinfo"), []byte("left out"), 0o644); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := WriteNAR(&buf, dir); err != nil {
		t.Fatal(err)
	}
	nodes, nr, err := readAllNAR(bytes.NewReader(buf.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if n.Type != "regular" {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, n.Path))
		if err != nil {
			t.Fatalf("%s: %v", n.Path, err)
		}
		if want := (narNode{Content: string(b)}).Content; len(b) <= 64 && n.Content != want || len(b) > 64 && n.Content != "sha256:"+blobSum(b) {
			t.Errorf("%s: content differs", n.Path)
		}
		if strings.HasSuffix(n.Path, ".narinfo") {
			t.Errorf("%s was serialised", n.Path)
		}
	}
	wantSum, wantSize, err := nixsig.NarHashPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	if sum, size := nr.Sum(); sum != wantSum || size != wantSize || size != uint64(buf.Len()) {
		t.Fatalf("reader: %x %d; nixsig: %x %d; bytes %d", sum, size, wantSum, wantSize, buf.Len())
	}
}

// narStr is one NAR string: length, bytes, zero padding to 8.
func narStr(s string) []byte {
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(s)))
	b = append(b, s...)
	return append(b, make([]byte, padding(uint64(len(s))))...)
}

func narOf(tokens ...string) []byte {
	var b []byte
	for _, t := range tokens {
		b = append(b, narStr(t)...)
	}
	return b
}

func TestNARReaderRefusesBadArchives(t *testing.T) {
	file := func(name, content string) []string {
		return []string{"entry", "(", "name", name, "node", "(", "type", "regular", "contents", content, ")", ")"}
	}
	dir := func(entries ...[]string) []byte {
		toks := []string{"nix-archive-1", "(", "type", "directory"}
		for _, e := range entries {
			toks = append(toks, e...)
		}
		return narOf(append(toks, ")")...)
	}
	good := dir(file("a", "1"), file("b", "22"))
	if _, _, err := readAllNAR(bytes.NewReader(good)); err != nil {
		t.Fatalf("the good archive: %v", err)
	}
	badPad := bytes.Clone(good)
	badPad[len(narOf("nix-archive-1", "(", "type", "directory", "entry", "(", "name", "a", "node", "(", "type", "regular", "contents"))+8+1] = 1
	tests := map[string][]byte{
		"wrong magic":      narOf("nix-archive-2", "(", "type", "regular", "contents", "x", ")"),
		"truncated":        good[:len(good)-5],
		"trailing data":    append(bytes.Clone(good), 0),
		"unsorted":         dir(file("b", "1"), file("a", "2")),
		"duplicate":        dir(file("a", "1"), file("a", "2")),
		"slash in name":    dir(file("a/b", "1")),
		"dot-dot":          dir(file("..", "1")),
		"unknown type":     narOf("nix-archive-1", "(", "type", "fifo", ")"),
		"non-zero padding": badPad,
		"huge string":      append(narOf("nix-archive-1", "("), binary.LittleEndian.AppendUint64(nil, 1<<40)...),
		"huge file":        append(narOf("nix-archive-1", "(", "type", "regular", "contents"), binary.LittleEndian.AppendUint64(nil, 1<<63)...),
		"empty":            nil,
	}
	for name, b := range tests {
		t.Run(name, func(t *testing.T) {
			_, _, err := readAllNAR(bytes.NewReader(b))
			if !errors.Is(err, ErrBadNAR) {
				t.Fatalf("got %v, want ErrBadNAR", err)
			}
		})
	}
}

func FuzzNARReader(f *testing.F) {
	f.Add(readRealF(f, "image.nar"))
	f.Add(narOf("nix-archive-1", "(", "type", "symlink", "target", "x", ")"))
	f.Add(narOf("nix-archive-1", "(", "type", "regular", "executable", "", "contents", "abc", ")"))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, nr, err := readAllNAR(bytes.NewReader(b))
		if err != nil {
			if !errors.Is(err, ErrBadNAR) {
				t.Fatalf("error does not wrap ErrBadNAR: %v", err)
			}
			return
		}
		if _, size := nr.Sum(); size != uint64(len(b)) {
			t.Fatalf("accepted %d bytes but hashed %d", len(b), size)
		}
	})
}

func FuzzParseNetbootIPXE(f *testing.F) {
	f.Add([]byte("#!ipxe\nkernel bzImage init=/nix/store/x-nixos-system/init initrd=initrd loglevel=4 ${cmdline}\ninitrd initrd\nboot\n"))
	f.Add([]byte("#!ipxe\nkernel --name k -a Image init=/init\ninitrd --name=i initrd\ninitrd extra.cpio\nboot\n"))
	f.Add([]byte("#!ipxe\nchain http://x/\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		nb, err := ParseNetbootIPXE(b)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error does not wrap ErrInvalid: %v", err)
			}
			return
		}
		if plainName(nb.Kernel) != nil || nb.Init == "" || len(nb.Initrds) == 0 || strings.Contains(nb.Cmdline, "${") {
			t.Fatalf("accepted %q as %+v", b, nb)
		}
		for _, i := range nb.Initrds {
			if plainName(i) != nil {
				t.Fatalf("initrd %q accepted", i)
			}
		}
	})
}

func TestParseNetbootIPXE(t *testing.T) {
	tests := map[string]struct {
		script string
		want   Netboot
		err    string
	}{
		"nixos": {script: "#!ipxe\n# comment\nkernel bzImage init=/nix/store/abc-nixos-system/init initrd=initrd loglevel=4 ${cmdline}\ninitrd initrd\nboot\n",
			want: Netboot{Kernel: "bzImage", Initrds: []string{"initrd"}, Init: "/nix/store/abc-nixos-system/init",
				Cmdline: "init=/nix/store/abc-nixos-system/init initrd=initrd loglevel=4"}},
		"options and two initrds": {script: "#!ipxe\nkernel --name k Image init=/init\ninitrd --name a a.cpio\ninitrd b.cpio\n",
			want: Netboot{Kernel: "Image", Initrds: []string{"a.cpio", "b.cpio"}, Init: "/init", Cmdline: "init=/init"}},
		"no shebang":      {script: "kernel bzImage init=/init\n", err: "line 1"},
		"url":             {script: "#!ipxe\nkernel http://evil/bzImage init=/init\ninitrd initrd\n", err: "not a plain file name"},
		"path":            {script: "#!ipxe\nkernel ../bzImage init=/init\ninitrd initrd\n", err: "not a plain file name"},
		"other variable":  {script: "#!ipxe\nkernel bzImage init=/init ip=${ip}\ninitrd initrd\n", err: "iPXE variable"},
		"chain":           {script: "#!ipxe\nchain http://x/\n", err: `line 2: command "chain"`},
		"two kernels":     {script: "#!ipxe\nkernel a init=/i\nkernel b init=/i\n", err: "second kernel"},
		"no initrd":       {script: "#!ipxe\nkernel bzImage init=/init\nboot\n", err: "no initrd"},
		"initrd with arg": {script: "#!ipxe\nkernel bzImage init=/init\ninitrd initrd x=y\n", err: "one file"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := ParseNetbootIPXE([]byte(tc.script))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %v, want an error saying %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func readRealF(f *testing.F, name string) []byte {
	b, err := os.ReadFile(filepath.Join(realData, name))
	if err != nil {
		f.Fatal(err)
	}
	return b
}
