package redfish

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// mockupDir is DMTF's public-rackmount1 mockup, beside the checkout.
const mockupDir = "../../../../shared/redfish/mockups/public-rackmount1"

// contract pairs a resource the service serves with its counterpart in the
// mockup, and lists the properties a client needs (nested ones as a/b/c).
type contract struct {
	mockup   string // path under mockupDir
	path     string // path on the service
	required []string
}

var contracts = map[string]contract{
	"ServiceRoot": {"index.json", "/redfish/v1/", []string{
		"@odata.id", "@odata.type", "Id", "Name", "RedfishVersion", "UUID",
		"Systems/@odata.id", "Chassis/@odata.id", "Managers/@odata.id", "SessionService/@odata.id",
		"Links/Sessions/@odata.id",
	}},
	"Systems collection": {"Systems/index.json", "/redfish/v1/Systems", []string{
		"@odata.id", "@odata.type", "Name", "Members", "Members@odata.count",
	}},
	"System": {"Systems/437XR1138R2/index.json", "/redfish/v1/Systems/1", []string{
		"@odata.id", "@odata.type", "Id", "Name", "PowerState", "UUID", "SerialNumber", "Manufacturer", "Model",
		"SystemType", "Status/State", "Status/Health",
		"Boot/BootSourceOverrideTarget", "Boot/BootSourceOverrideEnabled", "Boot/BootSourceOverrideMode",
		"Boot/BootSourceOverrideTarget@Redfish.AllowableValues",
		"Actions/#ComputerSystem.Reset/target", "Actions/#ComputerSystem.Reset/ResetType@Redfish.AllowableValues",
		"EthernetInterfaces/@odata.id", "Links/Chassis", "Links/ManagedBy",
	}},
	"EthernetInterfaces collection": {"Systems/437XR1138R2/EthernetInterfaces/index.json", "/redfish/v1/Systems/1/EthernetInterfaces", []string{
		"@odata.id", "@odata.type", "Name", "Members", "Members@odata.count",
	}},
	"EthernetInterface": {"Systems/437XR1138R2/EthernetInterfaces/12446A3B0411/index.json", "/redfish/v1/Systems/1/EthernetInterfaces/525400123456", []string{
		"@odata.id", "@odata.type", "Id", "Name", "MACAddress", "PermanentMACAddress", "Status/State",
		"LinkStatus", "SpeedMbps", "EthernetInterfaceType",
	}},
	"Managers collection": {"Managers/index.json", "/redfish/v1/Managers", []string{
		"@odata.id", "@odata.type", "Name", "Members", "Members@odata.count",
	}},
	"Manager": {"Managers/BMC/index.json", "/redfish/v1/Managers/1", []string{
		"@odata.id", "@odata.type", "Id", "Name", "ManagerType", "UUID", "FirmwareVersion", "Status/State",
		"Links/ManagerForServers", "Links/ManagerForChassis",
	}},
	"Chassis collection": {"Chassis/index.json", "/redfish/v1/Chassis", []string{
		"@odata.id", "@odata.type", "Name", "Members", "Members@odata.count",
	}},
	"Chassis": {"Chassis/1U/index.json", "/redfish/v1/Chassis/1", []string{
		"@odata.id", "@odata.type", "Id", "Name", "ChassisType", "PowerState", "SerialNumber", "Status/State",
		"Links/ComputerSystems", "Links/ManagedBy",
	}},
	"SessionService": {"SessionService/index.json", "/redfish/v1/SessionService", []string{
		"@odata.id", "@odata.type", "Id", "Name", "ServiceEnabled", "SessionTimeout", "Sessions/@odata.id",
	}},
	"Sessions collection": {"SessionService/Sessions/index.json", "/redfish/v1/SessionService/Sessions", []string{
		"@odata.id", "@odata.type", "Name", "Members", "Members@odata.count",
	}},
	"Session": {"SessionService/Sessions/1234567890ABCDEF/index.json", "", []string{ // path: the login's Location
		"@odata.id", "@odata.type", "Id", "Name", "UserName",
	}},
}

func readMockup(t *testing.T, rel string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(mockupDir, rel))
	if err != nil {
		t.Fatalf("the contract needs DMTF's mockup beside the checkout (%s): %v", mockupDir, err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("%s: %v", rel, err)
	}
	return m
}

// kind is a JSON value's type as the contract compares it.
func kind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "boolean"
	case float64, json.Number:
		return "number"
	case string:
		return "string"
	case []any:
		return "array"
	case map[string]any:
		return "object"
	}
	return fmt.Sprintf("%T", v)
}

// checkContract returns every way got breaks the mockup resource want: a
// required property missing, a shared property of another JSON type (at any
// depth; arrays compare their elements), or another @odata.type.
func checkContract(got, want map[string]any, required []string) []string {
	var bad []string
	for _, r := range required {
		if _, ok := lookup(got, strings.Split(r, "/")); !ok {
			if _, inMockup := lookup(want, strings.Split(r, "/")); !inMockup {
				bad = append(bad, fmt.Sprintf("required %s is not in the mockup either (fix the contract)", r))
				continue
			}
			bad = append(bad, "missing "+r)
		}
	}
	if got["@odata.type"] != want["@odata.type"] {
		bad = append(bad, fmt.Sprintf("@odata.type %v, mockup has %v", got["@odata.type"], want["@odata.type"]))
	}
	compareTypes("", got, want, &bad)
	sort.Strings(bad)
	return bad
}

func lookup(v any, path []string) (any, bool) {
	for _, p := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil, false
		}
		if v, ok = m[p]; !ok {
			return nil, false
		}
	}
	return v, true
}

func compareTypes(at string, got, want any, bad *[]string) {
	if kind(got) != kind(want) {
		*bad = append(*bad, fmt.Sprintf("%s is %s, mockup has %s", at, kind(got), kind(want)))
		return
	}
	switch g := got.(type) {
	case map[string]any:
		w := want.(map[string]any)
		for k, gv := range g {
			if wv, ok := w[k]; ok {
				compareTypes(strings.TrimPrefix(at+"/"+k, "/"), gv, wv, bad)
			}
		}
	case []any:
		w := want.([]any)
		if len(w) == 0 {
			return
		}
		for i, gv := range g {
			compareTypes(fmt.Sprintf("%s[%d]", at, i), gv, w[0], bad)
		}
	}
}

func TestContract(t *testing.T) {
	srv, _ := newTestServer(t)
	login := do(t, srv, "POST", "/redfish/v1/SessionService/Sessions", auth{},
		`{"UserName":"`+testUser+`","Password":"`+testPass+`"}`, nil)
	if login.status != http.StatusCreated {
		t.Fatalf("login = %d", login.status)
	}
	a := auth{token: login.header.Get("X-Auth-Token")}
	for name, c := range contracts {
		t.Run(name, func(t *testing.T) {
			want := readMockup(t, c.mockup)
			path := c.path
			if path == "" {
				path = login.header.Get("Location")
			}
			r := do(t, srv, "GET", path, a, "", nil)
			if r.status != http.StatusOK {
				t.Fatalf("GET %s = %d: %s", path, r.status, r.raw)
			}
			if r.header.Get("ETag") == "" {
				t.Errorf("GET %s: no ETag", path)
			}
			if r.body["@odata.id"] != strings.TrimSuffix(path, "/") && r.body["@odata.id"] != path {
				t.Errorf("@odata.id = %v, served at %s", r.body["@odata.id"], path)
			}
			for _, b := range checkContract(r.body, want, c.required) {
				t.Errorf("%s (%s vs mockup %s): %s", name, path, c.mockup, b)
			}
		})
	}
}

// TestContractCatchesDrops proves the contract fails when the service drops
// or retypes a property: it breaks each required property of the System in
// turn and expects the checker to say so.
func TestContractCatchesDrops(t *testing.T) {
	srv, _ := newTestServer(t)
	c := contracts["System"]
	want := readMockup(t, c.mockup)
	for _, req := range c.required {
		got := do(t, srv, "GET", c.path, basic, "", nil).body
		parts := strings.Split(req, "/")
		parent, _ := lookup(got, parts[:len(parts)-1])
		delete(parent.(map[string]any), parts[len(parts)-1])
		if bad := checkContract(got, want, c.required); len(bad) == 0 {
			t.Errorf("dropping %s went unnoticed", req)
		}
	}
	got := do(t, srv, "GET", c.path, basic, "", nil).body
	got["PowerState"] = true
	got["Boot"].(map[string]any)["BootSourceOverrideTarget@Redfish.AllowableValues"] = []any{1}
	if bad := checkContract(got, want, c.required); len(bad) != 2 {
		t.Errorf("retyped PowerState and allowable values: checker said %q", bad)
	}
}

// TestWalk follows every @odata.id from the service root, as clients that
// walk the tree do: every link the service hands out must resolve, carry
// @odata.id/@odata.type/Name and an ETag, and name itself by its own path.
func TestWalk(t *testing.T) {
	srv, _ := newTestServer(t)
	seen := map[string]bool{}
	queue := []string{"/redfish/v1/"}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		if seen[p] {
			continue
		}
		seen[p] = true
		r := do(t, srv, "GET", p, basic, "", nil)
		if r.status != http.StatusOK {
			t.Errorf("GET %s = %d", p, r.status)
			continue
		}
		for _, k := range []string{"@odata.id", "@odata.type", "Name"} {
			if _, ok := r.body[k].(string); !ok {
				t.Errorf("%s lacks %s", p, k)
			}
		}
		if r.body["@odata.id"] != p || r.header.Get("ETag") == "" {
			t.Errorf("%s: @odata.id %v, ETag %q", p, r.body["@odata.id"], r.header.Get("ETag"))
		}
		var collect func(v any)
		collect = func(v any) {
			switch v := v.(type) {
			case map[string]any:
				for k, x := range v {
					if s, ok := x.(string); ok && (k == "@odata.id" || k == "target") && s != p {
						if k == "@odata.id" {
							queue = append(queue, s)
						}
						continue
					}
					collect(x)
				}
			case []any:
				for _, x := range v {
					collect(x)
				}
			}
		}
		collect(r.body)
	}
	if len(seen) < 12 {
		t.Errorf("walked only %d resources: %v", len(seen), seen)
	}
}
