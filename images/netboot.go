package images

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
)

// Netboot is what a NixOS netboot.ipxe says: which files to boot and the
// kernel command line.
type Netboot struct {
	Kernel  string   // file name in the image directory
	Initrds []string // file names, in order
	Cmdline string   // the kernel line's arguments without iPXE's ${cmdline}
	Init    string   // the init= path; required
}

// maxScript bounds netboot.ipxe and mdc-image.json: both are a few hundred
// bytes.
const maxScript = 64 << 10

// ParseNetbootIPXE reads the netboot.ipxe NixOS writes:
//
//	#!ipxe
//	kernel bzImage init=/nix/store/…/init initrd=initrd loglevel=4 ${cmdline}
//	initrd initrd
//	boot
//
// Only kernel, initrd and boot lines are understood (plus comments): mdc
// boots the files itself and does not run the script, so a script that does
// more is refused rather than half followed. Files must be plain names in
// the image directory. Errors name the line.
func ParseNetbootIPXE(b []byte) (Netboot, error) {
	var nb Netboot
	if len(b) > maxScript {
		return nb, fmt.Errorf("%w: netboot.ipxe is %d bytes; is it an iPXE script?", ErrInvalid, len(b))
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 4096), maxScript)
	lineNo, kernels := 0, 0
	for sc.Scan() {
		lineNo++
		line := strings.TrimSpace(sc.Text())
		if lineNo == 1 {
			if !strings.HasPrefix(line, "#!ipxe") {
				return nb, fmt.Errorf("%w: netboot.ipxe line 1: %q, want #!ipxe", ErrInvalid, clip(line))
			}
			continue
		}
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fail := func(format string, args ...any) (Netboot, error) {
			return Netboot{}, fmt.Errorf("%w: netboot.ipxe line %d: "+format, append([]any{ErrInvalid, lineNo}, args...)...)
		}
		words := strings.Fields(line)
		switch words[0] {
		case "boot":
		case "kernel":
			kernels++
			if kernels > 1 {
				return fail("a second kernel line")
			}
			file, args, err := ipxeImageArgs(words[1:])
			if err != nil {
				return fail("kernel: %v", err)
			}
			nb.Kernel = file
			var kept []string
			for _, a := range args {
				if a == "${cmdline}" {
					continue // for chainloading from other scripts; mdc adds its own
				}
				if strings.Contains(a, "${") {
					return fail("kernel argument %q uses an iPXE variable mdc cannot expand", clip(a))
				}
				if v, ok := strings.CutPrefix(a, "init="); ok {
					nb.Init = v
				}
				kept = append(kept, a)
			}
			nb.Cmdline = strings.Join(kept, " ")
		case "initrd":
			file, args, err := ipxeImageArgs(words[1:])
			if err != nil {
				return fail("initrd: %v", err)
			}
			if len(args) > 0 {
				return fail("initrd takes one file, got arguments %q", clip(strings.Join(args, " ")))
			}
			nb.Initrds = append(nb.Initrds, file)
		default:
			return fail("command %q is not understood; mdc reads only kernel, initrd and boot lines", clip(words[0]))
		}
	}
	if err := sc.Err(); err != nil {
		return nb, fmt.Errorf("%w: netboot.ipxe: %v", ErrInvalid, err)
	}
	switch {
	case lineNo == 0:
		return nb, fmt.Errorf("%w: netboot.ipxe is empty", ErrInvalid)
	case nb.Kernel == "":
		return nb, fmt.Errorf("%w: netboot.ipxe has no kernel line", ErrInvalid)
	case nb.Init == "":
		return nb, fmt.Errorf("%w: netboot.ipxe: the kernel line has no init= (is this a NixOS netboot image?)", ErrInvalid)
	case len(nb.Initrds) == 0:
		return nb, fmt.Errorf("%w: netboot.ipxe has no initrd line", ErrInvalid)
	}
	return nb, nil
}

// ipxeImageArgs splits "[options] file [args…]" of iPXE's kernel and
// initrd commands.
func ipxeImageArgs(words []string) (string, []string, error) {
	for len(words) > 0 && strings.HasPrefix(words[0], "-") {
		opt := words[0]
		words = words[1:]
		switch {
		case opt == "--autofree" || opt == "-a" || opt == "--replace" || opt == "-r":
		case opt == "--name" || opt == "-n" || opt == "--timeout" || opt == "-t":
			if len(words) == 0 {
				return "", nil, fmt.Errorf("option %s needs a value", opt)
			}
			words = words[1:]
		case strings.HasPrefix(opt, "--name=") || strings.HasPrefix(opt, "--timeout="):
		default:
			return "", nil, fmt.Errorf("option %q is not understood", clip(opt))
		}
	}
	if len(words) == 0 {
		return "", nil, fmt.Errorf("no file named")
	}
	if err := plainName(words[0]); err != nil {
		return "", nil, err
	}
	return words[0], words[1:], nil
}

// plainName accepts a file name directly in the image directory.
func plainName(s string) error {
	if s == "" || s == "." || s == ".." || strings.ContainsAny(s, "/\\:${}\x00") {
		return fmt.Errorf("file %q is not a plain file name in the image directory", clip(s))
	}
	return nil
}

// imageMeta is nix-support/mdc-image.json (docs/nix.md), as far as the
// importer uses it.
type imageMeta struct {
	Format  int    `json:"format"`
	Name    string `json:"name"`
	Role    string `json:"role"`
	System  string `json:"system"`
	Cmdline string `json:"cmdline"`
}

func parseImageMeta(b []byte) (imageMeta, error) {
	var m imageMeta
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("%w: nix-support/mdc-image.json: %v", ErrInvalid, err)
	}
	if m.Format != 0 && m.Format != 1 {
		return m, fmt.Errorf("%w: nix-support/mdc-image.json: format %d; this mdc reads format 1", ErrInvalid, m.Format)
	}
	return m, nil
}
