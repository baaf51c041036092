package netbox

import (
	"context"
	"net"
	"net/netip"
	"net/url"
	"strings"

	nb "github.com/netbox-community/go-netbox/v4"

	"github.com/microdc/mdc/machine"
)

// LeaseSource reports full-mode DHCP leases: every lease present, then
// ready once, then every change, until ctx ends (dhcp.KVStore.Watch).
type LeaseSource interface {
	Watch(ctx context.Context, fn func(mac machine.ID, addr netip.Addr, active bool), ready func()) error
}

// bmcIface is the management-only interface mdc records a BMC on.
const bmcIface = "bmc"

// leaseAddr is a machine's current lease as NetBox writes it, with the
// prefix length of the DHCP subnet it is in (/32 if none is known).
func (s *Syncer) leaseAddr(id machine.ID) string {
	s.mu.Lock()
	a, ok := s.leases[id]
	s.mu.Unlock()
	if !ok {
		return ""
	}
	for _, p := range s.cfg.Subnets {
		if p.Contains(a) {
			return netip.PrefixFrom(a, p.Bits()).String()
		}
	}
	return netip.PrefixFrom(a, 32).String()
}

// bmcAddr is the BMC's address when its URL names it by IP (a host name
// is not an address NetBox can hold).
func bmcAddr(m machine.Machine) string {
	if m.BMC == nil {
		return ""
	}
	raw := m.BMC.URL
	if !strings.Contains(raw, "://") {
		raw = "https://" + raw
	}
	u, err := url.Parse(raw)
	if err != nil {
		return ""
	}
	host := u.Hostname()
	if h, _, err := net.SplitHostPort(u.Host); err == nil {
		host = h
	}
	a, err := netip.ParseAddr(host)
	if err != nil || !a.Is4() {
		return ""
	}
	return netip.PrefixFrom(a, 32).String()
}

// runLeases follows the lease bucket and brings each machine whose lease
// changed to NetBox.
func (s *Syncer) runLeases(ctx context.Context) {
	dirty := make(chan machine.ID, 4096)
	watched := make(chan struct{})
	defer func() { <-watched }()
	go func() {
		defer close(watched)
		for {
			err := s.cfg.Leases.Watch(ctx, func(mac machine.ID, addr netip.Addr, active bool) {
				s.mu.Lock()
				cur, had := s.leases[mac]
				switch {
				case active && (!had || cur != addr):
					s.leases[mac] = addr
				case !active && had && cur == addr:
					delete(s.leases, mac) // the address stays recorded; it is no longer the machine's
				default:
					s.mu.Unlock()
					return
				}
				s.mu.Unlock()
				select {
				case dirty <- mac:
				default: // full: the next event of the machine carries it
				}
			}, func() {})
			if ctx.Err() != nil {
				return
			}
			s.setError(err)
			if !s.sleep(ctx, 4) {
				return
			}
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case id := <-dirty:
			m, ok := s.ms.LookupMAC(id)
			if !ok {
				continue
			}
			for attempt, refusals := 0, 0; ; attempt++ {
				err := s.syncMachine(ctx, m)
				if err == nil || ctx.Err() != nil {
					break
				}
				s.setError(err)
				if permanent(err) {
					s.forget(m.ID)
					if refusals++; refusals >= s.cfg.MaxRefusals {
						break
					}
				}
				if !s.sleep(ctx, attempt) {
					return
				}
				m, _ = s.ms.Get(m.ID)
			}
		}
	}
}

// syncAddresses records the lease on the boot interface as the primary
// IPv4, and the BMC on a management-only interface as the OOB address.
func (s *Syncer) syncAddresses(ctx context.Context, d *device, w desired, base baseIDs) error {
	p := nb.NewPatchedWritableDeviceWithConfigContextRequest()
	changed := false
	if w.IP != "" {
		boot := d.ifaces[w.NICs[0].MAC].id
		id, err := s.ensureIP(ctx, w.IP, boot, "DHCP lease from mdc")
		if err != nil {
			return err
		}
		if d.primary4 != id {
			p.SetPrimaryIp4(nb.Int32AsDeviceWithConfigContextRequestPrimaryIp4(&id))
			changed = true
		}
	}
	if w.BMC != "" {
		if d.mgmt == 0 {
			id, err := s.ensureMgmtIface(ctx, d.id)
			if err != nil {
				return err
			}
			d.mgmt = id
		}
		id, err := s.ensureIP(ctx, w.BMC, d.mgmt, "BMC, from mdc")
		if err != nil {
			return err
		}
		if d.oob != id {
			p.SetOobIp(nb.Int32AsDeviceWithConfigContextRequestPrimaryIp4(&id))
			changed = true
		}
	}
	if !changed {
		return nil
	}
	dv, resp, err := s.c.api.DcimAPI.DcimDevicesPartialUpdate(ctx, d.id).PatchedWritableDeviceWithConfigContextRequest(*p).Execute()
	if err != nil {
		return wrap("set device addresses", resp, err)
	}
	s.refresh(d, *dv)
	return nil
}

func (s *Syncer) ensureMgmtIface(ctx context.Context, device int32) (int32, error) {
	list, err := s.c.interfaces(ctx, device)
	if err != nil {
		return 0, err
	}
	for _, ifc := range list {
		if ifc.Name == bmcIface {
			return ifc.Id, nil
		}
	}
	req := nb.NewWritableInterfaceRequest(nb.Int32AsBriefInterfaceRequestDevice(&device), bmcIface, nb.INTERFACETYPEVALUE_OTHER)
	req.SetMgmtOnly(true)
	req.SetTags([]nb.NestedTagRequest{*nb.NewNestedTagRequest(TagSlug, TagSlug)})
	ifc, resp, err := s.c.api.DcimAPI.DcimInterfacesCreate(ctx).WritableInterfaceRequest(*req).Execute()
	if err != nil {
		return 0, wrap("create BMC interface", resp, err)
	}
	return ifc.Id, nil
}

// ensureIP finds the address (by address) or creates it, assigned to the
// interface.
func (s *Syncer) ensureIP(ctx context.Context, addr string, iface int32, desc string) (int32, error) {
	l, resp, err := s.c.api.IpamAPI.IpamIpAddressesList(ctx).Address([]string{addr}).Execute()
	if err != nil {
		return 0, wrap("list IP addresses", resp, err)
	}
	for _, ip := range l.Results {
		if ip.GetAssignedObjectType() == objectIface && ip.GetAssignedObjectId() == int64(iface) {
			return ip.Id, nil
		}
	}
	if len(l.Results) > 0 {
		// The address moved to this machine (a lease handed out again).
		p := nb.NewPatchedWritableIPAddressRequest()
		p.SetAssignedObjectType(objectIface)
		p.SetAssignedObjectId(int64(iface))
		ip, resp, err := s.c.api.IpamAPI.IpamIpAddressesPartialUpdate(ctx, l.Results[0].Id).PatchedWritableIPAddressRequest(*p).Execute()
		if err != nil {
			return 0, wrap("reassign IP address "+addr, resp, err)
		}
		return ip.Id, nil
	}
	req := nb.NewWritableIPAddressRequest(addr)
	req.SetAssignedObjectType(objectIface)
	req.SetAssignedObjectId(int64(iface))
	req.SetStatus(nb.PATCHEDWRITABLEIPADDRESSREQUESTSTATUS_ACTIVE)
	req.SetDescription(desc)
	req.SetTags([]nb.NestedTagRequest{*nb.NewNestedTagRequest(TagSlug, TagSlug)})
	ip, resp, err := s.c.api.IpamAPI.IpamIpAddressesCreate(ctx).WritableIPAddressRequest(*req).Execute()
	if err != nil {
		return 0, wrap("create IP address "+addr, resp, err)
	}
	return ip.Id, nil
}
