// Package inventory is what mdc knows about its machines, as the rest of
// mdc asks for it: look a machine up, list machines, record what was
// learned about one. The embedded default is the event log and its
// projection (the machine table): nothing more to run. The NetBox backend
// (package inventory/netbox) keeps NetBox in step with the same log and
// reads the operator's intent back; the log stays the truth.
package inventory

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/microdc/mdc/events"
	"github.com/microdc/mdc/machine"
)

// ErrNotFound means no machine has that id or MAC.
var ErrNotFound = errors.New("no such machine")

// Inventory is the inventory as mdc's servers use it.
type Inventory interface {
	// Lookup finds a machine by its id or any of its MACs.
	Lookup(ctx context.Context, mac machine.ID) (machine.Machine, error)
	// List returns the machines matching f, ordered by id.
	List(ctx context.Context, f events.Filter) ([]machine.Machine, error)
	// RecordFacts stores what the commissioning agent reported.
	RecordFacts(ctx context.Context, id machine.ID, source string, f machine.Facts) (machine.Machine, error)
	// RecordState appends a state change (failed, retired, joined…).
	RecordState(ctx context.Context, id machine.ID, source string, t machine.EventType, data any) (machine.Machine, error)
}

// Store is what the embedded inventory needs of the event store.
type Store interface {
	LookupMAC(mac machine.ID) (machine.Machine, bool)
	List(f events.Filter) []machine.Machine
	Update(ctx context.Context, id machine.ID, decide events.Decision) (machine.Machine, machine.Event, error)
}

// Embedded is the default inventory: the projection and the log.
type Embedded struct{ store Store }

// NewEmbedded returns the inventory over an event store.
func NewEmbedded(s Store) *Embedded { return &Embedded{store: s} }

// Lookup implements Inventory.
func (e *Embedded) Lookup(ctx context.Context, mac machine.ID) (machine.Machine, error) {
	m, ok := e.store.LookupMAC(mac)
	if !ok {
		return machine.Machine{}, fmt.Errorf("look up %s: %w", mac.MAC(), ErrNotFound)
	}
	return m, nil
}

// List implements Inventory.
func (e *Embedded) List(ctx context.Context, f events.Filter) ([]machine.Machine, error) {
	return e.store.List(f), nil
}

// RecordFacts implements Inventory.
func (e *Embedded) RecordFacts(ctx context.Context, id machine.ID, source string, f machine.Facts) (machine.Machine, error) {
	return e.RecordState(ctx, id, source, machine.FactsReported, f)
}

// RecordState implements Inventory. The fold decides whether the event is
// allowed; an illegal one is refused with both states named.
func (e *Embedded) RecordState(ctx context.Context, id machine.ID, source string, t machine.EventType, data any) (machine.Machine, error) {
	m, _, err := e.store.Update(ctx, id, func(cur machine.Machine) (machine.Event, error) {
		if cur.State == machine.Absent && t != machine.Discovered && t != machine.Enrolled {
			return machine.Event{}, fmt.Errorf("record %s for %s: %w", t, id, ErrNotFound)
		}
		return machine.NewEvent(id, t, source, data)
	})
	return m, err
}

// SyncStatus is how far an external inventory is behind the log.
type SyncStatus struct {
	Backend        string    `json:"backend"`          // embedded, netbox
	Target         string    `json:"target,omitempty"` // where it syncs to (no credentials)
	Lag            uint64    `json:"lag"`              // events not yet applied
	LastAppliedSeq uint64    `json:"last_applied_seq"` // newest stream sequence applied
	Applied        uint64    `json:"applied"`          // events applied since start
	Failing        bool      `json:"failing"`          // the latest attempt failed
	LastError      string    `json:"last_error,omitempty"`
	LastErrorAt    time.Time `json:"last_error_at,omitzero"`
	Imported       uint64    `json:"imported"` // machines enrolled from the inventory's intent
	Resyncs        uint64    `json:"resyncs"`
}
