package redfish

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Limits a real BMC has too: bodies are small, sessions are few and expire.
const (
	maxBody        = 64 << 10
	maxSessions    = 64
	sessionTimeout = 30 * time.Minute
)

// Config configures a Service.
type Config struct {
	User, Password string
	Systems        map[string]System // id → system, e.g. "1"
	Logger         *slog.Logger      // nil: discard
}

// Service is the Redfish service; it implements http.Handler.
type Service struct {
	user, password string
	log            *slog.Logger
	uuid           string
	ids            []string // sorted system ids
	systems        map[string]*sysEntry
	now            func() time.Time

	mu       sync.Mutex
	sessions map[string]*session // by token
}

type sysEntry struct {
	id   string
	sys  System
	info Info
	nics []nic
	mu   sync.Mutex // serialises PATCH's check-then-set against If-Match
}

type nic struct {
	id, mac string
}

type session struct {
	id, user string
	lastUsed time.Time
}

// New returns a Service presenting cfg.Systems. Every system id must be a
// plain path segment and every MAC a valid 48-bit address.
func New(cfg Config) (*Service, error) {
	if cfg.User == "" || cfg.Password == "" {
		return nil, errors.New("redfish: a user and a password are required")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Service{
		user:     cfg.User,
		password: cfg.Password,
		log:      log,
		systems:  make(map[string]*sysEntry, len(cfg.Systems)),
		sessions: make(map[string]*session),
		now:      time.Now,
	}
	h := sha256.New()
	for id, sys := range cfg.Systems {
		if id == "" || strings.ContainsAny(id, "/?#%") || id == "." || id == ".." {
			return nil, fmt.Errorf("redfish: system id %q is not a plain path segment", id)
		}
		if sys == nil {
			return nil, fmt.Errorf("redfish: system %q is nil", id)
		}
		e := &sysEntry{id: id, sys: sys, info: sys.Info()}
		for i, m := range e.info.MACs {
			hw, err := net.ParseMAC(m)
			if err != nil || len(hw) != 6 {
				return nil, fmt.Errorf("redfish: system %q MAC %d %q is not a 48-bit MAC address", id, i, m)
			}
			e.nics = append(e.nics, nic{id: strings.ToUpper(hex.EncodeToString(hw)), mac: hw.String()})
		}
		s.systems[id] = e
		s.ids = append(s.ids, id)
	}
	sort.Strings(s.ids)
	for _, id := range s.ids {
		fmt.Fprintf(h, "%s=%s;", id, s.systems[id].info.UUID)
	}
	s.uuid = uuidFrom(h.Sum(nil))
	return s, nil
}

// uuidFrom formats the first 16 bytes of sum as a version-5-style UUID, so
// the service root keeps its UUID across restarts of the same rack.
func uuidFrom(sum []byte) string {
	b := append([]byte(nil), sum[:16]...)
	b[6] = b[6]&0x0f | 0x50
	b[8] = b[8]&0x3f | 0x80
	x := hex.EncodeToString(b)
	return x[0:8] + "-" + x[8:12] + "-" + x[12:16] + "-" + x[16:20] + "-" + x[20:32]
}

// statusWriter records the status for the access log.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

// ServeHTTP implements http.Handler.
func (s *Service) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
	start := time.Now()
	s.serve(sw, r)
	// Never the headers or the body: they carry credentials.
	s.log.Debug("redfish request", "method", r.Method, "path", r.URL.Path, "status", sw.status,
		"remote", r.RemoteAddr, "elapsed", time.Since(start))
}

func (s *Service) serve(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("OData-Version", "4.0")
	p := strings.TrimSuffix(r.URL.Path, "/")
	seg := strings.Split(strings.TrimPrefix(p, "/"), "/")

	// The service root, the version document and login need no credentials.
	switch {
	case p == "/redfish":
		s.methods(w, r, get(func() (map[string]any, error) {
			return map[string]any{"v1": "/redfish/v1/"}, nil
		}))
		return
	case p == "/redfish/v1":
		s.methods(w, r, get(func() (map[string]any, error) { return s.serviceRoot(), nil }))
		return
	case p == "/redfish/v1/SessionService/Sessions" && r.Method == http.MethodPost:
		s.login(w, r)
		return
	}
	if !s.authenticate(w, r) {
		return
	}
	if len(seg) < 3 || seg[0] != "redfish" || seg[1] != "v1" {
		s.notFound(w, r)
		return
	}
	seg = seg[2:]
	switch seg[0] {
	case "SessionService":
		s.routeSessions(w, r, seg[1:])
	case "Systems":
		s.routeSystems(w, r, seg[1:])
	case "Managers":
		s.routeManagers(w, r, seg[1:])
	case "Chassis":
		s.routeChassis(w, r, seg[1:])
	default:
		s.notFound(w, r)
	}
}

func (s *Service) routeSessions(w http.ResponseWriter, r *http.Request, seg []string) {
	switch len(seg) {
	case 0:
		s.methods(w, r, get(func() (map[string]any, error) { return sessionService(), nil }))
	case 1:
		if seg[0] != "Sessions" {
			s.notFound(w, r)
			return
		}
		s.methods(w, r, get(func() (map[string]any, error) { return s.sessionCollection(), nil }),
			handler{http.MethodPost, s.login})
	case 2:
		if seg[0] != "Sessions" {
			s.notFound(w, r)
			return
		}
		res, ok := s.sessionResource(seg[1])
		if !ok {
			s.missing(w, "Session", seg[1])
			return
		}
		s.methods(w, r, get(func() (map[string]any, error) { return res, nil }),
			handler{http.MethodDelete, func(w http.ResponseWriter, r *http.Request) { s.logout(w, seg[1]) }})
	default:
		s.notFound(w, r)
	}
}

func (s *Service) routeSystems(w http.ResponseWriter, r *http.Request, seg []string) {
	if len(seg) == 0 {
		s.methods(w, r, get(func() (map[string]any, error) {
			return s.collection("/redfish/v1/Systems", "#ComputerSystemCollection.ComputerSystemCollection", "Computer System Collection"), nil
		}))
		return
	}
	e, ok := s.systems[seg[0]]
	if !ok {
		s.missing(w, "ComputerSystem", seg[0])
		return
	}
	ctx := r.Context()
	switch {
	case len(seg) == 1:
		s.methods(w, r, get(func() (map[string]any, error) { return s.system(ctx, e) }),
			handler{http.MethodPatch, func(w http.ResponseWriter, r *http.Request) { s.patchSystem(w, r, e) }})
	case len(seg) == 3 && seg[1] == "Actions" && seg[2] == "ComputerSystem.Reset":
		s.methods(w, r, handler{http.MethodPost, func(w http.ResponseWriter, r *http.Request) { s.reset(w, r, e) }})
	case len(seg) == 2 && seg[1] == "EthernetInterfaces":
		s.methods(w, r, get(func() (map[string]any, error) { return s.nicCollection(e), nil }))
	case len(seg) == 3 && seg[1] == "EthernetInterfaces":
		for i, n := range e.nics {
			if n.id == seg[2] {
				s.methods(w, r, get(func() (map[string]any, error) { return s.nicResource(ctx, e, i) }))
				return
			}
		}
		s.missing(w, "EthernetInterface", seg[2])
	default:
		s.notFound(w, r)
	}
}

func (s *Service) routeManagers(w http.ResponseWriter, r *http.Request, seg []string) {
	switch len(seg) {
	case 0:
		s.methods(w, r, get(func() (map[string]any, error) {
			return s.collection("/redfish/v1/Managers", "#ManagerCollection.ManagerCollection", "Manager Collection"), nil
		}))
	case 1:
		e, ok := s.systems[seg[0]]
		if !ok {
			s.missing(w, "Manager", seg[0])
			return
		}
		s.methods(w, r, get(func() (map[string]any, error) { return s.manager(e), nil }))
	default:
		s.notFound(w, r)
	}
}

func (s *Service) routeChassis(w http.ResponseWriter, r *http.Request, seg []string) {
	switch len(seg) {
	case 0:
		s.methods(w, r, get(func() (map[string]any, error) {
			return s.collection("/redfish/v1/Chassis", "#ChassisCollection.ChassisCollection", "Chassis Collection"), nil
		}))
	case 1:
		e, ok := s.systems[seg[0]]
		if !ok {
			s.missing(w, "Chassis", seg[0])
			return
		}
		ctx := r.Context()
		s.methods(w, r, get(func() (map[string]any, error) { return s.chassis(ctx, e) }))
	default:
		s.notFound(w, r)
	}
}

// handler serves one method of a resource.
type handler struct {
	method string
	fn     http.HandlerFunc
}

// get serves a resource built by build, with an ETag; HEAD is served too.
func get(build func() (map[string]any, error)) handler {
	return handler{http.MethodGet, func(w http.ResponseWriter, r *http.Request) {
		res, err := build()
		if err != nil {
			internalError(w)
			return
		}
		tag := etag(res)
		res["@odata.etag"] = tag
		w.Header().Set("ETag", tag)
		if inm := r.Header.Get("If-None-Match"); inm != "" && tagMatches(inm, tag) {
			w.WriteHeader(http.StatusNotModified)
			return
		}
		writeJSON(w, http.StatusOK, res)
	}}
}

// methods dispatches r to the handler for its method, or answers 405.
func (s *Service) methods(w http.ResponseWriter, r *http.Request, hs ...handler) {
	allow := make([]string, 0, len(hs)+1)
	for _, h := range hs {
		if h.method == r.Method || (h.method == http.MethodGet && r.Method == http.MethodHead) {
			h.fn(w, r)
			return
		}
		allow = append(allow, h.method)
		if h.method == http.MethodGet {
			allow = append(allow, http.MethodHead)
		}
	}
	w.Header().Set("Allow", strings.Join(allow, ", "))
	writeError(w, http.StatusMethodNotAllowed, general(
		fmt.Sprintf("The method %s is not allowed on the resource at URI %s.", r.Method, r.URL.Path),
		"Use one of the methods in the Allow header: "+strings.Join(allow, ", ")+"."))
}

func (s *Service) notFound(w http.ResponseWriter, r *http.Request) {
	writeError(w, http.StatusNotFound, msg("ResourceMissingAtURI", r.URL.Path))
}

func (s *Service) missing(w http.ResponseWriter, typ, id string) {
	writeError(w, http.StatusNotFound, msg("ResourceNotFound", typ, id))
}

func internalError(w http.ResponseWriter) {
	writeError(w, http.StatusInternalServerError, msg("InternalError"))
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"error":{"code":"Base.1.5.0.InternalError","message":"encoding failed"}}`)
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// etag is a strong ETag over the resource's JSON (without @odata.etag).
func etag(res map[string]any) string {
	delete(res, "@odata.etag")
	b, _ := json.Marshal(res) // maps marshal with sorted keys: stable
	sum := sha256.Sum256(b)
	return `"` + hex.EncodeToString(sum[:8]) + `"`
}

// tagMatches reports whether an If-Match/If-None-Match list names tag.
func tagMatches(list, tag string) bool {
	for _, t := range strings.Split(list, ",") {
		t = strings.TrimSpace(t)
		if t == "*" || strings.TrimPrefix(t, "W/") == tag {
			return true
		}
		// Some clients strip the quotes (gofish's StripEtagQuotes).
		if `"`+t+`"` == tag {
			return true
		}
	}
	return false
}

// --- authentication and sessions ---

// authenticate accepts an X-Auth-Token of a live session or HTTP Basic
// credentials; otherwise it answers 401 and returns false.
func (s *Service) authenticate(w http.ResponseWriter, r *http.Request) bool {
	if tok := r.Header.Get("X-Auth-Token"); tok != "" {
		s.mu.Lock()
		sess, ok := s.sessions[tok]
		if ok && s.now().Sub(sess.lastUsed) > sessionTimeout {
			delete(s.sessions, tok)
			ok = false
		}
		if ok {
			sess.lastUsed = s.now()
		}
		s.mu.Unlock()
		if ok {
			return true
		}
	} else if u, p, ok := r.BasicAuth(); ok && s.credentialsOK(u, p) {
		return true
	}
	s.unauthorized(w)
	return false
}

func (s *Service) unauthorized(w http.ResponseWriter) {
	w.Header().Set("WWW-Authenticate", `Basic realm="Redfish"`)
	writeError(w, http.StatusUnauthorized, msg("NoValidSession"))
}

func (s *Service) credentialsOK(user, pass string) bool {
	u := subtle.ConstantTimeCompare([]byte(user), []byte(s.user))
	p := subtle.ConstantTimeCompare([]byte(pass), []byte(s.password))
	return u&p == 1
}

// login creates a session: POST /redfish/v1/SessionService/Sessions with
// {"UserName": ..., "Password": ...}.
func (s *Service) login(w http.ResponseWriter, r *http.Request) {
	obj, ok := readObject(w, r)
	if !ok {
		return
	}
	var infos []extInfo
	creds := map[string]string{}
	for _, k := range []string{"UserName", "Password"} {
		v, present := obj[k]
		if !present {
			infos = append(infos, msg("CreateFailedMissingReqProperties", k))
			continue
		}
		str, isStr := v.(string)
		if !isStr {
			infos = append(infos, msg("PropertyValueTypeError", jsonText(v, k == "Password"), k))
			continue
		}
		creds[k] = str
	}
	if len(infos) > 0 {
		writeError(w, http.StatusBadRequest, infos...)
		return
	}
	if !s.credentialsOK(creds["UserName"], creds["Password"]) {
		s.log.Info("redfish login refused", "user", creds["UserName"], "remote", r.RemoteAddr)
		s.unauthorized(w)
		return
	}
	tok, id := randomHex(16), randomHex(8)
	s.mu.Lock()
	now := s.now()
	for t, sess := range s.sessions {
		if now.Sub(sess.lastUsed) > sessionTimeout {
			delete(s.sessions, t)
		}
	}
	if len(s.sessions) >= maxSessions {
		s.mu.Unlock()
		writeError(w, http.StatusServiceUnavailable, msg("SessionLimitExceeded"))
		return
	}
	s.sessions[tok] = &session{id: id, user: creds["UserName"], lastUsed: now}
	s.mu.Unlock()

	res := sessionResource(id, creds["UserName"])
	tag := etag(res)
	res["@odata.etag"] = tag
	w.Header().Set("X-Auth-Token", tok)
	w.Header().Set("Location", res["@odata.id"].(string))
	w.Header().Set("ETag", tag)
	writeJSON(w, http.StatusCreated, res)
}

func (s *Service) logout(w http.ResponseWriter, id string) {
	s.mu.Lock()
	found := false
	for t, sess := range s.sessions {
		if sess.id == id {
			delete(s.sessions, t)
			found = true
		}
	}
	s.mu.Unlock()
	if !found {
		s.missing(w, "Session", id)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Service) sessionResource(id string) (map[string]any, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sess := range s.sessions {
		if sess.id == id && s.now().Sub(sess.lastUsed) <= sessionTimeout {
			return sessionResource(id, sess.user), true
		}
	}
	return nil, false
}

func (s *Service) sessionCollection() map[string]any {
	s.mu.Lock()
	ids := make([]string, 0, len(s.sessions))
	for _, sess := range s.sessions {
		if s.now().Sub(sess.lastUsed) <= sessionTimeout {
			ids = append(ids, sess.id)
		}
	}
	s.mu.Unlock()
	sort.Strings(ids)
	members := make([]any, 0, len(ids))
	for _, id := range ids {
		members = append(members, link("/redfish/v1/SessionService/Sessions/"+id))
	}
	return map[string]any{
		"@odata.id":           "/redfish/v1/SessionService/Sessions",
		"@odata.type":         "#SessionCollection.SessionCollection",
		"Name":                "Session Collection",
		"Members@odata.count": len(members),
		"Members":             members,
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails (crypto/rand since Go 1.24)
	return hex.EncodeToString(b)
}

// --- request bodies ---

// readObject reads a JSON object body, answering 400 for anything else.
func readObject(w http.ResponseWriter, r *http.Request) (map[string]any, bool) {
	body := http.MaxBytesReader(w, r.Body, maxBody)
	dec := json.NewDecoder(body)
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeError(w, http.StatusRequestEntityTooLarge, general(
				fmt.Sprintf("The request body is larger than %d bytes.", maxBody), "Send a smaller request body."))
			return nil, false
		}
		writeError(w, http.StatusBadRequest, msg("MalformedJSON"))
		return nil, false
	}
	if dec.More() {
		writeError(w, http.StatusBadRequest, msg("MalformedJSON"))
		return nil, false
	}
	obj, ok := v.(map[string]any)
	if !ok {
		writeError(w, http.StatusBadRequest, msg("MalformedJSON"))
		return nil, false
	}
	if len(obj) == 0 {
		writeError(w, http.StatusBadRequest, msg("EmptyJSON"))
		return nil, false
	}
	return obj, true
}

// jsonText renders a request value for an error message; secret values
// (a password) are never echoed.
func jsonText(v any, secret bool) string {
	if secret {
		return "<hidden>"
	}
	b, err := json.Marshal(v)
	if err != nil || len(b) > 64 {
		return "<value>"
	}
	return string(b)
}

// --- systems ---

// patchSystem applies a PATCH of the Boot override, all or nothing.
func (s *Service) patchSystem(w http.ResponseWriter, r *http.Request, e *sysEntry) {
	obj, ok := readObject(w, r)
	if !ok {
		return
	}
	ctx := r.Context()
	e.mu.Lock()
	defer e.mu.Unlock()
	cur, err := s.system(ctx, e)
	if err != nil {
		internalError(w)
		return
	}
	if im := r.Header.Get("If-Match"); im != "" && !tagMatches(im, etag(cur)) {
		writeError(w, http.StatusPreconditionFailed, general(
			"The ETag supplied in If-Match does not match the current ETag of the resource.",
			"Read the resource again and resubmit the request with its current ETag."))
		return
	}
	boot, err := e.sys.BootOverride(ctx)
	if err != nil {
		internalError(w)
		return
	}
	var infos []extInfo
	keys := sortedKeys(obj)
	for _, k := range keys {
		v := obj[k]
		switch {
		case k == "Boot":
			b, isObj := v.(map[string]any)
			if !isObj {
				infos = append(infos, msg("PropertyValueTypeError", jsonText(v, false), "Boot"))
				continue
			}
			infos = append(infos, patchBoot(b, &boot)...)
		case strings.HasPrefix(k, "@odata."):
			// Clients echo annotations back; they change nothing.
		default:
			if _, known := cur[k]; known {
				infos = append(infos, msg("PropertyNotWritable", k))
			} else {
				infos = append(infos, msg("PropertyUnknown", k))
			}
		}
	}
	if len(infos) > 0 {
		writeError(w, http.StatusBadRequest, infos...)
		return
	}
	if err := e.sys.SetBootOverride(ctx, boot); err != nil {
		if errors.Is(err, ErrInvalidBoot) {
			writeError(w, http.StatusBadRequest, general(err.Error(), "Choose values from the @Redfish.AllowableValues lists."))
			return
		}
		s.log.Warn("redfish set boot override", "system", e.id, "err", err)
		internalError(w)
		return
	}
	s.log.Info("redfish boot override set", "system", e.id, "target", boot.Target, "enabled", boot.Enabled, "mode", boot.Mode)
	res, err := s.system(ctx, e)
	if err != nil {
		internalError(w)
		return
	}
	tag := etag(res)
	res["@odata.etag"] = tag
	w.Header().Set("ETag", tag)
	writeJSON(w, http.StatusOK, res)
}

// patchBoot merges a PATCH's Boot object into b, returning what was wrong.
func patchBoot(obj map[string]any, b *Boot) []extInfo {
	var infos []extInfo
	fields := map[string]struct {
		dst     *string
		allowed []string
	}{
		"BootSourceOverrideTarget":  {&b.Target, BootTargets},
		"BootSourceOverrideEnabled": {&b.Enabled, BootEnabled},
		"BootSourceOverrideMode":    {&b.Mode, BootModes},
	}
	for _, k := range sortedKeys(obj) {
		v := obj[k]
		f, ok := fields[k]
		switch {
		case !ok && strings.Contains(k, "@"):
			// Annotations such as @Redfish.AllowableValues echoed back.
		case !ok:
			infos = append(infos, msg("PropertyUnknown", "Boot/"+k))
		default:
			str, isStr := v.(string)
			if !isStr {
				infos = append(infos, msg("PropertyValueTypeError", jsonText(v, false), k))
			} else if !contains(f.allowed, str) {
				infos = append(infos, msg("PropertyValueNotInList", jsonText(str, false), k))
			} else {
				*f.dst = str
			}
		}
	}
	return infos
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

const resetAction = "ComputerSystem.Reset"

// reset serves POST .../Actions/ComputerSystem.Reset {"ResetType": ...}.
// If-Match is not checked: an action has no ETag of its own, and clients
// (gofish) send the system's, which a power change makes stale.
func (s *Service) reset(w http.ResponseWriter, r *http.Request, e *sysEntry) {
	obj, ok := readObject(w, r)
	if !ok {
		return
	}
	var infos []extInfo
	for _, k := range sortedKeys(obj) {
		if k != "ResetType" {
			infos = append(infos, msg("ActionParameterUnknown", resetAction, k))
		}
	}
	v, present := obj["ResetType"]
	rt, isStr := v.(string)
	switch {
	case !present:
		infos = append(infos, msg("ActionParameterMissing", resetAction, "ResetType"))
	case !isStr:
		infos = append(infos, msg("ActionParameterValueTypeError", jsonText(v, false), "ResetType", resetAction))
	case !contains(ResetTypes, rt):
		infos = append(infos, msg("PropertyValueNotInList", jsonText(rt, false), "ResetType"))
	}
	if len(infos) > 0 {
		writeError(w, http.StatusBadRequest, infos...)
		return
	}
	if err := e.sys.Reset(r.Context(), rt); err != nil {
		if errors.Is(err, ErrUnsupportedReset) {
			writeError(w, http.StatusBadRequest, msg("PropertyValueNotInList", jsonText(rt, false), "ResetType"))
			return
		}
		s.log.Warn("redfish reset", "system", e.id, "type", rt, "err", err)
		internalError(w)
		return
	}
	s.log.Info("redfish reset", "system", e.id, "type", rt)
	w.WriteHeader(http.StatusNoContent)
}
