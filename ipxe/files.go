package ipxe

import (
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// errRefusedName marks a requested file name that breaks the path rules.
var errRefusedName = errors.New("refused file name")

// cleanName applies the TFTP server's path rules to a name under /ipxe/:
// relative, no "..", no backslash, no control character, no '%' (nothing
// decodes twice), at most 255 bytes.
func cleanName(name string) (string, error) {
	switch {
	case name == "":
		return "", fmt.Errorf("%w: empty", errRefusedName)
	case len(name) > 255:
		return "", fmt.Errorf("%w: longer than 255 bytes", errRefusedName)
	case name[0] == '/':
		return "", fmt.Errorf("%w: absolute", errRefusedName)
	case !utf8.ValidString(name):
		return "", fmt.Errorf("%w: not UTF-8", errRefusedName)
	}
	for _, r := range name {
		if r == '\\' || r == '%' || unicode.IsControl(r) {
			return "", fmt.Errorf("%w: character %q", errRefusedName, r)
		}
	}
	for elem := range strings.SplitSeq(name, "/") {
		if elem == ".." {
			return "", fmt.Errorf("%w: '..'", errRefusedName)
		}
	}
	clean := path.Clean(name)
	if clean == "." {
		return "", fmt.Errorf("%w: names the directory", errRefusedName)
	}
	return clean, nil
}

// serveFile sends an iPXE binary for UEFI HTTP boot (DHCP hands such
// firmware http://<mdc>/ipxe/<file>). Like TFTP: only regular files inside
// IPXEDir; a symlink as the last element is followed because the operator
// (or Debian's ipxe package: ipxe.efi → /boot/ipxe.efi) put it there.
func (s *Server) serveFile(w http.ResponseWriter, r *http.Request) {
	if s.cfg.IPXEDir == "" {
		s.metrics.files.WithLabelValues("not_found").Inc()
		http.Error(w, "mdc serves no iPXE binaries (--ipxe-dir is empty)", http.StatusNotFound)
		return
	}
	name, err := cleanName(r.PathValue("file"))
	if err != nil {
		s.metrics.files.WithLabelValues("refused").Inc()
		s.log.Warn("iPXE file request refused", "remote", r.RemoteAddr, "err", err)
		http.Error(w, "mdc: "+err.Error(), http.StatusBadRequest)
		return
	}
	f, err := s.openFile(name)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			s.metrics.files.WithLabelValues("not_found").Inc()
			http.Error(w, "mdc: no such iPXE file: "+name, http.StatusNotFound)
			return
		}
		s.metrics.files.WithLabelValues("refused").Inc()
		s.log.Warn("iPXE file not served", "file", name, "err", err)
		http.Error(w, "mdc: cannot serve "+name, http.StatusForbidden)
		return
	}
	defer f.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	http.ServeContent(w, r, "", time.Time{}, f)
	s.metrics.files.WithLabelValues("served").Inc()
	s.log.Info("iPXE file served over HTTP", "file", name, "remote", r.RemoteAddr)
}

var errNotRegular = errors.New("not a regular file")

func (s *Server) openFile(rel string) (*os.File, error) {
	root, err := os.OpenRoot(s.cfg.IPXEDir)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	fi, err := root.Lstat(rel)
	if err != nil {
		return nil, err
	}
	var f *os.File
	switch {
	case fi.Mode().IsRegular():
		f, err = root.Open(rel)
	case fi.Mode()&fs.ModeSymlink != 0:
		target, lerr := root.Readlink(rel)
		if lerr != nil {
			return nil, lerr
		}
		if !filepath.IsAbs(target) {
			target = filepath.Join(s.cfg.IPXEDir, filepath.Dir(rel), target)
		}
		// Checked before opening: opening a FIFO would block.
		if st, serr := os.Stat(target); serr != nil || !st.Mode().IsRegular() {
			if serr != nil {
				return nil, serr
			}
			return nil, errNotRegular
		}
		f, err = os.Open(target)
	default:
		return nil, errNotRegular
	}
	if err != nil {
		return nil, err
	}
	if fi, err = f.Stat(); err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return nil, errNotRegular
	}
	return f, nil
}
