package bmc

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseURL(t *testing.T) {
	for in, want := range map[string]Endpoint{
		"redfish://10.0.0.5":             {Protocol: Redfish, Host: "10.0.0.5", Port: 80},
		"redfish://bmc-7.rack:8000":      {Protocol: Redfish, Host: "bmc-7.rack", Port: 8000},
		"redfishs://10.0.0.5":            {Protocol: Redfish, Host: "10.0.0.5", Port: 443, TLS: true},
		"REDFISHS://10.0.0.5:8443/":      {Protocol: Redfish, Host: "10.0.0.5", Port: 8443, TLS: true},
		"ipmi://10.0.0.6":                {Protocol: IPMI, Host: "10.0.0.6", Port: 623},
		"ipmi://[fd00::6]:6230":          {Protocol: IPMI, Host: "fd00::6", Port: 6230},
		" redfish://h:1?system=System+2": {Protocol: Redfish, Host: "h", Port: 1, System: "System 2"},
	} {
		got, err := ParseURL(in)
		if err != nil {
			t.Errorf("ParseURL(%q): %v", in, err)
			continue
		}
		if d := cmp.Diff(want, got); d != "" {
			t.Errorf("ParseURL(%q) (-want +got):\n%s", in, d)
		}
		// String gives back a URL that parses to the same endpoint.
		again, err := ParseURL(got.String())
		if err != nil || again != got {
			t.Errorf("ParseURL(%q).String() = %q does not round-trip: %+v, %v", in, got.String(), again, err)
		}
	}
}

func TestParseURLErrors(t *testing.T) {
	for in, wantMsg := range map[string]string{
		"":                                "no scheme",
		"10.0.0.5":                        "no scheme",
		"https://10.0.0.5":                "unknown scheme",
		"ipmis://10.0.0.5":                "unknown scheme",
		"redfish://":                      "no host",
		"redfish:10.0.0.5":                "no host",
		"redfish://10.0.0.5:0":            "bad port",
		"redfish://10.0.0.5:70000":        "bad port",
		"redfish://10.0.0.5:x":            "not a URL",
		"redfish://10.0.0.5:":             "empty port",
		"redfish://10.0.0.5/redfish/v1":   "unexpected path",
		"redfish://10.0.0.5?foo=1":        "unknown parameter",
		"ipmi://10.0.0.5?system=1":        "unknown parameter",
		"redfish://10.0.0.5?system=":      "system name",
		"ipmi://::10":                     "bad host",
		"redfish://bad_host-.x..y":        "bad host",
		"redfish://admin:hunter22@h":      "credentials do not belong",
		"ipmi://root:calvin99@10.0.0.5:1": "credentials do not belong",
	} {
		_, err := ParseURL(in)
		if err == nil {
			t.Errorf("ParseURL(%q) succeeded", in)
			continue
		}
		if !strings.Contains(err.Error(), wantMsg) {
			t.Errorf("ParseURL(%q) = %v, want it to say %q", in, err, wantMsg)
		}
		for _, pw := range []string{"hunter22", "calvin99"} {
			if strings.Contains(err.Error(), pw) {
				t.Errorf("ParseURL(%q) error shows the password: %v", in, err)
			}
		}
	}
}

func FuzzParseURL(f *testing.F) {
	for _, s := range []string{"redfish://10.0.0.5", "redfishs://h:8443?system=S", "ipmi://[::1]:623", "ipmi://u:p@h", "redfish://%zz"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ep, err := ParseURL(s)
		if err != nil {
			return
		}
		if err := ep.Validate(); err != nil {
			t.Fatalf("ParseURL(%q) = %+v, which does not validate: %v", s, ep, err)
		}
		again, err := ParseURL(ep.String())
		if err != nil || again != ep {
			t.Fatalf("ParseURL(%q) = %+v; String %q parses to %+v, %v", s, ep, ep.String(), again, err)
		}
	})
}
