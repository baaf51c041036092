package api

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"

	"github.com/microdc/mdc/events"
	"github.com/microdc/mdc/machine"
	"github.com/microdc/mdc/roles"
)

// Error is an API error: an HTTP status, a stable code for scripts and a
// message for people.
type Error struct {
	Status  int    `json:"-"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

func errorf(status int, code, format string, args ...any) *Error {
	return &Error{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

// Error codes. They are part of the API: never rename one.
const (
	CodeBadRequest   = "bad_request"
	CodeInvalidJSON  = "invalid_json"
	CodeUnknownField = "unknown_field"
	CodeInvalidMAC   = "invalid_mac"
	CodeInvalidValue = "invalid_value"
	CodeNotFound     = "not_found"
	CodeExists       = "exists"
	CodeIllegal      = "illegal_transition"
	CodeConflict     = "conflict"
	CodeUnauthorized = "unauthorized"
	CodeForbidden    = "forbidden"
	CodeUnavailable  = "unavailable"
	CodeInternal     = "internal"
)

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, e *Error) {
	writeJSON(w, e.Status, map[string]*Error{"error": e})
}

// fail turns an error from below into the right API error.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	var apiErr *Error
	var te *machine.TransitionError
	switch {
	case errors.As(err, &apiErr):
	case errors.As(err, &te):
		apiErr = errorf(http.StatusConflict, CodeIllegal, "%s", te.Error())
	case errors.Is(err, machine.ErrBadEvent), errors.Is(err, roles.ErrBadReport):
		apiErr = errorf(http.StatusBadRequest, CodeInvalidValue, "%v", err)
	case errors.Is(err, events.ErrConflict):
		apiErr = errorf(http.StatusConflict, CodeConflict, "%v; read the machine again and retry", err)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		apiErr = errorf(http.StatusServiceUnavailable, CodeUnavailable, "the event log did not answer in time: %v", err)
	default:
		s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		apiErr = errorf(http.StatusInternalServerError, CodeInternal, "%v", err)
	}
	writeError(w, apiErr)
}

// maxBody bounds request bodies: the API takes small JSON documents.
const maxBody = 1 << 20

// decodeBody reads one JSON object strictly: unknown fields, trailing data
// and wrong types are errors that name the problem.
func decodeBody(r *http.Request, v any) *Error {
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
		return errorf(http.StatusUnsupportedMediaType, CodeBadRequest, "Content-Type %q: send application/json", ct)
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		return errorf(http.StatusBadRequest, CodeBadRequest, "reading the body: %v", err)
	}
	if len(body) > maxBody {
		return errorf(http.StatusRequestEntityTooLarge, CodeBadRequest, "body larger than %d bytes", maxBody)
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return errorf(http.StatusBadRequest, CodeInvalidJSON, "empty body: send a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var syn *json.SyntaxError
		var typ *json.UnmarshalTypeError
		switch {
		case errors.As(err, &syn):
			return errorf(http.StatusBadRequest, CodeInvalidJSON, "malformed JSON at byte %d: %v", syn.Offset, err)
		case errors.As(err, &typ):
			return errorf(http.StatusBadRequest, CodeInvalidValue, "field %q must be a %s, not %s", typ.Field, typ.Type, typ.Value)
		case strings.HasPrefix(err.Error(), "json: unknown field "):
			return errorf(http.StatusBadRequest, CodeUnknownField, "%s is not a field of this request",
				strings.TrimPrefix(err.Error(), "json: unknown field "))
		default:
			return errorf(http.StatusBadRequest, CodeInvalidJSON, "malformed JSON: %v", err)
		}
	}
	if dec.More() {
		return errorf(http.StatusBadRequest, CodeInvalidJSON, "trailing data after the JSON object")
	}
	return nil
}

// ReadAccess says who may read without the admin token.
type ReadAccess string

const (
	ReadLoopback ReadAccess = "loopback" // the default: local reads are open
	ReadOpen     ReadAccess = "open"     // anyone who reaches the port may read
	ReadToken    ReadAccess = "token"    // every read needs the token
)

// ParseReadAccess checks a --read-access value.
func ParseReadAccess(s string) (ReadAccess, error) {
	switch a := ReadAccess(s); a {
	case ReadLoopback, ReadOpen, ReadToken:
		return a, nil
	}
	return "", fmt.Errorf("read access %q: want loopback, open or token", s)
}

// guard enforces a route's access rule before its handler runs.
func (s *Server) guard(a access, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		need := a == write ||
			a == read && (s.cfg.Reads == ReadToken || s.cfg.Reads != ReadOpen && !fromLoopback(r))
		if need {
			if e := s.checkToken(r); e != nil {
				if a == read {
					e.Message += " (reads from other hosts need the token too; see --read-access)"
				}
				writeError(w, e)
				return
			}
		}
		h.ServeHTTP(w, r)
	})
}

func (s *Server) checkToken(r *http.Request) *Error {
	h := r.Header.Get("Authorization")
	if h == "" {
		return errorf(http.StatusUnauthorized, CodeUnauthorized,
			"this request needs the admin token: send Authorization: Bearer <token from the data directory's admin.token>")
	}
	tok, ok := strings.CutPrefix(h, "Bearer ")
	if !ok {
		return errorf(http.StatusUnauthorized, CodeUnauthorized, "Authorization must be \"Bearer <token>\"")
	}
	if s.cfg.Token == "" || subtle.ConstantTimeCompare([]byte(tok), []byte(s.cfg.Token)) != 1 {
		return errorf(http.StatusUnauthorized, CodeUnauthorized, "the token is not the admin token")
	}
	return nil
}

func fromLoopback(r *http.Request) bool {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return false
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap().IsLoopback()
}
