package events

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"

	"github.com/microdc/mdc/machine"
)

// Store is the event log and the machine table that folds it: the one place
// lifecycle events are decided, checked and appended.
type Store struct {
	Log   *Log
	Table *Table

	ready  atomic.Bool
	readyC chan struct{}
	log    *slog.Logger
}

// NewStore joins a log and a table; Run keeps the table current.
func NewStore(l *Log, t *Table, log *slog.Logger) *Store {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Store{Log: l, Table: t, readyC: make(chan struct{}), log: log}
}

// Run replays the lifecycle stream into the table and follows it until ctx
// ends. The store is ready once the replay has reached the stream's end as
// it was when Run started.
func (s *Store) Run(ctx context.Context) error {
	last, err := s.Log.LastSeq(ctx)
	if err != nil {
		return err
	}
	from := s.Table.Applied() + 1
	if last < from {
		s.markReady()
	}
	return s.Log.Follow(ctx, from, "", func(e machine.Event, pending uint64) error {
		s.Table.Apply(e)
		s.Log.metrics.progress(e.Seq, pending)
		if e.Seq >= last {
			s.markReady()
		}
		return nil
	})
}

func (s *Store) markReady() {
	if s.ready.CompareAndSwap(false, true) {
		close(s.readyC)
	}
}

// Ready reports whether the initial replay is done.
func (s *Store) Ready() bool { return s.ready.Load() }

// WaitReady blocks until the initial replay is done or ctx ends.
func (s *Store) WaitReady(ctx context.Context) error {
	select {
	case <-s.readyC:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Decision looks at a machine (State Absent if unknown) and returns the event
// to append, or an error to give the caller unchanged.
type Decision func(m machine.Machine) (machine.Event, error)

// maxAttempts bounds the re-read-and-decide loop under contention.
const maxAttempts = 8

// Update decides one event for machine id, checks it against the fold,
// appends it with the per-machine check, and waits until the table shows
// it. When another writer got there first it re-reads the machine from the
// log and decides again, keeping the event id, so a retry never stores an
// event twice. It returns the machine after the event and the stored event.
func (s *Store) Update(ctx context.Context, id machine.ID, decide Decision) (machine.Machine, machine.Event, error) {
	cur, _ := s.Table.Get(id)
	var eventID string
	for attempt := 1; ; attempt++ {
		e, err := decide(cur)
		if err != nil {
			return cur, machine.Event{}, err
		}
		if e.Machine != id {
			return cur, machine.Event{}, fmt.Errorf("%w: decided an event for %s while updating %s", machine.ErrBadEvent, e.Machine, id)
		}
		if eventID == "" {
			eventID = e.ID
		}
		e.ID = eventID
		if _, err := machine.Apply(cur, e); err != nil {
			// A writer retrying an event whose ack was lost: once the table
			// has applied it, it is no longer a legal next event, but it is
			// stored, and that is success.
			if h, ok, herr := s.stored(ctx, id, eventID); herr == nil && ok {
				m, _ := s.Table.Get(id)
				return m, h, nil
			}
			return cur, machine.Event{}, err
		}
		seq, err := s.Log.Append(ctx, e, cur.LastSeq)
		if err == nil {
			e.Seq = seq
			if err := s.Table.WaitFor(ctx, seq); err != nil {
				return cur, e, fmt.Errorf("appended %s as sequence %d, but the machine table did not catch up: %w", e.Type, seq, err)
			}
			m, _ := s.Table.Get(id)
			return m, e, nil
		}
		if !errors.Is(err, ErrConflict) || attempt == maxAttempts {
			return cur, machine.Event{}, err
		}
		// Read the truth from the log: the table may lag behind another mdc.
		history, herr := s.Log.History(ctx, id)
		if herr != nil {
			return cur, machine.Event{}, herr
		}
		if h, ok := findEvent(history, eventID); ok { // an earlier attempt was stored after all
			if err := s.Table.WaitFor(ctx, h.Seq); err != nil {
				return cur, h, err
			}
			m, _ := s.Table.Get(id)
			return m, h, nil
		}
		if cur, err = machine.Fold(history); err != nil {
			return cur, machine.Event{}, fmt.Errorf("fold history of %s: %w", id, err)
		}
		s.log.Debug("append conflict, deciding again", "machine", id, "attempt", attempt)
	}
}

// stored finds event eventID in id's history, and waits for the table to
// have applied it.
func (s *Store) stored(ctx context.Context, id machine.ID, eventID string) (machine.Event, bool, error) {
	history, err := s.Log.History(ctx, id)
	if err != nil {
		return machine.Event{}, false, err
	}
	h, ok := findEvent(history, eventID)
	if !ok {
		return h, false, nil
	}
	return h, true, s.Table.WaitFor(ctx, h.Seq)
}

func findEvent(history []machine.Event, eventID string) (machine.Event, bool) {
	for _, h := range history {
		if h.ID == eventID {
			return h, true
		}
	}
	return machine.Event{}, false
}

// Get returns a machine from the table.
func (s *Store) Get(id machine.ID) (machine.Machine, bool) { return s.Table.Get(id) }

// LookupMAC finds a machine by any of its MACs.
func (s *Store) LookupMAC(mac machine.ID) (machine.Machine, bool) { return s.Table.LookupMAC(mac) }

// List returns the machines matching f, ordered by id.
func (s *Store) List(f Filter) []machine.Machine { return s.Table.List(f) }

// History reads one machine's lifecycle events from the log.
func (s *Store) History(ctx context.Context, id machine.ID) ([]machine.Event, error) {
	return s.Log.History(ctx, id)
}

// Telemetry reads one machine's boot telemetry from the log.
func (s *Store) Telemetry(ctx context.Context, id machine.ID) ([]machine.Event, error) {
	return s.Log.Telemetry(ctx, id)
}

// Follow streams lifecycle events from sequence from; see Log.Follow.
func (s *Store) Follow(ctx context.Context, from uint64, filter string, fn func(machine.Event, uint64) error) error {
	return s.Log.Follow(ctx, from, filter, fn)
}

// LastSeq is the newest lifecycle sequence stored.
func (s *Store) LastSeq(ctx context.Context) (uint64, error) { return s.Log.LastSeq(ctx) }
