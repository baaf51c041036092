package main

// The timeout watcher: a machine stuck in commissioning or provisioning for
// longer than allowed becomes failed, with a reason that says what was last
// heard from it and where to look.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/microdc/mdc/api"
	"github.com/microdc/mdc/events"
	"github.com/microdc/mdc/machine"
)

// watchStore is what the watcher needs of the event store.
type watchStore interface {
	List(f events.Filter) []machine.Machine
	History(ctx context.Context, id machine.ID) ([]machine.Event, error)
	Telemetry(ctx context.Context, id machine.ID) ([]machine.Event, error)
	Update(ctx context.Context, id machine.ID, decide events.Decision) (machine.Machine, machine.Event, error)
}

// timeouts are the limits; 0 is none.
type timeouts struct {
	commissioning time.Duration // from commissioning_started until facts
	provisioning  time.Duration // from the role's first boot (or its assignment) until joined
}

type timeoutWatcher struct {
	store watchStore
	limit timeouts
	log   *slog.Logger
	now   func() time.Time
	every time.Duration

	mu     sync.Mutex
	phases map[machine.ID]phase // keyed by the machine's newest sequence
}

// phase is when a machine entered its current stage.
type phase struct {
	lastSeq uint64
	stage   string // commissioning, provisioning
	since   machine.Event
	image   string
	booted  time.Time // provisioning: when the role image last reported booted
}

func newTimeoutWatcher(store watchStore, limit timeouts, log *slog.Logger) *timeoutWatcher {
	shortest := limit.commissioning
	if shortest == 0 || limit.provisioning != 0 && limit.provisioning < shortest {
		shortest = limit.provisioning
	}
	// Check ten times per timeout, between every second and every 30 s.
	every := min(max(shortest/10, time.Second), 30*time.Second)
	return &timeoutWatcher{store: store, limit: limit, log: log, now: time.Now, every: every, phases: map[machine.ID]phase{}}
}

// Run checks every w.every until ctx ends.
func (w *timeoutWatcher) Run(ctx context.Context) error {
	if w.limit.commissioning == 0 && w.limit.provisioning == 0 {
		return nil
	}
	t := time.NewTicker(w.every)
	defer t.Stop()
	for {
		w.check(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// stageOf groups states into the stages that have a time limit.
func stageOf(s machine.State) string {
	switch s {
	case machine.Commissioning:
		return "commissioning"
	case machine.Provisioning, machine.Running:
		return "provisioning"
	}
	return ""
}

// check fails every machine over its stage's limit; it returns how many.
func (w *timeoutWatcher) check(ctx context.Context) int {
	failed := 0
	seen := map[machine.ID]bool{}
	for _, m := range w.store.List(events.Filter{}) {
		stage := stageOf(m.State)
		limit := w.limit.commissioning
		if stage == "provisioning" {
			limit = w.limit.provisioning
		}
		if stage == "" || limit == 0 {
			continue
		}
		seen[m.ID] = true
		ph, err := w.phaseOf(ctx, m)
		if err != nil {
			w.log.Warn("timeout watcher: history unreadable", "machine", m.ID, "err", err)
			continue
		}
		if ph.since.ID == "" || w.now().Sub(ph.since.Time) < limit {
			continue
		}
		reason := w.reason(ctx, m, ph, limit)
		sum := sha256.Sum256([]byte("mdc-timeout\x00" + string(m.ID) + "\x00" + ph.since.ID))
		_, _, err = w.store.Update(ctx, m.ID, func(cur machine.Machine) (machine.Event, error) {
			if cur.LastSeq != m.LastSeq {
				return machine.Event{}, errMoved // something happened meanwhile: look again next time
			}
			e, err := machine.NewEvent(m.ID, machine.Failed, "mdc/timeouts", machine.FailedData{Reason: reason})
			e.ID = hex.EncodeToString(sum[:16])
			return e, err
		})
		switch {
		case errors.Is(err, errMoved):
		case err != nil:
			w.log.Error("timeout watcher: could not fail a stuck machine", "machine", m.ID, "err", err)
		default:
			failed++
			w.log.Warn("machine timed out", "machine", m.ID, "stage", stage, "reason", reason)
		}
	}
	w.mu.Lock()
	for id := range w.phases {
		if !seen[id] {
			delete(w.phases, id)
		}
	}
	w.mu.Unlock()
	return failed
}

var errMoved = errors.New("the machine moved on")

// phaseOf finds when m entered its stage, from its history (cached until
// the machine changes).
func (w *timeoutWatcher) phaseOf(ctx context.Context, m machine.Machine) (phase, error) {
	w.mu.Lock()
	ph, ok := w.phases[m.ID]
	w.mu.Unlock()
	if ok && ph.lastSeq == m.LastSeq {
		return ph, nil
	}
	history, err := w.store.History(ctx, m.ID)
	if err != nil {
		return phase{}, err
	}
	ph = phase{lastSeq: m.LastSeq}
	var cur machine.Machine
	for _, e := range history {
		next, err := machine.Apply(cur, e)
		if err != nil {
			continue // the table skips it too
		}
		stage := stageOf(next.State)
		if stage != "" && stage != stageOf(cur.State) {
			ph.stage, ph.since, ph.booted = stage, e, time.Time{}
		}
		switch e.Type {
		case machine.CommissioningStarted, machine.ProvisioningStarted:
			ph.image = next.Image
		case machine.Booted:
			ph.booted = e.Time
		}
		cur = next
	}
	w.mu.Lock()
	w.phases[m.ID] = ph
	w.mu.Unlock()
	return ph, nil
}

// reason says what timed out, what was heard last, and where to look.
func (w *timeoutWatcher) reason(ctx context.Context, m machine.Machine, ph phase, limit time.Duration) string {
	now := w.now()
	var what string
	switch {
	case ph.stage == "commissioning":
		what = fmt.Sprintf("no facts %s after commissioning started", human(limit))
		if ph.image != "" {
			what += " (image " + ph.image + ")"
		}
	case m.State == machine.Running:
		what = fmt.Sprintf("role %s: booted %s ago but not joined %s after provisioning started", m.Role, human(now.Sub(ph.booted)), human(limit))
	case ph.image != "":
		what = fmt.Sprintf("role %s: image %s served but not booted %s after provisioning started", m.Role, ph.image, human(limit))
	default:
		what = fmt.Sprintf("role %s: no role image served %s after the role was assigned", m.Role, human(limit))
	}
	tel, err := w.store.Telemetry(ctx, m.ID)
	if err != nil || len(tel) == 0 {
		return what + "; last seen: nothing (no boot telemetry): check that it is powered on and boots from the network first"
	}
	last := tel[len(tel)-1]
	seen := fmt.Sprintf("; last seen: %s %s ago", describeTelemetry(last), human(now.Sub(last.Time)))
	if last.Time.Before(ph.since.Time) {
		return what + seen + ", before this stage began: check that it is powered on and boots from the network first"
	}
	return what + seen + hint(last)
}

// describeTelemetry is one telemetry event in a few words.
func describeTelemetry(e machine.Event) string {
	var d map[string]any
	_ = json.Unmarshal(e.Data, &d)
	str := func(k string) string {
		s, _ := d[k].(string)
		return s
	}
	parts := []string{string(e.Type)}
	switch e.Type {
	case machine.DHCPOffered, machine.DHCPAcked:
		parts = append(parts, str("addr"), str("bootfile"))
	case machine.TFTPServed:
		parts = append(parts, str("path"))
	case machine.ScriptServed:
		parts = append(parts, str("script")+" script")
	case machine.BlobServed:
		dg := str("digest")
		if len(dg) > 19 {
			dg = dg[:19] + "…"
		}
		parts = append(parts, dg)
		if n, ok := d["bytes"].(float64); ok {
			parts = append(parts, fmt.Sprintf("(%d MiB)", int64(n)>>20))
		}
	case machine.AgentSeen:
		var a api.AgentSeenData
		_ = json.Unmarshal(e.Data, &a)
		parts = append(parts, a.Phase)
		if a.Status != "" {
			parts = append(parts, "("+a.Status+")")
		}
	}
	return strings.Join(strings.Fields(strings.Join(parts, " ")), " ")
}

// hint says where a boot that stopped after e went wrong.
func hint(e machine.Event) string {
	switch e.Type {
	case machine.DHCPOffered, machine.DHCPAcked:
		// Not a boot client: the system it booted asking for its address.
		var d struct {
			Client string `json:"client"`
		}
		if json.Unmarshal(e.Data, &d) == nil && d.Client == "none" {
			return ": the system it booted got an address but its agent never reported; look at its console (mdc-agent in the image, mdc.url)"
		}
		return ": it got an address but loaded no boot program; check TFTP (--tftp-addr) and the firewall"
	case machine.TFTPServed:
		return ": it loaded iPXE but never asked for its boot script; check that it reaches mdc's HTTP port"
	case machine.ScriptServed:
		return ": it got its boot script but downloaded no kernel; check the image's blobs"
	case machine.BlobServed:
		return ": it downloaded the image but its agent never reported; look at its console (kernel, network driver, mdc-agent)"
	case machine.AgentSeen:
		return ": the agent runs but did not finish; its status says why"
	}
	return ""
}

// human prints a duration without trailing zero units: 15m, 1h30m, 42s.
func human(d time.Duration) string {
	d = d.Round(time.Second)
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
