package api

import (
	"context"
	"net/http"
	"time"
)

// Inventory is what the API needs of an external inventory kept in step
// with the event log (NetBox): how far behind it is, and a full replay.
type Inventory interface {
	Status(ctx context.Context) InventoryStatus
	Resync(ctx context.Context) error
}

// InventoryStatus is the answer to GET /api/v1/inventory/status.
type InventoryStatus struct {
	Backend        string    `json:"backend"`          // embedded, netbox
	Target         string    `json:"target,omitempty"` // where it syncs to, without credentials
	Lag            uint64    `json:"lag"`              // lifecycle events not yet applied
	LastAppliedSeq uint64    `json:"last_applied_seq"`
	Applied        uint64    `json:"applied"` // events applied since mdc started
	Failing        bool      `json:"failing"` // the latest attempt failed
	LastError      string    `json:"last_error,omitempty"`
	LastErrorAt    time.Time `json:"last_error_at,omitzero"`
	Imported       uint64    `json:"imported"` // machines enrolled from the inventory's intent
	Resyncs        uint64    `json:"resyncs"`
}

func (s *Server) inventoryStatus(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Inventory == nil {
		// The event log and the machine table are the inventory: never behind.
		writeJSON(w, http.StatusOK, InventoryStatus{Backend: "embedded"})
		return
	}
	writeJSON(w, http.StatusOK, s.cfg.Inventory.Status(r.Context()))
}

func (s *Server) inventoryResync(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Inventory == nil {
		writeError(w, errorf(http.StatusConflict, CodeConflict,
			"mdc keeps its inventory in the event log only; resync replays the log into an external inventory (mdc serve --netbox-url)"))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	if err := s.cfg.Inventory.Resync(ctx); err != nil {
		writeError(w, errorf(http.StatusServiceUnavailable, CodeUnavailable, "resync did not start: %v", err))
		return
	}
	writeJSON(w, http.StatusAccepted, s.cfg.Inventory.Status(r.Context()))
}
