package redfish

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// redfishtool runs DMTF's redfishtool against srv. The credentials go in a
// 0600 config file (-c), not on the command line.
func redfishtool(t *testing.T, host string, args ...string) string {
	t.Helper()
	bin, err := exec.LookPath("redfishtool")
	if err != nil {
		t.Skip("redfishtool not installed (Debian package redfishtool; hack/install-deps.sh redfish)")
	}
	cfg := filepath.Join(t.TempDir(), "creds.json")
	b, _ := json.Marshal(map[string]string{"user": testUser, "password": testPass})
	if err := os.WriteFile(cfg, b, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	full := append([]string{"-r", host, "-c", cfg, "-S", "Never", "-T", "10"}, args...)
	out, err := exec.CommandContext(ctx, bin, full...).CombinedOutput()
	if err != nil {
		t.Fatalf("redfishtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestRedfishtool(t *testing.T) {
	for _, authn := range []string{"Basic", "Session"} {
		t.Run(authn, func(t *testing.T) {
			m := NewMemory(testInfo)
			svc, err := New(Config{User: testUser, Password: testPass, Systems: map[string]System{"1": m}})
			if err != nil {
				t.Fatal(err)
			}
			var mu sync.Mutex
			seen := map[string]int{}
			srv := newServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				if strings.HasPrefix(r.URL.Path, "/redfish/v1/SessionService/Sessions") {
					seen[r.Method]++
				}
				mu.Unlock()
				svc.ServeHTTP(w, r)
			}))
			u, _ := url.Parse(srv.URL)
			host := u.Host

			out := redfishtool(t, host, "-A", authn, "Systems", "list")
			if !strings.Contains(out, "/redfish/v1/Systems/1") {
				t.Errorf("Systems list does not show system 1:\n%s", out)
			}

			out = redfishtool(t, host, "-A", authn, "Systems", "-I", "1", "get")
			var sys map[string]any
			if err := json.Unmarshal([]byte(out), &sys); err != nil {
				t.Fatalf("Systems get is not JSON: %v\n%s", err, out)
			}
			if sys["PowerState"] != "Off" || sys["UUID"] != testInfo.UUID {
				t.Errorf("Systems get: PowerState %v UUID %v", sys["PowerState"], sys["UUID"])
			}

			redfishtool(t, host, "-A", authn, "Systems", "-I", "1", "reset", "On")
			if p, _ := m.PowerState(context.Background()); p != PowerOn {
				t.Fatalf("after reset On, power is %s", p)
			}
			// Python starts slowly on a busy machine: the rest runs once.
			if authn == "Basic" {
				redfishtoolMore(t, host, m)
			}
			mu.Lock()
			logins, logouts := seen["POST"], seen["DELETE"]
			mu.Unlock()
			if authn == "Session" && (logins == 0 || logouts != logins) {
				t.Errorf("session logins %d, logouts %d: want every login logged out", logins, logouts)
			}
			if r := do(t, srv, "GET", "/redfish/v1/SessionService/Sessions", basic, "", nil); dig(r.body, "Members@odata.count") != float64(0) {
				t.Errorf("sessions left behind: %s", r.raw)
			}
		})
	}
}

// redfishtoolMore checks the boot override, restarts, the NICs' MACs and the
// walk to Chassis and Managers through redfishtool.
func redfishtoolMore(t *testing.T, host string, m *Memory) {
	t.Helper()
	out := redfishtool(t, host, "Systems", "-I", "1", "-P", "PowerState", "get")
	if !strings.Contains(out, `"On"`) {
		t.Errorf("PowerState property: %s", out)
	}
	redfishtool(t, host, "Systems", "-I", "1", "setBootOverride", "Once", "Pxe")
	if b, _ := m.BootOverride(context.Background()); b.Target != "Pxe" || b.Enabled != "Once" {
		t.Errorf("after setBootOverride Once Pxe: %+v", b)
	}
	redfishtool(t, host, "Systems", "-I", "1", "reset", "ForceRestart")
	boots := m.Boots()
	if len(boots) != 2 || boots[1].Target != "Pxe" {
		t.Errorf("ForceRestart did not restart into the Once PXE override: %+v", boots)
	}
	redfishtool(t, host, "Systems", "-I", "1", "reset", "ForceOff")
	if p, _ := m.PowerState(context.Background()); p != PowerOff {
		t.Errorf("after reset ForceOff, power is %s", p)
	}

	out = redfishtool(t, host, "Systems", "-I", "1", "EthernetInterfaces", "-a")
	for _, mac := range testInfo.MACs {
		if !strings.Contains(out, mac) {
			t.Errorf("EthernetInterfaces -a lacks %s:\n%s", mac, out)
		}
	}
	for _, sub := range []string{"Chassis", "Managers"} {
		out = redfishtool(t, host, sub, "-I", "1", "get")
		if !strings.Contains(out, `"/redfish/v1/`+sub+`/1"`) {
			t.Errorf("%s get:\n%s", sub, out)
		}
	}
	if strings.Contains(out, testPass) {
		t.Errorf("redfishtool output carries the password")
	}
}
