package redfish

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// Power states a System reports, as Redfish spells them.
const (
	PowerOn  = "On"
	PowerOff = "Off"
)

// ErrUnsupportedReset is returned by System.Reset for a reset type the
// system cannot perform; the service answers 400 with ActionParameterNotSupported.
var ErrUnsupportedReset = errors.New("redfish: unsupported reset type")

// ErrInvalidBoot is returned by SetBootOverride for a value outside the
// allowable lists.
var ErrInvalidBoot = errors.New("redfish: invalid boot override")

// System is one machine the service presents. The virtual rack backs it with
// a QEMU process (QMP); tests use Memory.
type System interface {
	PowerState(ctx context.Context) (string, error)    // "On" or "Off"
	Reset(ctx context.Context, resetType string) error // see ResetTypes; ErrUnsupportedReset otherwise
	BootOverride(ctx context.Context) (Boot, error)
	SetBootOverride(ctx context.Context, b Boot) error
	Info() Info // static facts
}

// Boot is a system's boot source override.
type Boot struct {
	Target  string // BootSourceOverrideTarget: None, Pxe, Hdd, ...
	Enabled string // BootSourceOverrideEnabled: Disabled, Once, Continuous
	Mode    string // BootSourceOverrideMode: Legacy, UEFI
}

// Info is what a system's BMC knows about it that does not change.
type Info struct {
	UUID         string
	SerialNumber string
	Manufacturer string
	Model        string
	Name         string   // optional; defaults to the system id
	MACs         []string // aa:bb:cc:dd:ee:ff, one per NIC, in NIC order
}

// Allowable values the service advertises and accepts.
var (
	BootTargets = []string{"None", "Pxe", "Cd", "Usb", "Hdd", "BiosSetup", "Utilities", "Diags"}
	BootEnabled = []string{"Disabled", "Once", "Continuous"}
	BootModes   = []string{"Legacy", "UEFI"}
	ResetTypes  = []string{"On", "ForceOff", "GracefulShutdown", "GracefulRestart", "ForceRestart", "Nmi", "ForceOn", "PowerCycle"}
)

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// Validate reports the first property of b that is not an allowable value.
func (b Boot) Validate() error {
	switch {
	case !contains(BootTargets, b.Target):
		return fmt.Errorf("%w: BootSourceOverrideTarget %q", ErrInvalidBoot, b.Target)
	case !contains(BootEnabled, b.Enabled):
		return fmt.Errorf("%w: BootSourceOverrideEnabled %q", ErrInvalidBoot, b.Enabled)
	case !contains(BootModes, b.Mode):
		return fmt.Errorf("%w: BootSourceOverrideMode %q", ErrInvalidBoot, b.Mode)
	}
	return nil
}

// Memory is an in-memory System: a power state, a boot override and static
// info. It is safe for concurrent use. Like a real BMC it consumes a Once
// override at the next power-on or restart.
type Memory struct {
	info Info

	mu     sync.Mutex
	power  string
	boot   Boot
	boots  []Boot // the effective boot source of each start, oldest first
	resets []string
}

// NewMemory returns a powered-off system with no boot override.
func NewMemory(info Info) *Memory {
	info.MACs = append([]string(nil), info.MACs...)
	return &Memory{
		info:  info,
		power: PowerOff,
		boot:  Boot{Target: "None", Enabled: "Disabled", Mode: "UEFI"},
	}
}

// Info implements System.
func (m *Memory) Info() Info {
	i := m.info
	i.MACs = append([]string(nil), m.info.MACs...)
	return i
}

// PowerState implements System.
func (m *Memory) PowerState(ctx context.Context) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.power, nil
}

// SetPowerState forces the power state, as a tester pressing the front
// panel button would.
func (m *Memory) SetPowerState(state string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.power = state
}

// BootOverride implements System.
func (m *Memory) BootOverride(ctx context.Context) (Boot, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.boot, nil
}

// SetBootOverride implements System.
func (m *Memory) SetBootOverride(ctx context.Context, b Boot) error {
	if err := b.Validate(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.boot = b
	return nil
}

// Reset implements System.
func (m *Memory) Reset(ctx context.Context, resetType string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch resetType {
	case "On", "ForceOn":
		if m.power == PowerOn {
			break
		}
		m.start()
	case "ForceOff", "GracefulShutdown":
		m.power = PowerOff
	case "ForceRestart", "GracefulRestart":
		// A restart of a machine that is off does nothing, as on real BMCs.
		if m.power == PowerOn {
			m.start()
		}
	case "PowerCycle":
		m.start()
	case "Nmi":
		// Nothing to model: the guest would get an NMI.
	default:
		return fmt.Errorf("%w: %q", ErrUnsupportedReset, resetType)
	}
	m.resets = append(m.resets, resetType)
	return nil
}

// start powers the machine on and records where it booted from; a Once
// override is consumed here.
func (m *Memory) start() {
	m.power = PowerOn
	eff := Boot{Target: "Hdd", Enabled: "Disabled", Mode: m.boot.Mode}
	if m.boot.Enabled != "Disabled" && m.boot.Target != "None" {
		eff = m.boot
	}
	if m.boot.Enabled == "Once" {
		m.boot.Enabled = "Disabled"
		m.boot.Target = "None"
	}
	m.boots = append(m.boots, eff)
}

// Boots returns where each start since NewMemory booted from (the override in
// force at that start, or Hdd), oldest first.
func (m *Memory) Boots() []Boot {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]Boot(nil), m.boots...)
}

// Resets returns the reset types the system accepted, oldest first.
func (m *Memory) Resets() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]string(nil), m.resets...)
}
