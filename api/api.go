// Package api is mdc's HTTP side: the REST API for operators and the CLI, the
// live event feed, health, readiness and metrics. Boot scripts, blobs and the
// agent API mount on the same mux.
package api

import (
	"context"
	_ "embed"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/microdc/mdc/events"
	"github.com/microdc/mdc/machine"
)

// Machines is what the API needs of the event store.
type Machines interface {
	Get(id machine.ID) (machine.Machine, bool)
	LookupMAC(mac machine.ID) (machine.Machine, bool)
	List(f events.Filter) []machine.Machine
	Update(ctx context.Context, id machine.ID, decide events.Decision) (machine.Machine, machine.Event, error)
	History(ctx context.Context, id machine.ID) ([]machine.Event, error)
	Telemetry(ctx context.Context, id machine.ID) ([]machine.Event, error)
	Follow(ctx context.Context, from uint64, filter string, fn func(machine.Event, uint64) error) error
	LastSeq(ctx context.Context) (uint64, error)
	Ready() bool
}

// Config of the API.
type Config struct {
	Machines Machines
	// Token is the admin token every write (and every non-local read) needs.
	Token string
	// Reads says who may read without the token.
	Reads ReadAccess
	// Registry receives the HTTP metrics; Gatherer serves /metrics.
	Registry prometheus.Registerer
	Gatherer prometheus.Gatherer
	Logger   *slog.Logger
	// Version is reported by /api/v1/version.
	Version string
	// KeepAlive is how often an idle event feed sends a comment (default 15s).
	KeepAlive time.Duration
	// Images is the image catalog and importer; nil: the image routes answer 503.
	Images Images
	// Blobs serves GET/HEAD /blobs/sha256/{hex} (images/blob.Handler); nil: 503.
	Blobs http.Handler
	// Agent configures the agent API (agent.go).
	Agent AgentConfig
	// Inventory is the external inventory sync (NetBox); nil: the event
	// log is the whole inventory.
	Inventory Inventory
	// BMCs enrols and powers machines with a BMC (power.go); nil: those
	// routes answer 503.
	BMCs BMCs
	// RoleStatus describes the roles mdc runs (roles.go); nil: the roles
	// routes know only the roles machines carry, none with a cluster.
	RoleStatus RoleStatus
}

// Server is the HTTP API.
type Server struct {
	cfg        Config
	feeds      context.Context // cancelled by CloseFeeds
	closeFeeds context.CancelFunc
	mux        *http.ServeMux
	log        *slog.Logger
	metrics    *httpMetrics
	agent      agentState
}

// route is one entry of the API; the table is checked against openapi.yaml.
type route struct {
	method, path string
	auth         access
	handler      func(*Server, http.ResponseWriter, *http.Request)
}

// access is what a route requires.
type access int

const (
	open  access = iota // health, readiness, metrics: never secret
	read                // open on loopback by default, token elsewhere
	write               // always the admin token
	agent               // the machine's current boot token, checked by the handler
)

func routes() []route {
	return []route{
		{"GET", "/healthz", open, (*Server).healthz},
		{"GET", "/readyz", open, (*Server).readyz},
		{"GET", "/metrics", open, nil}, // promhttp, wired in New
		{"GET", "/api/v1/version", read, (*Server).version},
		{"GET", "/api/v1/openapi.yaml", open, (*Server).openapi},
		{"GET", "/api/v1/machines", read, (*Server).listMachines},
		{"POST", "/api/v1/machines", write, (*Server).registerMachine},
		{"GET", "/api/v1/machines/{id}", read, (*Server).getMachine},
		{"PATCH", "/api/v1/machines/{id}", write, (*Server).renameMachine},
		{"POST", "/api/v1/machines/{id}/assign", write, (*Server).assignMachine},
		{"POST", "/api/v1/machines/{id}/retire", write, (*Server).retireMachine},
		{"POST", "/api/v1/machines/{id}/reprovision", write, (*Server).reprovision},
		{"GET", "/api/v1/machines/{id}/power", read, (*Server).powerStatus},
		{"POST", "/api/v1/machines/{id}/power", write, (*Server).power},
		{"POST", "/api/v1/enroll", write, (*Server).enroll},
		{"GET", "/api/v1/machines/{id}/events", read, (*Server).machineEvents},
		{"GET", "/api/v1/events", read, (*Server).eventFeed},
		{"GET", "/api/v1/images", read, (*Server).listImages},
		{"POST", "/api/v1/images", write, (*Server).importImage},
		{"GET", "/api/v1/images/{name}", read, (*Server).getImage},
		{"DELETE", "/api/v1/images/{name}", write, (*Server).deleteImage},
		{"GET", "/blobs/sha256/{hex}", open, (*Server).blob},
		{"HEAD", "/blobs/sha256/{hex}", open, (*Server).blob},
		{"POST", "/api/v1/agent/facts", agent, (*Server).agentFacts},
		{"POST", "/api/v1/agent/booted", agent, (*Server).agentBooted},
		{"GET", "/api/v1/agent/config", agent, (*Server).agentConfig},
		{"POST", "/api/v1/agent/joined", agent, (*Server).agentJoined},
		{"POST", "/api/v1/agent/heartbeat", agent, (*Server).agentHeartbeat},
		{"GET", "/api/v1/inventory/status", read, (*Server).inventoryStatus},
		{"POST", "/api/v1/inventory/resync", write, (*Server).inventoryResync},
		{"GET", "/api/v1/roles", read, (*Server).listRoles},
		{"GET", "/api/v1/roles/{name}", read, (*Server).getRole},
	}
}

// New builds the API server.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Registry == nil {
		reg := prometheus.NewRegistry()
		cfg.Registry, cfg.Gatherer = reg, reg
	}
	if cfg.KeepAlive == 0 {
		cfg.KeepAlive = 15 * time.Second
	}
	s := &Server{cfg: cfg, mux: http.NewServeMux(), log: cfg.Logger, metrics: newHTTPMetrics(cfg.Registry)}
	s.feeds, s.closeFeeds = context.WithCancel(context.Background())
	for _, rt := range routes() {
		var h http.Handler
		if rt.path == "/metrics" {
			h = promhttp.HandlerFor(cfg.Gatherer, promhttp.HandlerOpts{})
		} else {
			h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { rt.handler(s, w, r) })
		}
		s.mux.Handle(rt.method+" "+rt.path, s.guard(rt.auth, h))
	}
	// Unknown /api/ paths answer in JSON too.
	s.mux.HandleFunc("/api/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, errorf(http.StatusNotFound, "not_found", "no such API endpoint: %s %s", r.Method, r.URL.Path))
	})
	return s
}

// CloseFeeds ends every open event feed, so that a graceful shutdown need
// not wait for clients that would listen forever.
func (s *Server) CloseFeeds() { s.closeFeeds() }

// Mount adds a handler for another part of mdc (boot scripts, blobs, agent
// API) on the same mux, with the same request metrics.
func (s *Server) Mount(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

// Handler is the whole HTTP side, with request metrics.
func (s *Server) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		start := time.Now()
		s.mux.ServeHTTP(rec, r)
		// ServeMux records the matched pattern on r; unmatched requests share one label.
		pattern := r.Pattern
		if pattern == "" {
			pattern = "unmatched"
		}
		s.metrics.observe(pattern, rec.status, time.Since(start))
	})
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = w.Write([]byte("ok\n"))
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if !s.cfg.Machines.Ready() {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte("replaying the event log\n"))
		return
	}
	if s.cfg.Images != nil && !s.cfg.Images.Ready() {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte("replaying the image catalog\n"))
		return
	}
	_, _ = w.Write([]byte("ready\n"))
}

func (s *Server) version(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"version": s.cfg.Version})
}

//go:embed openapi.yaml
var openapiDoc []byte

func (s *Server) openapi(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/yaml")
	_, _ = w.Write(openapiDoc)
}

// statusRecorder remembers the status code for metrics; it passes Flush
// through for the event feed.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

type httpMetrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

func newHTTPMetrics(reg prometheus.Registerer) *httpMetrics {
	m := &httpMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mdc_http_requests_total", Help: "HTTP requests by route pattern and status code.",
		}, []string{"route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "mdc_http_request_seconds", Help: "HTTP request duration by route pattern.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10),
		}, []string{"route"}),
	}
	reg.MustRegister(m.requests, m.duration)
	return m
}

func (m *httpMetrics) observe(route string, code int, d time.Duration) {
	m.requests.WithLabelValues(route, strconv.Itoa(code)).Inc()
	m.duration.WithLabelValues(route).Observe(d.Seconds())
}
