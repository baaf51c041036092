package netboxtest

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	netbox "github.com/netbox-community/go-netbox/v4"
)

const token = "0123456789abcdef0123456789abcdef01234567"

func client(url string) *netbox.APIClient {
	cfg := netbox.NewConfiguration()
	cfg.Servers = netbox.ServerConfigurations{{URL: url}}
	cfg.AddDefaultHeader("Authorization", "Token "+token)
	return netbox.NewAPIClient(cfg)
}

func TestSpecLoads(t *testing.T) {
	sp, err := LoadSpec()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("parsed %s in %v (%d paths, from the JSON cache: %v)", sp.Path, sp.LoadTime, len(sp.paths), sp.Cached)
	if len(sp.paths) < 250 {
		t.Errorf("only %d paths", len(sp.paths))
	}
}

// TestGoNetboxRoundTrip drives the stand-in with the real client the sync
// uses: every answer must decode, and no request may break the document.
func TestGoNetboxRoundTrip(t *testing.T) {
	s, hs := Start(t, token)
	c := client(hs.URL)
	ctx := context.Background()

	tag, _, err := c.ExtrasAPI.ExtrasTagsCreate(ctx).TagRequest(*netbox.NewTagRequest("mdc", "mdc")).Execute()
	if err != nil {
		t.Fatal(err)
	}
	cfr := netbox.NewWritableCustomFieldRequest([]string{"dcim.device"}, "mdc_state")
	cfr.SetType(netbox.PATCHEDWRITABLECUSTOMFIELDREQUESTTYPE_TEXT)
	if _, _, err := c.ExtrasAPI.ExtrasCustomFieldsCreate(ctx).WritableCustomFieldRequest(*cfr).Execute(); err != nil {
		t.Fatal(err)
	}
	site, _, err := c.DcimAPI.DcimSitesCreate(ctx).WritableSiteRequest(*netbox.NewWritableSiteRequest("rack", "rack")).Execute()
	if err != nil {
		t.Fatal(err)
	}
	mf, _, err := c.DcimAPI.DcimManufacturersCreate(ctx).ManufacturerRequest(*netbox.NewManufacturerRequest("Generic", "generic")).Execute()
	if err != nil {
		t.Fatal(err)
	}
	dt, _, err := c.DcimAPI.DcimDeviceTypesCreate(ctx).WritableDeviceTypeRequest(*netbox.NewWritableDeviceTypeRequest(
		netbox.Int32AsBriefDeviceTypeRequestManufacturer(netbox.PtrInt32(mf.Id)), "Server", "server")).Execute()
	if err != nil {
		t.Fatal(err)
	}
	role, _, err := c.DcimAPI.DcimDeviceRolesCreate(ctx).WritableDeviceRoleRequest(*netbox.NewWritableDeviceRoleRequest("ceph", "ceph")).Execute()
	if err != nil {
		t.Fatal(err)
	}
	dr := netbox.NewWritableDeviceWithConfigContextRequest(
		netbox.Int32AsDeviceBayTemplateRequestDeviceType(netbox.PtrInt32(dt.Id)),
		netbox.Int32AsDeviceWithConfigContextRequestRole(netbox.PtrInt32(role.Id)),
		netbox.Int32AsDeviceWithConfigContextRequestSite(netbox.PtrInt32(site.Id)))
	dr.SetName("node-1")
	dr.SetStatus(netbox.DEVICESTATUSVALUE_PLANNED)
	dr.SetTags([]netbox.NestedTagRequest{*netbox.NewNestedTagRequest(tag.Name, tag.Slug)})
	dr.SetCustomFields(map[string]any{"mdc_state": "discovered"})
	dev, _, err := c.DcimAPI.DcimDevicesCreate(ctx).WritableDeviceWithConfigContextRequest(*dr).Execute()
	if err != nil {
		t.Fatal(err)
	}
	ir := netbox.NewWritableInterfaceRequest(netbox.Int32AsBriefInterfaceRequestDevice(netbox.PtrInt32(dev.Id)), "eth0", netbox.INTERFACETYPEVALUE_OTHER)
	ifc, _, err := c.DcimAPI.DcimInterfacesCreate(ctx).WritableInterfaceRequest(*ir).Execute()
	if err != nil {
		t.Fatal(err)
	}
	mr := netbox.NewMACAddressRequest("52:54:00:12:34:56")
	mr.SetAssignedObjectType("dcim.interface")
	mr.SetAssignedObjectId(int64(ifc.Id))
	mac, _, err := c.DcimAPI.DcimMacAddressesCreate(ctx).MACAddressRequest(*mr).Execute()
	if err != nil {
		t.Fatal(err)
	}
	pr := netbox.NewPatchedWritableInterfaceRequest()
	pr.SetPrimaryMacAddress(netbox.Int32AsInterfaceRequestPrimaryMacAddress(netbox.PtrInt32(mac.Id)))
	if _, _, err := c.DcimAPI.DcimInterfacesPartialUpdate(ctx, ifc.Id).PatchedWritableInterfaceRequest(*pr).Execute(); err != nil {
		t.Fatal(err)
	}
	list, _, err := c.DcimAPI.DcimDevicesList(ctx).MacAddress([]string{"52:54:00:12:34:56"}).Tag([]string{"mdc"}).Execute()
	if err != nil {
		t.Fatal(err)
	}
	if list.Count != 1 || list.Results[0].GetName() != "node-1" || list.Results[0].Status.GetValue() != "planned" {
		t.Fatalf("devices by MAC: %+v", list)
	}
	ifl, _, err := c.DcimAPI.DcimInterfacesList(ctx).DeviceId([]int32{dev.Id}).Execute()
	if err != nil {
		t.Fatal(err)
	}
	if got := ifl.Results[0].GetMacAddress(); got != "52:54:00:12:34:56" && !strings.EqualFold(got, "52:54:00:12:34:56") {
		t.Errorf("interface MAC %q", got)
	}
	if ifl.Results[0].PrimaryMacAddress.Get() == nil {
		t.Errorf("no primary MAC")
	}
	// NetBox refuses a primary MAC that is not on the interface.
	_, resp, err := c.DcimAPI.DcimInterfacesPartialUpdate(ctx, ifc.Id+100).PatchedWritableInterfaceRequest(*pr).Execute()
	if err == nil || resp.StatusCode != http.StatusNotFound {
		t.Errorf("patch of a missing interface: %v", err)
	}
	t.Logf("%d requests", s.Requests())
}

func TestViolationsAreRecorded(t *testing.T) {
	s, err := New(token)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s)
	defer hs.Close()
	for _, tc := range []struct{ name, method, path, body string }{
		{"unknown path", "GET", "/api/dcim/nonsense/", ""},
		{"no trailing slash", "GET", "/api/dcim/devices", ""},
		{"method", "PATCH", "/api/status/", "{}"},
		{"undeclared query", "GET", "/api/dcim/devices/?cf_mdc_id=x", ""},
		{"bad integer query", "GET", "/api/dcim/devices/?id=abc", ""},
		{"bad enum query", "GET", "/api/dcim/devices/?airflow=sideways", ""},
		{"missing required", "POST", "/api/extras/tags/", `{"name":"x"}`},
		{"wrong type", "POST", "/api/extras/tags/", `{"name":1,"slug":"x"}`},
		{"unknown property", "POST", "/api/extras/tags/", `{"name":"x","slug":"x","colour":"red"}`},
		{"bad enum body", "POST", "/api/dcim/sites/", `{"name":"x","slug":"x","status":"up"}`},
		{"bad oneOf", "POST", "/api/dcim/devices/", `{"device_type":"one","role":1,"site":1}`},
		{"bad path id", "GET", "/api/dcim/devices/abc/", ""},
		{"read-only", "POST", "/api/extras/tags/", `{"name":"x","slug":"x","id":3}`},
	} {
		before := len(s.Violations())
		req, _ := http.NewRequest(tc.method, hs.URL+tc.path, strings.NewReader(tc.body))
		req.Header.Set("Authorization", "Token "+token)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%s: HTTP %d, want 400", tc.name, resp.StatusCode)
		}
		if v := s.Violations(); len(v) == before {
			t.Errorf("%s: no violation recorded", tc.name)
		} else {
			t.Logf("%s: %s", tc.name, v[len(v)-1])
		}
	}
}

// FuzzRequestBody: whatever body arrives, the stand-in answers (400 for
// anything the document does not allow) and never panics.
func FuzzRequestBody(f *testing.F) {
	for _, seed := range []string{`{"name":"x","slug":"x"}`, `{"device_type":1,"role":{"slug":"a"},"site":2,"tags":[{"name":"mdc","slug":"mdc"}]}`,
		`{"mac_address":"52:54:00:12:34:56","assigned_object_type":"dcim.interface","assigned_object_id":1}`, `[]`, `{"custom_fields":{"x":null}}`, `nul`} {
		f.Add("/api/dcim/devices/", seed)
		f.Add("/api/extras/tags/", seed)
		f.Add("/api/dcim/mac-addresses/", seed)
	}
	s, err := New(token)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, path, body string) {
		req := httptest.NewRequest("POST", "http://netbox.invalid/", strings.NewReader(body))
		req.URL.Path = path
		req.Header.Set("Authorization", "Token "+token)
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, req)
		if rec.Code != http.StatusCreated && rec.Code != http.StatusBadRequest && rec.Code != http.StatusNotImplemented && rec.Code != http.StatusMethodNotAllowed {
			t.Errorf("POST %s %q: HTTP %d", path, body, rec.Code)
		}
	})
}
