package redfish

import (
	"context"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	bmclib "github.com/bmc-toolbox/bmclib/v2"
	"github.com/google/go-cmp/cmp"
)

// TestBmclib drives the service with bmclib's gofish (Redfish) provider, the
// client mdc's bmc package is built on.
func TestBmclib(t *testing.T) {
	for _, tc := range []struct {
		name  string
		tls   bool
		basic bool
	}{
		{"http session", false, false},
		{"http basic", false, true},
		{"https session", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := NewMemory(testInfo)
			svc, err := New(Config{User: testUser, Password: testPass, Systems: map[string]System{"1": m}})
			if err != nil {
				t.Fatal(err)
			}
			// Record PATCH answers: bmclib retries a refused boot PATCH
			// with fewer fields, which would hide a refusal.
			var mu sync.Mutex
			var patches []int
			h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method != http.MethodPatch {
					svc.ServeHTTP(w, r)
					return
				}
				rec := httptest.NewRecorder()
				svc.ServeHTTP(rec, r)
				mu.Lock()
				patches = append(patches, rec.Code)
				mu.Unlock()
				maps.Copy(w.Header(), rec.Header())
				w.WriteHeader(rec.Code)
				_, _ = w.Write(rec.Body.Bytes())
			})
			var srv *httptest.Server
			host := "http://127.0.0.1"
			if tc.tls {
				srv = httptest.NewTLSServer(h)
				host = "127.0.0.1" // bmclib defaults to https
			} else {
				srv = httptest.NewServer(h)
			}
			defer srv.Close()
			u, _ := url.Parse(srv.URL)

			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			cl := bmclib.NewClient(host, testUser, testPass,
				bmclib.WithRedfishPort(u.Port()), bmclib.WithRedfishUseBasicAuth(tc.basic))
			cl.Registry.Drivers = cl.Registry.For("gofish")
			if len(cl.Registry.Drivers) != 1 {
				t.Fatalf("gofish drivers: %d", len(cl.Registry.Drivers))
			}
			if err := cl.Open(ctx); err != nil {
				t.Fatalf("Open: %v", err)
			}
			closed := false
			defer func() {
				if !closed {
					cl.Close(ctx)
				}
			}()

			state := func() string {
				t.Helper()
				s, err := cl.GetPowerState(ctx)
				if err != nil {
					t.Fatalf("GetPowerState: %v", err)
				}
				return strings.ToLower(s)
			}
			if s := state(); s != "off" {
				t.Errorf("initial power state %q", s)
			}
			if _, err := cl.SetPowerState(ctx, "on"); err != nil {
				t.Fatalf("power on: %v", err)
			}
			if p, _ := m.PowerState(ctx); p != PowerOn || state() != "on" {
				t.Fatalf("after power on: system %s, bmclib %s", p, state())
			}
			if _, err := cl.SetBootDevice(ctx, "pxe", false, true); err != nil {
				t.Fatalf("SetBootDevice pxe: %v", err)
			}
			if b, _ := m.BootOverride(ctx); b != (Boot{Target: "Pxe", Enabled: "Once", Mode: "UEFI"}) {
				t.Errorf("override after SetBootDevice(pxe, once, efi): %+v", b)
			}
			ov, err := cl.GetBootDeviceOverride(ctx)
			if err != nil || string(ov.Device) != "pxe" || ov.IsPersistent || !ov.IsEFIBoot {
				t.Errorf("GetBootDeviceOverride = %+v, %v", ov, err)
			}
			if _, err := cl.SetPowerState(ctx, "cycle"); err != nil {
				t.Fatalf("power cycle: %v", err)
			}
			boots := m.Boots()
			if len(boots) != 2 || boots[1].Target != "Pxe" {
				t.Errorf("the cycle did not boot the Once PXE override: %+v", boots)
			}
			if b, _ := m.BootOverride(ctx); b.Enabled != "Disabled" {
				t.Errorf("Once override not consumed by the cycle: %+v", b)
			}
			if _, err := cl.SetPowerState(ctx, "off"); err != nil {
				t.Fatalf("power off: %v", err)
			}
			if p, _ := m.PowerState(ctx); p != PowerOff || state() != "off" {
				t.Errorf("after power off: system %s", p)
			}
			// Persistent legacy override, as mdc sets for reprovisioning.
			if _, err := cl.SetBootDevice(ctx, "pxe", true, false); err != nil {
				t.Fatalf("SetBootDevice persistent: %v", err)
			}
			if b, _ := m.BootOverride(ctx); b != (Boot{Target: "Pxe", Enabled: "Continuous", Mode: "Legacy"}) {
				t.Errorf("persistent override: %+v", b)
			}
			mu.Lock()
			if diff := cmp.Diff([]int{200, 200}, patches); diff != "" {
				t.Errorf("PATCH statuses (-want +got):\n%s", diff)
			}
			mu.Unlock()
			closed = true
			if err := cl.Close(ctx); err != nil {
				t.Errorf("Close: %v", err)
			}
			if r := do(t, srv, "GET", "/redfish/v1/SessionService/Sessions", basic, "", nil); dig(r.body, "Members@odata.count") != float64(0) {
				t.Errorf("bmclib's session outlived Close: %s", r.raw)
			}
		})
	}
}

func TestBmclibWrongPassword(t *testing.T) {
	srv, _ := newTestServer(t)
	u, _ := url.Parse(srv.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl := bmclib.NewClient("http://127.0.0.1", testUser, "wrong", bmclib.WithRedfishPort(u.Port()))
	cl.Registry.Drivers = cl.Registry.For("gofish")
	if err := cl.Open(ctx); err == nil {
		cl.Close(ctx)
		t.Fatal("Open with a wrong password succeeded")
	} else if !strings.Contains(err.Error(), "401") {
		t.Errorf("Open error does not say 401: %v", err)
	}
}

// TestBmclibSystemName: with several systems behind one service, bmclib picks
// one by its Name (WithRedfishSystemName), which defaults to "System <id>".
func TestBmclibSystemName(t *testing.T) {
	mems := map[string]*Memory{}
	systems := map[string]System{}
	for _, id := range []string{"1", "2", "3"} {
		mems[id] = NewMemory(testInfo)
		systems[id] = mems[id]
	}
	svc, err := New(Config{User: testUser, Password: testPass, Systems: systems})
	if err != nil {
		t.Fatal(err)
	}
	srv := newServer(t, svc)
	u, _ := url.Parse(srv.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl := bmclib.NewClient("http://127.0.0.1", testUser, testPass,
		bmclib.WithRedfishPort(u.Port()), bmclib.WithRedfishSystemName("System 2"))
	cl.Registry.Drivers = cl.Registry.For("gofish")
	if err := cl.Open(ctx); err != nil {
		t.Fatal(err)
	}
	defer cl.Close(ctx)
	if _, err := cl.SetPowerState(ctx, "on"); err != nil {
		t.Fatal(err)
	}
	for id, m := range mems {
		p, _ := m.PowerState(ctx)
		if want := map[bool]string{true: PowerOn, false: PowerOff}[id == "2"]; p != want {
			t.Errorf("system %s is %s, want %s", id, p, want)
		}
	}
}
