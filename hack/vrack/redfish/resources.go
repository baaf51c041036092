package redfish

import (
	"context"
	"crypto/sha256"
	"strconv"
)

// Resource types and versions are those of the public-rackmount1 mockup's
// corresponding resources; the contract test holds them there.
const (
	typeServiceRoot    = "#ServiceRoot.v1_15_0.ServiceRoot"
	typeSessionService = "#SessionService.v1_1_8.SessionService"
	typeSession        = "#Session.v1_6_0.Session"
	typeSystem         = "#ComputerSystem.v1_20_0.ComputerSystem"
	typeNIC            = "#EthernetInterface.v1_9_0.EthernetInterface"
	typeManager        = "#Manager.v1_17_0.Manager"
	typeChassis        = "#Chassis.v1_22_0.Chassis"
	firmwareVersion    = "mdc-vrack-1"
)

func link(id string) map[string]any { return map[string]any{"@odata.id": id} }

func links(ids ...string) []any {
	out := make([]any, 0, len(ids))
	for _, id := range ids {
		out = append(out, link(id))
	}
	return out
}

func statusOK() map[string]any { return map[string]any{"State": "Enabled", "Health": "OK"} }

func (s *Service) serviceRoot() map[string]any {
	return map[string]any{
		"@odata.id":      "/redfish/v1/",
		"@odata.type":    typeServiceRoot,
		"Id":             "RootService",
		"Name":           "Root Service",
		"RedfishVersion": "1.15.0",
		"UUID":           s.uuid,
		"Vendor":         "mdc",
		"ProtocolFeaturesSupported": map[string]any{
			"ExpandQuery": map[string]any{
				"ExpandAll": false, "Levels": false, "Links": false, "NoLinks": false,
			},
			"SelectQuery":     false,
			"FilterQuery":     false,
			"OnlyMemberQuery": false,
			"ExcerptQuery":    false,
		},
		"Systems":        link("/redfish/v1/Systems"),
		"Chassis":        link("/redfish/v1/Chassis"),
		"Managers":       link("/redfish/v1/Managers"),
		"SessionService": link("/redfish/v1/SessionService"),
		"Links": map[string]any{
			"Sessions": link("/redfish/v1/SessionService/Sessions"),
		},
	}
}

func sessionService() map[string]any {
	return map[string]any{
		"@odata.id":      "/redfish/v1/SessionService",
		"@odata.type":    typeSessionService,
		"Id":             "SessionService",
		"Name":           "Session Service",
		"Description":    "Session Service",
		"Status":         statusOK(),
		"ServiceEnabled": true,
		"SessionTimeout": int(sessionTimeout.Seconds()),
		"Sessions":       link("/redfish/v1/SessionService/Sessions"),
	}
}

func sessionResource(id, user string) map[string]any {
	return map[string]any{
		"@odata.id":   "/redfish/v1/SessionService/Sessions/" + id,
		"@odata.type": typeSession,
		"Id":          id,
		"Name":        "User Session",
		"Description": "Manager User Session",
		"UserName":    user,
	}
}

// collection lists one member per system under base (Systems, Managers and
// Chassis all share the system's id).
func (s *Service) collection(base, typ, name string) map[string]any {
	members := make([]any, 0, len(s.ids))
	for _, id := range s.ids {
		members = append(members, link(base+"/"+id))
	}
	return map[string]any{
		"@odata.id":           base,
		"@odata.type":         typ,
		"Name":                name,
		"Members@odata.count": len(members),
		"Members":             members,
	}
}

func (e *sysEntry) name() string {
	if e.info.Name != "" {
		return e.info.Name
	}
	return "System " + e.id
}

func (s *Service) system(ctx context.Context, e *sysEntry) (map[string]any, error) {
	power, err := e.sys.PowerState(ctx)
	if err != nil {
		return nil, err
	}
	boot, err := e.sys.BootOverride(ctx)
	if err != nil {
		return nil, err
	}
	base := "/redfish/v1/Systems/" + e.id
	return map[string]any{
		"@odata.id":    base,
		"@odata.type":  typeSystem,
		"Id":           e.id,
		"Name":         e.name(),
		"SystemType":   "Physical",
		"Manufacturer": e.info.Manufacturer,
		"Model":        e.info.Model,
		"SerialNumber": e.info.SerialNumber,
		"UUID":         e.info.UUID,
		"Status":       statusOK(),
		"PowerState":   power,
		"Boot": map[string]any{
			"BootSourceOverrideTarget":                          boot.Target,
			"BootSourceOverrideTarget@Redfish.AllowableValues":  BootTargets,
			"BootSourceOverrideEnabled":                         boot.Enabled,
			"BootSourceOverrideEnabled@Redfish.AllowableValues": BootEnabled,
			"BootSourceOverrideMode":                            boot.Mode,
			"BootSourceOverrideMode@Redfish.AllowableValues":    BootModes,
		},
		"EthernetInterfaces": link(base + "/EthernetInterfaces"),
		"Links": map[string]any{
			"Chassis":   links("/redfish/v1/Chassis/" + e.id),
			"ManagedBy": links("/redfish/v1/Managers/" + e.id),
		},
		"Actions": map[string]any{
			"#ComputerSystem.Reset": map[string]any{
				"target":                            base + "/Actions/ComputerSystem.Reset",
				"ResetType@Redfish.AllowableValues": ResetTypes,
			},
		},
	}, nil
}

func (s *Service) nicCollection(e *sysEntry) map[string]any {
	base := "/redfish/v1/Systems/" + e.id + "/EthernetInterfaces"
	members := make([]any, 0, len(e.nics))
	for _, n := range e.nics {
		members = append(members, link(base+"/"+n.id))
	}
	return map[string]any{
		"@odata.id":           base,
		"@odata.type":         "#EthernetInterfaceCollection.EthernetInterfaceCollection",
		"Name":                "Ethernet Interface Collection",
		"Description":         "System NICs",
		"Members@odata.count": len(members),
		"Members":             members,
	}
}

func (s *Service) nicResource(ctx context.Context, e *sysEntry, i int) (map[string]any, error) {
	power, err := e.sys.PowerState(ctx)
	if err != nil {
		return nil, err
	}
	linkStatus := "LinkDown"
	if power == PowerOn {
		linkStatus = "LinkUp"
	}
	n := e.nics[i]
	return map[string]any{
		"@odata.id":             "/redfish/v1/Systems/" + e.id + "/EthernetInterfaces/" + n.id,
		"@odata.type":           typeNIC,
		"Id":                    n.id,
		"Name":                  "Ethernet Interface",
		"Description":           "System NIC " + strconv.Itoa(i+1),
		"Status":                statusOK(),
		"EthernetInterfaceType": "Physical",
		"InterfaceEnabled":      true,
		"LinkStatus":            linkStatus,
		"MACAddress":            n.mac,
		"PermanentMACAddress":   n.mac,
		"SpeedMbps":             1000,
		"FullDuplex":            true,
	}, nil
}

func (s *Service) manager(e *sysEntry) map[string]any {
	sum := sha256.Sum256([]byte("manager:" + e.id + ":" + e.info.UUID))
	return map[string]any{
		"@odata.id":             "/redfish/v1/Managers/" + e.id,
		"@odata.type":           typeManager,
		"Id":                    e.id,
		"Name":                  "Manager",
		"ManagerType":           "BMC",
		"Description":           "mdc virtual rack BMC",
		"ServiceEntryPointUUID": s.uuid,
		"UUID":                  uuidFrom(sum[:]),
		"Model":                 "mdc vrack BMC",
		"FirmwareVersion":       firmwareVersion,
		"Status":                statusOK(),
		"PowerState":            PowerOn, // the BMC itself is always on
		"Links": map[string]any{
			"ManagerForServers": links("/redfish/v1/Systems/" + e.id),
			"ManagerForChassis": links("/redfish/v1/Chassis/" + e.id),
			"ManagerInChassis":  link("/redfish/v1/Chassis/" + e.id),
		},
	}
}

func (s *Service) chassis(ctx context.Context, e *sysEntry) (map[string]any, error) {
	power, err := e.sys.PowerState(ctx)
	if err != nil {
		return nil, err
	}
	return map[string]any{
		"@odata.id":    "/redfish/v1/Chassis/" + e.id,
		"@odata.type":  typeChassis,
		"Id":           e.id,
		"Name":         "Computer System Chassis",
		"ChassisType":  "RackMount",
		"Manufacturer": e.info.Manufacturer,
		"Model":        e.info.Model,
		"SerialNumber": e.info.SerialNumber,
		"PowerState":   power,
		"Status":       statusOK(),
		"Links": map[string]any{
			"ComputerSystems":   links("/redfish/v1/Systems/" + e.id),
			"ManagedBy":         links("/redfish/v1/Managers/" + e.id),
			"ManagersInChassis": links("/redfish/v1/Managers/" + e.id),
		},
	}, nil
}
