package netbox

import (
	"context"
	"errors"
	"regexp"
	"slices"
	"strings"
	"time"

	nb "github.com/netbox-community/go-netbox/v4"

	"github.com/microdc/mdc/machine"
)

// source of the events the intent poller appends.
const source = "mdc/netbox"

// labelRE is what mdc accepts as a machine name or a role (api/machines.go).
var labelRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

var errKnown = errors.New("machine already known")

func (s *Syncer) runIntent(ctx context.Context) {
	t := time.NewTicker(s.cfg.PollInterval)
	defer t.Stop()
	for {
		if _, err := s.PollIntent(ctx); err != nil && ctx.Err() == nil {
			s.setError(err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// PollIntent reads the devices tagged mdc once and enrolls, with their
// role, those that have a MAC and a role and that mdc has never seen. It
// returns the machines it enrolled.
func (s *Syncer) PollIntent(ctx context.Context) ([]machine.ID, error) {
	// The tag and the custom fields an operator needs exist from the start.
	if _, err := s.c.ensureBase(ctx); err != nil {
		return nil, err
	}
	devs, err := s.c.devices(ctx, TagSlug, "")
	if err != nil {
		return nil, err
	}
	var out []machine.ID
	for _, dv := range devs {
		if v, _ := dv.CustomFields[CFID].(string); v != "" {
			continue // mdc wrote it: not intent
		}
		role := dv.Role.Slug
		if role == s.cfg.DefaultRole || !labelRE.MatchString(role) {
			continue
		}
		macs, err := s.deviceMACs(ctx, dv.Id)
		if err != nil {
			return out, err
		}
		if len(macs) == 0 {
			continue
		}
		if slices.ContainsFunc(macs, func(id machine.ID) bool { _, ok := s.ms.LookupMAC(id); return ok }) {
			continue // mdc knows it: the sync adopts the device by its MAC
		}
		data := machine.EnrolledData{Role: role, Serial: dv.GetSerial(), Via: "netbox"}
		for _, id := range macs {
			data.MACs = append(data.MACs, id.MAC())
		}
		if name := strings.ToLower(dv.GetName()); labelRE.MatchString(name) {
			data.Name = name
		}
		boot := macs[0]
		_, _, err = s.ms.Update(ctx, boot, func(m machine.Machine) (machine.Event, error) {
			if m.State != machine.Absent {
				return machine.Event{}, errKnown
			}
			// enrolled with a role: the fold sends its first boot to the role.
			return machine.NewEvent(boot, machine.Enrolled, source, data)
		})
		if errors.Is(err, errKnown) {
			continue
		}
		if err != nil {
			return out, err
		}
		s.log.Info("enrolled a machine recorded in NetBox", "machine", boot, "device", dv.Id, "role", role)
		s.imported.Add(1)
		s.m.imported.Inc()
		out = append(out, boot)
	}
	return out, nil
}

// deviceMACs lists a device's MACs, boot NIC first: the primary MACs of
// its interfaces that are not management-only, by interface name.
func (s *Syncer) deviceMACs(ctx context.Context, device int32) ([]machine.ID, error) {
	ifcs, err := s.c.interfaces(ctx, device)
	if err != nil {
		return nil, err
	}
	slices.SortFunc(ifcs, func(a, b nb.Interface) int { return strings.Compare(a.Name, b.Name) })
	var out []machine.ID
	for _, ifc := range ifcs {
		if ifc.GetMgmtOnly() {
			continue
		}
		mac := ""
		if p, ok := ifc.GetPrimaryMacAddressOk(); ok && p != nil {
			mac = p.MacAddress
		} else if len(ifc.MacAddresses) > 0 {
			mac = ifc.MacAddresses[0].MacAddress
		}
		if id, err := machine.ParseID(mac); err == nil && !slices.Contains(out, id) {
			out = append(out, id)
		}
	}
	return out, nil
}
