package machine

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"
)

// State is where a machine is in its lifecycle. A machine is in exactly one.
type State string

// The lifecycle states (see DESIGN.md). Absent is the state of a machine that
// has no events yet.
const (
	Absent        State = ""
	StDiscovered  State = "discovered"
	Commissioning State = "commissioning"
	Ready         State = "ready"
	Provisioning  State = "provisioning"
	Running       State = "running"
	StJoined      State = "joined"
	StFailed      State = "failed"
	StRetired     State = "retired"
)

// States lists every state a machine can be in, in lifecycle order.
func States() []State {
	return []State{StDiscovered, Commissioning, Ready, Provisioning, Running, StJoined, StFailed, StRetired}
}

// ParseState accepts a state's name.
func ParseState(s string) (State, error) {
	if slices.Contains(States(), State(s)) {
		return State(s), nil
	}
	return "", fmt.Errorf("unknown state %q (want one of %v)", s, States())
}

func (s State) String() string {
	if s == Absent {
		return "absent"
	}
	return string(s)
}

// Machine is the fold of one machine's lifecycle events.
type Machine struct {
	ID          ID        `json:"id"`
	MAC         string    `json:"mac"`
	Name        string    `json:"name,omitempty"`
	State       State     `json:"state"`
	Role        string    `json:"role,omitempty"`
	Image       string    `json:"image,omitempty"`
	Arch        string    `json:"arch,omitempty"`
	Facts       *Facts    `json:"facts,omitempty"`
	BMC         *BMC      `json:"bmc,omitempty"`
	Power       string    `json:"power,omitempty"`
	BootDevice  string    `json:"boot_device,omitempty"`
	Failure     *Failure  `json:"failure,omitempty"`
	BootToken   string    `json:"-"`                    // SHA-256 of the current boot's token (boot.go); never shown
	ExtraMACs   []ID      `json:"extra_macs,omitempty"` // other NICs, from facts or enrolment
	Created     time.Time `json:"created"`
	Updated     time.Time `json:"updated"`
	LastEventID string    `json:"last_event_id,omitempty"`
	LastSeq     uint64    `json:"last_seq"` // stream sequence of the newest event
	Events      int       `json:"events"`   // lifecycle events folded
}

// Failure says why a machine is failed and in which state it failed.
type Failure struct {
	Reason string    `json:"reason"`
	In     State     `json:"in"`
	At     time.Time `json:"at"`
}

// ErrIllegalTransition is wrapped by every TransitionError.
var ErrIllegalTransition = errors.New("illegal transition")

// TransitionError is an event that is not allowed in the machine's state.
type TransitionError struct {
	Machine ID
	From    State
	Event   EventType
	Why     string
}

func (e *TransitionError) Error() string {
	msg := fmt.Sprintf("machine %s: event %s is not allowed in state %s", e.Machine, e.Event, e.From)
	if e.Why != "" {
		msg += ": " + e.Why
	}
	return msg
}

func (e *TransitionError) Unwrap() error { return ErrIllegalTransition }

// ErrBadEvent is wrapped when an event is malformed (wrong machine, bad data).
var ErrBadEvent = errors.New("bad event")

// Fold applies events in order to an absent machine.
func Fold(events []Event) (Machine, error) {
	var m Machine
	for _, e := range events {
		var err error
		if m, err = Apply(m, e); err != nil {
			return m, err
		}
	}
	return m, nil
}

// Apply returns m after e, or an error (and m unchanged) when e is malformed
// or not allowed in m's state.
func Apply(m Machine, e Event) (Machine, error) {
	if !e.Type.Lifecycle() {
		return m, fmt.Errorf("%w: %q is not a lifecycle event", ErrBadEvent, e.Type)
	}
	if !e.Machine.Valid() {
		return m, fmt.Errorf("%w: machine id %q is not 12 lowercase hex digits", ErrBadEvent, e.Machine)
	}
	if m.State != Absent && e.Machine != m.ID {
		return m, fmt.Errorf("%w: event for %s applied to machine %s", ErrBadEvent, e.Machine, m.ID)
	}
	illegal := func(why string) (Machine, error) {
		return m, &TransitionError{Machine: e.Machine, From: m.State, Event: e.Type, Why: why}
	}
	if m.State == Absent && e.Type != Discovered && e.Type != Enrolled {
		return illegal("the machine is not known yet")
	}
	n := m // n is the machine after e; slices in m are never mutated in place
	switch e.Type {
	case Discovered:
		var d DiscoveredData
		if err := decode(e, &d); err != nil {
			return m, err
		}
		if m.State != Absent {
			return illegal("the machine is already known")
		}
		n.State, n.Arch, n.Name = StDiscovered, d.Arch, d.Name
	case Enrolled:
		var d EnrolledData
		if err := decode(e, &d); err != nil {
			return m, err
		}
		if in(m.State, Absent, StRetired) {
			n.State, n.Role, n.Failure = StDiscovered, "", nil
		}
		if d.Role != "" && in(n.State, StDiscovered, Ready) {
			n.State, n.Role = Provisioning, d.Role // its next boot goes straight to the role
		}
		if d.BMC != nil {
			n.BMC = d.BMC
		}
		if d.Name != "" {
			n.Name = d.Name
		}
		for _, s := range d.MACs {
			if id, err := ParseID(s); err == nil && id != e.Machine && !slices.Contains(n.ExtraMACs, id) {
				n.ExtraMACs = append(slices.Clip(n.ExtraMACs), id)
			}
		}
	case CommissioningStarted:
		var d CommissioningBootData
		if err := decode(e, &d); err != nil {
			return m, err
		}
		if !in(m.State, StDiscovered, Commissioning, StFailed) {
			return illegal("commissioning starts only from discovered (or failed)")
		}
		n.State, n.Image, n.Failure, n.BootToken = Commissioning, d.Image, nil, d.TokenSHA256
	case FactsReported:
		var f Facts
		if err := decode(e, &f); err != nil {
			return m, err
		}
		switch m.State {
		case Commissioning:
			n.State = Ready
		case Ready: // a repeated report refreshes the facts
		default:
			return illegal("facts are reported by the commissioning image")
		}
		n.Facts = &f
		n.ExtraMACs = nil
		for _, nic := range f.NICs {
			if id, err := ParseID(nic.MAC); err == nil && id != e.Machine && !slices.Contains(n.ExtraMACs, id) {
				n.ExtraMACs = append(n.ExtraMACs, id)
			}
		}
	case RoleAssigned:
		var d RoleAssignedData
		if err := decode(e, &d); err != nil {
			return m, err
		}
		if d.Role == "" {
			return m, fmt.Errorf("%w: role_assigned needs a role", ErrBadEvent)
		}
		if m.State == StRetired {
			return illegal("retired machines get no role")
		}
		n.State, n.Role, n.Failure = Provisioning, d.Role, nil
	case ProvisioningStarted:
		var d ProvisioningBootData
		if err := decode(e, &d); err != nil {
			return m, err
		}
		if !in(m.State, Provisioning, Running, StJoined, StFailed) {
			return illegal("provisioning needs a role")
		}
		role := d.Role
		if role == "" {
			role = m.Role
		}
		if role == "" {
			return illegal("the machine has no role")
		}
		n.State, n.Role, n.Image, n.Failure, n.BootToken = Provisioning, role, d.Image, nil, d.TokenSHA256
	case Booted:
		var d BootedData
		if err := decode(e, &d); err != nil {
			return m, err
		}
		if !in(m.State, Provisioning, Running, StJoined) {
			return illegal("only a role image reports booted")
		}
		n.State = Running
		if d.Image != "" {
			n.Image = d.Image
		}
	case Joined:
		var d JoinedData
		if err := decode(e, &d); err != nil {
			return m, err
		}
		if !in(m.State, Running, StJoined) {
			return illegal("a node joins its cluster after it has booted")
		}
		n.State = StJoined
	case Failed:
		var d FailedData
		if err := decode(e, &d); err != nil {
			return m, err
		}
		if d.Reason == "" {
			return m, fmt.Errorf("%w: failed needs a reason", ErrBadEvent)
		}
		if in(m.State, StFailed, StRetired) {
			return illegal("")
		}
		n.State, n.BootToken = StFailed, ""
		n.Failure = &Failure{Reason: d.Reason, In: m.State, At: e.Time}
	case Retired:
		var d RetiredData
		if err := decode(e, &d); err != nil {
			return m, err
		}
		if m.State == StRetired {
			return illegal("the machine is already retired")
		}
		n.State, n.BootToken = StRetired, ""
	case Renamed:
		var d RenamedData
		if err := decode(e, &d); err != nil {
			return m, err
		}
		if d.Name == "" {
			return m, fmt.Errorf("%w: renamed needs a name", ErrBadEvent)
		}
		n.Name = d.Name
	case PowerRequested:
		var d PowerData
		if err := decode(e, &d); err != nil {
			return m, err
		}
	case PowerChanged:
		var d PowerData
		if err := decode(e, &d); err != nil {
			return m, err
		}
		if d.State != "" {
			n.Power = d.State
		}
	case BootDeviceSet:
		var d BootDeviceData
		if err := decode(e, &d); err != nil {
			return m, err
		}
		n.BootDevice = d.Device
	}
	if m.State == Absent {
		n.ID, n.MAC, n.Created = e.Machine, e.Machine.MAC(), e.Time
	}
	n.Updated, n.LastEventID, n.Events = e.Time, e.ID, m.Events+1
	if e.Seq != 0 {
		n.LastSeq = e.Seq
	}
	return n, nil
}

func in(s State, set ...State) bool { return slices.Contains(set, s) }

// decode reads e.Data leniently: events written by a newer mdc may carry
// fields this one does not know. Producers are checked at the API instead.
func decode(e Event, v any) error {
	if len(e.Data) == 0 {
		return nil
	}
	if err := json.Unmarshal(e.Data, v); err != nil {
		return fmt.Errorf("%w: %s data: %v", ErrBadEvent, e.Type, err)
	}
	return nil
}
