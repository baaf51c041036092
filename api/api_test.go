package api

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"gopkg.in/yaml.v3"

	"github.com/microdc/mdc/events"
	"github.com/microdc/mdc/events/eventstest"
	"github.com/microdc/mdc/machine"
)

const token = "test-admin-token"

type fixture struct {
	srv   *httptest.Server
	h     http.Handler
	store *events.Store
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	_, _, store, reg := startStore(t)
	s := New(Config{Machines: store, Token: token, Reads: ReadLoopback, Registry: reg, Gatherer: reg, Version: "test"})
	return serve(t, s, store)
}

// startStore starts an embedded NATS, the event log and a replayed machine
// table; all of it stops when the test ends.
func startStore(t *testing.T) (context.Context, *nats.Conn, *events.Store, *prometheus.Registry) {
	t.Helper()
	f := eventstest.Start(t)
	return f.Ctx, f.NC, f.Store, f.Registry
}

// serve puts s behind an httptest server for the test's lifetime.
func serve(t *testing.T, s *Server, store *events.Store) *fixture {
	h := s.Handler()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return &fixture{srv: srv, h: h, store: store}
}

// do sends a request; tok "" sends no Authorization header.
func (f *fixture) do(t *testing.T, method, path, tok, body string, hdr ...string) (int, []byte) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, f.srv.URL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func (f *fixture) write(t *testing.T, method, path, body string) WriteResult {
	t.Helper()
	code, b := f.do(t, method, path, token, body)
	if code/100 != 2 {
		t.Fatalf("%s %s: %d %s", method, path, code, b)
	}
	var res WriteResult
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatal(err)
	}
	return res
}

func TestRoutesMatchOpenAPI(t *testing.T) {
	var doc struct {
		Paths map[string]map[string]any `yaml:"paths"`
	}
	if err := yaml.Unmarshal(openapiDoc, &doc); err != nil {
		t.Fatal(err)
	}
	documented := map[string]bool{}
	for path, ops := range doc.Paths {
		for method := range ops {
			if method != "parameters" {
				documented[strings.ToUpper(method)+" "+path] = true
			}
		}
	}
	served := map[string]bool{}
	for _, rt := range routes() {
		key := rt.method + " " + rt.path
		served[key] = true
		if !documented[key] {
			t.Errorf("route %s is not in api/openapi.yaml", key)
		}
	}
	for key := range documented {
		if !served[key] {
			t.Errorf("api/openapi.yaml documents %s, which is not served", key)
		}
	}
}

func TestMachineLifecycleThroughAPI(t *testing.T) {
	f := newFixture(t)
	reg := f.write(t, "POST", "/api/v1/machines", `{"mac":"52-54-00-AA-00-01","name":"rack1-a"}`)
	if reg.Machine.ID != "525400aa0001" || reg.Machine.State != machine.StDiscovered || reg.Event.Seq != 1 {
		t.Fatalf("register: %+v", reg)
	}
	f.write(t, "POST", "/api/v1/machines", `{"mac":"525400aa0002"}`)
	f.write(t, "PATCH", "/api/v1/machines/52:54:00:aa:00:01", `{"name":"osd-1"}`)
	as := f.write(t, "POST", "/api/v1/machines/525400aa0001/assign", `{"role":"ceph-osd"}`)
	if as.Machine.State != machine.Provisioning || as.Machine.Role != "ceph-osd" || as.Machine.Name != "osd-1" {
		t.Fatalf("assign: %+v", as.Machine)
	}

	code, b := f.do(t, "GET", "/api/v1/machines?state=provisioning", "", "")
	var list MachineList
	if code != 200 || json.Unmarshal(b, &list) != nil || list.Count != 1 || list.Machines[0].ID != "525400aa0001" {
		t.Fatalf("list by state: %d %s", code, b)
	}
	code, b = f.do(t, "GET", "/api/v1/machines?role=ceph-osd", "", "")
	if code != 200 || !strings.Contains(string(b), `"count": 1`) {
		t.Fatalf("list by role: %d %s", code, b)
	}

	ret := f.write(t, "POST", "/api/v1/machines/525400aa0002/retire", `{"reason":"fan broken"}`)
	if ret.Machine.State != machine.StRetired {
		t.Fatalf("retire: %+v", ret.Machine)
	}
	code, b = f.do(t, "GET", "/api/v1/machines/525400aa0001/events", "", "")
	var evs EventList
	if code != 200 || json.Unmarshal(b, &evs) != nil {
		t.Fatalf("events: %d %s", code, b)
	}
	var types []machine.EventType
	for _, e := range evs.Events {
		types = append(types, e.Type)
	}
	if want := []machine.EventType{machine.Discovered, machine.Renamed, machine.RoleAssigned}; !slices.Equal(types, want) {
		t.Fatalf("history %v, want %v", types, want)
	}
	if evs.Events[0].Source != "mdc/api" {
		t.Errorf("source %q", evs.Events[0].Source)
	}
}

func TestBadInputAppendsNothing(t *testing.T) {
	f := newFixture(t)
	f.write(t, "POST", "/api/v1/machines", `{"mac":"525400bb0001"}`)
	f.write(t, "POST", "/api/v1/machines/525400bb0001/retire", ``)
	f.write(t, "POST", "/api/v1/machines", `{"mac":"525400bb0002"}`)
	before, _ := f.store.LastSeq(context.Background())

	tests := map[string]struct {
		method, path, tok, body string
		status                  int
		code, mentions          string
	}{
		"malformed JSON":         {"POST", "/api/v1/machines", token, `{"mac":`, 400, CodeInvalidJSON, "malformed JSON"},
		"not an object":          {"POST", "/api/v1/machines", token, `["525400bb0003"]`, 400, CodeInvalidValue, "must be"},
		"trailing data":          {"POST", "/api/v1/machines", token, `{"mac":"525400bb0003"} {}`, 400, CodeInvalidJSON, "trailing"},
		"empty body":             {"POST", "/api/v1/machines", token, ` `, 400, CodeInvalidJSON, "empty body"},
		"unknown field":          {"POST", "/api/v1/machines", token, `{"mac":"525400bb0003","colour":"red"}`, 400, CodeUnknownField, `"colour"`},
		"wrong type":             {"POST", "/api/v1/machines", token, `{"mac":5254}`, 400, CodeInvalidValue, `"mac"`},
		"missing MAC":            {"POST", "/api/v1/machines", token, `{"name":"x"}`, 400, CodeInvalidMAC, "mac is required"},
		"bad MAC in body":        {"POST", "/api/v1/machines", token, `{"mac":"52:54:00:zz:00:01"}`, 400, CodeInvalidMAC, "52:54:00:zz:00:01"},
		"bad name":               {"POST", "/api/v1/machines", token, `{"mac":"525400bb0003","name":"Bad Name"}`, 400, CodeInvalidValue, "Bad Name"},
		"already registered":     {"POST", "/api/v1/machines", token, `{"mac":"525400bb0002"}`, 409, CodeExists, "already registered"},
		"bad MAC in path":        {"GET", "/api/v1/machines/nonsense", "", "", 400, CodeInvalidMAC, "nonsense"},
		"unknown machine":        {"GET", "/api/v1/machines/525400bb0009", "", "", 404, CodeNotFound, "525400bb0009"},
		"unknown machine write":  {"POST", "/api/v1/machines/525400bb0009/retire", token, "", 404, CodeNotFound, "525400bb0009"},
		"illegal transition":     {"POST", "/api/v1/machines/525400bb0001/retire", token, "", 409, CodeIllegal, "retired"},
		"assign a retired":       {"POST", "/api/v1/machines/525400bb0001/assign", token, `{"role":"nats"}`, 409, CodeIllegal, "role_assigned"},
		"bad role":               {"POST", "/api/v1/machines/525400bb0002/assign", token, `{"role":""}`, 400, CodeInvalidValue, "role"},
		"missing token":          {"POST", "/api/v1/machines", "", `{"mac":"525400bb0003"}`, 401, CodeUnauthorized, "admin token"},
		"wrong token":            {"POST", "/api/v1/machines", "not-the-token", `{"mac":"525400bb0003"}`, 401, CodeUnauthorized, "not the admin token"},
		"unknown filter":         {"GET", "/api/v1/machines?colour=red", "", "", 400, CodeBadRequest, "colour"},
		"unknown state":          {"GET", "/api/v1/machines?state=asleep", "", "", 400, CodeInvalidValue, "asleep"},
		"unknown endpoint":       {"GET", "/api/v1/nothing", "", "", 404, CodeNotFound, "/api/v1/nothing"},
		"bad since":              {"GET", "/api/v1/events?since=abc", "", "", 400, CodeInvalidValue, "since"},
		"wrong content type":     {"POST", "/api/v1/machines", token, "", 415, CodeBadRequest, "Content-Type"},
		"oversized body":         {"POST", "/api/v1/machines", token, `{"mac":"` + strings.Repeat("a", 2<<20) + `"}`, 413, CodeBadRequest, "larger than"},
		"idempotency key length": {"POST", "/api/v1/machines/525400bb0002/retire", token, "", 400, CodeInvalidValue, "Idempotency-Key"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var hdr []string
			switch name {
			case "wrong content type":
				hdr = []string{"Content-Type", "text/plain"}
				tc.body = "mac=1"
			case "idempotency key length":
				hdr = []string{"Idempotency-Key", strings.Repeat("k", 200)}
			}
			code, b := f.do(t, tc.method, tc.path, tc.tok, tc.body, hdr...)
			if code != tc.status {
				t.Fatalf("status %d, want %d: %s", code, tc.status, b)
			}
			var e struct{ Error Error }
			if err := json.Unmarshal(b, &e); err != nil {
				t.Fatalf("error body is not JSON: %s", b)
			}
			if e.Error.Code != tc.code || !strings.Contains(e.Error.Message, tc.mentions) {
				t.Fatalf("got %+v, want code %s mentioning %q", e.Error, tc.code, tc.mentions)
			}
		})
	}
	after, _ := f.store.LastSeq(context.Background())
	if after != before {
		t.Fatalf("bad requests appended %d events", after-before)
	}
}

func TestReadsFromOtherHostsNeedToken(t *testing.T) {
	f := newFixture(t)
	// httptest.NewRequest sets RemoteAddr to 192.0.2.1: nothing is sent anywhere.
	req := httptest.NewRequest("GET", "/api/v1/machines", nil)
	rec := httptest.NewRecorder()
	f.h.ServeHTTP(rec, req)
	if rec.Code != 401 {
		t.Fatalf("remote read without token: %d", rec.Code)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	rec = httptest.NewRecorder()
	f.h.ServeHTTP(rec, req)
	if rec.Code != 200 {
		t.Fatalf("remote read with token: %d %s", rec.Code, rec.Body)
	}
	for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
		rec = httptest.NewRecorder()
		f.h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		if rec.Code != 200 {
			t.Errorf("%s: %d", path, rec.Code)
		}
	}
}

func TestIdempotencyKey(t *testing.T) {
	f := newFixture(t)
	body := `{"mac":"525400cc0001"}`
	c1, b1 := f.do(t, "POST", "/api/v1/machines", token, body, "Idempotency-Key", "req-1")
	c2, b2 := f.do(t, "POST", "/api/v1/machines", token, body, "Idempotency-Key", "req-1")
	var r1, r2 WriteResult
	_ = json.Unmarshal(b1, &r1)
	_ = json.Unmarshal(b2, &r2)
	if c1 != 201 || c2 != 201 || r1.Event != r2.Event || r1.Event.ID != "req-1" {
		t.Fatalf("first %d %+v, repeat %d %+v", c1, r1.Event, c2, r2.Event)
	}
	last, _ := f.store.LastSeq(context.Background())
	if last != 1 {
		t.Fatalf("%d events stored, want 1", last)
	}
}

func TestEventFeed(t *testing.T) {
	f := newFixture(t)
	f.write(t, "POST", "/api/v1/machines", `{"mac":"525400dd0001"}`)
	f.write(t, "POST", "/api/v1/machines", `{"mac":"525400dd0002"}`)
	f.write(t, "PATCH", "/api/v1/machines/525400dd0001", `{"name":"a"}`)

	// The stored log, then the end.
	code, b := f.do(t, "GET", "/api/v1/events?since=1&follow=false", "", "")
	if code != 200 {
		t.Fatalf("feed: %d %s", code, b)
	}
	if got := sseIDs(string(b)); !slices.Equal(got, []string{"1", "2", "3"}) {
		t.Fatalf("ids %v in\n%s", got, b)
	}
	_, b = f.do(t, "GET", "/api/v1/events?since=2&follow=false&machine=525400dd0001", "", "")
	if got := sseIDs(string(b)); !slices.Equal(got, []string{"3"}) {
		t.Fatalf("filtered ids %v in\n%s", got, b)
	}

	// Live: resume after 3 with Last-Event-ID and see a new event arrive.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", f.srv.URL+"/api/v1/events", nil)
	req.Header.Set("Last-Event-ID", "3")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	f.write(t, "POST", "/api/v1/machines/525400dd0002/retire", ``)
	sc := bufio.NewScanner(resp.Body)
	var lines []string
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if sc.Text() == "" && len(lines) > 1 {
			break
		}
	}
	msg := strings.Join(lines, "\n")
	if !strings.Contains(msg, "id: 4\nevent: retired\ndata: {") || !strings.Contains(msg, `"subject":"525400dd0002"`) {
		t.Fatalf("live message:\n%s", msg)
	}
}

func sseIDs(s string) []string {
	var ids []string
	for _, line := range strings.Split(s, "\n") {
		if id, ok := strings.CutPrefix(line, "id: "); ok {
			ids = append(ids, id)
		}
	}
	return ids
}

func TestMetricsCountRequests(t *testing.T) {
	f := newFixture(t)
	f.write(t, "POST", "/api/v1/machines", `{"mac":"525400ee0001"}`)
	f.do(t, "GET", "/api/v1/machines/525400ee0009", "", "")
	_, b := f.do(t, "GET", "/metrics", "", "")
	for _, want := range []string{
		`mdc_http_requests_total{code="201",route="POST /api/v1/machines"} 1`,
		`mdc_http_requests_total{code="404",route="GET /api/v1/machines/{id}"} 1`,
		`mdc_events_appended_total{type="discovered"} 1`,
		`mdc_machines{state="discovered"} 1`,
		`mdc_projection_lag_events 0`,
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if t.Failed() {
		fmt.Println(string(b))
	}
}
