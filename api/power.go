package api

import (
	"context"
	"net/http"

	"github.com/microdc/mdc/machine"
)

// BMCs is what the API needs of mdc's BMC side: enrolment, power and
// reprovisioning of machines with a BMC. Its errors are *Error values
// (NewError) or machine/events errors.
type BMCs interface {
	Enroll(ctx context.Context, req EnrollRequest) (EnrollResult, error)
	Power(ctx context.Context, id machine.ID, action string) (PowerResult, error)
	PowerStatus(ctx context.Context, id machine.ID) (PowerResult, error)
	Reprovision(ctx context.Context, id machine.ID) (WriteResult, error)
}

// EnrollRequest enrols a machine through its BMC. The password is kept in
// a 0600 file in mdc's data directory; events name only that file.
type EnrollRequest struct {
	BMC      string `json:"bmc"` // redfish://host[:port], redfishs://…, ipmi://host[:port]
	User     string `json:"bmc_user"`
	Password string `json:"bmc_password"`
	MAC      string `json:"mac,omitempty"` // the boot NIC; read through the BMC when empty (Redfish only)
	Name     string `json:"name,omitempty"`
	Role     string `json:"role,omitempty"`
}

// EnrollResult is the machine after enrolment and what was done to it.
type EnrollResult struct {
	Machine machine.Machine `json:"machine"`
	Created bool            `json:"created"` // false: it was enrolled before with the same settings
	Power   string          `json:"power"`   // the power action taken: on, cycle or none
}

// PowerRequest asks for a power action.
type PowerRequest struct {
	Action string `json:"action"` // on, off, cycle, soft
}

// PowerResult is a machine's power state as its BMC reports it.
type PowerResult struct {
	Machine machine.ID `json:"machine"`
	Action  string     `json:"action,omitempty"`
	Power   string     `json:"power"` // on, off or unknown
}

// Codes of BMC errors.
const (
	CodeNoBMC            = "no_bmc"
	CodeBMCUnreachable   = "bmc_unreachable"
	CodeBMCAuth          = "bmc_auth_failed"
	CodeBMCUnsupported   = "bmc_unsupported"
	CodeBMCBootNotHeld   = "bmc_boot_not_held"
	CodeBMCTimeout       = "bmc_timeout"
	CodeBMCFailed        = "bmc_failed"
	CodeMACNeeded        = "mac_needed"
	CodeBMCNotConfigured = "bmc_not_configured"
)

// NewError is an API error for the parts of mdc behind the API's interfaces.
func NewError(status int, code, format string, args ...any) *Error {
	return errorf(status, code, format, args...)
}

func (s *Server) bmcs(w http.ResponseWriter) (BMCs, bool) {
	if s.cfg.BMCs == nil {
		writeError(w, errorf(http.StatusServiceUnavailable, CodeBMCNotConfigured, "this mdc has no BMC side"))
		return nil, false
	}
	return s.cfg.BMCs, true
}

func (s *Server) enroll(w http.ResponseWriter, r *http.Request) {
	b, ok := s.bmcs(w)
	if !ok {
		return
	}
	var req EnrollRequest
	if e := decodeBody(r, &req); e != nil {
		writeError(w, e)
		return
	}
	switch {
	case req.BMC == "":
		writeError(w, errorf(http.StatusBadRequest, CodeInvalidValue, "bmc is required, e.g. redfish://10.0.0.5 or ipmi://10.0.0.5"))
		return
	case req.User == "":
		writeError(w, errorf(http.StatusBadRequest, CodeInvalidValue, "bmc_user is required"))
		return
	case req.Name != "" && !nameRE.MatchString(req.Name):
		writeError(w, errorf(http.StatusBadRequest, CodeInvalidValue, "name %q: use lowercase letters, digits and '-', up to 63", req.Name))
		return
	case req.Role != "" && !roleRE.MatchString(req.Role):
		writeError(w, errorf(http.StatusBadRequest, CodeInvalidValue, "role %q: use lowercase letters, digits and '-', up to 63", req.Role))
		return
	}
	if req.MAC != "" {
		if _, err := machine.ParseID(req.MAC); err != nil {
			writeError(w, errorf(http.StatusBadRequest, CodeInvalidMAC, "mac: %v", err))
			return
		}
	}
	res, err := b.Enroll(r.Context(), req)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	status := http.StatusOK
	if res.Created {
		status = http.StatusCreated
	}
	writeJSON(w, status, res)
}

func (s *Server) powerStatus(w http.ResponseWriter, r *http.Request) {
	s.onMachine(w, r, func(b BMCs, id machine.ID) (any, error) { return b.PowerStatus(r.Context(), id) })
}

func (s *Server) power(w http.ResponseWriter, r *http.Request) {
	if _, ok := s.bmcs(w); !ok {
		return
	}
	var req PowerRequest
	if e := decodeBody(r, &req); e != nil {
		writeError(w, e)
		return
	}
	switch req.Action {
	case "on", "off", "cycle", "soft":
	default:
		writeError(w, errorf(http.StatusBadRequest, CodeInvalidValue, "action %q: want on, off, cycle or soft", req.Action))
		return
	}
	s.onMachine(w, r, func(b BMCs, id machine.ID) (any, error) { return b.Power(r.Context(), id, req.Action) })
}

func (s *Server) reprovision(w http.ResponseWriter, r *http.Request) {
	s.onMachine(w, r, func(b BMCs, id machine.ID) (any, error) { return b.Reprovision(r.Context(), id) })
}

// onMachine runs one BMC-side call on the machine of the path and answers
// with its result.
func (s *Server) onMachine(w http.ResponseWriter, r *http.Request, call func(BMCs, machine.ID) (any, error)) {
	b, ok := s.bmcs(w)
	if !ok {
		return
	}
	m, ok := s.known(w, r)
	if !ok {
		return
	}
	res, err := call(b, m.ID)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}
