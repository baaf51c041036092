package api

// Each machine's join as this mdc saw it: when the agent of its current
// role boot fetched its configuration, when it reported joined, what the
// role's cluster said at the last check. It is kept in memory only (it
// says how a join is going, the event log says what happened), so a
// restarted mdc knows a joined machine only by its state.

import (
	"errors"
	"strings"
	"time"

	"github.com/microdc/mdc/machine"
	"github.com/microdc/mdc/roles"
)

// Join states.
const (
	JoinConfiguring = "configuring" // the agent fetched its role configuration
	JoinWaiting     = "waiting"     // the node says joined; the cluster does not show it yet
	JoinConfirmed   = "confirmed"   // the cluster confirmed the node (this mdc asked)
	JoinFailed      = "failed"      // the cluster refused the node, or the join timed out
	JoinJoined      = "joined"      // the machine is joined; this mdc did not see the join
	JoinNodesWord   = "reported"    // the node says it joined; its role has no cluster to ask
)

// JoinStatus is how the current role boot of a machine joins its
// cluster. Reason is the cluster's own word (the role's Verify), never a
// secret.
type JoinStatus struct {
	State        string    `json:"state"`
	Role         string    `json:"role,omitempty"`
	ConfiguredAt time.Time `json:"configured_at,omitzero"`
	ReportedAt   time.Time `json:"reported_at,omitzero"` // the agent reported joined
	CheckedAt    time.Time `json:"checked_at,omitzero"`  // the cluster was last asked
	Checks       int       `json:"checks,omitempty"`
	Reason       string    `json:"reason,omitempty"` // why not yet, or why it failed
	ConfirmedAt  time.Time `json:"confirmed_at,omitzero"`
}

// joinEntry is a JoinStatus and the boot it is about.
type joinEntry struct {
	boot string // the boot token's hash
	st   JoinStatus
	// evidence is what the role configuration served to this boot asked
	// for; joined must carry it.
	evidence []string
}

// maxJoins bounds the join table; the oldest entries go first.
const maxJoins = 100000

// joinUpdate changes the join status of b's boot, starting it afresh for
// a new boot.
func (s *Server) joinUpdate(b agentBoot, fn func(e *joinEntry)) {
	s.agent.mu.Lock()
	defer s.agent.mu.Unlock()
	if s.agent.joins == nil {
		s.agent.joins = map[machine.ID]*joinEntry{}
	}
	e := s.agent.joins[b.m.ID]
	if e == nil || e.boot != b.token.TokenSHA256 {
		if e == nil && len(s.agent.joins) >= maxJoins {
			s.dropOldestJoinLocked()
		}
		e = &joinEntry{boot: b.token.TokenSHA256, st: JoinStatus{State: JoinConfiguring, Role: b.role}}
		s.agent.joins[b.m.ID] = e
	}
	fn(e)
}

func (s *Server) dropOldestJoinLocked() {
	var oldest machine.ID
	var at time.Time
	for id, e := range s.agent.joins {
		t := e.st.ConfiguredAt
		for _, u := range []time.Time{e.st.ReportedAt, e.st.CheckedAt} {
			if u.After(t) {
				t = u
			}
		}
		if oldest == "" || t.Before(at) {
			oldest, at = id, t
		}
	}
	delete(s.agent.joins, oldest)
}

// joinConfigured records that b's agent fetched its configuration, which
// asks for evidence.
func (s *Server) joinConfigured(b agentBoot, evidence []string) {
	s.joinUpdate(b, func(e *joinEntry) {
		if e.st.ConfiguredAt.IsZero() {
			e.st.ConfiguredAt = time.Now()
		}
		e.evidence = evidence
	})
}

// servedEvidence is the evidence the configuration served to b asked for;
// nil if this mdc served none (it restarted since).
func (s *Server) servedEvidence(b agentBoot) []string {
	s.agent.mu.Lock()
	defer s.agent.mu.Unlock()
	if e := s.agent.joins[b.m.ID]; e != nil && e.boot == b.token.TokenSHA256 {
		return e.evidence
	}
	return nil
}

func (s *Server) joinReported(b agentBoot) {
	s.joinUpdate(b, func(e *joinEntry) {
		j := &e.st
		if j.ReportedAt.IsZero() {
			j.ReportedAt = time.Now()
		}
		if j.State == JoinConfiguring {
			j.State = JoinWaiting
		}
	})
}

// joinChecked records one answer of the role's cluster.
func (s *Server) joinChecked(b agentBoot, confirmed bool, err error) {
	now := time.Now()
	s.joinUpdate(b, func(e *joinEntry) {
		j := &e.st
		j.CheckedAt = now
		j.Checks++
		switch {
		case errors.Is(err, roles.ErrNotYet):
			j.State, j.Reason = JoinWaiting, notYetReason(err)
		case err != nil:
			j.State, j.Reason = JoinFailed, clipText(err.Error())
		case confirmed && !s.hasCluster(j.Role):
			j.State, j.Reason = JoinNodesWord, ""
			if j.ConfirmedAt.IsZero() {
				j.ConfirmedAt = now
			}
		case confirmed:
			j.State, j.Reason = JoinConfirmed, ""
			if j.ConfirmedAt.IsZero() {
				j.ConfirmedAt = now
			}
		default:
			j.State, j.Reason = JoinWaiting, ""
		}
	})
}

// notYetReason is the cluster's reason without ErrNotYet's own words,
// which the state already says.
func notYetReason(err error) string {
	r := strings.Replace(err.Error(), roles.ErrNotYet.Error()+": ", "", 1)
	r = strings.Replace(r, ": "+roles.ErrNotYet.Error(), "", 1)
	return clipText(r)
}

// joinOf is m's join status: the one this mdc saw for its current boot,
// else what its state says.
func (s *Server) joinOf(m machine.Machine) *JoinStatus {
	s.agent.mu.Lock()
	e := s.agent.joins[m.ID]
	var j JoinStatus
	if e != nil {
		j = e.st
	}
	s.agent.mu.Unlock()
	switch {
	case e != nil && m.BootToken != "" && e.boot == m.BootToken:
		if m.State == machine.StJoined && j.State != JoinConfirmed && j.State != JoinNodesWord {
			j.State, j.Reason = JoinJoined, "" // confirmed by another mdc
		}
		return &j
	case e != nil && m.State == machine.StFailed && m.Failure != nil && m.Failure.In == machine.Running &&
		!m.Failure.At.Before(j.ConfiguredAt):
		// A failure ends the boot (and its token): this boot's join failed.
		j.State, j.Reason = JoinFailed, m.Failure.Reason
		return &j
	case m.State == machine.StJoined:
		return &JoinStatus{State: JoinJoined, Role: m.Role}
	}
	return nil
}

// hasCluster says whether mdc runs role's side (a cluster that confirms
// joins). Without RoleStatus it cannot tell, and says yes.
func (s *Server) hasCluster(role string) bool {
	rs := s.cfg.RoleStatus
	if rs == nil {
		return true
	}
	for _, n := range rs.Names() {
		if n == role {
			return true
		}
	}
	return false
}
