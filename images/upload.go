package images

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/textproto"
	"os"
	"path/filepath"

	"github.com/microdc/mdc/images/nixsig"
)

// An upload (POST /api/v1/images) is multipart/form-data whose parts come
// in this order and are read as they arrive, never held whole:
//
//	image    application/json: a Request (name, role, cmdline, require_signed, imported_by)
//	narinfo  text/x-nix-narinfo, optional: the image's .narinfo
//	nar      application/x-nix-nar: a netboot directory as a NAR (nix-store --dump)
//
// or, instead of narinfo and nar, explicit files:
//
//	kernel   application/octet-stream, its filename the kernel's name
//	initrd   application/octet-stream, one part per initrd, in boot order
//
// A .narinfo's signature is checked when its part arrives, before the NAR.
const (
	PartImage   = "image"
	PartNarInfo = "narinfo"
	PartNAR     = "nar"
	PartKernel  = "kernel"
	PartInitrd  = "initrd"
)

// Upload reads an upload from mr and imports it. by, if not empty, is
// appended to the request's imported_by (the API puts the client's address
// there).
func (im *Importer) Upload(ctx context.Context, mr *multipart.Reader, by string) (Result, error) {
	p, err := nextPart(mr)
	if err != nil {
		return Result{}, err
	}
	if p == nil || p.FormName() != PartImage {
		return Result{}, fmt.Errorf("%w: the first part must be %q (JSON: name, role, …), got %s", ErrInvalid, PartImage, partName(p))
	}
	var req Request
	dec := json.NewDecoder(io.LimitReader(p, maxScript))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return Result{}, fmt.Errorf("%w: part %q: %v", ErrInvalid, PartImage, err)
	}
	if len(req.ImportedBy) > 200 {
		req.ImportedBy = req.ImportedBy[:200]
	}
	if by != "" {
		req.ImportedBy = joinNonEmpty(req.ImportedBy, by)
	}

	if p, err = nextPart(mr); err != nil {
		return Result{}, err
	}
	var narinfo []byte
	if p != nil && p.FormName() == PartNarInfo {
		if narinfo, err = io.ReadAll(io.LimitReader(p, nixsig.MaxNarInfoSize+1)); err != nil {
			return Result{}, fmt.Errorf("%w: part %q: %v", ErrInvalid, PartNarInfo, err)
		}
		if len(narinfo) > nixsig.MaxNarInfoSize {
			return Result{}, fmt.Errorf("%w: part %q is larger than %d bytes", ErrInvalid, PartNarInfo, nixsig.MaxNarInfoSize)
		}
		if p, err = nextPart(mr); err != nil {
			return Result{}, err
		}
	}
	switch {
	case p != nil && p.FormName() == PartNAR:
		res, err := im.ImportNAR(ctx, req, narinfo, p)
		if err != nil {
			return res, err
		}
		return res, expectEnd(mr)
	case p != nil && p.FormName() == PartKernel:
		if narinfo != nil {
			return Result{}, fmt.Errorf("%w: a .narinfo goes with a %q part (the netboot directory), not with explicit files", ErrInvalid, PartNAR)
		}
		first := true
		return im.ImportFiles(ctx, req, func() (FilePart, error) {
			if !first {
				var err error
				if p, err = nextPart(mr); err != nil {
					return FilePart{}, err
				}
				if p == nil {
					return FilePart{}, io.EOF
				}
				if p.FormName() != PartInitrd {
					return FilePart{}, fmt.Errorf("%w: part %s after the kernel; only %q parts may follow", ErrInvalid, partName(p), PartInitrd)
				}
			}
			first = false
			return FilePart{Name: filepath.Base(p.FileName()), R: p}, nil
		})
	default:
		return Result{}, fmt.Errorf("%w: after %q (and %q) comes a %q or a %q part, got %s", ErrInvalid, PartImage, PartNarInfo, PartNAR, PartKernel, partName(p))
	}
}

func nextPart(mr *multipart.Reader) (*multipart.Part, error) {
	p, err := mr.NextPart()
	if err == io.EOF {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%w: multipart body: %v", ErrInvalid, err)
	}
	return p, nil
}

func expectEnd(mr *multipart.Reader) error {
	p, err := nextPart(mr)
	if err != nil {
		return err
	}
	if p != nil {
		return fmt.Errorf("%w: part %s after the NAR", ErrInvalid, partName(p))
	}
	return nil
}

func partName(p *multipart.Part) string {
	if p == nil {
		return "the end of the body"
	}
	return fmt.Sprintf("%q", clip(p.FormName()))
}

func joinNonEmpty(a, b string) string {
	if a == "" {
		return b
	}
	return a + " " + b
}

// WriteDirUpload writes an upload of the netboot directory dir (and the
// .narinfo lying in it, if any) to mw, streaming the files; it does not
// close mw.
func WriteDirUpload(mw *multipart.Writer, req Request, dir string) error {
	narinfo, _, err := ReadNarInfo(dir)
	if err != nil {
		return err
	}
	if err := writeRequest(mw, req); err != nil {
		return err
	}
	if narinfo != nil {
		w, err := mw.CreatePart(partHeader(PartNarInfo, "", "text/x-nix-narinfo"))
		if err != nil {
			return err
		}
		if _, err := w.Write(narinfo); err != nil {
			return err
		}
	}
	w, err := mw.CreatePart(partHeader(PartNAR, filepath.Base(dir)+".nar", "application/x-nix-nar"))
	if err != nil {
		return err
	}
	return WriteNAR(w, dir)
}

// WriteFilesUpload writes an upload of explicit files: kernel, then the
// initrds in order.
func WriteFilesUpload(mw *multipart.Writer, req Request, kernel string, initrds []string) error {
	if err := writeRequest(mw, req); err != nil {
		return err
	}
	for i, path := range append([]string{kernel}, initrds...) {
		part := PartInitrd
		if i == 0 {
			part = PartKernel
		}
		if err := copyFilePart(mw, part, path); err != nil {
			return err
		}
	}
	return nil
}

func copyFilePart(mw *multipart.Writer, part, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	w, err := mw.CreatePart(partHeader(part, filepath.Base(path), "application/octet-stream"))
	if err != nil {
		return err
	}
	if _, err := io.Copy(w, f); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

func writeRequest(mw *multipart.Writer, req Request) error {
	b, err := json.Marshal(req)
	if err != nil {
		return err
	}
	w, err := mw.CreatePart(partHeader(PartImage, "", "application/json"))
	if err != nil {
		return err
	}
	_, err = io.Copy(w, bytes.NewReader(b))
	return err
}

func partHeader(name, filename, ctype string) textproto.MIMEHeader {
	h := textproto.MIMEHeader{}
	disp := fmt.Sprintf(`form-data; name=%q`, name)
	if filename != "" {
		disp += fmt.Sprintf(`; filename=%q`, filename)
	}
	h.Set("Content-Disposition", disp)
	h.Set("Content-Type", ctype)
	return h
}

// UploadSize is about how many bytes an upload of these files sends, for a
// progress bar: the files' sizes (NAR framing adds a little).
func UploadSize(paths ...string) int64 {
	var n int64
	for _, p := range paths {
		if r, err := filepath.EvalSymlinks(p); err == nil {
			p = r
		}
		_ = filepath.Walk(p, func(_ string, fi os.FileInfo, err error) error {
			if err == nil && fi.Mode().IsRegular() {
				n += fi.Size()
			}
			return nil
		})
	}
	return n
}
