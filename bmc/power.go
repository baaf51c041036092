package bmc

import (
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// PowerState is a machine's power as mdc reports it.
type PowerState string

// Power states.
const (
	PowerOn      PowerState = "on"
	PowerOff     PowerState = "off"
	PowerUnknown PowerState = "unknown"
)

// PowerAction is what Power asks of a BMC.
type PowerAction string

// Power actions.
const (
	ActionOn    PowerAction = "on"
	ActionOff   PowerAction = "off"   // hard off
	ActionCycle PowerAction = "cycle" // hard restart; powers on a machine that is off
	ActionSoft  PowerAction = "soft"  // ask the OS to shut down
)

// ParsePowerAction parses "on", "off", "cycle" or "soft".
func ParsePowerAction(s string) (PowerAction, error) {
	switch a := PowerAction(strings.ToLower(strings.TrimSpace(s))); a {
	case ActionOn, ActionOff, ActionCycle, ActionSoft:
		return a, nil
	}
	return "", fmt.Errorf("unknown power action %q (want on, off, cycle or soft)", s)
}

// NormalizePowerState maps what BMCs report to on, off or unknown: Redfish
// "On"/"Off"/"PoweringOn"/"PoweringOff"/"Paused", ipmitool's
// "Chassis Power is on\n" (possibly after warning lines), and the like.
// A machine powering on counts as on, one powering off as off.
func NormalizePowerState(s string) PowerState {
	for _, line := range strings.Split(s, "\n") {
		l := strings.ToLower(strings.TrimSpace(line))
		l = strings.TrimPrefix(l, "chassis power is ")
		l = strings.TrimPrefix(l, "system power is ")
		l = strings.TrimPrefix(l, "power is ")
		switch l {
		case "on", "poweringon", "powering on", "paused", "up", "up/on":
			return PowerOn
		case "off", "poweringoff", "powering off", "down", "down/off", "soft off":
			return PowerOff
		}
	}
	return PowerUnknown
}

// BootOptions qualify the PXE boot override.
type BootOptions struct {
	Persistent bool // every boot, not only the next
	EFI        bool // UEFI rather than legacy BIOS
}

// bootOverride is what a BMC says its boot override is.
type bootOverride struct {
	Device     string // "pxe", "disk", "none", ...
	Persistent bool
	EFI        bool
	// Which of Persistent and EFI the BMC reports trustworthily: an IPMI
	// BMC that clears the valid bit reports neither; Redfish BMCs without
	// BootSourceOverrideMode (bmclib then sets target and enabled only)
	// report no mode.
	PersistentKnown, EFIKnown bool
}

// holds reports whether o is the PXE override opt asked for.
func (o bootOverride) holds(opt BootOptions) bool {
	return o.Device == "pxe" &&
		(!o.PersistentKnown || o.Persistent == opt.Persistent) &&
		(!o.EFIKnown || o.EFI == opt.EFI)
}

func (o bootOverride) String() string {
	s := o.Device
	if o.PersistentKnown {
		if o.Persistent {
			s += " persistent"
		} else {
			s += " once"
		}
	}
	if o.EFIKnown {
		if o.EFI {
			s += " uefi"
		} else {
			s += " legacy"
		}
	}
	return s
}

func (opt BootOptions) String() string {
	s := "pxe once"
	if opt.Persistent {
		s = "pxe persistent"
	}
	if opt.EFI {
		return s + " uefi"
	}
	return s + " legacy"
}

var errNoBootParam = errors.New("no \"Boot parameter data\" line in ipmitool output")

// parseBootParam5 reads IPMI boot flags (boot option parameter 5, IPMI v2
// table 28-14) from `ipmitool chassis bootparam get 5` output.
func parseBootParam5(out string) (bootOverride, error) {
	for _, line := range strings.Split(out, "\n") {
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), "Boot parameter data:")
		if !ok {
			continue
		}
		data, err := hex.DecodeString(strings.TrimSpace(rest))
		if err != nil {
			return bootOverride{}, fmt.Errorf("boot parameter data %q: %w", strings.TrimSpace(rest), err)
		}
		if len(data) < 2 {
			return bootOverride{}, fmt.Errorf("boot parameter data %x: want at least 2 bytes", data)
		}
		valid := data[0]&0x80 != 0
		o := bootOverride{
			Persistent:      data[0]&0x40 != 0,
			EFI:             data[0]&0x20 != 0,
			PersistentKnown: valid,
			EFIKnown:        valid,
		}
		switch (data[1] >> 2) & 0x0f {
		case 0x0:
			o.Device = "none"
		case 0x1:
			o.Device = "pxe"
		case 0x2, 0x3:
			o.Device = "disk"
		case 0x5:
			o.Device = "cdrom"
		case 0x6:
			o.Device = "bios"
		case 0xf:
			o.Device = "floppy"
		default:
			o.Device = fmt.Sprintf("device-%#x", (data[1]>>2)&0x0f)
		}
		return o, nil
	}
	return bootOverride{}, errNoBootParam
}
