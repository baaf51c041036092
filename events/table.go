package events

import (
	"cmp"
	"context"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/microdc/mdc/machine"
)

// Table is the in-memory machine table: the fold of the lifecycle stream,
// built by replay and kept current by following the stream. Reads take no
// I/O and are safe for any number of concurrent readers. Machines it returns
// share memory with the table: treat them as read-only.
type Table struct {
	mu     sync.RWMutex
	byID   map[machine.ID]machine.Machine
	byMAC  map[machine.ID]machine.ID // secondary MACs to the machine's id
	notify chan struct{}             // closed, and replaced, whenever applied moves

	applied atomic.Uint64
	log     *slog.Logger
	metrics *Metrics
}

// NewTable returns an empty table.
func NewTable(log *slog.Logger, m *Metrics) *Table {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Table{
		byID: map[machine.ID]machine.Machine{}, byMAC: map[machine.ID]machine.ID{},
		notify: make(chan struct{}), log: log, metrics: m,
	}
}

// Apply folds one stored event into the table. An event the fold refuses is
// logged and counted but still advances the applied sequence: the log is the
// truth, and one bad event must not stop the table.
func (t *Table) Apply(e machine.Event) {
	t.mu.Lock()
	old := t.byID[e.Machine]
	next, err := machine.Apply(old, e)
	if err != nil {
		t.log.Warn("event not applied", "machine", e.Machine, "type", e.Type, "seq", e.Seq, "err", err)
		t.metrics.rejectedEvent()
	} else {
		for _, mac := range old.ExtraMACs {
			if t.byMAC[mac] == e.Machine {
				delete(t.byMAC, mac)
			}
		}
		for _, mac := range next.ExtraMACs {
			t.byMAC[mac] = e.Machine
		}
		t.byID[e.Machine] = next
		t.metrics.stateChange(old.State, next.State)
	}
	if e.Seq > t.applied.Load() {
		t.applied.Store(e.Seq)
		close(t.notify)
		t.notify = make(chan struct{})
	}
	t.mu.Unlock()
}

// Get returns the machine with this id.
func (t *Table) Get(id machine.ID) (machine.Machine, bool) {
	t.mu.RLock()
	m, ok := t.byID[id]
	t.mu.RUnlock()
	return m, ok
}

// LookupMAC finds a machine by any of its MACs: its id, or another NIC
// reported in its facts or enrolment.
func (t *Table) LookupMAC(mac machine.ID) (machine.Machine, bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if m, ok := t.byID[mac]; ok {
		return m, true
	}
	if id, ok := t.byMAC[mac]; ok {
		m, ok := t.byID[id]
		return m, ok
	}
	return machine.Machine{}, false
}

// Filter selects machines; zero fields match everything.
type Filter struct {
	State machine.State
	Role  string
}

// List returns the machines that match f, ordered by id.
func (t *Table) List(f Filter) []machine.Machine {
	t.mu.RLock()
	out := make([]machine.Machine, 0, len(t.byID))
	for _, m := range t.byID {
		if (f.State == "" || m.State == f.State) && (f.Role == "" || m.Role == f.Role) {
			out = append(out, m)
		}
	}
	t.mu.RUnlock()
	slices.SortFunc(out, func(a, b machine.Machine) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// Len is the number of machines.
func (t *Table) Len() int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return len(t.byID)
}

// Applied is the newest stream sequence the table has folded.
func (t *Table) Applied() uint64 { return t.applied.Load() }

// WaitFor returns once the table has applied sequence seq, or ctx ends.
func (t *Table) WaitFor(ctx context.Context, seq uint64) error {
	for {
		t.mu.RLock()
		ch := t.notify
		t.mu.RUnlock()
		if t.applied.Load() >= seq {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
