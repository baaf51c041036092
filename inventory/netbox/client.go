package netbox

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"

	nb "github.com/netbox-community/go-netbox/v4"
)

// Names mdc owns in NetBox.
const (
	TagSlug              = "mdc"
	CFID                 = "mdc_id"
	CFState              = "mdc_state"
	CFCPU                = "mdc_cpu"
	CFMemory             = "mdc_memory"
	CFDisks              = "mdc_disks"
	objectDevice         = "dcim.device"
	objectIface          = "dcim.interface"
	pageSize             = 1000 // NetBox's MAX_PAGE_SIZE
	bootIfacePlaceholder = "pxe0"
)

// customFields are created at first start if missing.
var customFields = []struct {
	name, label, typ, desc string
}{
	{CFID, "mdc id", "text", "the machine's id in mdc (its boot MAC); mdc finds the device by it"},
	{CFState, "mdc state", "text", "the machine's lifecycle state in mdc"},
	{CFCPU, "CPU", "text", "CPUs reported by mdc's commissioning agent"},
	{CFMemory, "Memory (MiB)", "integer", "memory reported by mdc's commissioning agent"},
	{CFDisks, "Disks", "text", "disks reported by mdc's commissioning agent"},
}

// apiError is a NetBox answer that is not 2xx, or no answer at all.
type apiError struct {
	op     string
	status int // 0: no answer (connection refused, reset, timeout)
	body   string
	err    error
}

func (e *apiError) Error() string {
	if e.status == 0 {
		return fmt.Sprintf("NetBox %s: %v", e.op, e.err)
	}
	body := e.body
	if len(body) > 300 {
		body = body[:300] + "…"
	}
	return fmt.Sprintf("NetBox %s: HTTP %d: %s", e.op, e.status, strings.TrimSpace(body))
}

func (e *apiError) Unwrap() error { return e.err }

// permanent says retrying the same request cannot help (a 4xx other than
// 408/429): the caller forgets what it cached and tries a bounded number
// of times.
func permanent(err error) bool {
	var ae *apiError
	if !errors.As(err, &ae) {
		return false
	}
	return ae.status >= 400 && ae.status < 500 && ae.status != http.StatusRequestTimeout && ae.status != http.StatusTooManyRequests
}

func notFound(err error) bool {
	var ae *apiError
	return errors.As(err, &ae) && ae.status == http.StatusNotFound
}

func wrap(op string, resp *http.Response, err error) error {
	if err == nil {
		return nil
	}
	ae := &apiError{op: op, err: err}
	if resp != nil {
		ae.status = resp.StatusCode
	}
	var ge *nb.GenericOpenAPIError
	if errors.As(err, &ge) {
		ae.body = string(ge.Body())
	}
	return ae
}

// ids of the objects every device refers to, found or created once.
type baseIDs struct {
	tag         int32
	site        int32
	deviceType  int32
	defaultRole int32
}

// client is go-netbox with mdc's find-or-create steps.
type client struct {
	api *nb.APIClient
	cfg *Config

	mu    sync.Mutex
	base  *baseIDs
	roles map[string]int32 // role slug → id
}

func newClient(cfg *Config, httpClient *http.Client) *client {
	c := nb.NewConfiguration()
	c.Servers = nb.ServerConfigurations{{URL: strings.TrimRight(cfg.URL, "/")}}
	c.AddDefaultHeader("Authorization", "Token "+cfg.Token)
	c.UserAgent = "mdc"
	c.HTTPClient = httpClient
	return &client{api: nb.NewAPIClient(c), cfg: cfg, roles: map[string]int32{}}
}

// forget drops cached ids, after NetBox said one of them is gone.
func (c *client) forget() {
	c.mu.Lock()
	c.base, c.roles = nil, map[string]int32{}
	c.mu.Unlock()
}

// ensureBase finds or creates the tag, custom fields, site, manufacturer,
// device type and default role.
func (c *client) ensureBase(ctx context.Context) (baseIDs, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.base != nil {
		return *c.base, nil
	}
	var b baseIDs
	var err error
	if b.tag, err = c.ensureTag(ctx); err != nil {
		return b, err
	}
	if err := c.ensureCustomFields(ctx); err != nil {
		return b, err
	}
	if b.site, err = c.ensureSite(ctx); err != nil {
		return b, err
	}
	if b.deviceType, err = c.ensureDeviceType(ctx); err != nil {
		return b, err
	}
	if b.defaultRole, err = c.ensureRoleLocked(ctx, c.cfg.DefaultRole); err != nil {
		return b, err
	}
	c.base = &b
	return b, nil
}

func (c *client) ensureTag(ctx context.Context) (int32, error) {
	l, resp, err := c.api.ExtrasAPI.ExtrasTagsList(ctx).Slug([]string{TagSlug}).Execute()
	if err != nil {
		return 0, wrap("list tags", resp, err)
	}
	if len(l.Results) > 0 {
		return l.Results[0].Id, nil
	}
	req := nb.NewTagRequest(TagSlug, TagSlug)
	req.SetDescription("kept in step by mdc")
	t, resp, err := c.api.ExtrasAPI.ExtrasTagsCreate(ctx).TagRequest(*req).Execute()
	if err != nil {
		return 0, wrap("create tag mdc", resp, err)
	}
	return t.Id, nil
}

func (c *client) ensureCustomFields(ctx context.Context) error {
	names := make([]string, len(customFields))
	for i, f := range customFields {
		names[i] = f.name
	}
	l, resp, err := c.api.ExtrasAPI.ExtrasCustomFieldsList(ctx).Name(names).Limit(pageSize).Execute()
	if err != nil {
		return wrap("list custom fields", resp, err)
	}
	have := map[string]bool{}
	for _, f := range l.Results {
		if slices.Contains(f.ObjectTypes, objectDevice) {
			have[f.Name] = true
		}
	}
	for _, f := range customFields {
		if have[f.name] {
			continue
		}
		req := nb.NewWritableCustomFieldRequest([]string{objectDevice}, f.name)
		req.SetType(nb.PatchedWritableCustomFieldRequestType(f.typ))
		req.SetLabel(f.label)
		req.SetDescription(f.desc)
		req.SetGroupName("mdc")
		if _, resp, err := c.api.ExtrasAPI.ExtrasCustomFieldsCreate(ctx).WritableCustomFieldRequest(*req).Execute(); err != nil {
			return wrap("create custom field "+f.name, resp, err)
		}
	}
	return nil
}

func (c *client) ensureSite(ctx context.Context) (int32, error) {
	slug := c.cfg.Site
	l, resp, err := c.api.DcimAPI.DcimSitesList(ctx).Slug([]string{slug}).Execute()
	if err != nil {
		return 0, wrap("list sites", resp, err)
	}
	if len(l.Results) > 0 {
		return l.Results[0].Id, nil
	}
	s, resp, err := c.api.DcimAPI.DcimSitesCreate(ctx).WritableSiteRequest(*nb.NewWritableSiteRequest(slug, slug)).Execute()
	if err != nil {
		return 0, wrap("create site "+slug, resp, err)
	}
	return s.Id, nil
}

func (c *client) ensureDeviceType(ctx context.Context) (int32, error) {
	l, resp, err := c.api.DcimAPI.DcimDeviceTypesList(ctx).Slug([]string{c.cfg.DeviceType}).Execute()
	if err != nil {
		return 0, wrap("list device types", resp, err)
	}
	if len(l.Results) > 0 {
		return l.Results[0].Id, nil
	}
	ml, resp, err := c.api.DcimAPI.DcimManufacturersList(ctx).Slug([]string{c.cfg.Manufacturer}).Execute()
	if err != nil {
		return 0, wrap("list manufacturers", resp, err)
	}
	var mid int32
	if len(ml.Results) > 0 {
		mid = ml.Results[0].Id
	} else {
		m, resp, err := c.api.DcimAPI.DcimManufacturersCreate(ctx).ManufacturerRequest(*nb.NewManufacturerRequest(c.cfg.Manufacturer, c.cfg.Manufacturer)).Execute()
		if err != nil {
			return 0, wrap("create manufacturer "+c.cfg.Manufacturer, resp, err)
		}
		mid = m.Id
	}
	req := nb.NewWritableDeviceTypeRequest(nb.Int32AsBriefDeviceTypeRequestManufacturer(&mid), c.cfg.DeviceType, c.cfg.DeviceType)
	dt, resp, err := c.api.DcimAPI.DcimDeviceTypesCreate(ctx).WritableDeviceTypeRequest(*req).Execute()
	if err != nil {
		return 0, wrap("create device type "+c.cfg.DeviceType, resp, err)
	}
	return dt.Id, nil
}

// ensureRole finds or creates the device role whose slug is an mdc role.
func (c *client) ensureRole(ctx context.Context, slug string) (int32, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ensureRoleLocked(ctx, slug)
}

func (c *client) ensureRoleLocked(ctx context.Context, slug string) (int32, error) {
	if id, ok := c.roles[slug]; ok {
		return id, nil
	}
	l, resp, err := c.api.DcimAPI.DcimDeviceRolesList(ctx).Slug([]string{slug}).Execute()
	if err != nil {
		return 0, wrap("list device roles", resp, err)
	}
	var id int32
	if len(l.Results) > 0 {
		id = l.Results[0].Id
	} else {
		req := nb.NewWritableDeviceRoleRequest(slug, slug)
		req.SetDescription("an mdc role")
		r, resp, err := c.api.DcimAPI.DcimDeviceRolesCreate(ctx).WritableDeviceRoleRequest(*req).Execute()
		if err != nil {
			return 0, wrap("create device role "+slug, resp, err)
		}
		id = r.Id
	}
	c.roles[slug] = id
	return id, nil
}

// devices lists every device matching the request, page by page.
func (c *client) devices(ctx context.Context, tag, mac string) ([]nb.DeviceWithConfigContext, error) {
	var out []nb.DeviceWithConfigContext
	for off := int32(0); ; off += pageSize {
		r := c.api.DcimAPI.DcimDevicesList(ctx).Limit(pageSize).Offset(off)
		if tag != "" {
			r = r.Tag([]string{tag})
		}
		if mac != "" {
			r = r.MacAddress([]string{mac})
		}
		l, resp, err := r.Execute()
		if err != nil {
			return nil, wrap("list devices", resp, err)
		}
		out = append(out, l.Results...)
		if !l.Next.IsSet() || l.Next.Get() == nil || len(l.Results) == 0 {
			return out, nil
		}
	}
}

// interfaces lists a device's interfaces.
func (c *client) interfaces(ctx context.Context, device int32) ([]nb.Interface, error) {
	l, resp, err := c.api.DcimAPI.DcimInterfacesList(ctx).DeviceId([]int32{device}).Limit(pageSize).Execute()
	if err != nil {
		return nil, wrap("list interfaces", resp, err)
	}
	return l.Results, nil
}

// addInterface creates an interface with a MAC address object made its
// primary MAC (NetBox 4.2+ keeps MACs as objects of their own).
func (c *client) addInterface(ctx context.Context, device int32, name, mac string, tag int32) (int32, error) {
	req := nb.NewWritableInterfaceRequest(nb.Int32AsBriefInterfaceRequestDevice(&device), name, nb.INTERFACETYPEVALUE_OTHER)
	req.SetTags([]nb.NestedTagRequest{*nb.NewNestedTagRequest(TagSlug, TagSlug)})
	ifc, resp, err := c.api.DcimAPI.DcimInterfacesCreate(ctx).WritableInterfaceRequest(*req).Execute()
	if err != nil {
		return 0, wrap("create interface "+name, resp, err)
	}
	return ifc.Id, c.addMAC(ctx, ifc.Id, mac)
}

func (c *client) addMAC(ctx context.Context, iface int32, mac string) error {
	mr := nb.NewMACAddressRequest(mac)
	mr.SetAssignedObjectType(objectIface)
	mr.SetAssignedObjectId(int64(iface))
	m, resp, err := c.api.DcimAPI.DcimMacAddressesCreate(ctx).MACAddressRequest(*mr).Execute()
	if err != nil {
		return wrap("create MAC address "+mac, resp, err)
	}
	return c.setPrimaryMAC(ctx, iface, m.Id)
}

func (c *client) setPrimaryMAC(ctx context.Context, iface, mac int32) error {
	pr := nb.NewPatchedWritableInterfaceRequest()
	pr.SetPrimaryMacAddress(nb.Int32AsInterfaceRequestPrimaryMacAddress(&mac))
	_, resp, err := c.api.DcimAPI.DcimInterfacesPartialUpdate(ctx, iface).PatchedWritableInterfaceRequest(*pr).Execute()
	return wrap("set primary MAC", resp, err)
}

func (c *client) renameInterface(ctx context.Context, iface int32, name string) error {
	pr := nb.NewPatchedWritableInterfaceRequest()
	pr.SetName(name)
	_, resp, err := c.api.DcimAPI.DcimInterfacesPartialUpdate(ctx, iface).PatchedWritableInterfaceRequest(*pr).Execute()
	return wrap("rename interface", resp, err)
}
