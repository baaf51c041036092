package netboxtest

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Fault is what the stand-in does to requests instead of answering them.
type Fault int

const (
	// NoFault answers normally.
	NoFault Fault = iota
	// Unavailable answers 503, as NetBox behind a proxy does while it restarts.
	Unavailable
	// Reset closes the connection without an answer (TCP RST).
	Reset
)

// Server is the NetBox stand-in.
type Server struct {
	Spec  *Spec
	Token string

	mu         sync.Mutex
	st         *store
	violations []string
	fault      Fault
	delay      time.Duration
	requests   map[string]int // "METHOD template" → count
	total      int
}

// New returns a stand-in that accepts the API token token.
func New(token string) (*Server, error) {
	sp, err := LoadSpec()
	if err != nil {
		return nil, err
	}
	return &Server{Spec: sp, Token: token, st: newStore(), requests: map[string]int{}}, nil
}

// Start runs a stand-in on loopback for one test. When the test ends it
// fails the test (t.Errorf) for every request the document did not allow,
// and for every answer of its own that did not satisfy the document.
func Start(t testing.TB, token string) (*Server, *httptest.Server) {
	t.Helper()
	s, err := New(token)
	if err != nil {
		t.Fatalf("NetBox stand-in: %v", err)
	}
	hs := httptest.NewServer(s)
	s.SetBaseURL(hs.URL)
	t.Cleanup(func() {
		hs.CloseClientConnections()
		hs.Close()
		for _, v := range s.Violations() {
			t.Errorf("NetBox stand-in: %s", v)
		}
	})
	return s, hs
}

// SetBaseURL makes answers' url fields point at the server.
func (s *Server) SetBaseURL(u string) {
	s.mu.Lock()
	s.st.base = strings.TrimRight(u, "/")
	s.mu.Unlock()
}

// SetFault makes every later request fail the way f says, until NoFault.
func (s *Server) SetFault(f Fault) {
	s.mu.Lock()
	s.fault = f
	s.mu.Unlock()
}

// SetDelay makes every answer wait d first (a slow NetBox).
func (s *Server) SetDelay(d time.Duration) {
	s.mu.Lock()
	s.delay = d
	s.mu.Unlock()
}

// Violations are the requests the document does not allow, and answers
// that do not satisfy it.
func (s *Server) Violations() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.violations)
}

// Requests is the number of requests answered (faults included).
func (s *Server) Requests() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.total
}

// RequestCounts is the number of requests by "METHOD path-template".
func (s *Server) RequestCounts() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]int{}
	for k, v := range s.requests {
		out[k] = v
	}
	return out
}

// Objects returns every object of a kind ("dcim/devices") as the API
// shows it, in id order.
func (s *Server) Objects(path string) []map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := kinds[path]
	if k == nil {
		return nil
	}
	var out []map[string]any
	for _, id := range s.st.ids(path) {
		b, _ := s.answer(k, s.st.objs[path][id])
		var v map[string]any
		_ = json.Unmarshal(b, &v)
		out = append(out, v)
	}
	return out
}

func (s *Server) violate(format string, args ...any) {
	s.violations = append(s.violations, fmt.Sprintf(format, args...))
}

// ServeHTTP checks the request against the document and answers it.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	fault, delay := s.fault, s.delay
	s.total++
	s.mu.Unlock()
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
			return
		}
	}
	switch fault {
	case Unavailable:
		w.Header().Set("Retry-After", "1")
		http.Error(w, "503 Service Unavailable", http.StatusServiceUnavailable)
		return
	case Reset:
		if hj, ok := w.(http.Hijacker); ok {
			if c, _, err := hj.Hijack(); err == nil {
				if tc, ok := c.(*net.TCPConn); ok {
					_ = tc.SetLinger(0)
				}
				c.Close()
				return
			}
		}
	}
	body, _ := io.ReadAll(io.LimitReader(r.Body, 8<<20))
	s.mu.Lock()
	defer s.mu.Unlock()
	status, out := s.handle(r, body)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("API-Version", "4.3")
	w.WriteHeader(status)
	if out != nil {
		_, _ = w.Write(out)
	}
}

func detail(msg string, args ...any) []byte {
	b, _ := json.Marshal(map[string]string{"detail": fmt.Sprintf(msg, args...)})
	return b
}

// handle runs with s.mu held.
func (s *Server) handle(r *http.Request, body []byte) (int, []byte) {
	pt, params := s.Spec.match(r.URL.Path)
	if pt == nil {
		s.violate("%s %s: no such path in the document", r.Method, r.URL.Path)
		return http.StatusBadRequest, detail("no such path")
	}
	key := r.Method + " " + pt.template
	s.requests[key]++
	op, ok := pt.ops[r.Method]
	if !ok {
		s.violate("%s: method not in the document", key)
		return http.StatusBadRequest, detail("method not allowed")
	}
	if auth := r.Header.Get("Authorization"); auth != "Token "+s.Token {
		s.violate("%s: Authorization header is not \"Token <the token>\"", key)
		return http.StatusForbidden, detail("Invalid token")
	}
	var problems []string
	for name, raw := range params {
		sch := opParams(op, "path")[name]
		if sch == nil {
			problems = append(problems, "path parameter "+name+" not declared")
		} else if _, err := scalar(sch, raw); err != nil {
			problems = append(problems, "path parameter "+name+": "+err.Error())
		}
	}
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		problems = append(problems, "query: "+err.Error())
	}
	declared := opParams(op, "query")
	for name, values := range q {
		sch, ok := declared[name]
		if !ok {
			problems = append(problems, fmt.Sprintf("query parameter %q not declared", name))
			continue
		}
		item := sch
		if sch["type"] == "array" {
			item, _ = sch["items"].(map[string]any)
		} else if len(values) > 1 {
			problems = append(problems, fmt.Sprintf("query parameter %q given %d times", name, len(values)))
		}
		for _, v := range values {
			jv, err := scalar(item, v)
			if err == nil {
				if errs := s.Spec.Validate(item, jv, "query "+name, true); len(errs) > 0 {
					err = fmt.Errorf("%s", strings.Join(errs, "; "))
				}
			}
			if err != nil {
				problems = append(problems, fmt.Sprintf("query parameter %q: %v", name, err))
			}
		}
	}
	var reqBody any
	if rb, ok := op["requestBody"].(map[string]any); ok && (len(body) > 0 || rb["required"] == true) {
		content := asMap(rb["content"])
		if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
			problems = append(problems, fmt.Sprintf("Content-Type %q, want application/json", ct))
		}
		sch := asMap(asMap(content["application/json"])["schema"])
		if reqBody, err = decodeJSON(body); err != nil {
			problems = append(problems, "body: "+err.Error())
		} else {
			problems = append(problems, s.Spec.Validate(sch, reqBody, "body", true)...)
		}
	} else if len(body) > 0 {
		problems = append(problems, "a body where the operation takes none")
	}
	if len(problems) > 0 {
		for _, p := range problems {
			s.violate("%s: %s", key, p)
		}
		return http.StatusBadRequest, detail("%s", strings.Join(problems, "; "))
	}
	return s.serveOp(r, key, pt, op, params, q, reqBody)
}

// serveOp answers an allowed request from the store.
func (s *Server) serveOp(r *http.Request, key string, pt *pathTemplate, op map[string]any, params map[string]string, q url.Values, body any) (int, []byte) {
	if pt.template == "/api/status/" {
		return http.StatusOK, s.respond(key, op, "200", map[string]any{
			"netbox-version": "4.3.0", "django-version": "5.2", "python-version": "3.12.0",
			"installed-apps": map[string]any{}, "plugins": map[string]any{}, "rq-workers-running": 1,
		})
	}
	path := strings.TrimPrefix(strings.TrimSuffix(pt.template, "/"), "/api/")
	path = strings.TrimSuffix(path, "/{id}")
	k := kinds[path]
	if k == nil || strings.Count(pt.template, "/") > 5 {
		s.violate("%s: allowed by the document, but the stand-in does not implement it", key)
		return http.StatusNotImplemented, detail("not implemented by the stand-in")
	}
	single := strings.HasSuffix(pt.template, "/{id}/")
	if !single {
		switch r.Method {
		case http.MethodGet:
			return s.list(key, op, k, q)
		case http.MethodPost:
			obj, errs := s.st.write(k, 0, body.(map[string]any), false)
			if errs != nil {
				return http.StatusBadRequest, mustJSON(errs)
			}
			return http.StatusCreated, s.respond(key, op, "201", s.st.render(s.Spec, k, obj))
		}
		s.violate("%s: bulk operations are not implemented by the stand-in", key)
		return http.StatusNotImplemented, detail("not implemented by the stand-in")
	}
	id, _ := strconv.ParseInt(params["id"], 10, 64)
	cur, ok := s.st.objs[k.path][id]
	if !ok {
		return http.StatusNotFound, detail("No %s matches the given query.", k.objectType)
	}
	switch r.Method {
	case http.MethodGet:
		return http.StatusOK, s.respond(key, op, "200", s.st.render(s.Spec, k, cur))
	case http.MethodPatch, http.MethodPut:
		obj, errs := s.st.write(k, id, body.(map[string]any), r.Method == http.MethodPatch)
		if errs != nil {
			return http.StatusBadRequest, mustJSON(errs)
		}
		return http.StatusOK, s.respond(key, op, "200", s.st.render(s.Spec, k, obj))
	case http.MethodDelete:
		delete(s.st.objs[k.path], id)
		return http.StatusNoContent, nil
	}
	return http.StatusMethodNotAllowed, detail("method not allowed")
}

func (s *Server) list(key string, op map[string]any, k *kind, q url.Values) (int, []byte) {
	limit, offset := 50, 0
	if v := q.Get("limit"); v != "" {
		limit, _ = strconv.Atoi(v)
		if limit <= 0 || limit > 1000 {
			limit = 1000 // NetBox's MAX_PAGE_SIZE
		}
	}
	if v := q.Get("offset"); v != "" {
		offset, _ = strconv.Atoi(v)
	}
	var preds []func(object) bool
	for name, values := range q {
		if name == "limit" || name == "offset" {
			continue
		}
		f := filters[k.path][name]
		if f == nil {
			s.violate("%s: filter %q is allowed by the document but not implemented by the stand-in", key, name)
			return http.StatusNotImplemented, detail("filter %s not implemented by the stand-in", name)
		}
		preds = append(preds, f(s.st, values))
	}
	var match []object
	for _, id := range s.st.ids(k.path) {
		o := s.st.objs[k.path][id]
		if !slices.ContainsFunc(preds, func(p func(object) bool) bool { return !p(o) }) {
			match = append(match, o)
		}
	}
	page := []any{}
	for i := offset; i < len(match) && i < offset+limit; i++ {
		page = append(page, s.st.render(s.Spec, k, match[i]))
	}
	var next any
	if offset+limit < len(match) {
		nq := url.Values{}
		for kq, v := range q {
			nq[kq] = v
		}
		nq.Set("limit", strconv.Itoa(limit))
		nq.Set("offset", strconv.Itoa(offset+limit))
		next = fmt.Sprintf("%s/api/%s/?%s", s.st.base, k.path, nq.Encode())
	}
	return http.StatusOK, s.respond(key, op, "200", map[string]any{"count": len(match), "next": next, "previous": nil, "results": page})
}

// respond completes an answer to its response schema, checks it, and
// records a violation if the stand-in itself got it wrong.
func (s *Server) respond(key string, op map[string]any, code string, v any) []byte {
	sch := asMap(asMap(asMap(asMap(asMap(op["responses"])[code])["content"])["application/json"])["schema"])
	b := mustJSON(v)
	jv, _ := decodeJSON(b)
	jv = s.Spec.Complete(sch, jv)
	b = mustJSON(jv)
	jv, _ = decodeJSON(b)
	if errs := s.Spec.Validate(sch, jv, "answer", false); len(errs) > 0 {
		s.violate("%s: the stand-in's own answer breaks the document: %s", key, strings.Join(errs, "; "))
	}
	return b
}

// answer renders one object as GET /{id}/ would.
func (s *Server) answer(k *kind, o object) ([]byte, error) {
	op := s.Spec.opOf("/api/"+k.path+"/{id}/", "GET")
	return s.respond("GET /api/"+k.path+"/{id}/", op, "200", s.st.render(s.Spec, k, o)), nil
}

func (sp *Spec) opOf(template, method string) map[string]any {
	for i := range sp.paths {
		if sp.paths[i].template == template {
			return sp.paths[i].ops[method]
		}
	}
	return nil
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}
