package policy

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/microdc/mdc/api/agentapi"
	"github.com/microdc/mdc/machine"
)

// Source is the lifecycle stream the engine replays (events.Store).
type Source interface {
	Follow(ctx context.Context, from uint64, filter string, fn func(machine.Event, uint64) error) error
}

// AssignedData is the data of a role_assigned event the policy appends:
// who decided (by "policy"), the rule, and the facts it was decided from.
// It decodes as machine.RoleAssignedData too.
type AssignedData struct {
	machine.RoleAssignedData
	Rule     string `json:"rule,omitempty"`
	Slot     int    `json:"slot,omitempty"`
	FactsSeq uint64 `json:"facts_seq,omitempty"`
}

// By is RoleAssignedData.By of the policy's assignments.
const By = "policy"

// Engine decides roles. It replays the lifecycle stream from its start and
// evaluates the policy at every facts_reported event, in stream order, with
// the places of "first" rules held by the machines before it. The decision
// for a machine's facts is thus a function of the log up to those facts
// alone: every mdc instance replaying the same log with the same policy
// decides the same, whatever order requests arrive in, so two instances
// never give a "first 3" rule a fourth machine.
//
// A machine's place in a "first" rule is given up when it is retired or an
// operator assigns it a role; a role_assigned by the policy recorded in the
// log is taken as the truth (a policy edited since may count differently).
type Engine struct {
	p   *Policy
	src Source
	log *slog.Logger

	mu      sync.Mutex
	applied uint64
	notify  chan struct{}
	holders map[string]map[machine.ID]bool // "first" rule → machines in it
	place   map[machine.ID]string          // machine → its "first" rule
	last    map[machine.ID]decided         // newest decision per machine
}

type decided struct {
	seq uint64
	d   Decision
}

// NewEngine returns an engine for p over src; Run feeds it.
func NewEngine(p *Policy, src Source, log *slog.Logger) *Engine {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Engine{p: p, src: src, log: log, notify: make(chan struct{}),
		holders: map[string]map[machine.ID]bool{}, place: map[machine.ID]string{}, last: map[machine.ID]decided{}}
}

// Policy returns the engine's policy.
func (e *Engine) Policy() *Policy { return e.p }

// Run replays the stream and follows it until ctx ends.
func (e *Engine) Run(ctx context.Context) error {
	return e.src.Follow(ctx, 1, "", func(ev machine.Event, _ uint64) error {
		e.Apply(ev)
		return nil
	})
}

// Apply takes one stored lifecycle event, in stream order.
func (e *Engine) Apply(ev machine.Event) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if ev.Seq != 0 && ev.Seq <= e.applied {
		return
	}
	switch ev.Type {
	case machine.FactsReported:
		var f machine.Facts
		if err := json.Unmarshal(ev.Data, &f); err != nil {
			e.log.Warn("role policy: undecodable facts", "machine", ev.Machine, "seq", ev.Seq, "err", err)
			break
		}
		e.release(ev.Machine)
		d := e.p.Evaluate(ev.Machine, f, func(rule string) int {
			n := len(e.holders[rule])
			if e.holders[rule][ev.Machine] {
				n--
			}
			return n
		})
		if d.Slot > 0 {
			e.hold(ev.Machine, d.Rule)
		}
		e.last[ev.Machine] = decided{seq: ev.Seq, d: d}
	case machine.RoleAssigned:
		var a AssignedData
		_ = json.Unmarshal(ev.Data, &a)
		e.release(ev.Machine)
		if a.By == By && e.isFirst(a.Rule) {
			e.hold(ev.Machine, a.Rule)
		}
	case machine.Enrolled:
		var d machine.EnrolledData
		if json.Unmarshal(ev.Data, &d) == nil && d.Role != "" {
			e.release(ev.Machine)
		}
	case machine.Retired:
		e.release(ev.Machine)
	}
	if ev.Seq > e.applied {
		e.applied = ev.Seq
		close(e.notify)
		e.notify = make(chan struct{})
	}
}

func (e *Engine) isFirst(rule string) bool {
	for _, r := range e.p.Rules {
		if r.Name == rule {
			return r.First > 0
		}
	}
	return false
}

func (e *Engine) hold(id machine.ID, rule string) {
	if e.holders[rule] == nil {
		e.holders[rule] = map[machine.ID]bool{}
	}
	e.holders[rule][id] = true
	e.place[id] = rule
}

func (e *Engine) release(id machine.ID) {
	if rule, ok := e.place[id]; ok {
		delete(e.holders[rule], id)
		delete(e.place, id)
	}
}

// Holders returns how many machines hold places of each "first" rule.
func (e *Engine) Holders() map[string]int {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := map[string]int{}
	for r, m := range e.holders {
		out[r] = len(m)
	}
	return out
}

// Decide returns the decision for machine id's facts stored at stream
// sequence factsSeq, once the replay has reached them. role "" holds the
// machine in ready; data is the role_assigned event's data otherwise.
func (e *Engine) Decide(ctx context.Context, id machine.ID, factsSeq uint64) (role string, data any, reason string, err error) {
	for {
		e.mu.Lock()
		applied, ch := e.applied, e.notify
		d, ok := e.last[id]
		e.mu.Unlock()
		if applied >= factsSeq {
			if !ok || d.seq < factsSeq {
				return "", nil, "", fmt.Errorf("role policy: no facts of %s at sequence %d", id, factsSeq)
			}
			if d.d.Role == "" {
				return "", nil, d.d.Reason, nil
			}
			return d.d.Role, AssignedData{
				RoleAssignedData: machine.RoleAssignedData{Role: d.d.Role, By: By, Reason: d.d.Reason},
				Rule:             d.d.Rule, Slot: d.d.Slot, FactsSeq: d.seq,
			}, d.d.Reason, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return "", nil, "", fmt.Errorf("role policy: replay has not reached sequence %d: %w", factsSeq, ctx.Err())
		}
	}
}

// Held is what the agent of a machine the policy holds does.
func (e *Engine) Held() agentapi.Action { return e.p.Held }

// RoleConfig is what the agent of m, booted into role, fetches.
func (e *Engine) RoleConfig(m machine.Machine, role string) (agentapi.RoleConfig, error) {
	s := e.p.Spec(role)
	c := agentapi.RoleConfig{
		Machine: m.ID, Name: m.Name, Role: role, Image: m.Image, Files: s.Files,
		Join:     agentapi.Join{Hook: s.Join, TimeoutSeconds: seconds(s.JoinTimeout)},
		Evidence: s.Evidence, Config: s.Config, HeartbeatSeconds: seconds(s.Heartbeat),
	}
	if c.Config == nil {
		c.Config = json.RawMessage("{}")
	}
	return c, nil
}

func seconds(d time.Duration) int { return max(1, int(d.Round(time.Second)/time.Second)) }
