package ipxe

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/microdc/mdc/events"
	"github.com/microdc/mdc/events/eventstest"
	"github.com/microdc/mdc/images/blob"
	"github.com/microdc/mdc/machine"
)

// newStore runs a real event store on an embedded NATS in a temp directory.
func newStore(t *testing.T) *events.Store { return eventstest.Start(t).Store }

// catalog is the test's image catalog: images by name, and by role under
// "role:<role>".
type catalog map[string]Image

func (c catalog) Image(name string) (Image, bool) {
	img, ok := c[name]
	return img, ok
}

func (c catalog) RoleImage(role string) (Image, bool) {
	img, ok := c["role:"+role]
	return img, ok
}

var (
	kernelDigest  = blob.Sum([]byte("kernel"))
	initrdDigest  = blob.Sum([]byte("initrd"))
	initrd2Digest = blob.Sum([]byte("initrd2"))
	testCatalog   = catalog{
		"commission":    {Name: "commission", Kernel: kernelDigest, Initrds: []blob.Digest{initrdDigest}, Cmdline: "console=ttyS0 quiet"},
		"role:ceph-osd": {Name: "ceph-osd-24.11", Kernel: kernelDigest, Initrds: []blob.Digest{initrdDigest, initrd2Digest}, Cmdline: "init=/nix/store/abc-nixos/init"},
	}
)

// telemetry keeps what the server recorded.
type telemetry struct {
	mu     sync.Mutex
	events []machine.Event
}

func (r *telemetry) Telemetry(_ context.Context, e machine.Event) {
	r.mu.Lock()
	r.events = append(r.events, e)
	r.mu.Unlock()
}

func (r *telemetry) all() []machine.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]machine.Event(nil), r.events...)
}

type fixture struct {
	store *events.Store
	srv   *Server
	mux   *http.ServeMux
	tel   *telemetry
}

const testBase = "http://10.9.0.1:8080"

func newFixture(t *testing.T, cfg Config) *fixture {
	t.Helper()
	f := &fixture{store: newStore(t), mux: http.NewServeMux(), tel: &telemetry{}}
	cfg.Machines = f.store
	if cfg.Images == nil {
		cfg.Images = testCatalog
	}
	if cfg.CommissioningImage == "" {
		cfg.CommissioningImage = "commission"
	}
	if cfg.BaseURL == "" {
		cfg.BaseURL = testBase
	}
	cfg.Recorder = f.tel
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	f.srv = srv
	srv.Register(f.mux.Handle)
	return f
}

// get requests path and returns status and body.
func (f *fixture) get(t *testing.T, path string) (int, string) {
	t.Helper()
	req := httptest.NewRequest("GET", path, nil)
	rec := httptest.NewRecorder()
	f.mux.ServeHTTP(rec, req)
	return rec.Code, rec.Body.String()
}

// script fetches a boot script that must be served.
func (f *fixture) script(t *testing.T, query string) string {
	t.Helper()
	code, body := f.get(t, "/boot.ipxe?"+query)
	if code != 200 {
		t.Fatalf("GET /boot.ipxe?%s: %d %s", query, code, body)
	}
	return body
}

// apply appends lifecycle events to a machine, as the API or agent would.
func (f *fixture) apply(t *testing.T, id machine.ID, evs ...struct {
	typ  machine.EventType
	data any
}) machine.Machine {
	t.Helper()
	var m machine.Machine
	for _, e := range evs {
		var err error
		m, _, err = f.store.Update(context.Background(), id, func(machine.Machine) (machine.Event, error) {
			return machine.NewEvent(id, e.typ, "test", e.data)
		})
		if err != nil {
			t.Fatalf("%s: %v", e.typ, err)
		}
	}
	return m
}

type ev = struct {
	typ  machine.EventType
	data any
}

// history returns a machine's lifecycle events.
func (f *fixture) history(t *testing.T, id machine.ID) []machine.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	h, err := f.store.History(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// tokenOf reads mdc.token= from a script ("" if none).
func tokenOf(script string) string {
	for _, field := range strings.Fields(script) {
		if v, ok := strings.CutPrefix(field, "mdc.token="); ok {
			return v
		}
	}
	return ""
}

// noMachines is a store for tests that never reach it.
type noMachines struct{}

func newStoreless() Machines { return noMachines{} }

func (noMachines) LookupMAC(machine.ID) (machine.Machine, bool) { return machine.Machine{}, false }

func (noMachines) Update(context.Context, machine.ID, events.Decision) (machine.Machine, machine.Event, error) {
	return machine.Machine{}, machine.Event{}, context.Canceled
}

func httptestRequest(path string) *http.Request { return httptest.NewRequest("GET", path, nil) }

func serveRec(f *fixture, r *http.Request) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	f.mux.ServeHTTP(rec, r)
	return rec
}
