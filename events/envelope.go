// Package events keeps mdc's event log on NATS JetStream: machine lifecycle
// events (kept forever) and boot telemetry (kept for days), as CloudEvents 1.0
// JSON. It appends with per-machine optimistic concurrency, replays, follows,
// and keeps the in-memory machine table that the servers read.
package events

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/microdc/mdc/machine"
)

// Stream and subject names (DESIGN.md, "Events").
const (
	MachineStream = "MDC_MACHINES"
	BootStream    = "MDC_BOOT"
	machinePrefix = "mdc.machine."
	bootPrefix    = "mdc.boot."
	typePrefix    = "mdc.machine."
	specVersion   = "1.0"
)

// MachineSubject is the subject of a lifecycle event: mdc.machine.<id>.<event>.
func MachineSubject(id machine.ID, t machine.EventType) string {
	return machinePrefix + string(id) + "." + string(t)
}

// MachineFilter matches every lifecycle event of one machine.
func MachineFilter(id machine.ID) string { return machinePrefix + string(id) + ".*" }

// BootSubject is the subject of a telemetry event: mdc.boot.<id>.<event>.
func BootSubject(id machine.ID, t machine.EventType) string {
	return bootPrefix + string(id) + "." + string(t)
}

// envelope is a CloudEvents 1.0 structured-mode JSON event.
type envelope struct {
	SpecVersion     string          `json:"specversion"`
	ID              string          `json:"id"`
	Source          string          `json:"source"`
	Type            string          `json:"type"`
	Subject         string          `json:"subject"`
	Time            time.Time       `json:"time"`
	DataContentType string          `json:"datacontenttype,omitempty"`
	Data            json.RawMessage `json:"data,omitempty"`
}

// ErrBadEnvelope is wrapped by every decoding error.
var ErrBadEnvelope = errors.New("bad CloudEvents envelope")

// Encode renders e as a CloudEvents 1.0 JSON document.
func Encode(e machine.Event) ([]byte, error) {
	env := envelope{
		SpecVersion: specVersion,
		ID:          e.ID,
		Source:      e.Source,
		Type:        typePrefix + string(e.Type),
		Subject:     string(e.Machine),
		Time:        e.Time.UTC(),
		Data:        e.Data,
	}
	if len(e.Data) > 0 {
		env.DataContentType = "application/json"
	}
	return json.Marshal(env)
}

// Decode parses a CloudEvents 1.0 JSON document written by Encode. The stream
// sequence is the caller's to set.
func Decode(b []byte) (machine.Event, error) {
	var env envelope
	if err := json.Unmarshal(b, &env); err != nil {
		return machine.Event{}, fmt.Errorf("%w: %v", ErrBadEnvelope, err)
	}
	if env.SpecVersion != specVersion {
		return machine.Event{}, fmt.Errorf("%w: specversion %q, want %q", ErrBadEnvelope, env.SpecVersion, specVersion)
	}
	t, ok := strings.CutPrefix(env.Type, typePrefix)
	if !ok || t == "" {
		return machine.Event{}, fmt.Errorf("%w: type %q does not start with %q", ErrBadEnvelope, env.Type, typePrefix)
	}
	if env.ID == "" {
		return machine.Event{}, fmt.Errorf("%w: no id", ErrBadEnvelope)
	}
	id := machine.ID(env.Subject)
	if !id.Valid() {
		return machine.Event{}, fmt.Errorf("%w: subject %q is not a machine id", ErrBadEnvelope, env.Subject)
	}
	return machine.Event{
		ID: env.ID, Type: machine.EventType(t), Machine: id, Time: env.Time, Source: env.Source, Data: env.Data,
	}, nil
}
