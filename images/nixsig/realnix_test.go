package nixsig

import (
	"bytes"
	"errors"
	"flag"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/real/ from a live run of Nix (needs nix-bin)")

// nixStore is a throwaway Nix store driven by Debian's nix-bin, fully
// offline: a chroot store under a temp dir, with config, state, home and
// caches in temp dirs too, so nothing on the host is read or written.
// The recipe is written down in docs/nix.md.
type nixStore struct {
	t     *testing.T
	dir   string
	store string // --store argument
	env   []string
}

func newNixStore(t *testing.T) *nixStore {
	t.Helper()
	for _, bin := range []string{"nix", "nix-store", "nix-instantiate"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s not found: install Debian's nix-bin (hack/install-deps.sh nix) to check signatures against real Nix", bin)
		}
	}
	dir := t.TempDir()
	// Nix makes store paths read-only; let TempDir's cleanup remove them
	// (root ignores the modes, other users do not).
	t.Cleanup(func() {
		_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				_ = os.Chmod(p, 0o755)
			}
			return nil
		})
	})
	for _, d := range []string{"conf", "state", "home", "cache", "config", "tmp"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	conf := "experimental-features = nix-command\nsubstituters =\nbuild-users-group =\nsandbox = false\n"
	if err := os.WriteFile(filepath.Join(dir, "conf", "nix.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	return &nixStore{
		t:     t,
		dir:   dir,
		store: "local?root=" + filepath.Join(dir, "root"),
		env: []string{
			"PATH=" + os.Getenv("PATH"),
			"NIX_CONF_DIR=" + filepath.Join(dir, "conf"),
			"NIX_STATE_DIR=" + filepath.Join(dir, "state"),
			"NIX_LOG_DIR=" + filepath.Join(dir, "state", "log"),
			"NIX_PATH=",
			"HOME=" + filepath.Join(dir, "home"),
			"XDG_CONFIG_HOME=" + filepath.Join(dir, "config"),
			"XDG_CACHE_HOME=" + filepath.Join(dir, "cache"),
			"XDG_DATA_HOME=" + filepath.Join(dir, "home"),
			"XDG_STATE_HOME=" + filepath.Join(dir, "state"),
			"TMPDIR=" + filepath.Join(dir, "tmp"),
		},
	}
}

// run runs a Nix command in the throwaway environment and returns stdout.
func (n *nixStore) run(args ...string) string {
	n.t.Helper()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Dir = n.dir
	cmd.Env = n.env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		n.t.Fatalf("%s: %v\nstderr:\n%s", strings.Join(args, " "), err, errb.String())
	}
	return strings.TrimSpace(out.String())
}

// add copies a file or directory into the store, returning its store path.
func (n *nixStore) add(p string) string {
	return n.run("nix-store", "--store", n.store, "--add", p)
}

// genKey makes a Nix signing key pair; it returns the secret key file and
// the public key text.
func (n *nixStore) genKey(name string) (secFile, pub string) {
	sec := filepath.Join(n.dir, name+".sec")
	pubFile := filepath.Join(n.dir, name+".pub")
	// --store here too: without it nix-store opens (and creates) /nix/store.
	n.run("nix-store", "--store", n.store, "--generate-binary-cache-key", name, sec, pubFile)
	b, err := os.ReadFile(pubFile)
	if err != nil {
		n.t.Fatal(err)
	}
	return sec, strings.TrimSpace(string(b))
}

func (n *nixStore) sign(secFile string, paths ...string) {
	n.run(append([]string{"nix", "--extra-experimental-features", "nix-command",
		"store", "sign", "--store", n.store, "--key-file", secFile}, paths...)...)
}

// export copies paths (and their closures) to an uncompressed file://
// binary cache, the way an image comes with its .narinfo, and returns the
// cache directory.
func (n *nixStore) export(paths ...string) string {
	cache := filepath.Join(n.dir, "export")
	n.run(append([]string{"nix", "--extra-experimental-features", "nix-command",
		"copy", "--store", n.store, "--to", "file://" + cache + "?compression=none"}, paths...)...)
	return cache
}

// makeImage writes a small netboot-like image directory with what NAR
// serialisation must get right: nested directories, an executable bit and
// a symlink. Same bytes every time, so testdata stays valid.
func makeImage(t *testing.T, dir string) {
	t.Helper()
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
}

// realNix is what one live Nix run produced: the .narinfo texts of four
// store paths and the public keys.
type realNix struct {
	trustedPub, roguePub string
	image                string // dir added with nix-store --add: signed by test-1 and rogue-1
	narinfo              map[string][]byte
	nar                  map[string][]byte // uncompressed NARs, by narinfo name
}

// The store paths the live run makes.
const (
	niImage    = "image"    // the image directory, signed by trusted and rogue key
	niRefs     = "refs"     // a file referencing image and other, signed by trusted key
	niRogue    = "other"    // signed only by the rogue key
	niUnsigned = "unsigned" // not signed
)

func runRealNix(t *testing.T) realNix {
	n := newNixStore(t)
	img := filepath.Join(n.dir, "image")
	makeImage(t, img)
	for name, body := range map[string]string{"other": "other\n", "unsigned": "nobody signed me\n"} {
		if err := os.WriteFile(filepath.Join(n.dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	image := n.add(img)
	unsigned := n.add(filepath.Join(n.dir, "unsigned"))
	// builtins.toFile records the string's context as references: this is
	// how a path with references is made without building anything.
	expr := `let img = builtins.storePath "` + image + `"; other = builtins.path { path = ` + filepath.Join(n.dir, "other") + `; name = "other"; }; ` +
		`in builtins.toFile "refs" "kernel ${img}/bzImage init=${other}/init"`
	refs, err := strconv.Unquote(n.run("nix-instantiate", "--store", n.store, "--eval", "--read-write-mode", "--json", "-E", expr))
	if err != nil {
		t.Fatal(err)
	}
	other := n.run("nix-store", "--store", n.store, "--query", "--references", refs)
	other = strings.TrimSpace(strings.Replace(other, image, "", 1))

	trustedSec, trustedPub := n.genKey("test-1")
	rogueSec, roguePub := n.genKey("rogue-1")
	n.sign(trustedSec, image, refs)
	n.sign(rogueSec, image, other)
	cache := n.export(refs, unsigned)

	rn := realNix{trustedPub: trustedPub, roguePub: roguePub, image: img,
		narinfo: map[string][]byte{}, nar: map[string][]byte{}}
	for name, sp := range map[string]string{niImage: image, niRefs: refs, niRogue: other, niUnsigned: unsigned} {
		hashPart, _, _ := strings.Cut(filepath.Base(sp), "-")
		b, err := os.ReadFile(filepath.Join(cache, hashPart+".narinfo"))
		if err != nil {
			t.Fatalf("nix copy wrote no .narinfo for %s: %v", sp, err)
		}
		rn.narinfo[name] = b
		ni, err := ParseNarInfo(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("parsing what Nix wrote for %s: %v\n%s", sp, err, b)
		}
		if rn.nar[name], err = os.ReadFile(filepath.Join(cache, ni.URL)); err != nil {
			t.Fatal(err)
		}
	}
	return rn
}

// TestRealNix checks mdc against what Nix itself signed, in a throwaway
// store. With -update it also refreshes testdata/real/, which the other
// tests and the fuzz seeds read.
func TestRealNix(t *testing.T) {
	_, statErr := os.Stat("/nix")
	hostHadNix := statErr == nil
	rn := runRealNix(t)
	if _, err := os.Stat("/nix"); !hostHadNix && err == nil {
		t.Errorf("the throwaway store leaked: /nix was created on the host")
	}
	checkRealNix(t, rn)
	if *update {
		dir := filepath.Join("testdata", "real")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		write := func(name string, b []byte) {
			if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		write("trusted.pub", []byte(rn.trustedPub+"\n"))
		write("rogue.pub", []byte(rn.roguePub+"\n"))
		for name, b := range rn.narinfo {
			write(name+".narinfo", b)
		}
		write(niImage+".nar", rn.nar[niImage])
	}
}

// TestRecordedNix runs the same checks on the recorded output of a live
// Nix run (testdata/real/), so they hold even where nix-bin is missing.
func TestRecordedNix(t *testing.T) {
	dir := filepath.Join("testdata", "real")
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatalf("%v (regenerate with: go test ./images/nixsig -run TestRealNix -update)", err)
		}
		return b
	}
	rn := realNix{
		trustedPub: strings.TrimSpace(string(read("trusted.pub"))),
		roguePub:   strings.TrimSpace(string(read("rogue.pub"))),
		image:      filepath.Join(t.TempDir(), "image"),
		narinfo:    map[string][]byte{},
		nar:        map[string][]byte{niImage: read(niImage + ".nar")},
	}
	makeImage(t, rn.image)
	for _, name := range []string{niImage, niRefs, niRogue, niUnsigned} {
		rn.narinfo[name] = read(name + ".narinfo")
	}
	checkRealNix(t, rn)
}

func checkRealNix(t *testing.T, rn realNix) {
	trusted, err := ParseTrustedKeys([]string{rn.trustedPub})
	if err != nil {
		t.Fatalf("mdc cannot read the key nix-store --generate-binary-cache-key wrote: %v", err)
	}
	parse := func(t *testing.T, b []byte) *NarInfo {
		t.Helper()
		ni, err := ParseNarInfo(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("ParseNarInfo: %v\n%s", err, b)
		}
		return ni
	}
	image := parse(t, rn.narinfo[niImage])
	refs := parse(t, rn.narinfo[niRefs])

	t.Run("accepts what Nix signed", func(t *testing.T) {
		for _, name := range []string{niImage, niRefs} {
			ni := parse(t, rn.narinfo[name])
			v, err := Verify(ni, trusted)
			if err != nil {
				t.Fatalf("%s: %v\n%s", name, err, rn.narinfo[name])
			}
			if v.KeyName != "test-1" || !v.Signed || v.StorePath != ni.StorePath {
				t.Errorf("%s: Verified = %+v, want signed by test-1 for %s", name, v, ni.StorePath)
			}
		}
		if len(refs.References) != 2 {
			t.Fatalf("the refs path should have 2 references (so the fingerprint joins them), has %q", refs.References)
		}
	})

	t.Run("image bytes match narHash", func(t *testing.T) {
		if err := VerifyPath(image, rn.image); err != nil {
			t.Errorf("VerifyPath on the directory Nix added: %v", err)
		}
		if err := VerifyNAR(image, bytes.NewReader(rn.nar[niImage])); err != nil {
			t.Errorf("VerifyNAR on the NAR nix copy wrote: %v", err)
		}
		link := filepath.Join(t.TempDir(), "result")
		if err := os.Symlink(rn.image, link); err != nil {
			t.Fatal(err)
		}
		if err := VerifyPath(image, link); err != nil {
			t.Errorf("VerifyPath through a result symlink: %v", err)
		}
	})

	t.Run("rejects changed image bytes", func(t *testing.T) {
		changes := map[string]func(dir string) error{
			"one byte of initrd": func(dir string) error {
				return os.WriteFile(filepath.Join(dir, "initrd"), []byte("pretend cpio archivE\n"), 0o644)
			},
			"executable bit": func(dir string) error { return os.Chmod(filepath.Join(dir, "nix-support", "join"), 0o644) },
			"symlink target": func(dir string) error {
				if err := os.Remove(filepath.Join(dir, "kernel")); err != nil {
					return err
				}
				return os.Symlink("initrd", filepath.Join(dir, "kernel"))
			},
			"extra file": func(dir string) error { return os.WriteFile(filepath.Join(dir, "extra"), nil, 0o644) },
		}
		for name, change := range changes {
			t.Run(name, func(t *testing.T) {
				dir := filepath.Join(t.TempDir(), "image")
				makeImage(t, dir)
				if err := change(dir); err != nil {
					t.Fatal(err)
				}
				err := VerifyPath(image, dir)
				if !errors.Is(err, ErrContentMismatch) {
					t.Fatalf("VerifyPath = %v, want ErrContentMismatch", err)
				}
				if !strings.Contains(err.Error(), image.StorePath) {
					t.Errorf("error does not name the store path %s: %v", image.StorePath, err)
				}
			})
		}
		nar := bytes.Clone(rn.nar[niImage])
		nar[len(nar)/2] ^= 1
		if err := VerifyNAR(image, bytes.NewReader(nar)); !errors.Is(err, ErrContentMismatch) {
			t.Errorf("VerifyNAR on a NAR with one bit flipped = %v, want ErrContentMismatch", err)
		}
	})

	t.Run("rejects changed narinfo", func(t *testing.T) {
		text := string(rn.narinfo[niRefs])
		field := func(k string) string {
			for _, l := range strings.Split(text, "\n") {
				if v, ok := strings.CutPrefix(l, k+": "); ok {
					return v
				}
			}
			t.Fatalf("no %s line in\n%s", k, text)
			return ""
		}
		sig := field("Sig")
		flipped := []byte(sig)
		// Change one base64 digit in the middle of the signature data.
		i := strings.Index(sig, ":") + 20
		if flipped[i] == 'A' {
			flipped[i] = 'B'
		} else {
			flipped[i] = 'A'
		}
		refList := strings.Fields(field("References"))
		tamper := map[string][2]string{
			"narHash":   {"NarHash: " + field("NarHash"), "NarHash: " + image.NarHashString()},
			"narSize":   {"NarSize: " + field("NarSize"), "NarSize: " + strconv.FormatUint(refs.NarSize+1, 10)},
			"path":      {"StorePath: " + field("StorePath"), "StorePath: " + image.StorePath},
			"reference": {"References: " + field("References"), "References: " + refList[0]},
			"signature": {"Sig: " + sig, "Sig: " + string(flipped)},
		}
		for name, tc := range tamper {
			t.Run(name, func(t *testing.T) {
				changed := strings.Replace(text, tc[0], tc[1], 1)
				if changed == text {
					t.Fatalf("test did not change anything (%q)", tc[0])
				}
				ni := parse(t, []byte(changed))
				_, err := Verify(ni, trusted)
				if !errors.Is(err, ErrBadSignature) {
					t.Fatalf("Verify = %v, want ErrBadSignature", err)
				}
				for _, want := range []string{ni.StorePath, "test-1"} {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("error does not name %s: %v", want, err)
					}
				}
				p := Policy{Trusted: trusted}
				if _, err := p.Check(ni); !errors.Is(err, ErrBadSignature) {
					t.Errorf("without --require-signed a bad signature must still be refused, Check = %v", err)
				}
			})
		}
	})

	t.Run("rejects other keys", func(t *testing.T) {
		other := parse(t, rn.narinfo[niRogue])
		_, err := Verify(other, trusted)
		if !errors.Is(err, ErrUntrustedKey) {
			t.Fatalf("Verify(signed by rogue-1) = %v, want ErrUntrustedKey", err)
		}
		for _, want := range []string{other.StorePath, "test-1", "rogue-1"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error does not name %s: %v", want, err)
			}
		}
		// A key that is called test-1 but is not the one Nix signed with.
		_, roguePub, _ := strings.Cut(rn.roguePub, ":")
		impostor, err := ParseTrustedKeys([]string{"test-1:" + roguePub})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Verify(refs, impostor); !errors.Is(err, ErrBadSignature) {
			t.Errorf("Verify with another key named test-1 = %v, want ErrBadSignature", err)
		}
		// The image carries both signatures: the trusted one is enough.
		if v, err := Verify(image, trusted); err != nil || v.KeyName != "test-1" {
			t.Errorf("Verify(image signed by rogue-1 and test-1) = %+v, %v; want verified by test-1", v, err)
		}
	})

	t.Run("require-signed", func(t *testing.T) {
		strict, err := NewPolicy([]string{rn.trustedPub}, true)
		if err != nil {
			t.Fatal(err)
		}
		unsigned := parse(t, rn.narinfo[niUnsigned])
		if len(unsigned.Sigs) != 0 {
			t.Fatalf("the unsigned path has signatures: %v", unsigned.Sigs)
		}
		if _, err := strict.Check(unsigned); !errors.Is(err, ErrUnsigned) || !strings.Contains(err.Error(), unsigned.StorePath) {
			t.Errorf("Check(unsigned) = %v, want ErrUnsigned naming %s", err, unsigned.StorePath)
		}
		if _, err := strict.Check(parse(t, rn.narinfo[niRogue])); !errors.Is(err, ErrUntrustedKey) {
			t.Errorf("Check(signed by rogue-1) = %v, want ErrUntrustedKey", err)
		}
		if v, err := strict.Check(refs); err != nil || !v.Signed {
			t.Errorf("Check(signed by test-1) = %+v, %v; want signed", v, err)
		}
		lax, err := NewPolicy([]string{rn.trustedPub}, false)
		if err != nil {
			t.Fatal(err)
		}
		if v, err := lax.Check(unsigned); err != nil || v.Signed {
			t.Errorf("without --require-signed, Check(unsigned) = %+v, %v; want accepted, not signed", v, err)
		}
	})
}
