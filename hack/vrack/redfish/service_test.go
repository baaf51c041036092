package redfish

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestUnauthenticated(t *testing.T) {
	srv, _ := newTestServer(t)
	for _, p := range []string{"/redfish", "/redfish/v1", "/redfish/v1/"} {
		if r := do(t, srv, "GET", p, auth{}, "", nil); r.status != http.StatusOK {
			t.Errorf("GET %s without credentials = %d, want 200 (the service root is public)", p, r.status)
		}
	}
	tests := map[string]struct {
		method, path string
		a            auth
	}{
		"no credentials":      {"GET", "/redfish/v1/Systems", auth{}},
		"no credentials/one":  {"GET", "/redfish/v1/Systems/1", auth{}},
		"unknown path":        {"GET", "/redfish/v1/Nowhere", auth{}},
		"reset":               {"POST", "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset", auth{}},
		"wrong password":      {"GET", "/redfish/v1/Systems", auth{basic: true, user: testUser, pass: "wrong"}},
		"wrong user":          {"GET", "/redfish/v1/Systems", auth{basic: true, user: "root", pass: testPass}},
		"unknown token":       {"GET", "/redfish/v1/Systems", auth{token: "deadbeef"}},
		"session list":        {"GET", "/redfish/v1/SessionService/Sessions", auth{}},
		"session service":     {"GET", "/redfish/v1/SessionService", auth{}},
		"patch without creds": {"PATCH", "/redfish/v1/Systems/1", auth{}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r := do(t, srv, tc.method, tc.path, tc.a, "", nil)
			if r.status != http.StatusUnauthorized {
				t.Fatalf("%s %s = %d, want 401", tc.method, tc.path, r.status)
			}
			if diff := cmp.Diff([]string{"Base.1.5.0.NoValidSession"}, messageIDs(t, r)); diff != "" {
				t.Errorf("MessageIds (-want +got):\n%s", diff)
			}
			if r.header.Get("WWW-Authenticate") == "" {
				t.Errorf("401 without WWW-Authenticate")
			}
		})
	}
}

func TestSessions(t *testing.T) {
	srv, _ := newTestServer(t)
	login := `{"UserName":"` + testUser + `","Password":"` + testPass + `"}`
	r := do(t, srv, "POST", "/redfish/v1/SessionService/Sessions", auth{}, login, nil)
	if r.status != http.StatusCreated {
		t.Fatalf("login = %d, want 201: %s", r.status, r.raw)
	}
	tok, loc := r.header.Get("X-Auth-Token"), r.header.Get("Location")
	if tok == "" || loc == "" {
		t.Fatalf("login response lacks X-Auth-Token or Location: %v", r.header)
	}
	if strings.Contains(string(r.raw), testPass) || strings.Contains(string(r.raw), tok) {
		t.Errorf("session body echoes a secret: %s", r.raw)
	}
	if got := r.body["@odata.id"]; got != loc {
		t.Errorf("session @odata.id = %v, Location = %q", got, loc)
	}
	a := auth{token: tok}
	if r := do(t, srv, "GET", loc, a, "", nil); r.status != http.StatusOK || r.body["UserName"] != testUser {
		t.Errorf("GET own session = %d %v", r.status, r.body["UserName"])
	}
	if r := do(t, srv, "GET", "/redfish/v1/Systems/1", a, "", nil); r.status != http.StatusOK {
		t.Errorf("GET system with token = %d", r.status)
	}
	r = do(t, srv, "GET", "/redfish/v1/SessionService/Sessions", a, "", nil)
	if got := dig(r.body, "Members@odata.count"); got != float64(1) {
		t.Errorf("session collection count = %v, want 1", got)
	}
	if r := do(t, srv, "DELETE", loc, a, "", nil); r.status != http.StatusNoContent {
		t.Errorf("logout = %d, want 204", r.status)
	}
	r = do(t, srv, "GET", "/redfish/v1/Systems/1", a, "", nil)
	if r.status != http.StatusUnauthorized {
		t.Fatalf("token after logout = %d, want 401", r.status)
	}
	messageIDs(t, r)

	t.Run("bad password", func(t *testing.T) {
		r := do(t, srv, "POST", "/redfish/v1/SessionService/Sessions", auth{}, `{"UserName":"admin","Password":"nope"}`, nil)
		if r.status != http.StatusUnauthorized || r.header.Get("X-Auth-Token") != "" {
			t.Errorf("login with a bad password = %d token %q", r.status, r.header.Get("X-Auth-Token"))
		}
	})
	t.Run("missing password", func(t *testing.T) {
		r := do(t, srv, "POST", "/redfish/v1/SessionService/Sessions", auth{}, `{"UserName":"admin"}`, nil)
		if r.status != http.StatusBadRequest {
			t.Fatalf("login without Password = %d, want 400", r.status)
		}
		if diff := cmp.Diff([]string{"Base.1.5.0.CreateFailedMissingReqProperties"}, messageIDs(t, r)); diff != "" {
			t.Errorf("(-want +got):\n%s", diff)
		}
		if !strings.Contains(string(r.raw), "Password") {
			t.Errorf("error does not name Password: %s", r.raw)
		}
	})
	t.Run("password of wrong type not echoed", func(t *testing.T) {
		r := do(t, srv, "POST", "/redfish/v1/SessionService/Sessions", auth{}, `{"UserName":"admin","Password":12345678}`, nil)
		if r.status != http.StatusBadRequest || strings.Contains(string(r.raw), "12345678") {
			t.Errorf("= %d %s", r.status, r.raw)
		}
	})
}

func TestErrors(t *testing.T) {
	srv, _ := newTestServer(t)
	sys := do(t, srv, "GET", "/redfish/v1/Systems/1", basic, "", nil)
	tests := map[string]struct {
		method, path, body string
		hdr                map[string]string
		status             int
		ids                []string
		mentions           string
	}{
		"unknown path":      {"GET", "/redfish/v1/Nowhere", "", nil, 404, []string{"Base.1.5.0.ResourceMissingAtURI"}, "/redfish/v1/Nowhere"},
		"unknown sub path":  {"GET", "/redfish/v1/Systems/1/Bios", "", nil, 404, []string{"Base.1.5.0.ResourceMissingAtURI"}, "Bios"},
		"outside redfish":   {"GET", "/index.html", "", nil, 404, []string{"Base.1.5.0.ResourceMissingAtURI"}, ""},
		"unknown system":    {"GET", "/redfish/v1/Systems/9", "", nil, 404, []string{"Base.1.5.0.ResourceNotFound"}, "9"},
		"unknown manager":   {"GET", "/redfish/v1/Managers/9", "", nil, 404, []string{"Base.1.5.0.ResourceNotFound"}, "Manager"},
		"unknown nic":       {"GET", "/redfish/v1/Systems/1/EthernetInterfaces/0000", "", nil, 404, []string{"Base.1.5.0.ResourceNotFound"}, "EthernetInterface"},
		"delete system":     {"DELETE", "/redfish/v1/Systems/1", "", nil, 405, []string{"Base.1.5.0.GeneralError"}, "DELETE"},
		"post collection":   {"POST", "/redfish/v1/Systems", "{}", nil, 405, []string{"Base.1.5.0.GeneralError"}, "POST"},
		"get reset":         {"GET", "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset", "", nil, 405, []string{"Base.1.5.0.GeneralError"}, "GET"},
		"put service root":  {"PUT", "/redfish/v1/", "{}", nil, 405, []string{"Base.1.5.0.GeneralError"}, "PUT"},
		"patch chassis":     {"PATCH", "/redfish/v1/Chassis/1", `{"AssetTag":"x"}`, nil, 405, []string{"Base.1.5.0.GeneralError"}, "PATCH"},
		"bad reset type":    {"POST", "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset", `{"ResetType":"Explode"}`, nil, 400, []string{"Base.1.5.0.PropertyValueNotInList"}, "Explode"},
		"reset type number": {"POST", "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset", `{"ResetType":1}`, nil, 400, []string{"Base.1.5.0.ActionParameterValueTypeError"}, "ResetType"},
		"reset no type":     {"POST", "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset", `{"Force":true}`, nil, 400, []string{"Base.1.5.0.ActionParameterUnknown", "Base.1.5.0.ActionParameterMissing"}, "ResetType"},
		"malformed json":    {"POST", "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset", `{"ResetType":`, nil, 400, []string{"Base.1.5.0.MalformedJSON"}, ""},
		"empty body":        {"PATCH", "/redfish/v1/Systems/1", `{}`, nil, 400, []string{"Base.1.5.0.EmptyJSON"}, ""},
		"array body":        {"PATCH", "/redfish/v1/Systems/1", `[1]`, nil, 400, []string{"Base.1.5.0.MalformedJSON"}, ""},
		"bad boot target":   {"PATCH", "/redfish/v1/Systems/1", `{"Boot":{"BootSourceOverrideTarget":"Floppy"}}`, nil, 400, []string{"Base.1.5.0.PropertyValueNotInList"}, "BootSourceOverrideTarget"},
		"bad boot enabled":  {"PATCH", "/redfish/v1/Systems/1", `{"Boot":{"BootSourceOverrideEnabled":"Always"}}`, nil, 400, []string{"Base.1.5.0.PropertyValueNotInList"}, "BootSourceOverrideEnabled"},
		"bad boot mode":     {"PATCH", "/redfish/v1/Systems/1", `{"Boot":{"BootSourceOverrideMode":7}}`, nil, 400, []string{"Base.1.5.0.PropertyValueTypeError"}, "BootSourceOverrideMode"},
		"boot not object":   {"PATCH", "/redfish/v1/Systems/1", `{"Boot":"Pxe"}`, nil, 400, []string{"Base.1.5.0.PropertyValueTypeError"}, "Boot"},
		"read-only":         {"PATCH", "/redfish/v1/Systems/1", `{"PowerState":"On"}`, nil, 400, []string{"Base.1.5.0.PropertyNotWritable"}, "PowerState"},
		"unknown property":  {"PATCH", "/redfish/v1/Systems/1", `{"Turbo":true}`, nil, 400, []string{"Base.1.5.0.PropertyUnknown"}, "Turbo"},
		"unknown boot prop": {"PATCH", "/redfish/v1/Systems/1", `{"Boot":{"BootNext":"0001"}}`, nil, 400, []string{"Base.1.5.0.PropertyUnknown"}, "BootNext"},
		"stale etag": {"PATCH", "/redfish/v1/Systems/1", `{"Boot":{"BootSourceOverrideTarget":"Pxe"}}`,
			map[string]string{"If-Match": `"0123456789abcdef"`}, 412, []string{"Base.1.5.0.GeneralError"}, "ETag"},
		"too big": {"PATCH", "/redfish/v1/Systems/1", `{"Boot":"` + strings.Repeat("x", maxBody) + `"}`, nil, 413, []string{"Base.1.5.0.GeneralError"}, ""},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r := do(t, srv, tc.method, tc.path, basic, tc.body, tc.hdr)
			if r.status != tc.status {
				t.Fatalf("%s %s = %d, want %d: %s", tc.method, tc.path, r.status, tc.status, r.raw)
			}
			if diff := cmp.Diff(tc.ids, messageIDs(t, r)); diff != "" {
				t.Errorf("MessageIds (-want +got):\n%s", diff)
			}
			if !strings.Contains(string(r.raw), tc.mentions) {
				t.Errorf("error body does not mention %q: %s", tc.mentions, r.raw)
			}
			if tc.status == 405 && r.header.Get("Allow") == "" {
				t.Errorf("405 without an Allow header")
			}
		})
	}
	// Nothing above may have changed the system.
	after := do(t, srv, "GET", "/redfish/v1/Systems/1", basic, "", nil)
	if diff := cmp.Diff(sys.body, after.body); diff != "" {
		t.Errorf("failed requests changed the system (-before +after):\n%s", diff)
	}
}

func TestBootOverridePatch(t *testing.T) {
	srv, m := newTestServer(t)
	r := do(t, srv, "GET", "/redfish/v1/Systems/1", basic, "", nil)
	tag := r.header.Get("ETag")
	if tag == "" || r.body["@odata.etag"] != tag {
		t.Fatalf("ETag header %q, @odata.etag %v", tag, r.body["@odata.etag"])
	}
	patch := `{"Boot":{"BootSourceOverrideTarget":"Pxe","BootSourceOverrideEnabled":"Continuous","BootSourceOverrideMode":"Legacy"}}`
	p := do(t, srv, "PATCH", "/redfish/v1/Systems/1", basic, patch, map[string]string{"If-Match": tag})
	if p.status != http.StatusOK {
		t.Fatalf("PATCH with the current ETag = %d: %s", p.status, p.raw)
	}
	got := do(t, srv, "GET", "/redfish/v1/Systems/1", basic, "", nil)
	want := map[string]any{"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Continuous", "BootSourceOverrideMode": "Legacy"}
	for k, v := range want {
		if got.body["Boot"].(map[string]any)[k] != v {
			t.Errorf("read back Boot.%s = %v, want %v", k, got.body["Boot"].(map[string]any)[k], v)
		}
	}
	if b, _ := m.BootOverride(context.Background()); b != (Boot{"Pxe", "Continuous", "Legacy"}) {
		t.Errorf("system's override = %+v", b)
	}
	if got.header.Get("ETag") == tag {
		t.Errorf("ETag unchanged after a PATCH changed the resource")
	}
	// The old ETag is stale now.
	p = do(t, srv, "PATCH", "/redfish/v1/Systems/1", basic, `{"Boot":{"BootSourceOverrideTarget":"Hdd"}}`, map[string]string{"If-Match": tag})
	if p.status != http.StatusPreconditionFailed {
		t.Errorf("PATCH with a stale ETag = %d, want 412", p.status)
	}
	// A partial PATCH changes only what it names; If-Match * always matches.
	p = do(t, srv, "PATCH", "/redfish/v1/Systems/1", basic, `{"Boot":{"BootSourceOverrideTarget":"Hdd"}}`, map[string]string{"If-Match": "*"})
	if p.status != http.StatusOK {
		t.Fatalf("PATCH If-Match * = %d", p.status)
	}
	if b, _ := m.BootOverride(context.Background()); b != (Boot{"Hdd", "Continuous", "Legacy"}) {
		t.Errorf("after partial PATCH: %+v", b)
	}
	// Conditional GET.
	cur := do(t, srv, "GET", "/redfish/v1/Systems/1", basic, "", nil)
	if r := do(t, srv, "GET", "/redfish/v1/Systems/1", basic, "", map[string]string{"If-None-Match": cur.header.Get("ETag")}); r.status != http.StatusNotModified {
		t.Errorf("If-None-Match with the current ETag = %d, want 304", r.status)
	}
}

func TestOnceOverrideConsumedByPowerCycle(t *testing.T) {
	srv, m := newTestServer(t)
	reset := func(rt string) {
		t.Helper()
		r := do(t, srv, "POST", "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset", basic, `{"ResetType":"`+rt+`"}`, nil)
		if r.status != http.StatusNoContent {
			t.Fatalf("reset %s = %d: %s", rt, r.status, r.raw)
		}
	}
	r := do(t, srv, "PATCH", "/redfish/v1/Systems/1", basic, `{"Boot":{"BootSourceOverrideTarget":"Pxe","BootSourceOverrideEnabled":"Once","BootSourceOverrideMode":"UEFI"}}`, nil)
	if r.status != http.StatusOK {
		t.Fatalf("PATCH = %d", r.status)
	}
	reset("On")
	reset("PowerCycle")
	got := do(t, srv, "GET", "/redfish/v1/Systems/1", basic, "", nil)
	if got.body["PowerState"] != "On" {
		t.Errorf("PowerState = %v", got.body["PowerState"])
	}
	boot := got.body["Boot"].(map[string]any)
	if boot["BootSourceOverrideEnabled"] != "Disabled" || boot["BootSourceOverrideTarget"] != "None" {
		t.Errorf("Once override still set after a boot: %v", boot)
	}
	var targets []string
	for _, b := range m.Boots() {
		targets = append(targets, b.Target)
	}
	if diff := cmp.Diff([]string{"Pxe", "Hdd"}, targets); diff != "" {
		t.Errorf("boot sources (-want +got):\n%s", diff)
	}
}

func TestResetTypes(t *testing.T) {
	tests := map[string]struct {
		from, reset, want string
		starts            int
	}{
		"On from Off":                  {PowerOff, "On", PowerOn, 1},
		"On when On":                   {PowerOn, "On", PowerOn, 0},
		"ForceOn":                      {PowerOff, "ForceOn", PowerOn, 1},
		"ForceOff":                     {PowerOn, "ForceOff", PowerOff, 0},
		"GracefulShutdown":             {PowerOn, "GracefulShutdown", PowerOff, 0},
		"ForceRestart":                 {PowerOn, "ForceRestart", PowerOn, 1},
		"GracefulRestart":              {PowerOn, "GracefulRestart", PowerOn, 1},
		"ForceRestart when Off":        {PowerOff, "ForceRestart", PowerOff, 0},
		"PowerCycle when On":           {PowerOn, "PowerCycle", PowerOn, 1},
		"PowerCycle when Off":          {PowerOff, "PowerCycle", PowerOn, 1},
		"Nmi leaves the power":         {PowerOn, "Nmi", PowerOn, 0},
		"ForceOff when Off stays Off":  {PowerOff, "ForceOff", PowerOff, 0},
		"GracefulShutdown when Off":    {PowerOff, "GracefulShutdown", PowerOff, 0},
		"GracefulRestart when Off":     {PowerOff, "GracefulRestart", PowerOff, 0},
		"ForceOn when On does nothing": {PowerOn, "ForceOn", PowerOn, 0},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			srv, m := newTestServer(t)
			m.SetPowerState(tc.from)
			r := do(t, srv, "POST", "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset", basic, `{"ResetType":"`+tc.reset+`"}`, nil)
			if r.status != http.StatusNoContent {
				t.Fatalf("reset = %d: %s", r.status, r.raw)
			}
			if got, _ := m.PowerState(context.Background()); got != tc.want {
				t.Errorf("power = %s, want %s", got, tc.want)
			}
			if got := len(m.Boots()); got != tc.starts {
				t.Errorf("starts = %d, want %d", got, tc.starts)
			}
			sys := do(t, srv, "GET", "/redfish/v1/Systems/1", basic, "", nil)
			if sys.body["PowerState"] != tc.want {
				t.Errorf("GET PowerState = %v, want %s", sys.body["PowerState"], tc.want)
			}
			ch := do(t, srv, "GET", "/redfish/v1/Chassis/1", basic, "", nil)
			if ch.body["PowerState"] != tc.want {
				t.Errorf("chassis PowerState = %v, want %s", ch.body["PowerState"], tc.want)
			}
		})
	}
}

// unsupported is a System that cannot power-cycle, like a QEMU without QMP
// reset support would be.
type unsupported struct{ *Memory }

func (u unsupported) Reset(ctx context.Context, rt string) error {
	if rt == "PowerCycle" {
		return ErrUnsupportedReset
	}
	return u.Memory.Reset(ctx, rt)
}

func TestUnsupportedReset(t *testing.T) {
	svc, err := New(Config{User: testUser, Password: testPass, Systems: map[string]System{"1": unsupported{NewMemory(testInfo)}}})
	if err != nil {
		t.Fatal(err)
	}
	srv := newServer(t, svc)
	r := do(t, srv, "POST", "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset", basic, `{"ResetType":"PowerCycle"}`, nil)
	if r.status != http.StatusBadRequest {
		t.Fatalf("unsupported reset = %d, want 400", r.status)
	}
	if ids := messageIDs(t, r); !slices.Contains(ids, "Base.1.5.0.PropertyValueNotInList") {
		t.Errorf("MessageIds = %v", ids)
	}
}

func TestEthernetInterfaces(t *testing.T) {
	srv, _ := newTestServer(t)
	col := do(t, srv, "GET", "/redfish/v1/Systems/1/EthernetInterfaces", basic, "", nil)
	var macs []string
	for _, mem := range col.body["Members"].([]any) {
		nic := do(t, srv, "GET", mem.(map[string]any)["@odata.id"].(string), basic, "", nil)
		if nic.body["MACAddress"] != nic.body["PermanentMACAddress"] {
			t.Errorf("MACAddress %v != PermanentMACAddress %v", nic.body["MACAddress"], nic.body["PermanentMACAddress"])
		}
		macs = append(macs, nic.body["MACAddress"].(string))
	}
	if diff := cmp.Diff(testInfo.MACs, macs); diff != "" {
		t.Errorf("MACs (-want +got):\n%s", diff)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	m := NewMemory(testInfo)
	tests := map[string]Config{
		"no password":  {User: "u", Systems: map[string]System{"1": m}},
		"slash in id":  {User: "u", Password: "p", Systems: map[string]System{"a/b": m}},
		"nil system":   {User: "u", Password: "p", Systems: map[string]System{"1": nil}},
		"bad mac":      {User: "u", Password: "p", Systems: map[string]System{"1": NewMemory(Info{MACs: []string{"zz"}})}},
		"64-bit mac":   {User: "u", Password: "p", Systems: map[string]System{"1": NewMemory(Info{MACs: []string{"00:11:22:33:44:55:66:77"}})}},
		"empty id":     {User: "u", Password: "p", Systems: map[string]System{"": m}},
		"dot-dot id":   {User: "u", Password: "p", Systems: map[string]System{"..": m}},
		"no user name": {Password: "p", Systems: map[string]System{"1": m}},
	}
	for name, cfg := range tests {
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: New accepted %+v", name, cfg)
		}
	}
}

func TestSessionExpiryAndLimit(t *testing.T) {
	svc, err := New(Config{User: testUser, Password: testPass, Systems: map[string]System{"1": NewMemory(testInfo)}})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	svc.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	srv := newServer(t, svc)
	login := func() response {
		return do(t, srv, "POST", "/redfish/v1/SessionService/Sessions", auth{}, `{"UserName":"`+testUser+`","Password":"`+testPass+`"}`, nil)
	}
	tok := login().header.Get("X-Auth-Token")
	advance(sessionTimeout - time.Minute)
	if r := do(t, srv, "GET", "/redfish/v1/Systems", auth{token: tok}, "", nil); r.status != http.StatusOK {
		t.Fatalf("token in use = %d", r.status)
	}
	advance(sessionTimeout - time.Minute) // idle time counts from the last use
	if r := do(t, srv, "GET", "/redfish/v1/Systems", auth{token: tok}, "", nil); r.status != http.StatusOK {
		t.Fatalf("token used within the timeout = %d", r.status)
	}
	advance(sessionTimeout + time.Second)
	if r := do(t, srv, "GET", "/redfish/v1/Systems", auth{token: tok}, "", nil); r.status != http.StatusUnauthorized {
		t.Fatalf("idle token = %d, want 401", r.status)
	}
	for i := range maxSessions {
		if r := login(); r.status != http.StatusCreated {
			t.Fatalf("login %d = %d", i, r.status)
		}
	}
	r := login()
	if r.status != http.StatusServiceUnavailable {
		t.Fatalf("login past the limit = %d, want 503", r.status)
	}
	if diff := cmp.Diff([]string{"Base.1.5.0.SessionLimitExceeded"}, messageIDs(t, r)); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	advance(sessionTimeout + time.Second) // expired sessions free their slots
	if r := login(); r.status != http.StatusCreated {
		t.Errorf("login after expiry = %d", r.status)
	}
}
