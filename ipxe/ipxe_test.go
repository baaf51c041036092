package ipxe

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/microdc/mdc/machine"
)

var update = flag.Bool("update", false, "rewrite the golden scripts in testdata/")

// golden compares a script with testdata/<name>.ipxe, the token masked.
func golden(t *testing.T, name, got string) {
	t.Helper()
	if tok := tokenOf(got); tok != "" {
		got = strings.ReplaceAll(got, tok, "TOKEN")
	}
	path := filepath.Join("testdata", name+".ipxe")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./ipxe -run %s -update)", err, t.Name())
	}
	if diff := cmp.Diff(string(want), got); diff != "" {
		t.Errorf("%s (-want +got):\n%s", path, diff)
	}
}

// Every state of DESIGN.md's table, and the cases where an image is missing:
// the script (golden file), whether it boots with a token, and the event
// recorded.
func TestScriptByState(t *testing.T) {
	f := newFixture(t, Config{})
	empty := newFixture(t, Config{Images: catalog{}})
	for i, tc := range []struct {
		name      string
		fx        *fixture
		history   []ev
		query     string // after mac=
		wantState machine.State
		wantKind  Kind
		wantEvent machine.EventType // appended by the request; "" for none
	}{
		{"discovered", f, []ev{{machine.Discovered, machine.DiscoveredData{Via: "dhcp"}}}, "&platform=efi&buildarch=x86_64",
			machine.Commissioning, KindCommissioning, machine.CommissioningStarted},
		{"commissioning-again", f, []ev{{machine.Discovered, machine.DiscoveredData{Via: "dhcp"}}, {machine.CommissioningStarted, machine.ImageData{Image: "commission"}}}, "&platform=pcbios",
			machine.Commissioning, KindCommissioning, machine.CommissioningStarted},
		{"ready", f, []ev{{machine.Discovered, machine.DiscoveredData{}}, {machine.CommissioningStarted, machine.ImageData{}}, {machine.FactsReported, machine.Facts{CPUs: 2}}}, "",
			machine.Ready, KindWait, ""},
		{"provisioning", f, []ev{{machine.Discovered, machine.DiscoveredData{}}, {machine.RoleAssigned, machine.RoleAssignedData{Role: "ceph-osd"}}}, "&platform=efi",
			machine.Provisioning, KindRole, machine.ProvisioningStarted},
		{"running", f, []ev{{machine.Discovered, machine.DiscoveredData{}}, {machine.RoleAssigned, machine.RoleAssignedData{Role: "ceph-osd"}},
			{machine.ProvisioningStarted, machine.ProvisioningStartedData{}}, {machine.Booted, machine.BootedData{}}}, "&platform=pcbios",
			machine.Provisioning, KindRole, machine.ProvisioningStarted},
		{"joined", f, []ev{{machine.Discovered, machine.DiscoveredData{}}, {machine.RoleAssigned, machine.RoleAssignedData{Role: "ceph-osd"}},
			{machine.ProvisioningStarted, machine.ProvisioningStartedData{}}, {machine.Booted, machine.BootedData{}}, {machine.Joined, machine.JoinedData{}}}, "",
			machine.Provisioning, KindRole, machine.ProvisioningStarted},
		{"failed", f, []ev{{machine.Discovered, machine.DiscoveredData{}}, {machine.CommissioningStarted, machine.ImageData{}},
			{machine.Failed, machine.FailedData{Reason: "no facts within 10m0s; last seen: script_served ${evil} || reboot\nshell"}}}, "",
			machine.StFailed, KindFailed, ""},
		{"retired", f, []ev{{machine.Discovered, machine.DiscoveredData{}}, {machine.Retired, machine.RetiredData{Reason: "fan"}}}, "&platform=pcbios",
			machine.StRetired, KindLocal, ""},
		{"no-commissioning-image", empty, []ev{{machine.Discovered, machine.DiscoveredData{}}}, "",
			machine.StDiscovered, KindWait, ""},
		{"no-role-image", empty, []ev{{machine.Discovered, machine.DiscoveredData{}}, {machine.RoleAssigned, machine.RoleAssignedData{Role: "nats"}}}, "",
			machine.Provisioning, KindWait, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := machine.ID(fmt.Sprintf("5254000000%02x", i+1))
			tc.fx.apply(t, id, tc.history...)
			before := len(tc.fx.history(t, id))
			script := tc.fx.script(t, "mac="+id.MAC()+tc.query)
			golden(t, tc.name, script)

			m, _ := tc.fx.store.Get(id)
			if m.State != tc.wantState {
				t.Errorf("state after the request: %s, want %s", m.State, tc.wantState)
			}
			h := tc.fx.history(t, id)
			switch {
			case tc.wantEvent == "" && len(h) != before:
				t.Errorf("appended %v, want nothing", h[before:])
			case tc.wantEvent != "" && (len(h) != before+1 || h[before].Type != tc.wantEvent):
				t.Errorf("history %v, want one %s appended", h, tc.wantEvent)
			}
			tok := tokenOf(script)
			if (tok != "") != (tc.wantEvent != "") {
				t.Errorf("token %q in a %s script", tok, tc.wantKind)
			}
			if tc.wantEvent != "" {
				stored, ok := machine.CurrentBootToken(h)
				if !ok || !stored.Matches(tok) {
					t.Errorf("the event stores %+v, which does not match the script's token", stored)
				}
				for _, want := range []string{"mdc.url=" + testBase, "mdc.machine=" + string(id), "mdc.mode=" + string(tc.wantKind)} {
					if !strings.Contains(script, " "+want+" ") && !strings.Contains(script, " "+want+"\n") {
						t.Errorf("kernel line lacks %s", want)
					}
				}
			}
			tel := tc.fx.tel.all()
			last := tel[len(tel)-1]
			var d ScriptServedData
			if err := json.Unmarshal(last.Data, &d); err != nil || last.Type != machine.ScriptServed || last.Machine != id || d.Script != string(tc.wantKind) {
				t.Errorf("telemetry %s %s %s, want script_served of %s", last.Type, last.Machine, last.Data, tc.wantKind)
			}
		})
	}
}

// Under UEFI (or when iPXE did not say) the kernel line names each initrd;
// under BIOS it does not need to.
func TestInitrdNamesForUEFI(t *testing.T) {
	f := newFixture(t, Config{})
	for i, tc := range []struct {
		platform string
		want     bool
	}{{"efi", true}, {"pcbios", false}, {"", true}} {
		id := machine.ID(fmt.Sprintf("5254000001%02x", i))
		f.apply(t, id, ev{machine.Discovered, machine.DiscoveredData{}}, ev{machine.RoleAssigned, machine.RoleAssignedData{Role: "ceph-osd"}})
		script := f.script(t, "mac="+string(id)+"&platform="+tc.platform)
		has := strings.Contains(script, " initrd=initrd0 initrd=initrd1")
		if has != tc.want {
			t.Errorf("platform %q: initrd= on the kernel line: %v, want %v\n%s", tc.platform, has, tc.want, script)
		}
		for _, line := range []string{"initrd --name initrd0 " + testBase + initrdDigest.Path(), "initrd --name initrd1 " + testBase + initrd2Digest.Path()} {
			if !strings.Contains(script, line+" || goto retry\n") {
				t.Errorf("platform %q: no line %q", tc.platform, line)
			}
		}
	}
}

// The token is in the script and nowhere else: the event log holds its
// SHA-256 only; each boot gets a new one and the old one stops matching.
func TestTokenStoredOnlyHashed(t *testing.T) {
	f := newFixture(t, Config{})
	id := machine.MustParseID("52:54:00:00:02:01")
	first := tokenOf(f.script(t, "mac="+id.MAC()))
	second := tokenOf(f.script(t, "mac="+id.MAC()))
	if len(first) != 64 || len(second) != 64 || first == second {
		t.Fatalf("tokens %q and %q: want two different 64-hex-digit tokens", first, second)
	}
	h := f.history(t, id)
	ctx := context.Background()
	tel, err := f.store.Telemetry(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range append(append(h, tel...), f.tel.all()...) {
		raw, _ := json.Marshal(e)
		if strings.Contains(string(raw), first) || strings.Contains(string(raw), second) {
			t.Fatalf("a token is stored in clear in %s: %s", e.Type, raw)
		}
	}
	var hashes []string
	for _, e := range h {
		var d machine.CommissioningBootData
		if e.Type == machine.CommissioningStarted {
			if err := json.Unmarshal(e.Data, &d); err != nil {
				t.Fatal(err)
			}
			hashes = append(hashes, d.TokenSHA256)
		}
	}
	want := []string{machine.HashBootToken(first).TokenSHA256, machine.HashBootToken(second).TokenSHA256}
	if diff := cmp.Diff(want, hashes); diff != "" {
		t.Errorf("stored hashes (-want +got):\n%s", diff)
	}
	cur, _ := machine.CurrentBootToken(h)
	if !cur.Matches(second) || cur.Matches(first) {
		t.Errorf("the current boot token must match the second boot's token only")
	}
}

// A MAC first seen over HTTP is discovered once, however many requests race
// and however its MAC is spelt; one already discovered by DHCP is not
// discovered again.
func TestUnknownMACDiscoveredOnce(t *testing.T) {
	f := newFixture(t, Config{})
	spellings := []string{"52:54:00:ab:cd:ef", "52-54-00-AB-CD-EF", "525400abcdef", "5254.00ab.cdef", "52%3A54%3A00%3Aab%3Acd%3Aef"}
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, body := f.get(t, "/boot.ipxe?mac="+spellings[i%len(spellings)]+"&platform=efi&buildarch=x86_64")
			if code != 200 || !strings.HasPrefix(body, "#!ipxe\n") {
				t.Errorf("request %d: %d %s", i, code, body)
			}
		}()
	}
	wg.Wait()
	id := machine.MustParseID("52:54:00:ab:cd:ef")
	var disc []machine.Event
	for _, e := range f.history(t, id) {
		if e.Type == machine.Discovered {
			disc = append(disc, e)
		}
	}
	if len(disc) != 1 {
		t.Fatalf("%d discovered events, want 1", len(disc))
	}
	var d machine.DiscoveredData
	if err := json.Unmarshal(disc[0].Data, &d); err != nil {
		t.Fatal(err)
	}
	if d.Via != "http" || d.Arch != "x86_64-efi" || disc[0].Source != source {
		t.Errorf("discovered %+v from %q, want via http, arch x86_64-efi, source %s", d, disc[0].Source, source)
	}

	// Seen by DHCP first: nothing more is discovered.
	other := machine.MustParseID("52:54:00:ab:cd:00")
	f.apply(t, other, ev{machine.Discovered, machine.DiscoveredData{Via: "dhcp"}})
	f.script(t, "mac="+other.MAC())
	if h := f.history(t, other); len(h) != 2 || h[0].Type != machine.Discovered || h[1].Type != machine.CommissioningStarted {
		t.Errorf("history %v, want discovered (dhcp) then commissioning_started", h)
	}

	// A secondary NIC of a known machine boots that machine.
	f.apply(t, other, ev{machine.Enrolled, machine.EnrolledData{MACs: []string{"52:54:00:ab:cd:01"}}})
	f.script(t, "mac=52:54:00:ab:cd:01")
	if _, ok := f.store.Get("525400abcd01"); ok {
		t.Errorf("a secondary NIC was discovered as a machine of its own")
	}
}

// Requests without a MAC get a script that asks again with iPXE's own
// ${netX/mac}; malformed ones a 400 that says what is wrong.
func TestBadRequests(t *testing.T) {
	f := newFixture(t, Config{})
	for _, q := range []string{"", "?mac=${net0/mac}", "?platform=efi"} {
		code, body := f.get(t, "/boot.ipxe"+q)
		if code != 200 || !strings.Contains(body, "chain --replace --autofree "+testBase+"/boot.ipxe?mac=${netX/mac}&platform=${platform}&buildarch=${buildarch}\n") {
			t.Errorf("GET /boot.ipxe%s: %d %s, want the bootstrap script", q, code, body)
		}
	}
	for q, want := range map[string]string{
		"?mac=":                    "mac is empty",
		"?mac=52:54:00:12":         "want 6 bytes",
		"?mac=zz:54:00:12:34:56":   "not a hex digit",
		"?mac=a&mac=b":             "2 mac parameters",
		"?mac=52:54:00:12:34:56%G": "invalid URL escape",
	} {
		code, body := f.get(t, "/boot.ipxe"+q)
		if code != 400 || !strings.Contains(body, want) {
			t.Errorf("GET /boot.ipxe%s: %d %q, want 400 with %q", q, code, body, want)
		}
	}
	rec := httptest.NewRecorder()
	f.mux.ServeHTTP(rec, httptest.NewRequest("HEAD", "/boot.ipxe?mac=52:54:00:00:03:09", nil))
	if rec.Code != 200 {
		t.Errorf("HEAD /boot.ipxe: %d", rec.Code)
	}
	if n := f.store.Table.Len(); n != 0 {
		t.Errorf("%d machines recorded from bad requests and HEAD", n)
	}
	// Without a configured base URL the Host header is written into
	// scripts, so it must be a plain host.
	g := newFixture(t, Config{BaseURL: "http://placeholder"})
	g.srv.cfg.BaseURL = ""
	for host, ok := range map[string]bool{"10.0.0.1:8080": true, "mdc.rack1:80": true, "[fd00::1]:8080": true, "a b": false, "x\nshell": false, "${x}": false} {
		r := httptest.NewRequest("GET", "/boot.ipxe?mac=52:54:00:00:03:01", nil)
		r.Host = host
		rec := httptest.NewRecorder()
		g.mux.ServeHTTP(rec, r)
		if (rec.Code == 200) != ok {
			t.Errorf("Host %q: %d, want ok=%v", host, rec.Code, ok)
		}
		if ok && !strings.Contains(rec.Body.String(), "mdc.url=http://"+host+" ") {
			t.Errorf("Host %q: the script does not send the machine back there:\n%s", host, rec.Body)
		}
	}
}

// When the event log cannot record the boot, the machine is told to wait
// and ask again, not left to fall through to whatever boots next.
func TestEventLogDown(t *testing.T) {
	srv, err := New(Config{Machines: newStoreless(), Images: testCatalog, CommissioningImage: "commission", BaseURL: testBase})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	srv.Register(mux.Handle)
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest("GET", "/boot.ipxe?mac=52:54:00:00:05:01", nil))
	body := rec.Body.String()
	if rec.Code != 200 || !strings.Contains(body, "could not record this boot") || !strings.Contains(body, "sleep 10\nchain --replace --autofree "+testBase+"/boot.ipxe?mac=52:54:00:00:05:01\n") || tokenOf(body) != "" {
		t.Errorf("%d\n%s", rec.Code, body)
	}
}
