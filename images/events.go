package images

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// The catalog's stream and subjects: mdc.image.<name>.<event>, with the
// name's dots written as underscores (a NATS subject token has no dots;
// names have no underscores, so the mapping is one to one).
const (
	Stream        = "MDC_IMAGES"
	subjectPrefix = "mdc.image."
	typePrefix    = "mdc.image."
	specVersion   = "1.0"
)

// EventType names a catalog change.
type EventType string

// Catalog events, kept forever.
const (
	Imported EventType = "imported" // data: the Image
	Deleted  EventType = "deleted"  // data: DeletedData
)

// Event is one catalog change. It maps one to one onto a CloudEvents 1.0
// envelope, like a machine event.
type Event struct {
	ID     string          `json:"id"`
	Type   EventType       `json:"type"`
	Image  string          `json:"image"`
	Time   time.Time       `json:"time"`
	Source string          `json:"source"`
	Seq    uint64          `json:"seq,omitempty"`
	Data   json.RawMessage `json:"data,omitempty"`
}

// DeletedData says who removed an image from the catalog, and why.
type DeletedData struct {
	By     string `json:"by,omitempty"`
	Reason string `json:"reason,omitempty"`
}

// Subject is the subject of an image's event.
func Subject(name string, t EventType) string { return subjectPrefix + token(name) + "." + string(t) }

// filter matches every event of one image.
func filter(name string) string { return subjectPrefix + token(name) + ".*" }

func token(name string) string { return strings.ReplaceAll(name, ".", "_") }

// newEvent builds an event with a fresh id and the current time.
func newEvent(name string, t EventType, source string, data any) (Event, error) {
	var id [16]byte
	_, _ = rand.Read(id[:])
	e := Event{ID: hex.EncodeToString(id[:]), Type: t, Image: name, Time: time.Now().UTC(), Source: source}
	b, err := json.Marshal(data)
	if err != nil {
		return Event{}, fmt.Errorf("encode %s data: %w", t, err)
	}
	e.Data = b
	return e, nil
}

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

// Encode renders e as CloudEvents 1.0 JSON: type mdc.image.<event>,
// subject the image name.
func Encode(e Event) ([]byte, error) {
	env := envelope{SpecVersion: specVersion, ID: e.ID, Source: e.Source, Type: typePrefix + string(e.Type),
		Subject: e.Image, Time: e.Time.UTC(), Data: e.Data}
	if len(e.Data) > 0 {
		env.DataContentType = "application/json"
	}
	return json.Marshal(env)
}

// Decode parses what Encode wrote. The stream sequence is the caller's.
func Decode(b []byte) (Event, error) {
	var env envelope
	if err := json.Unmarshal(b, &env); err != nil {
		return Event{}, fmt.Errorf("%w: %v", ErrBadEnvelope, err)
	}
	if env.SpecVersion != specVersion {
		return Event{}, fmt.Errorf("%w: specversion %q, want %q", ErrBadEnvelope, clip(env.SpecVersion), specVersion)
	}
	t, ok := strings.CutPrefix(env.Type, typePrefix)
	if !ok || t == "" {
		return Event{}, fmt.Errorf("%w: type %q does not start with %q", ErrBadEnvelope, clip(env.Type), typePrefix)
	}
	if env.ID == "" {
		return Event{}, fmt.Errorf("%w: no id", ErrBadEnvelope)
	}
	if err := ValidName(env.Subject); err != nil {
		return Event{}, fmt.Errorf("%w: subject: %v", ErrBadEnvelope, err)
	}
	return Event{ID: env.ID, Type: EventType(t), Image: env.Subject, Time: env.Time, Source: env.Source, Data: env.Data}, nil
}
