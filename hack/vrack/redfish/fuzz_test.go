package redfish

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// FuzzRequestBody sends arbitrary bodies (network input) to every endpoint
// that reads one: PATCH of a System, the Reset action, and login. The service
// must answer with a status a BMC gives, a JSON body, and leave the system in
// a state it could be in.
func FuzzRequestBody(f *testing.F) {
	seeds := []string{
		// As bmclib/gofish sends them.
		`{"Boot":{"BootSourceOverrideEnabled":"Once","BootSourceOverrideMode":"UEFI","BootSourceOverrideTarget":"Pxe"}}`,
		`{"Boot":{"BootSourceOverrideEnabled":"Continuous","BootSourceOverrideTarget":"Pxe"}}`,
		`{"ResetType":"ForceRestart"}`,
		`{"ResetType":"On"}`,
		`{"UserName":"admin","Password":"s3cret-test-only"}`,
		// As redfishtool sends them.
		`{"Boot": {"BootSourceOverrideEnabled": "Once", "BootSourceOverrideTarget": "Pxe"}}`,
		`{"ResetType": "GracefulRestart"}`,
		// Broken ones.
		``, `{}`, `null`, `[]`, `{"Boot":null}`, `{"Boot":{"BootSourceOverrideTarget":["Pxe"]}}`,
		`{"ResetType":"On"}{"ResetType":"Off"}`, `{"a":` + strings.Repeat("[", 10000), "\xff\xfe",
		`{"Boot":{"BootSourceOverrideTarget":"Pxe","BootSourceOverrideTarget":7}}`, `{"ResetType":1e999}`,
	}
	for i, s := range seeds {
		f.Add(uint8(i), s, "")
	}
	f.Add(uint8(0), seeds[0], `"stale"`)
	f.Add(uint8(0), seeds[0], `*`)

	f.Fuzz(func(t *testing.T, which uint8, body, ifMatch string) {
		m := NewMemory(testInfo)
		svc, err := New(Config{User: testUser, Password: testPass, Systems: map[string]System{"1": m}})
		if err != nil {
			t.Fatal(err)
		}
		targets := []struct{ method, path string }{
			{http.MethodPatch, "/redfish/v1/Systems/1"},
			{http.MethodPost, "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset"},
			{http.MethodPost, "/redfish/v1/SessionService/Sessions"},
		}
		tg := targets[int(which)%len(targets)]
		req := httptest.NewRequest(tg.method, tg.path, strings.NewReader(body))
		req.SetBasicAuth(testUser, testPass)
		if ifMatch != "" {
			req.Header.Set("If-Match", ifMatch)
		}
		rec := httptest.NewRecorder()
		svc.ServeHTTP(rec, req)

		switch rec.Code {
		case 200, 201, 204, 400, 401, 412, 413:
		default:
			t.Fatalf("%s %s: status %d for body %q", tg.method, tg.path, rec.Code, body)
		}
		if rec.Body.Len() > 0 {
			var v map[string]any
			if err := json.Unmarshal(rec.Body.Bytes(), &v); err != nil {
				t.Fatalf("response is not a JSON object: %v: %s", err, rec.Body.Bytes())
			}
			if rec.Code >= 400 && v["error"] == nil {
				t.Fatalf("%d without a Redfish error body: %s", rec.Code, rec.Body.Bytes())
			}
		}
		if strings.Contains(rec.Body.String(), testPass) {
			t.Fatalf("response echoes the password: %s", rec.Body.Bytes())
		}
		ctx := context.Background()
		if p, _ := m.PowerState(ctx); p != PowerOn && p != PowerOff {
			t.Fatalf("power state %q", p)
		}
		if b, _ := m.BootOverride(ctx); b.Validate() != nil {
			t.Fatalf("boot override %+v: %v", b, b.Validate())
		}
	})
}
