package machine

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

const testID = ID("525400123456")

var t0 = time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)

func ev(t EventType, data any) Event {
	b, _ := json.Marshal(data)
	if data == nil {
		b = nil
	}
	return Event{ID: "e-" + string(t), Type: t, Machine: testID, Time: t0, Source: "test", Data: b}
}

// standard is the event of each type used for the transition table.
func standard(t EventType) Event {
	switch t {
	case Discovered:
		return ev(t, DiscoveredData{Via: "dhcp", Arch: "x86_64-efi"})
	case Enrolled:
		return ev(t, EnrolledData{BMC: &BMC{URL: "redfish://10.0.0.9", User: "root", Credential: "bmc-525400123456"}})
	case CommissioningStarted:
		return ev(t, ImageData{Image: "commissioning"})
	case FactsReported:
		return ev(t, Facts{CPUs: 2, MemoryBytes: 1 << 30})
	case RoleAssigned:
		return ev(t, RoleAssignedData{Role: "ceph-osd", By: "policy"})
	case ProvisioningStarted:
		return ev(t, ProvisioningStartedData{Role: "ceph-osd", Image: "ceph-osd-1"})
	case Booted:
		return ev(t, BootedData{Image: "ceph-osd-1", Kernel: "6.1.0"})
	case Joined:
		return ev(t, JoinedData{Role: "ceph-osd"})
	case Failed:
		return ev(t, FailedData{Reason: "agent never checked in"})
	case Retired:
		return ev(t, RetiredData{Reason: "disk died"})
	case Renamed:
		return ev(t, RenamedData{Name: "osd-1"})
	case PowerRequested:
		return ev(t, PowerData{Action: "cycle"})
	case PowerChanged:
		return ev(t, PowerData{State: "on"})
	case BootDeviceSet:
		return ev(t, BootDeviceData{Device: "pxe", EFI: true})
	}
	panic("no standard event for " + string(t))
}

// reach returns a machine in state s, built only through legal events.
func reach(t *testing.T, s State) Machine {
	t.Helper()
	paths := map[State][]EventType{
		Absent:        nil,
		StDiscovered:  {Discovered},
		Commissioning: {Discovered, CommissioningStarted},
		Ready:         {Discovered, CommissioningStarted, FactsReported},
		Provisioning:  {Discovered, CommissioningStarted, FactsReported, RoleAssigned},
		Running:       {Discovered, CommissioningStarted, FactsReported, RoleAssigned, ProvisioningStarted, Booted},
		StJoined:      {Discovered, CommissioningStarted, FactsReported, RoleAssigned, ProvisioningStarted, Booted, Joined},
		StFailed:      {Discovered, CommissioningStarted, Failed},
		StRetired:     {Discovered, Retired},
	}
	var evs []Event
	for _, et := range paths[s] {
		evs = append(evs, standard(et))
	}
	m, err := Fold(evs)
	if err != nil {
		t.Fatalf("reach %s: %v", s, err)
	}
	if m.State != s {
		t.Fatalf("reach %s: got %s", s, m.State)
	}
	return m
}

func TestTransitions(t *testing.T) {
	// want[from][event] is the state after the event; a missing entry means
	// the event must be refused in that state. "same" events keep the state.
	same := []EventType{Renamed, PowerRequested, PowerChanged, BootDeviceSet}
	want := map[State]map[EventType]State{
		Absent: {Discovered: StDiscovered, Enrolled: StDiscovered},
		StDiscovered: {Enrolled: StDiscovered, CommissioningStarted: Commissioning, RoleAssigned: Provisioning,
			Failed: StFailed, Retired: StRetired},
		Commissioning: {Enrolled: Commissioning, CommissioningStarted: Commissioning, FactsReported: Ready,
			RoleAssigned: Provisioning, Failed: StFailed, Retired: StRetired},
		Ready: {Enrolled: Ready, FactsReported: Ready, RoleAssigned: Provisioning, Failed: StFailed,
			Retired: StRetired},
		Provisioning: {Enrolled: Provisioning, RoleAssigned: Provisioning, ProvisioningStarted: Provisioning,
			Booted: Running, Failed: StFailed, Retired: StRetired},
		Running: {Enrolled: Running, RoleAssigned: Provisioning, ProvisioningStarted: Provisioning,
			Booted: Running, Joined: StJoined, Failed: StFailed, Retired: StRetired},
		StJoined: {Enrolled: StJoined, RoleAssigned: Provisioning, ProvisioningStarted: Provisioning,
			Booted: Running, Joined: StJoined, Failed: StFailed, Retired: StRetired},
		StFailed: {Enrolled: StFailed, CommissioningStarted: Commissioning, RoleAssigned: Provisioning,
			ProvisioningStarted: Provisioning, Retired: StRetired},
		StRetired: {Enrolled: StDiscovered},
	}
	for from, row := range want {
		if from != Absent {
			for _, et := range same {
				if _, ok := row[et]; !ok {
					row[et] = from
				}
			}
		}
	}
	for _, from := range append([]State{Absent}, States()...) {
		for _, et := range LifecycleEvents() {
			t.Run(from.String()+"/"+string(et), func(t *testing.T) {
				m := reach(t, from)
				got, err := Apply(m, standard(et))
				to, legal := want[from][et]
				if !legal {
					var te *TransitionError
					if !errors.As(err, &te) || !errors.Is(err, ErrIllegalTransition) {
						t.Fatalf("want a TransitionError, got %v (state %s)", err, got.State)
					}
					if !strings.Contains(err.Error(), from.String()) || !strings.Contains(err.Error(), string(et)) {
						t.Errorf("error %q must name state %s and event %s", err, from, et)
					}
					if diff := cmp.Diff(m, got); diff != "" {
						t.Errorf("refused event changed the machine (-before +after):\n%s", diff)
					}
					return
				}
				if err != nil {
					t.Fatalf("want %s, got error %v", to, err)
				}
				if got.State != to {
					t.Errorf("state: want %s, got %s", to, got.State)
				}
				if got.Events != m.Events+1 || got.LastEventID != "e-"+string(et) {
					t.Errorf("bookkeeping: events %d->%d, last %q", m.Events, got.Events, got.LastEventID)
				}
			})
		}
	}
}

func TestApplyRecords(t *testing.T) {
	tests := map[string]struct {
		events []Event
		want   func(Machine) string
	}{
		"failure remembers the state it failed in": {
			events: []Event{standard(Discovered), standard(CommissioningStarted), standard(Failed)},
			want: func(m Machine) string {
				if m.Failure == nil || m.Failure.In != Commissioning || m.Failure.Reason != "agent never checked in" {
					return "failure not recorded"
				}
				return ""
			},
		},
		"a new role clears the failure": {
			events: []Event{standard(Discovered), standard(Failed), standard(RoleAssigned)},
			want: func(m Machine) string {
				if m.Failure != nil || m.Role != "ceph-osd" {
					return "failure kept or role lost"
				}
				return ""
			},
		},
		"enrolled with a role goes straight to provisioning": {
			events: []Event{ev(Enrolled, EnrolledData{Role: "nats", Name: "n1", MACs: []string{"52:54:00:00:00:02"}})},
			want: func(m Machine) string {
				if m.State != Provisioning || m.Role != "nats" || m.Name != "n1" {
					return "got " + string(m.State) + "/" + m.Role + "/" + m.Name
				}
				if len(m.ExtraMACs) != 1 || m.ExtraMACs[0] != "525400000002" {
					return "extra MAC not recorded"
				}
				return ""
			},
		},
		"facts keep the other NICs for lookups": {
			events: []Event{standard(Discovered), standard(CommissioningStarted),
				ev(FactsReported, Facts{NICs: []NIC{{Name: "eth0", MAC: "52:54:00:12:34:56"}, {Name: "eth1", MAC: "52:54:00:AB:CD:EF"}}})},
			want: func(m Machine) string {
				if diff := cmp.Diff([]ID{"525400abcdef"}, m.ExtraMACs); diff != "" {
					return diff
				}
				return ""
			},
		},
		"identity is set by the first event": {
			events: []Event{standard(Discovered)},
			want: func(m Machine) string {
				if m.ID != testID || m.MAC != "52:54:00:12:34:56" || !m.Created.Equal(t0) || m.Arch != "x86_64-efi" {
					return "identity wrong"
				}
				return ""
			},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			m, err := Fold(tc.events)
			if err != nil {
				t.Fatal(err)
			}
			if msg := tc.want(m); msg != "" {
				t.Error(msg)
			}
		})
	}
}

func TestApplyRejectsMalformed(t *testing.T) {
	disc, err := Apply(Machine{}, standard(Discovered))
	if err != nil {
		t.Fatal(err)
	}
	tests := map[string]struct {
		m Machine
		e Event
	}{
		"telemetry is not lifecycle": {disc, ev(DHCPOffered, nil)},
		"unknown type":               {disc, ev("exploded", nil)},
		"bad machine id":             {Machine{}, Event{Type: Discovered, Machine: "52:54:00:12:34:56"}},
		"event for another machine":  {disc, Event{Type: Renamed, Machine: "525400000001", Data: []byte(`{"name":"x"}`)}},
		"data not an object":         {disc, Event{Type: Renamed, Machine: testID, Data: []byte(`[1]`)}},
		"role without a role":        {disc, ev(RoleAssigned, RoleAssignedData{})},
		"failed without a reason":    {disc, ev(Failed, FailedData{})},
		"rename to nothing":          {disc, ev(Renamed, RenamedData{})},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := Apply(tc.m, tc.e)
			if !errors.Is(err, ErrBadEvent) {
				t.Fatalf("want ErrBadEvent, got %v", err)
			}
			if diff := cmp.Diff(tc.m, got); diff != "" {
				t.Errorf("machine changed:\n%s", diff)
			}
		})
	}
}

func TestParseID(t *testing.T) {
	good := map[string]string{
		"52:54:00:12:34:56":   "525400123456",
		"52-54-00-AB-CD-EF":   "525400abcdef",
		"5254.00ab.cdef":      "525400abcdef",
		"525400ABCDEF":        "525400abcdef",
		" 52:54:00:12:34:56 ": "525400123456",
	}
	for in, want := range good {
		id, err := ParseID(in)
		if err != nil || string(id) != want {
			t.Errorf("ParseID(%q) = %q, %v; want %q", in, id, err, want)
		}
	}
	bad := []string{"", "52:54:00:12:34", "52:54:00:12:34:5g", "52:54-00:12:34:56", "52.54.00.12.34.56",
		"5254:00ab:cdef", "525400abcdef00", "52:54:00:12:34:56:78", "zz:zz:zz:zz:zz:zz", "5254.00ab-cdef"}
	for _, in := range bad {
		_, err := ParseID(in)
		if !errors.Is(err, ErrBadMAC) {
			t.Errorf("ParseID(%q): want ErrBadMAC, got %v", in, err)
			continue
		}
		if !strings.Contains(err.Error(), `"`+in+`"`) {
			t.Errorf("ParseID(%q): error %q does not show the input", in, err)
		}
	}
	if got := MustParseID("525400abcdef").MAC(); got != "52:54:00:ab:cd:ef" {
		t.Errorf("MAC() = %q", got)
	}
}

func FuzzParseID(f *testing.F) {
	for _, s := range []string{"52:54:00:12:34:56", "5254.00ab.cdef", "525400ABCDEF", "", "::::::"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParseID(s)
		if err != nil {
			return
		}
		if !id.Valid() {
			t.Fatalf("ParseID(%q) = %q, not canonical", s, id)
		}
		again, err := ParseID(id.MAC())
		if err != nil || again != id {
			t.Fatalf("round trip of %q: %q, %v", id, again, err)
		}
	})
}
