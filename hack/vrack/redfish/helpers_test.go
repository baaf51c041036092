package redfish

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
)

const (
	testUser = "admin"
	testPass = "s3cret-test-only"
)

var testInfo = Info{
	UUID:         "0ca2b7a4-3f1e-4e5b-9c55-6a1f6c0e2d11",
	SerialNumber: "VRACK-0001",
	Manufacturer: "QEMU",
	Model:        "Standard PC (Q35 + ICH9, 2009)",
	MACs:         []string{"52:54:00:12:34:56", "52:54:00:ab:cd:ef"},
}

// newTestServer serves one Memory system with id "1" over loopback HTTP.
func newTestServer(t *testing.T) (*httptest.Server, *Memory) {
	t.Helper()
	m := NewMemory(testInfo)
	svc, err := New(Config{User: testUser, Password: testPass, Systems: map[string]System{"1": m}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(svc)
	t.Cleanup(srv.Close)
	return srv, m
}

type response struct {
	status int
	header http.Header
	body   map[string]any
	raw    []byte
}

// auth is how a request authenticates: basic, a token, or nothing.
type auth struct {
	basic      bool
	user, pass string
	token      string
}

var basic = auth{basic: true, user: testUser, pass: testPass}

func do(t *testing.T, srv *httptest.Server, method, path string, a auth, body string, hdr map[string]string) response {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = bytes.NewBufferString(body)
	}
	req, err := http.NewRequest(method, srv.URL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if a.basic {
		req.SetBasicAuth(a.user, a.pass)
	}
	if a.token != "" {
		req.Header.Set("X-Auth-Token", a.token)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	r := response{status: resp.StatusCode, header: resp.Header, raw: raw}
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &r.body); err != nil {
			t.Fatalf("%s %s: body is not a JSON object: %v\n%s", method, path, err, raw)
		}
	}
	return r
}

// messageIDs returns the MessageIds of a Redfish error body, failing the
// test if the body is not one.
func messageIDs(t *testing.T, r response) []string {
	t.Helper()
	e, ok := r.body["error"].(map[string]any)
	if !ok {
		t.Fatalf("status %d: no Redfish error body: %s", r.status, r.raw)
	}
	if c, _ := e["code"].(string); c != "Base.1.5.0.GeneralError" {
		t.Errorf("error code = %q", c)
	}
	if m, _ := e["message"].(string); m == "" {
		t.Errorf("error has no message")
	}
	infos, ok := e["@Message.ExtendedInfo"].([]any)
	if !ok || len(infos) == 0 {
		t.Fatalf("error has no @Message.ExtendedInfo: %s", r.raw)
	}
	var ids []string
	for _, i := range infos {
		m := i.(map[string]any)
		for _, k := range []string{"MessageId", "Message", "Severity", "Resolution"} {
			if s, _ := m[k].(string); s == "" {
				t.Errorf("ExtendedInfo lacks %s: %v", k, m)
			}
		}
		ids = append(ids, m["MessageId"].(string))
	}
	return ids
}

func dig(v any, path ...string) any {
	for _, p := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[p]
	}
	return v
}

func newServer(t *testing.T, h http.Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}
