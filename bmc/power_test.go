package bmc

import (
	"testing"
)

func TestNormalizePowerState(t *testing.T) {
	for in, want := range map[string]PowerState{
		"On":                     PowerOn,
		"on":                     PowerOn,
		"Off":                    PowerOff,
		"PoweringOn":             PowerOn,
		"PoweringOff":            PowerOff,
		"Paused":                 PowerOn,
		"Chassis Power is on\n":  PowerOn,
		"Chassis Power is off\n": PowerOff,
		"Unable to Get Channel Cipher Suites\nChassis Power is on\n": PowerOn,
		"":        PowerUnknown,
		"Unknown": PowerUnknown,
		"onion":   PowerUnknown,
		"Error: Unable to establish IPMI v2 / RMCP+ session\n": PowerUnknown,
	} {
		if got := NormalizePowerState(in); got != want {
			t.Errorf("NormalizePowerState(%q) = %q, want %q", in, got, want)
		}
	}
}

func FuzzNormalizePowerState(f *testing.F) {
	for _, s := range []string{"On", "Chassis Power is off\n", "PoweringOn", "x\nChassis Power is on"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		switch NormalizePowerState(s) {
		case PowerOn, PowerOff, PowerUnknown:
		default:
			t.Fatalf("NormalizePowerState(%q) is not on, off or unknown", s)
		}
	})
}

// Real ipmitool outputs: ipmi_sim after `chassis bootdev pxe` (valid bit
// cleared), and a BMC that keeps the flags.
const (
	bootParamSim = `Boot parameter version: 1
Boot parameter 5 is valid/unlocked
Boot parameter data: 0004000000
 Boot Flags :
   - Boot Flag Invalid
   - Options apply to only next boot
   - BIOS PC Compatible (legacy) boot 
   - Boot Device Selector : Force PXE
`
	bootParamUEFIPersistent = `Boot parameter version: 1
Boot parameter 5 is valid/unlocked
Boot parameter data: e004000000
 Boot Flags :
   - Boot Flag Valid
   - Options apply to all future boots
   - BIOS EFI boot 
   - Boot Device Selector : Force PXE
`
	bootParamDisk = "Boot parameter data: 8008000000\n"
)

func TestParseBootParam5(t *testing.T) {
	for name, tc := range map[string]struct {
		out   string
		want  bootOverride
		holds map[BootOptions]bool
	}{
		"ipmi_sim": {bootParamSim, bootOverride{Device: "pxe"},
			map[BootOptions]bool{{}: true, {EFI: true}: true, {Persistent: true}: true}},
		"uefi persistent": {bootParamUEFIPersistent, bootOverride{Device: "pxe", Persistent: true, EFI: true, PersistentKnown: true, EFIKnown: true},
			map[BootOptions]bool{{Persistent: true, EFI: true}: true, {EFI: true}: false, {}: false}},
		"disk": {bootParamDisk, bootOverride{Device: "disk", PersistentKnown: true, EFIKnown: true},
			map[BootOptions]bool{{}: false}},
	} {
		got, err := parseBootParam5(tc.out)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got != tc.want {
			t.Errorf("%s: parseBootParam5 = %+v, want %+v", name, got, tc.want)
		}
		for opt, want := range tc.holds {
			if got.holds(opt) != want {
				t.Errorf("%s: holds(%s) = %v, want %v", name, opt, !want, want)
			}
		}
	}
	for _, bad := range []string{"", "Boot parameter data: zz", "Boot parameter data: 00", "Error: Unable to establish IPMI v2 / RMCP+ session"} {
		if _, err := parseBootParam5(bad); err == nil {
			t.Errorf("parseBootParam5(%q) succeeded", bad)
		}
	}
}

func FuzzParseBootParam5(f *testing.F) {
	for _, s := range []string{bootParamSim, bootParamUEFIPersistent, bootParamDisk, "Boot parameter data: ff"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		o, err := parseBootParam5(s)
		if err == nil && o.Device == "" {
			t.Fatalf("parseBootParam5(%q) gave no device", s)
		}
	})
}

func TestDiagnoseSession(t *testing.T) {
	for out, want := range map[string]Kind{
		"Loading IANA PEN Registry...\n> RAKP 2 HMAC is invalid\nError: Unable to establish IPMI v2 / RMCP+ session":                     AuthFailed,
		"RAKP 2 message indicates an error : unauthorized name\nError: Unable to establish IPMI v2 / RMCP+ session":                      AuthFailed,
		"Get Auth Capabilities error\nError issuing Get Channel Authentication Capabilities request\nError: Unable to establish IPMI v2": Unreachable,
	} {
		if got, ok := diagnoseSession(out); !ok || got != want {
			t.Errorf("diagnoseSession(%q) = %v, %v; want %v", out, got, ok, want)
		}
	}
	if _, ok := diagnoseSession("Error in open session response message : invalid authentication algorithm"); ok {
		t.Error("an unsupported cipher suite was taken for a diagnosis")
	}
}
