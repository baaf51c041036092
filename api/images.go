package api

import (
	"context"
	"errors"
	"io"
	"mime"
	"mime/multipart"
	"net"
	"net/http"
	"strings"

	"github.com/microdc/mdc/images"
	"github.com/microdc/mdc/images/nixsig"
)

// Images is what the API needs of the image catalog and importer.
type Images interface {
	List(role string) []images.Image
	Get(name string) (images.Image, bool)
	Usage(name string) (images.Usage, bool)
	Upload(ctx context.Context, mr *multipart.Reader, by string) (images.Result, error)
	Delete(ctx context.Context, name string, d images.DeletedData) (images.Image, error)
	Ready() bool
}

// Error codes of the image routes; like the others, never renamed.
const (
	CodeInUse          = "in_use"
	CodeBadImage       = "bad_image"
	CodeUnsigned       = "unsigned"
	CodeUntrustedKey   = "untrusted_key"
	CodeBadSignature   = "bad_signature"
	CodeContentChanged = "content_mismatch"
	CodeNoImages       = "images_not_configured"
)

// ImageList is the answer to GET /api/v1/images.
type ImageList struct {
	Images []images.Image `json:"images"`
	Count  int            `json:"count"`
}

// ImageDetail is the answer to GET /api/v1/images/{name}: the image and
// who uses it.
type ImageDetail struct {
	images.Image
	images.Usage
}

// ImportResult is the answer to POST /api/v1/images.
type ImportResult = images.Result

// DeleteResult is the answer to DELETE /api/v1/images/{name}.
type DeleteResult struct {
	Image   images.Image `json:"image"`
	Deleted bool         `json:"deleted"`
}

// imagesOr503 returns the catalog, or answers 503 when this mdc has none.
func (s *Server) imagesOr503(w http.ResponseWriter) (Images, bool) {
	if s.cfg.Images == nil {
		writeError(w, errorf(http.StatusServiceUnavailable, CodeNoImages,
			"this mdc serves no images: it was started without a blob store and image catalog"))
		return nil, false
	}
	return s.cfg.Images, true
}

func (s *Server) listImages(w http.ResponseWriter, r *http.Request) {
	im, ok := s.imagesOr503(w)
	if !ok {
		return
	}
	q := r.URL.Query()
	for k := range q {
		if k != "role" {
			writeError(w, errorf(http.StatusBadRequest, CodeBadRequest, "unknown query parameter %q (filters: role)", k))
			return
		}
	}
	list := im.List(q.Get("role"))
	writeJSON(w, http.StatusOK, ImageList{Images: list, Count: len(list)})
}

func (s *Server) getImage(w http.ResponseWriter, r *http.Request) {
	im, ok := s.imagesOr503(w)
	if !ok {
		return
	}
	name := r.PathValue("name")
	img, found := im.Get(name)
	if !found {
		writeError(w, errorf(http.StatusNotFound, CodeNotFound, "no image %q (mdc images list shows them)", clipName(name)))
		return
	}
	u, _ := im.Usage(name)
	writeJSON(w, http.StatusOK, ImageDetail{Image: img, Usage: u})
}

// importImage streams a multipart upload into the blob store and the
// catalog; see images.Importer.Upload for the parts.
func (s *Server) importImage(w http.ResponseWriter, r *http.Request) {
	im, ok := s.imagesOr503(w)
	if !ok {
		return
	}
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/form-data" {
		writeError(w, errorf(http.StatusUnsupportedMediaType, CodeBadRequest,
			"send multipart/form-data: a JSON part \"image\", then \"narinfo\" and \"nar\", or \"kernel\" and \"initrd\" (mdc images import does)"))
		return
	}
	mr, err := r.MultipartReader()
	if err != nil {
		writeError(w, errorf(http.StatusBadRequest, CodeBadRequest, "multipart body: %v", err))
		return
	}
	by := "api"
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		by = "from " + host
	}
	res, err := im.Upload(r.Context(), mr, by)
	if err != nil {
		// Read what the client is still sending (bounded), so that it gets
		// the answer instead of a reset connection.
		_, _ = io.CopyN(io.Discard, r.Body, 1<<20)
		s.failImage(w, r, err)
		return
	}
	status := http.StatusOK
	if res.Added {
		status = http.StatusCreated
	}
	writeJSON(w, status, res)
}

func (s *Server) deleteImage(w http.ResponseWriter, r *http.Request) {
	im, ok := s.imagesOr503(w)
	if !ok {
		return
	}
	q := r.URL.Query()
	for k := range q {
		if k != "reason" {
			writeError(w, errorf(http.StatusBadRequest, CodeBadRequest, "unknown query parameter %q (only reason)", k))
			return
		}
	}
	by := "api"
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		by = "api from " + host
	}
	img, err := im.Delete(r.Context(), r.PathValue("name"), images.DeletedData{By: by, Reason: q.Get("reason")})
	if err != nil {
		s.failImage(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, DeleteResult{Image: img, Deleted: true})
}

// blob serves GET and HEAD /blobs/sha256/{hex} through images/blob's
// handler (Range, ETag, sendfile).
func (s *Server) blob(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Blobs == nil {
		writeError(w, errorf(http.StatusServiceUnavailable, CodeNoImages, "this mdc serves no blobs: it was started without a blob store"))
		return
	}
	s.cfg.Blobs.ServeHTTP(w, r)
}

// ReadFrom keeps the kernel's sendfile path open through the request
// metrics' recorder: net/http hands a blob's file to ReadFrom.
func (r *statusRecorder) ReadFrom(src io.Reader) (int64, error) {
	if rf, ok := r.ResponseWriter.(io.ReaderFrom); ok {
		return rf.ReadFrom(src)
	}
	return io.Copy(struct{ io.Writer }{r.ResponseWriter}, src)
}

// failImage maps the catalog's and the signature checks' errors.
func (s *Server) failImage(w http.ResponseWriter, r *http.Request, err error) {
	var e *Error
	switch {
	case errors.Is(err, images.ErrNotFound):
		e = errorf(http.StatusNotFound, CodeNotFound, "%v", err)
	case errors.Is(err, images.ErrExists):
		e = errorf(http.StatusConflict, CodeExists, "%v", err)
	case errors.Is(err, images.ErrInUse):
		e = errorf(http.StatusConflict, CodeInUse, "%v", err)
	case errors.Is(err, images.ErrConflict):
		e = errorf(http.StatusConflict, CodeConflict, "%v; retry", err)
	case errors.Is(err, images.ErrNotReady):
		e = errorf(http.StatusServiceUnavailable, CodeUnavailable, "%v; retry in a moment", err)
	case errors.Is(err, nixsig.ErrUnsigned):
		e = errorf(http.StatusUnprocessableEntity, CodeUnsigned, "%v", err)
	case errors.Is(err, nixsig.ErrUntrustedKey):
		e = errorf(http.StatusUnprocessableEntity, CodeUntrustedKey, "%v", err)
	case errors.Is(err, nixsig.ErrBadSignature):
		e = errorf(http.StatusUnprocessableEntity, CodeBadSignature, "%v", err)
	case errors.Is(err, nixsig.ErrContentMismatch):
		e = errorf(http.StatusUnprocessableEntity, CodeContentChanged, "%v", err)
	case errors.Is(err, images.ErrInvalid), errors.Is(err, images.ErrBadNAR), errors.Is(err, nixsig.ErrMalformed):
		e = errorf(http.StatusBadRequest, CodeBadImage, "%v", err)
	default:
		s.fail(w, r, err)
		return
	}
	writeError(w, e)
}

func clipName(s string) string {
	if len(s) > 100 {
		return s[:100] + "…"
	}
	return strings.ToValidUTF8(s, "?")
}
