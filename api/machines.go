package api

import (
	"net/http"
	"regexp"

	"github.com/microdc/mdc/events"
	"github.com/microdc/mdc/machine"
)

// source is the CloudEvents source of events the API appends.
const source = "mdc/api"

// WriteResult is the answer to every write: the machine after the event,
// and the event stored.
type WriteResult struct {
	Machine machine.Machine `json:"machine"`
	Event   StoredEvent     `json:"event"`
}

// StoredEvent identifies an appended event.
type StoredEvent struct {
	ID   string            `json:"id"`
	Seq  uint64            `json:"seq"`
	Type machine.EventType `json:"type"`
}

// MachineList is the answer to GET /api/v1/machines.
type MachineList struct {
	Machines []machine.Machine `json:"machines"`
	Count    int               `json:"count"`
}

// MachineDetail is the answer to GET /api/v1/machines/{id}: the machine,
// and how its current role boot joins its cluster (join.go).
type MachineDetail struct {
	machine.Machine
	Join *JoinStatus `json:"join,omitempty"`
}

// EventList is the answer to GET /api/v1/machines/{id}/events.
type EventList struct {
	Events []machine.Event `json:"events"`
}

// RegisterRequest registers a machine by MAC.
type RegisterRequest struct {
	MAC  string `json:"mac"`
	Name string `json:"name,omitempty"`
}

// RenameRequest changes a machine's name.
type RenameRequest struct {
	Name string `json:"name"`
}

// AssignRequest gives a machine a role.
type AssignRequest struct {
	Role string `json:"role"`
}

// RetireRequest decommissions a machine.
type RetireRequest struct {
	Reason string `json:"reason,omitempty"`
}

// names and roles are DNS-label-like so they fit hostnames and NetBox slugs.
var (
	nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	roleRE = nameRE
)

func (s *Server) listMachines(w http.ResponseWriter, r *http.Request) {
	var f events.Filter
	q := r.URL.Query()
	for k := range q {
		if k != "state" && k != "role" {
			writeError(w, errorf(http.StatusBadRequest, CodeBadRequest, "unknown query parameter %q (filters: state, role)", k))
			return
		}
	}
	if st := q.Get("state"); st != "" {
		state, err := machine.ParseState(st)
		if err != nil {
			writeError(w, errorf(http.StatusBadRequest, CodeInvalidValue, "state: %v", err))
			return
		}
		f.State = state
	}
	f.Role = q.Get("role")
	list := s.cfg.Machines.List(f)
	writeJSON(w, http.StatusOK, MachineList{Machines: list, Count: len(list)})
}

// pathID reads {id} in any MAC spelling.
func pathID(r *http.Request) (machine.ID, *Error) {
	raw := r.PathValue("id")
	id, err := machine.ParseID(raw)
	if err != nil {
		return "", errorf(http.StatusBadRequest, CodeInvalidMAC, "machine id: %v", err)
	}
	return id, nil
}

// known reads {id} and finds the machine.
func (s *Server) known(w http.ResponseWriter, r *http.Request) (machine.Machine, bool) {
	id, e := pathID(r)
	if e != nil {
		writeError(w, e)
		return machine.Machine{}, false
	}
	m, ok := s.cfg.Machines.Get(id)
	if !ok {
		writeError(w, errorf(http.StatusNotFound, CodeNotFound, "no machine %s (%s)", id, id.MAC()))
		return machine.Machine{}, false
	}
	return m, true
}

func (s *Server) getMachine(w http.ResponseWriter, r *http.Request) {
	if m, ok := s.known(w, r); ok {
		writeJSON(w, http.StatusOK, MachineDetail{Machine: m, Join: s.joinOf(m)})
	}
}

func (s *Server) registerMachine(w http.ResponseWriter, r *http.Request) {
	var req RegisterRequest
	if e := decodeBody(r, &req); e != nil {
		writeError(w, e)
		return
	}
	if req.MAC == "" {
		writeError(w, errorf(http.StatusBadRequest, CodeInvalidMAC, "mac is required, e.g. {\"mac\":\"52:54:00:12:34:56\"}"))
		return
	}
	id, err := machine.ParseID(req.MAC)
	if err != nil {
		writeError(w, errorf(http.StatusBadRequest, CodeInvalidMAC, "mac: %v", err))
		return
	}
	if req.Name != "" && !nameRE.MatchString(req.Name) {
		writeError(w, errorf(http.StatusBadRequest, CodeInvalidValue, "name %q: use lowercase letters, digits and '-', up to 63", req.Name))
		return
	}
	if owner, ok := s.cfg.Machines.LookupMAC(id); ok && owner.ID != id {
		writeError(w, errorf(http.StatusConflict, CodeExists, "MAC %s is a NIC of machine %s", id.MAC(), owner.ID))
		return
	}
	s.update(w, r, http.StatusCreated, id, func(m machine.Machine) (machine.Event, error) {
		if m.State != machine.Absent {
			return machine.Event{}, errorf(http.StatusConflict, CodeExists, "machine %s is already registered (state %s)", id, m.State)
		}
		return machine.NewEvent(id, machine.Discovered, source, machine.DiscoveredData{Via: "api", Name: req.Name})
	})
}

func (s *Server) renameMachine(w http.ResponseWriter, r *http.Request) {
	var req RenameRequest
	if e := decodeBody(r, &req); e != nil {
		writeError(w, e)
		return
	}
	if !nameRE.MatchString(req.Name) {
		writeError(w, errorf(http.StatusBadRequest, CodeInvalidValue, "name %q: use lowercase letters, digits and '-', up to 63", req.Name))
		return
	}
	s.updateKnown(w, r, func(m machine.Machine) (machine.Event, error) {
		return machine.NewEvent(m.ID, machine.Renamed, source, machine.RenamedData{Name: req.Name})
	})
}

func (s *Server) assignMachine(w http.ResponseWriter, r *http.Request) {
	var req AssignRequest
	if e := decodeBody(r, &req); e != nil {
		writeError(w, e)
		return
	}
	if !roleRE.MatchString(req.Role) {
		writeError(w, errorf(http.StatusBadRequest, CodeInvalidValue, "role %q: use lowercase letters, digits and '-', up to 63", req.Role))
		return
	}
	s.updateKnown(w, r, func(m machine.Machine) (machine.Event, error) {
		return machine.NewEvent(m.ID, machine.RoleAssigned, source, machine.RoleAssignedData{Role: req.Role, By: "operator"})
	})
}

func (s *Server) retireMachine(w http.ResponseWriter, r *http.Request) {
	var req RetireRequest
	if r.ContentLength != 0 {
		if e := decodeBody(r, &req); e != nil {
			writeError(w, e)
			return
		}
	}
	s.updateKnown(w, r, func(m machine.Machine) (machine.Event, error) {
		return machine.NewEvent(m.ID, machine.Retired, source, machine.RetiredData{Reason: req.Reason})
	})
}

// updateKnown appends to a machine that must exist.
func (s *Server) updateKnown(w http.ResponseWriter, r *http.Request, decide events.Decision) {
	m, ok := s.known(w, r)
	if !ok {
		return
	}
	s.update(w, r, http.StatusOK, m.ID, decide)
}

// update runs one decision through the store. An Idempotency-Key header
// becomes the event id, so a client that lost the answer can send the same
// request again and get the same event back instead of a second one.
func (s *Server) update(w http.ResponseWriter, r *http.Request, status int, id machine.ID, decide events.Decision) {
	key := r.Header.Get("Idempotency-Key")
	if key != "" {
		if len(key) > 128 {
			writeError(w, errorf(http.StatusBadRequest, CodeInvalidValue, "Idempotency-Key longer than 128 characters"))
			return
		}
		if _, known := s.cfg.Machines.Get(id); known {
			history, err := s.cfg.Machines.History(r.Context(), id)
			if err != nil {
				s.fail(w, r, err)
				return
			}
			for _, e := range history {
				if e.ID == key {
					m, _ := s.cfg.Machines.Get(id)
					writeJSON(w, status, WriteResult{Machine: m, Event: StoredEvent{ID: e.ID, Seq: e.Seq, Type: e.Type}})
					return
				}
			}
		}
		inner := decide
		decide = func(m machine.Machine) (machine.Event, error) {
			e, err := inner(m)
			e.ID = key
			return e, err
		}
	}
	m, e, err := s.cfg.Machines.Update(r.Context(), id, decide)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, status, WriteResult{Machine: m, Event: StoredEvent{ID: e.ID, Seq: e.Seq, Type: e.Type}})
}

func (s *Server) machineEvents(w http.ResponseWriter, r *http.Request) {
	m, ok := s.known(w, r)
	if !ok {
		return
	}
	history, err := s.cfg.Machines.History(r.Context(), m.ID)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if r.URL.Query().Get("telemetry") == "true" {
		t, err := s.cfg.Machines.Telemetry(r.Context(), m.ID)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		history = mergeByTime(history, t)
	}
	writeJSON(w, http.StatusOK, EventList{Events: history})
}

// mergeByTime interleaves lifecycle events and telemetry into one timeline.
func mergeByTime(a, b []machine.Event) []machine.Event {
	out := make([]machine.Event, 0, len(a)+len(b))
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		if j == len(b) || i < len(a) && !b[j].Time.Before(a[i].Time) {
			out = append(out, a[i])
			i++
		} else {
			out = append(out, b[j])
			j++
		}
	}
	return out
}
