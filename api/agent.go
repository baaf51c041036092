package api

// The agent API: what mdc-agent on a booted node calls (docs/agent.md,
// wire types in api/agentapi). Each request is authenticated by the
// machine's current boot token; only its SHA-256 is stored, in the event
// that started the boot (machine/boot.go). Each of facts, booted and joined
// is recorded at most once per boot, under an event id derived from the
// boot, so a retried request answers with the first one's event.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/microdc/mdc/api/agentapi"
	"github.com/microdc/mdc/machine"
	"github.com/microdc/mdc/roles"
)

// AgentConfig is the agent API's part of Config.
type AgentConfig struct {
	// Policy gives roles on facts and the role configuration agents fetch
	// (policy.Engine); nil holds every machine in ready.
	Policy Policy
	// Telemetry takes agent_seen (the log); nil: heartbeats are answered
	// but not recorded.
	Telemetry Telemetry
	// Heartbeat is how often agents of commissioning boots send heartbeats
	// (30 s); role boots use their role's setting.
	Heartbeat time.Duration
	// Timeout bounds the event log work of one request (15 s).
	Timeout time.Duration
	// Roles completes each role's configuration and confirms joins with
	// the role's cluster (package roles); nil: the policy's role specs
	// stand alone and a reported join is taken at its word.
	Roles Roles
	// VerifyInterval is how often a join the cluster does not confirm yet
	// is checked again (2 s).
	VerifyInterval time.Duration
	// BMCPowerCycles: mdc power-cycles machines with a BMC into their role
	// (cmd/mdc/power.go), so their agents wait instead of rebooting.
	BMCPowerCycles bool
}

// Policy is what the agent API needs of the role policy.
type Policy interface {
	// Decide returns the role for machine id after the facts stored at
	// stream sequence factsSeq: role "" holds it in ready (reason says
	// why); otherwise data is the role_assigned event's data.
	Decide(ctx context.Context, id machine.ID, factsSeq uint64) (role string, data any, reason string, err error)
	// Held is what the agent of a held machine does: wait or poweroff.
	Held() agentapi.Action
	// RoleConfig is what the agent of m, booted into role, fetches.
	RoleConfig(m machine.Machine, role string) (agentapi.RoleConfig, error)
}

// Roles is what the agent API needs of the roles mdc runs.
type Roles interface {
	// Configure completes c for machine m of role; report is what the node
	// sent with the request (its public keys, peer id). A role mdc does not
	// run leaves c as it is.
	Configure(ctx context.Context, m machine.Machine, role string, report map[string]string, c *agentapi.RoleConfig) error
	// Verify says whether the role's cluster confirms the node; false with
	// a nil error, or an error wrapping roles.ErrNotYet (which says why):
	// not yet. Any other error is why the join failed.
	Verify(ctx context.Context, m machine.Machine, role string, evidence map[string]string) (bool, error)
}

// Telemetry appends boot telemetry.
type Telemetry interface {
	AppendTelemetry(e machine.Event) error
}

// AgentSeenData is the data of agent_seen telemetry.
type AgentSeenData struct {
	Mode   agentapi.Mode `json:"mode"`
	Phase  string        `json:"phase,omitempty"`
	Status string        `json:"status,omitempty"`
	Uptime int64         `json:"uptime_seconds,omitempty"`
	Remote string        `json:"remote,omitempty"`
}

// agentSource is the CloudEvents source of what agents report; policy
// decisions are mdc/policy.
const (
	agentSource  = "mdc/agent"
	policySource = "mdc/policy"
)

// agentState caches each machine's current boot, keyed by the machine's
// newest lifecycle sequence, so heartbeats do not read the history.
type agentState struct {
	mu        sync.Mutex
	boots     map[machine.ID]bootInfo
	verifying map[string]bool           // boot starts (event ids) whose join is being confirmed
	joins     map[machine.ID]*joinEntry // join.go
}

// bootInfo is what a machine's history says about its boots.
type bootInfo struct {
	lastSeq uint64
	readAt  time.Time
	ok      bool                // a boot with a token is current
	start   machine.Event       // the event that started it
	token   machine.BootToken   // its token's hash
	earlier []machine.BootToken // hashes of earlier boots' tokens
	mode    agentapi.Mode
	role    string // role boots: the role booted
	image   string
}

func readBoot(history []machine.Event, lastSeq uint64) bootInfo {
	b := bootInfo{lastSeq: lastSeq}
	var starts []machine.Event
	for _, e := range history {
		if e.Type == machine.CommissioningStarted || e.Type == machine.ProvisioningStarted {
			starts = append(starts, e)
		}
	}
	b.token, b.ok = machine.CurrentBootToken(history)
	for i, e := range starts {
		tok, _ := machine.CurrentBootToken([]machine.Event{e})
		if b.ok && i == len(starts)-1 {
			b.start = e
			continue
		}
		if tok.TokenSHA256 != "" {
			b.earlier = append(b.earlier, tok)
		}
	}
	if b.ok {
		if b.start.Type == machine.CommissioningStarted {
			var d machine.ImageData
			_ = decodeData(b.start, &d)
			b.mode, b.image = agentapi.ModeCommissioning, d.Image
		} else {
			var d machine.ProvisioningStartedData
			_ = decodeData(b.start, &d)
			b.mode, b.role, b.image = agentapi.ModeRole, d.Role, d.Image
		}
	}
	return b
}

// agentBoot is an authenticated agent request.
type agentBoot struct {
	bootInfo
	m machine.Machine
}

func (s *Server) agentCfg() AgentConfig {
	c := s.cfg.Agent
	if c.Heartbeat == 0 {
		c.Heartbeat = 30 * time.Second
	}
	if c.Timeout == 0 {
		c.Timeout = 15 * time.Second
	}
	return c
}

// agentAuth checks the Mdc-Machine header and the boot token.
func (s *Server) agentAuth(w http.ResponseWriter, r *http.Request) (agentBoot, bool) {
	refuse := func(status int, code, format string, args ...any) (agentBoot, bool) {
		s.log.Warn("agent request refused", "path", r.URL.Path, "machine", r.Header.Get(agentapi.HeaderMachine),
			"remote", r.RemoteAddr, "code", code)
		writeError(w, errorf(status, code, format, args...))
		return agentBoot{}, false
	}
	h := r.Header.Get("Authorization")
	tok, ok := strings.CutPrefix(h, "Bearer ")
	if h == "" || !ok || tok == "" {
		return refuse(http.StatusUnauthorized, CodeUnauthorized,
			"the agent API needs this boot's machine token: Authorization: Bearer <mdc.token from the kernel command line>")
	}
	raw := r.Header.Get(agentapi.HeaderMachine)
	id, err := machine.ParseID(raw)
	if err != nil {
		return refuse(http.StatusUnauthorized, CodeUnauthorized, "header %s (mdc.machine): %v", agentapi.HeaderMachine, err)
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.agentCfg().Timeout)
	defer cancel()
	m, known := s.cfg.Machines.Get(id)
	m.ID = id
	b, fresh, err := s.bootOf(ctx, m, !known)
	if err == nil && (!b.ok || !b.token.Matches(tok)) {
		// The table may lag behind another mdc's boot script: read the log.
		b, fresh, err = s.bootOf(ctx, m, true)
	}
	if err != nil {
		s.fail(w, r, err)
		return agentBoot{}, false
	}
	if fresh != nil && fresh.LastSeq > m.LastSeq {
		m, known = *fresh, true
	}
	if !known {
		return refuse(http.StatusForbidden, agentapi.CodeNoBoot, "machine %s is not known to mdc", id)
	}
	if !b.ok {
		why := "it has not network-booted an image since its token was issued"
		switch m.State {
		case machine.StFailed:
			why = "it failed"
			if m.Failure != nil {
				why += ": " + m.Failure.Reason
			}
		case machine.StRetired:
			why = "it is retired"
		}
		return refuse(http.StatusForbidden, agentapi.CodeNoBoot, "machine %s has no current boot, so no token is valid for it (%s); its next network boot gets a new one", id, why)
	}
	if !b.token.Matches(tok) {
		for _, old := range b.earlier {
			if old.Matches(tok) {
				return refuse(http.StatusForbidden, agentapi.CodeStaleToken,
					"this token is from an earlier boot of machine %s; it has booted again since (%s at %s), and only the newest boot's token is valid",
					id, b.start.Type, b.start.Time.Format(time.RFC3339))
			}
		}
		return refuse(http.StatusForbidden, agentapi.CodeTokenRefused, "not the token of machine %s's current boot", id)
	}
	return agentBoot{bootInfo: b, m: m}, true
}

// bootOf returns m's boot, from the cache unless m moved or fresh is set;
// when it read the log it also returns the machine as the log has it. A
// fresh read is done at most once a second per machine, so that requests
// with wrong tokens cannot make mdc read the log at their pace.
func (s *Server) bootOf(ctx context.Context, m machine.Machine, fresh bool) (bootInfo, *machine.Machine, error) {
	s.agent.mu.Lock()
	b, ok := s.agent.boots[m.ID]
	s.agent.mu.Unlock()
	if ok && b.lastSeq >= m.LastSeq && (!fresh || time.Since(b.readAt) < time.Second) {
		return b, nil, nil
	}
	history, err := s.cfg.Machines.History(ctx, m.ID)
	if err != nil {
		return bootInfo{}, nil, err
	}
	var last uint64
	if n := len(history); n > 0 {
		last = history[n-1].Seq
	}
	b = readBoot(history, last)
	b.readAt = time.Now()
	s.agent.mu.Lock()
	if s.agent.boots == nil {
		s.agent.boots = map[machine.ID]bootInfo{}
	}
	s.agent.boots[m.ID] = b
	s.agent.mu.Unlock()
	if len(history) == 0 {
		return b, nil, nil
	}
	folded, _ := machine.Fold(history) // as far as the fold goes, like the table
	return b, &folded, nil
}

// eventID is the id of the one event of type t a boot may record: a
// retried request finds it and appends nothing.
func (b bootInfo) eventID(t machine.EventType) string {
	sum := sha256.Sum256([]byte("mdc-agent\x00" + b.token.TokenSHA256 + "\x00" + string(t)))
	return hex.EncodeToString(sum[:16])
}

func (s *Server) wantMode(w http.ResponseWriter, b agentBoot, want agentapi.Mode, what string) bool {
	if b.mode == want {
		return true
	}
	writeError(w, errorf(http.StatusConflict, agentapi.CodeWrongMode,
		"%s is for %s boots; machine %s's current boot is a %s boot (%s)", what, want, b.m.ID, b.mode, b.start.Type))
	return false
}

// recordOnce appends the boot's one event of type t (made by mk from the
// machine as it is then), or finds it if an earlier attempt stored it.
func (s *Server) recordOnce(ctx context.Context, b agentBoot, t machine.EventType, source string,
	mk func(cur machine.Machine) (any, error)) (machine.Machine, machine.Event, error) {
	id := b.eventID(t)
	history, err := s.cfg.Machines.History(ctx, b.m.ID)
	if err != nil {
		return b.m, machine.Event{}, err
	}
	for _, e := range history {
		if e.ID == id {
			if err := s.waitTable(ctx, b.m.ID, e.Seq); err != nil {
				return b.m, e, err
			}
			m, _ := s.cfg.Machines.Get(b.m.ID)
			return m, e, nil
		}
	}
	// Decide on the machine as the log has it, not a table lagging behind
	// another mdc's write.
	if n := len(history); n > 0 {
		if err := s.waitTable(ctx, b.m.ID, history[n-1].Seq); err != nil {
			return b.m, machine.Event{}, err
		}
	}
	return s.cfg.Machines.Update(ctx, b.m.ID, func(cur machine.Machine) (machine.Event, error) {
		data, err := mk(cur)
		if err != nil {
			return machine.Event{}, err
		}
		e, err := machine.NewEvent(cur.ID, t, source, data)
		e.ID = id
		return e, err
	})
}

// waitTable waits until the table shows sequence seq of machine id.
func (s *Server) waitTable(ctx context.Context, id machine.ID, seq uint64) error {
	for {
		if m, ok := s.cfg.Machines.Get(id); ok && m.LastSeq >= seq {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func stored(e machine.Event) agentapi.Event {
	return agentapi.Event{ID: e.ID, Seq: e.Seq, Type: e.Type}
}

// Limits on what agents report: the events are kept forever.
const (
	maxDevices       = 256
	maxEvidence      = 32
	maxEvidenceKey   = 64
	maxEvidenceValue = 1024
	maxStatus        = 300
)

func (s *Server) agentFacts(w http.ResponseWriter, r *http.Request) {
	b, ok := s.agentAuth(w, r)
	if !ok || !s.wantMode(w, b, agentapi.ModeCommissioning, "facts") {
		return
	}
	var f machine.Facts
	if e := decodeBody(r, &f); e != nil {
		writeError(w, e)
		return
	}
	if len(f.Disks) > maxDevices || len(f.NICs) > maxDevices {
		writeError(w, errorf(http.StatusBadRequest, CodeInvalidValue, "more than %d disks or NICs", maxDevices))
		return
	}
	for _, n := range f.NICs {
		if _, err := machine.ParseID(n.MAC); err != nil {
			writeError(w, errorf(http.StatusBadRequest, CodeInvalidMAC, "NIC %s: %v", n.Name, err))
			return
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.agentCfg().Timeout)
	defer cancel()
	_, ev, err := s.recordOnce(ctx, b, machine.FactsReported, agentSource, func(machine.Machine) (any, error) { return f, nil })
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info("facts reported", "machine", b.m.ID, "vendor", f.Vendor, "product", f.Product, "cpus", f.CPUs,
		"memory", f.MemoryBytes, "disks", len(f.Disks), "nics", len(f.NICs), "boot_mode", f.BootMode)
	ans, err := s.nextStep(ctx, b, ev.Seq)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	ans.Event = ptr(stored(ev))
	writeJSON(w, http.StatusOK, ans)
}

func ptr[T any](v T) *T { return &v }

// errSkip: the machine moved on meanwhile; nothing to append.
var errSkip = errors.New("nothing to do")

// nextStep runs the policy for a ready machine of a commissioning boot
// (once per boot) and says what its agent does next.
func (s *Server) nextStep(ctx context.Context, b agentBoot, factsSeq uint64) (agentapi.Answer, error) {
	cfg := s.agentCfg()
	ans := agentapi.Answer{HeartbeatSeconds: seconds(cfg.Heartbeat)}
	m, _ := s.cfg.Machines.Get(b.m.ID)
	held := agentapi.ActionWait
	why := "mdc runs without a role policy (--role-policy): assign a role with mdc machines assign " + string(m.ID) + " ROLE"
	assigned := false
	if cfg.Policy != nil {
		held = cfg.Policy.Held()
	}
	if m.State == machine.Ready && cfg.Policy != nil && factsSeq != 0 {
		role, data, reason, err := cfg.Policy.Decide(ctx, m.ID, factsSeq)
		if err != nil {
			return ans, err
		}
		why = reason
		if role != "" {
			after, _, err := s.recordOnce(ctx, b, machine.RoleAssigned, policySource, func(cur machine.Machine) (any, error) {
				if cur.State != machine.Ready {
					return nil, errSkip
				}
				return data, nil
			})
			switch {
			case errors.Is(err, errSkip):
				m, _ = s.cfg.Machines.Get(m.ID)
			case err != nil:
				return ans, err
			default:
				s.log.Info("role assigned by policy", "machine", m.ID, "role", role, "reason", reason)
				m, assigned = after, true
			}
		}
	}
	switch m.State {
	case machine.Provisioning, machine.Running, machine.StJoined:
		ans.Action, ans.Role = agentapi.ActionReboot, m.Role
		ans.Reason = fmt.Sprintf("role %s: reboot into its image", m.Role)
		if cfg.BMCPowerCycles && m.BMC != nil && m.State == machine.Provisioning {
			ans.Action = agentapi.ActionWait
			ans.Reason = fmt.Sprintf("role %s: mdc power-cycles the machine into its image through its BMC", m.Role)
		}
		if assigned {
			ans.Reason += " (" + why + ")"
		}
	case machine.Ready:
		ans.Action, ans.Reason = held, why
	default:
		ans.Action, ans.Reason = agentapi.ActionWait, "machine is "+m.State.String()+": report facts first"
	}
	return ans, nil
}

func (s *Server) agentBooted(w http.ResponseWriter, r *http.Request) {
	b, ok := s.agentAuth(w, r)
	if !ok || !s.wantMode(w, b, agentapi.ModeRole, "booted") {
		return
	}
	var d machine.BootedData
	if e := decodeBody(r, &d); e != nil {
		writeError(w, e)
		return
	}
	if len(d.Image) > 200 || len(d.Kernel) > 200 {
		writeError(w, errorf(http.StatusBadRequest, CodeInvalidValue, "image and kernel are at most 200 characters"))
		return
	}
	if d.Image == "" {
		d.Image = b.image
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.agentCfg().Timeout)
	defer cancel()
	m, ev, err := s.recordOnce(ctx, b, machine.Booted, agentSource, func(machine.Machine) (any, error) { return d, nil })
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if d.Image != b.image {
		s.log.Warn("agent booted another image than mdc served", "machine", b.m.ID, "served", b.image, "booted", d.Image)
	}
	s.log.Info("role image booted", "machine", m.ID, "role", b.role, "image", d.Image, "kernel", d.Kernel)
	writeJSON(w, http.StatusOK, agentapi.Recorded{Event: stored(ev), State: m.State})
}

func (s *Server) roleConfig(ctx context.Context, b agentBoot, report map[string]string) (agentapi.RoleConfig, error) {
	c, err := s.policyConfig(b)
	if err != nil {
		return c, err
	}
	if rs := s.agentCfg().Roles; rs != nil {
		m := b.m
		m.Image = b.image
		if err := rs.Configure(ctx, m, b.role, report, &c); err != nil {
			return c, err
		}
	}
	return c, nil
}

// policyConfig is the policy's part of b's role configuration. The roles'
// part mints secrets and needs the node's report, so joined does not ask
// for it again: it checks the policy's evidence and what the configuration
// served to this boot asked for (servedEvidence).
func (s *Server) policyConfig(b agentBoot) (agentapi.RoleConfig, error) {
	m := b.m
	m.Image = b.image
	if p := s.agentCfg().Policy; p != nil {
		return p.RoleConfig(m, b.role)
	}
	return agentapi.RoleConfig{Machine: m.ID, Name: m.Name, Role: b.role, Image: b.image,
		Join: agentapi.Join{Hook: "/etc/mdc/join", TimeoutSeconds: 600}, Config: []byte("{}"), HeartbeatSeconds: 30}, nil
}

// Bounds of what a node reports with GET config (query parameters).
const (
	maxReport      = 16
	maxReportValue = 2048
)

var reportKeyRE = regexp.MustCompile(`^[a-z][a-z0-9_]{0,31}$`)

// readReport takes the query parameters of GET config: what the node
// tells its role about itself (public keys, peer ids), never secrets.
func readReport(r *http.Request) (map[string]string, *Error) {
	q := r.URL.Query()
	if len(q) > maxReport {
		return nil, errorf(http.StatusBadRequest, CodeInvalidValue, "%d report parameters, at most %d", len(q), maxReport)
	}
	report := make(map[string]string, len(q))
	for k, vs := range q {
		if !reportKeyRE.MatchString(k) {
			return nil, errorf(http.StatusBadRequest, CodeInvalidValue, "report key %q: want lowercase letters, digits and _, up to 32", clipText(k))
		}
		if len(vs) != 1 || len(vs[0]) > maxReportValue {
			return nil, errorf(http.StatusBadRequest, CodeInvalidValue, "report %s: want one value of at most %d bytes", k, maxReportValue)
		}
		report[k] = vs[0]
	}
	return report, nil
}

func (s *Server) agentConfig(w http.ResponseWriter, r *http.Request) {
	b, ok := s.agentAuth(w, r)
	if !ok || !s.wantMode(w, b, agentapi.ModeRole, "the role configuration") {
		return
	}
	report, e := readReport(r)
	if e != nil {
		writeError(w, e)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.agentCfg().Timeout)
	defer cancel()
	c, err := s.roleConfig(ctx, b, report)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.heard(r, b, agentapi.Heartbeat{Phase: agentapi.PhaseConfiguring})
	s.joinConfigured(b, c.Evidence)
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, c)
}

func (s *Server) agentJoined(w http.ResponseWriter, r *http.Request) {
	b, ok := s.agentAuth(w, r)
	if !ok || !s.wantMode(w, b, agentapi.ModeRole, "joined") {
		return
	}
	var d machine.JoinedData
	if e := decodeBody(r, &d); e != nil {
		writeError(w, e)
		return
	}
	if d.Role != "" && d.Role != b.role {
		writeError(w, errorf(http.StatusBadRequest, CodeInvalidValue, "role %q: this boot is of role %s", d.Role, b.role))
		return
	}
	d.Role = b.role
	if len(d.Evidence) > maxEvidence {
		writeError(w, errorf(http.StatusBadRequest, CodeInvalidValue, "evidence has %d entries, at most %d", len(d.Evidence), maxEvidence))
		return
	}
	for k, v := range d.Evidence {
		if k == "" || len(k) > maxEvidenceKey || len(v) > maxEvidenceValue {
			writeError(w, errorf(http.StatusBadRequest, CodeInvalidValue, "evidence %q: keys are 1 to %d characters, values at most %d", clipText(k), maxEvidenceKey, maxEvidenceValue))
			return
		}
	}
	c, err := s.policyConfig(b)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var missing []string
	for _, k := range append(c.Evidence, s.servedEvidence(b)...) {
		if d.Evidence[k] == "" && !slices.Contains(missing, k) {
			missing = append(missing, k)
		}
	}
	if len(missing) > 0 {
		writeError(w, errorf(http.StatusBadRequest, CodeInvalidValue, "role %s asks for evidence %s, which is missing", b.role, strings.Join(missing, ", ")))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.agentCfg().Timeout)
	defer cancel()
	s.joinReported(b)
	if rs := s.agentCfg().Roles; rs != nil {
		ok, err := rs.Verify(ctx, b.m, b.role, d.Evidence)
		s.joinChecked(b, ok, err)
		if errors.Is(err, roles.ErrNotYet) {
			ok, err = false, nil
		}
		switch {
		case err != nil:
			m, ev, ferr := s.joinFailed(ctx, b, err)
			if ferr != nil {
				s.fail(w, r, ferr)
				return
			}
			writeJSON(w, http.StatusOK, agentapi.Recorded{Event: stored(ev), State: m.State})
			return
		case !ok:
			// The node says it joined; the cluster does not show it yet.
			// Keep asking the cluster; the agent carries on heartbeating.
			s.verifyLater(b, d)
			m, _ := s.cfg.Machines.Get(b.m.ID)
			writeJSON(w, http.StatusOK, agentapi.Recorded{State: m.State})
			return
		}
	} else {
		s.joinChecked(b, true, nil) // no cluster to ask: the node's word
	}
	m, ev, err := s.recordOnce(ctx, b, machine.Joined, agentSource, func(machine.Machine) (any, error) { return d, nil })
	if err != nil {
		s.fail(w, r, err)
		return
	}
	keys := make([]string, 0, len(d.Evidence))
	for k := range d.Evidence {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	s.log.Info("node joined", "machine", m.ID, "role", b.role, "evidence", strings.Join(keys, ","))
	writeJSON(w, http.StatusOK, agentapi.Recorded{Event: stored(ev), State: m.State})
}

func (s *Server) agentHeartbeat(w http.ResponseWriter, r *http.Request) {
	b, ok := s.agentAuth(w, r)
	if !ok {
		return
	}
	var hb agentapi.Heartbeat
	if r.ContentLength != 0 {
		if e := decodeBody(r, &hb); e != nil {
			writeError(w, e)
			return
		}
	}
	s.heard(r, b, hb)
	cfg := s.agentCfg()
	ans := agentapi.Answer{Action: agentapi.ActionNone, Role: b.m.Role, HeartbeatSeconds: seconds(cfg.Heartbeat)}
	if b.mode == agentapi.ModeRole {
		if c, err := s.roleConfig(r.Context(), b, nil); err == nil {
			ans.HeartbeatSeconds = c.HeartbeatSeconds
		}
		if b.m.Role != b.role {
			ans.Action = agentapi.ActionReboot
			ans.Reason = fmt.Sprintf("the machine's role changed from %s to %s: reboot into the new role's image", b.role, b.m.Role)
		}
		writeJSON(w, http.StatusOK, ans)
		return
	}
	// A commissioning boot: held machines ask again, and get a role once
	// an operator (or an edited policy) gives one.
	ctx, cancel := context.WithTimeout(r.Context(), cfg.Timeout)
	defer cancel()
	var factsSeq uint64
	if b.m.State == machine.Ready {
		history, err := s.cfg.Machines.History(ctx, b.m.ID)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		id := b.eventID(machine.FactsReported)
		for _, e := range history {
			if e.ID == id {
				factsSeq = e.Seq
			}
		}
	}
	next, err := s.nextStep(ctx, b, factsSeq)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, next)
}

// heard records agent_seen telemetry.
func (s *Server) heard(r *http.Request, b agentBoot, hb agentapi.Heartbeat) {
	t := s.agentCfg().Telemetry
	if t == nil {
		return
	}
	d := AgentSeenData{Mode: b.mode, Phase: clipText(hb.Phase), Status: clipText(hb.Status), Uptime: hb.UptimeSeconds, Remote: remoteIP(r)}
	e, err := machine.NewEvent(b.m.ID, machine.AgentSeen, agentSource, d)
	if err == nil {
		err = t.AppendTelemetry(e)
	}
	if err != nil {
		s.log.Debug("agent_seen dropped", "machine", b.m.ID, "err", err)
	}
}

func clipText(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	if len(s) > maxStatus {
		return s[:maxStatus] + "…"
	}
	return s
}

func remoteIP(r *http.Request) string {
	i := strings.LastIndexByte(r.RemoteAddr, ':')
	if i < 0 {
		return r.RemoteAddr
	}
	return strings.Trim(r.RemoteAddr[:i], "[]")
}

func seconds(d time.Duration) int { return max(1, int(d.Round(time.Second)/time.Second)) }

// decodeData reads an event's data leniently.
func decodeData(e machine.Event, v any) error {
	if len(e.Data) == 0 {
		return nil
	}
	return json.Unmarshal(e.Data, v)
}

// joinFailed records that the role's cluster refused b's node.
func (s *Server) joinFailed(ctx context.Context, b agentBoot, why error) (machine.Machine, machine.Event, error) {
	reason := fmt.Sprintf("role %s: the cluster did not take the node: %v", b.role, why)
	s.log.Warn("join refused by the cluster", "machine", b.m.ID, "role", b.role, "err", why)
	return s.recordOnce(ctx, b, machine.Failed, agentSource, func(cur machine.Machine) (any, error) {
		if cur.State != machine.Running {
			return nil, errSkip
		}
		return machine.FailedData{Reason: reason}, nil
	})
}

// verifyLater asks the role's cluster again every VerifyInterval until it
// confirms b's node (joined), refuses it (failed), or the machine moves on
// (another boot, a timeout, an operator). One checker per boot.
func (s *Server) verifyLater(b agentBoot, d machine.JoinedData) {
	key := b.start.ID
	s.agent.mu.Lock()
	if s.agent.verifying == nil {
		s.agent.verifying = map[string]bool{}
	}
	if s.agent.verifying[key] {
		s.agent.mu.Unlock()
		return
	}
	s.agent.verifying[key] = true
	s.agent.mu.Unlock()
	every := s.agentCfg().VerifyInterval
	if every == 0 {
		every = 2 * time.Second
	}
	go func() {
		defer func() {
			s.agent.mu.Lock()
			delete(s.agent.verifying, key)
			s.agent.mu.Unlock()
		}()
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-s.feeds.Done():
				return
			case <-t.C:
			}
			m, ok := s.cfg.Machines.Get(b.m.ID)
			if !ok || m.State != machine.Running || m.BootToken != b.token.TokenSHA256 {
				return // moved on: another boot, failed by a timeout, retired
			}
			ctx, cancel := context.WithTimeout(s.feeds, s.agentCfg().Timeout)
			confirmed, verr := s.cfg.Agent.Roles.Verify(ctx, m, b.role, d.Evidence)
			s.joinChecked(b, confirmed, verr)
			if errors.Is(verr, roles.ErrNotYet) {
				confirmed, verr = false, nil
			}
			var err error
			switch {
			case verr != nil:
				_, _, err = s.joinFailed(ctx, b, verr)
			case confirmed:
				_, _, err = s.recordOnce(ctx, b, machine.Joined, agentSource, func(machine.Machine) (any, error) { return d, nil })
				if err == nil {
					s.log.Info("node joined: the cluster confirms it", "machine", m.ID, "role", b.role)
				}
			}
			cancel()
			switch {
			case errors.Is(err, errSkip):
				return
			case err != nil:
				s.log.Warn("recording the join check failed; trying again", "machine", m.ID, "err", err)
			case verr != nil || confirmed:
				return
			}
		}
	}()
}
