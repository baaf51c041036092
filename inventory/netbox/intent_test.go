package netbox

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	nb "github.com/netbox-community/go-netbox/v4"

	"github.com/microdc/mdc/images/blob"
	"github.com/microdc/mdc/ipxe"
	"github.com/microdc/mdc/machine"
)

// roleCatalog knows one image per role.
type roleCatalog map[string]ipxe.Image

func (c roleCatalog) Image(name string) (ipxe.Image, bool) { return ipxe.Image{}, false }
func (c roleCatalog) RoleImage(role string) (ipxe.Image, bool) {
	img, ok := c[role]
	return img, ok
}

// recordInNetBox is what an operator does first: a device tagged mdc with
// a role and an interface whose primary MAC is the boot NIC's.
func recordInNetBox(t *testing.T, e *env, name, role, mac string) int32 {
	t.Helper()
	c, ctx := e.client(), context.Background()
	r, _, err := c.DcimAPI.DcimDeviceRolesCreate(ctx).WritableDeviceRoleRequest(*nb.NewWritableDeviceRoleRequest(role, role)).Execute()
	if err != nil {
		t.Fatal(err)
	}
	sites, _, err := c.DcimAPI.DcimSitesList(ctx).Slug([]string{"mdc"}).Execute()
	if err != nil || len(sites.Results) != 1 {
		t.Fatalf("site mdc: %v", err)
	}
	types, _, err := c.DcimAPI.DcimDeviceTypesList(ctx).Slug([]string{"mdc-server"}).Execute()
	if err != nil || len(types.Results) != 1 {
		t.Fatalf("device type: %v", err)
	}
	req := nb.NewWritableDeviceWithConfigContextRequest(
		nb.Int32AsDeviceBayTemplateRequestDeviceType(&types.Results[0].Id),
		nb.Int32AsDeviceWithConfigContextRequestRole(&r.Id),
		nb.Int32AsDeviceWithConfigContextRequestSite(&sites.Results[0].Id))
	req.SetName(name)
	req.SetSerial("SN-B2")
	req.SetDescription("racked by hand")
	req.SetTags([]nb.NestedTagRequest{*nb.NewNestedTagRequest("mdc", "mdc")})
	dev, _, err := c.DcimAPI.DcimDevicesCreate(ctx).WritableDeviceWithConfigContextRequest(*req).Execute()
	if err != nil {
		t.Fatal(err)
	}
	mgmt := nb.NewWritableInterfaceRequest(nb.Int32AsBriefInterfaceRequestDevice(&dev.Id), "bmc", nb.INTERFACETYPEVALUE__1000BASE_T)
	mgmt.SetMgmtOnly(true)
	mi, _, err := c.DcimAPI.DcimInterfacesCreate(ctx).WritableInterfaceRequest(*mgmt).Execute()
	if err != nil {
		t.Fatal(err)
	}
	ifc, _, err := c.DcimAPI.DcimInterfacesCreate(ctx).WritableInterfaceRequest(*nb.NewWritableInterfaceRequest(
		nb.Int32AsBriefInterfaceRequestDevice(&dev.Id), "eth0", nb.INTERFACETYPEVALUE__10GBASE_X_SFPP)).Execute()
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range []struct {
		iface int32
		mac   string
	}{{mi.Id, "02:00:00:00:0b:01"}, {ifc.Id, mac}} {
		mr := nb.NewMACAddressRequest(x.mac)
		mr.SetAssignedObjectType("dcim.interface")
		mr.SetAssignedObjectId(int64(x.iface))
		m, _, err := c.DcimAPI.DcimMacAddressesCreate(ctx).MACAddressRequest(*mr).Execute()
		if err != nil {
			t.Fatal(err)
		}
		p := nb.NewPatchedWritableInterfaceRequest()
		p.SetPrimaryMacAddress(nb.Int32AsInterfaceRequestPrimaryMacAddress(&m.Id))
		if _, _, err := c.DcimAPI.DcimInterfacesPartialUpdate(ctx, x.iface).PatchedWritableInterfaceRequest(*p).Execute(); err != nil {
			t.Fatal(err)
		}
	}
	return dev.Id
}

func TestNetBoxIntentBecomesAMachine(t *testing.T) {
	e := startEnv(t, Config{})
	// First start: mdc creates its tag, custom fields, site and type.
	if got, err := e.sync.PollIntent(e.ctx); err != nil || len(got) != 0 {
		t.Fatalf("first poll: %v %v", got, err)
	}
	recordInNetBox(t, e, "ipfs-b2", "ipfs", "52:54:00:00:0b:02")
	got, err := e.sync.PollIntent(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	id := machine.MustParseID("52:54:00:00:0b:02")
	if diff := cmp.Diff([]machine.ID{id}, got); diff != "" {
		t.Fatalf("enrolled (-want +got):\n%s", diff)
	}
	m, ok := e.store.Get(id)
	if !ok || m.State != machine.Provisioning || m.Role != "ipfs" || m.Name != "ipfs-b2" {
		t.Errorf("machine from NetBox: %+v", m)
	}
	hist, err := e.store.History(e.ctx, id)
	if err != nil || len(hist) != 1 || hist[0].Type != machine.Enrolled || hist[0].Source != "mdc/netbox" {
		t.Errorf("history: %+v %v", hist, err)
	}

	// The sync adopts the operator's device: no second device, the
	// operator's interface and description stay.
	e.level(t, 10*time.Second)
	want := view{Name: "ipfs-b2", Status: "staged", Role: "ipfs", Serial: "SN-B2", Description: "racked by hand",
		Tags: []string{"mdc"}, CF: map[string]string{CFID: "525400000b02", CFState: "provisioning"},
		Interfaces: []string{"bmc 02:00:00:00:0B:01", "eth0 52:54:00:00:0B:02"}}
	if diff := cmp.Diff(map[string]view{"525400000b02": want}, e.devices(t)); diff != "" {
		t.Errorf("NetBox after adoption (-want +got):\n%s", diff)
	}
	if got, err := e.sync.PollIntent(e.ctx); err != nil || len(got) != 0 {
		t.Errorf("second poll enrolled %v (%v)", got, err)
	}

	// Its first boot is the role's image.
	img := ipxe.Image{Name: "ipfs-25.05", Kernel: blob.Sum([]byte("k")), Initrds: []blob.Digest{blob.Sum([]byte("i"))}, Cmdline: "init=/init"}
	srv, err := ipxe.New(ipxe.Config{Machines: e.store, Images: roleCatalog{"ipfs": img}, CommissioningImage: "commission", BaseURL: "http://10.9.0.1:8080"})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	srv.Register(mux.Handle)
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest("GET", "/boot.ipxe?mac=52:54:00:00:0b:02", nil))
	body, _ := io.ReadAll(rec.Body)
	if rec.Code != http.StatusOK || !strings.Contains(string(body), img.Kernel.Hex()) {
		t.Errorf("first boot script (HTTP %d) is not the ipfs image:\n%s", rec.Code, body)
	}
}
