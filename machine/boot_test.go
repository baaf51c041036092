package machine

import (
	"strings"
	"testing"
)

func TestBootToken(t *testing.T) {
	tok, stored := NewBootToken()
	other, _ := NewBootToken()
	if len(tok) != 64 || tok == other || strings.Contains(stored.TokenSHA256, tok) {
		t.Fatalf("token %q stored as %q", tok, stored.TokenSHA256)
	}
	if !stored.Matches(tok) || stored.Matches(other) || stored.Matches("") || (BootToken{}).Matches(tok) {
		t.Error("Matches accepts the wrong tokens")
	}
}

func TestCurrentBootToken(t *testing.T) {
	id := MustParseID("52:54:00:00:00:01")
	ev := func(typ EventType, data any) Event {
		e, err := NewEvent(id, typ, "test", data)
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	t1, s1 := NewBootToken()
	t2, s2 := NewBootToken()
	for _, tc := range []struct {
		name    string
		history []Event
		want    string // token that must match; "" for none
	}{
		{"never booted", []Event{ev(Discovered, DiscoveredData{})}, ""},
		{"commissioning", []Event{ev(Discovered, DiscoveredData{}), ev(CommissioningStarted, CommissioningBootData{ImageData{"c"}, s1})}, t1},
		{"rebooted", []Event{ev(Discovered, DiscoveredData{}), ev(CommissioningStarted, CommissioningBootData{ImageData{"c"}, s1}),
			ev(FactsReported, Facts{}), ev(RoleAssigned, RoleAssignedData{Role: "r"}),
			ev(ProvisioningStarted, ProvisioningBootData{ProvisioningStartedData{Role: "r"}, s2}), ev(Booted, BootedData{})}, t2},
		{"boot without token", []Event{ev(Discovered, DiscoveredData{}), ev(CommissioningStarted, CommissioningBootData{ImageData{"c"}, s1}),
			ev(CommissioningStarted, ImageData{Image: "c"})}, ""},
		{"failed", []Event{ev(Discovered, DiscoveredData{}), ev(CommissioningStarted, CommissioningBootData{ImageData{"c"}, s1}), ev(Failed, FailedData{Reason: "x"})}, ""},
		{"retired", []Event{ev(Discovered, DiscoveredData{}), ev(CommissioningStarted, CommissioningBootData{ImageData{"c"}, s1}), ev(Retired, RetiredData{})}, ""},
	} {
		got, ok := CurrentBootToken(tc.history)
		if ok != (tc.want != "") || (tc.want != "" && !got.Matches(tc.want)) {
			t.Errorf("%s: %+v %v", tc.name, got, ok)
		}
		m, err := Fold(tc.history)
		if err != nil {
			t.Errorf("%s: the fold refuses the boot data: %v", tc.name, err)
		}
		// The table carries the same token as the history says.
		if m.BootToken != got.TokenSHA256 {
			t.Errorf("%s: folded token hash %q, history says %q", tc.name, m.BootToken, got.TokenSHA256)
		}
	}
}
