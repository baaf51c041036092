package nixsig

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixbase32"
	"github.com/nix-community/go-nix/pkg/nixhash"
	"github.com/nix-community/go-nix/pkg/storepath"
)

// MaxNarInfoSize bounds what ParseNarInfo reads: real .narinfo files are a
// few hundred bytes, a path with thousands of references some tens of KiB.
const MaxNarInfoSize = 1 << 20

// StoreDir is the only Nix store directory mdc accepts: NixOS images are
// built for it, and references in a .narinfo are relative to it.
const StoreDir = storepath.StoreDir

// NarInfo is a parsed .narinfo file: what Nix knows about one store path.
// Only StorePath, NarHash, NarSize and References are covered by a signature.
type NarInfo struct {
	StorePath   string // absolute, /nix/store/<hash>-<name>
	URL         string // where the (compressed) NAR lies, relative to the cache
	Compression string // of the file at URL: none, xz, zstd, bzip2 (the default)
	FileHash    string // of the file at URL, as written (not signed)
	FileSize    uint64
	NarHash     [32]byte // sha256 of the uncompressed NAR serialisation
	NarSize     uint64
	References  []string // base names (<hash>-<name>), sorted, without duplicates
	Deriver     string   // base name of the .drv, empty when unknown
	System      string
	CA          string // content address, if the path has one
	Sigs        []Signature
}

// Signature is one "Sig:" line: a key name and an ed25519 signature.
type Signature struct {
	KeyName string
	Sig     []byte
}

// String renders the signature as Nix writes it: name:base64(sig).
func (s Signature) String() string {
	return signature.Signature{Name: s.KeyName, Data: s.Sig}.String()
}

// FormatNarHash renders a sha256 NAR hash as Nix writes and signs it.
func FormatNarHash(h [32]byte) string {
	return "sha256:" + nixbase32.EncodeToString(h[:])
}

// NarHashString is NarHash as Nix writes and signs it: sha256:<nix-base32>.
func (ni *NarInfo) NarHashString() string { return FormatNarHash(ni.NarHash) }

// HashPart is the hash part of the store path: a binary cache names the
// path's .narinfo "<HashPart>.narinfo".
func (ni *NarInfo) HashPart() string {
	base := path.Base(ni.StorePath)
	h, _, _ := strings.Cut(base, "-")
	return h
}

// Fingerprint is the exact string a Nix signature covers:
//
//	1;<store path>;<narHash as sha256:nix-base32>;<narSize>;<references>
//
// references as absolute store paths, sorted, joined by commas (Nix keeps
// them in a sorted set, whatever order the file lists them in).
func (ni *NarInfo) Fingerprint() string {
	var b strings.Builder
	b.WriteString("1;")
	b.WriteString(ni.StorePath)
	b.WriteByte(';')
	b.WriteString(ni.NarHashString())
	b.WriteByte(';')
	b.WriteString(strconv.FormatUint(ni.NarSize, 10))
	b.WriteByte(';')
	for i, r := range sortedRefs(ni.References) {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(StoreDir + "/" + r)
	}
	return b.String()
}

func sortedRefs(refs []string) []string {
	if slices.IsSorted(refs) {
		return slices.Compact(slices.Clone(refs))
	}
	s := slices.Clone(refs)
	slices.Sort(s)
	return slices.Compact(s)
}

// String renders the .narinfo the way Nix writes it.
func (ni *NarInfo) String() string {
	var b strings.Builder
	line := func(k, v string) { b.WriteString(k + ": " + v + "\n") }
	line("StorePath", ni.StorePath)
	if ni.URL != "" {
		line("URL", ni.URL)
	}
	line("Compression", ni.Compression)
	if ni.FileHash != "" {
		line("FileHash", ni.FileHash)
	}
	if ni.FileSize != 0 {
		line("FileSize", strconv.FormatUint(ni.FileSize, 10))
	}
	line("NarHash", ni.NarHashString())
	line("NarSize", strconv.FormatUint(ni.NarSize, 10))
	line("References", strings.Join(ni.References, " "))
	if ni.Deriver != "" {
		line("Deriver", ni.Deriver)
	}
	if ni.System != "" {
		line("System", ni.System)
	}
	for _, s := range ni.Sigs {
		line("Sig", s.String())
	}
	if ni.CA != "" {
		line("CA", ni.CA)
	}
	return b.String()
}

// ParseNarInfo reads a .narinfo file as Nix writes it ("Key: value" lines).
// It accepts what Nix accepts, with two stricter rules because the file
// comes with an image from outside: a key that Nix reads once (StorePath,
// NarHash, NarSize, ...) may not repeat, and every Sig line must be a
// well-formed ed25519 signature. Unknown keys are ignored, as Nix does;
// they are not signed, so nothing here trusts them.
// Errors wrap ErrMalformed and name the line that failed.
func ParseNarInfo(r io.Reader) (*NarInfo, error) {
	br := bufio.NewReader(io.LimitReader(r, MaxNarInfoSize+1))
	ni := &NarInfo{}
	seen := map[string]int{}
	var read int
	for lineNo := 1; ; lineNo++ {
		line, err := br.ReadString('\n')
		read += len(line)
		if read > MaxNarInfoSize {
			return nil, malformed("narinfo is larger than %d bytes; is this a .narinfo file?", MaxNarInfoSize)
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("nixsig: reading narinfo: %w", err)
		}
		line = strings.TrimSuffix(line, "\n")
		if line != "" {
			if perr := ni.parseLine(line, lineNo, seen); perr != nil {
				return nil, perr
			}
		}
		if err != nil { // io.EOF
			break
		}
	}
	if ni.StorePath == "" {
		return nil, malformed("narinfo has no StorePath line")
	}
	if seen["NarHash"] == 0 {
		return nil, malformed("narinfo for %s has no NarHash line", ni.StorePath)
	}
	if ni.NarSize == 0 {
		return nil, malformed("narinfo for %s has no NarSize line (or NarSize 0)", ni.StorePath)
	}
	if ni.Compression == "" {
		ni.Compression = "bzip2" // what Nix assumes when the line is missing
	}
	ni.References = sortedRefs(ni.References)
	return ni, nil
}

// singleKeys may appear once; Nix would silently take the last one, which
// would let a file show one value to a reader and another to a checker.
var singleKeys = map[string]bool{
	"StorePath": true, "URL": true, "Compression": true, "FileHash": true,
	"FileSize": true, "NarHash": true, "NarSize": true, "References": true,
	"Deriver": true, "System": true, "CA": true,
}

func (ni *NarInfo) parseLine(line string, lineNo int, seen map[string]int) error {
	k, v, ok := strings.Cut(line, ": ")
	if !ok {
		// Nix writes "References: " with a trailing space when there are
		// none; tolerate editors that strip it.
		if kk, found := strings.CutSuffix(line, ":"); found {
			k, v = kk, ""
		} else {
			return malformed("line %d: %q is not \"Key: value\"", lineNo, clip(line))
		}
	}
	if singleKeys[k] && seen[k] > 0 {
		return malformed("line %d: %s appears twice (first on line %d)", lineNo, k, seen[k])
	}
	seen[k] = lineNo
	var err error
	switch k {
	case "StorePath":
		// go-nix's FromAbsolutePath does not look at the directory part.
		base, under := strings.CutPrefix(v, StoreDir+"/")
		if !under {
			return malformed("line %d: StorePath %q is not a store path under %s", lineNo, clip(v), StoreDir)
		}
		if perr := checkBaseName(base); perr != nil {
			return malformed("line %d: StorePath %q is not a store path under %s: %v", lineNo, clip(v), StoreDir, perr)
		}
		ni.StorePath = v
	case "URL":
		ni.URL = v
	case "Compression":
		ni.Compression = v
	case "FileHash":
		ni.FileHash = v
	case "FileSize":
		ni.FileSize, err = strconv.ParseUint(v, 10, 64)
	case "NarHash":
		h, perr := nixhash.ParseAny(v, nil)
		if perr != nil {
			return malformed("line %d: NarHash %q: %v", lineNo, clip(v), perr)
		}
		if h.Algo() != nixhash.SHA256 {
			return malformed("line %d: NarHash %q is not sha256, the only NAR hash Nix signs", lineNo, clip(v))
		}
		copy(ni.NarHash[:], h.Digest())
	case "NarSize":
		ni.NarSize, err = strconv.ParseUint(v, 10, 64)
	case "References":
		for _, r := range strings.Fields(v) {
			if perr := checkBaseName(r); perr != nil {
				return malformed("line %d: reference %q is not a store path name: %v", lineNo, clip(r), perr)
			}
			ni.References = append(ni.References, r)
		}
	case "Deriver":
		if v != "unknown-deriver" && v != "" {
			if perr := checkBaseName(v); perr != nil {
				return malformed("line %d: Deriver %q is not a store path name: %v", lineNo, clip(v), perr)
			}
			ni.Deriver = v
		}
	case "System":
		ni.System = v
	case "Sig":
		s, perr := signature.ParseSignature(v)
		if perr != nil {
			return malformed("line %d: Sig %q: %v", lineNo, clip(v), perr)
		}
		ni.Sigs = append(ni.Sigs, Signature{KeyName: s.Name, Sig: s.Data})
	case "CA":
		ni.CA = v
	}
	if err != nil {
		return malformed("line %d: %s %q is not a byte count", lineNo, k, clip(v))
	}
	return nil
}

// checkBaseName checks a store path's base name, <hash>-<name>. go-nix
// cleans the path before checking it, so "<hash>-x/." would pass there.
func checkBaseName(s string) error {
	if strings.Contains(s, "/") {
		return errors.New("contains a slash")
	}
	_, err := storepath.FromString(s)
	return err
}

// clip keeps error messages readable when the input is garbage.
func clip(s string) string {
	const max = 120
	if len(s) > max {
		return s[:max] + "…"
	}
	return s
}

func malformed(format string, args ...any) error {
	return fmt.Errorf("nixsig: "+format+": %w", append(args, ErrMalformed)...)
}
