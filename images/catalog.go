package images

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/microdc/mdc/machine"
)

// InUseFunc names the users (machine ids) of an image; an image with users
// cannot be deleted. current says whether img is the newest image of its
// role, the one machines of that role boot.
type InUseFunc func(img Image, current bool) []string

// MachinesUsing is the InUseFunc mdc uses: a machine that is not retired
// uses the image its last boot named (machine.Image: the image name or the
// kernel's digest) and, through its role, its role's current image.
func MachinesUsing(list func() []machine.Machine) InUseFunc {
	return func(img Image, current bool) []string {
		var users []string
		for _, m := range list() {
			if m.State == machine.StRetired {
				continue
			}
			if m.Image != "" && (m.Image == img.Name || m.Image == img.Kernel.Digest.String()) ||
				current && m.Role != "" && m.Role == img.Role {
				users = append(users, string(m.ID))
			}
		}
		return users
	}
}

// CatalogConfig shapes the catalog's stream.
type CatalogConfig struct {
	Replicas int    // of the stream: 1 on an embedded server, 3 on a cluster
	Source   string // CloudEvents source of the events this catalog appends; default "mdc"
	InUse    InUseFunc
	Logger   *slog.Logger
}

// Catalog is the image catalog: the fold of the MDC_IMAGES stream, built by
// replay and kept current by following it (Run). Reads take no I/O.
type Catalog struct {
	js     jetstream.JetStream
	stream jetstream.Stream
	cfg    CatalogConfig
	log    *slog.Logger

	mu      sync.RWMutex
	byName  map[string]Image
	lastSeq map[string]uint64 // newest event per name, deleted names included
	notify  chan struct{}     // closed, and replaced, whenever applied moves
	applied atomic.Uint64

	ready  atomic.Bool
	readyC chan struct{}
}

// OpenCatalog creates the stream if it is missing (or updates it) and
// returns an empty catalog; Run fills it.
func OpenCatalog(ctx context.Context, nc *nats.Conn, cfg CatalogConfig) (*Catalog, error) {
	if cfg.Replicas == 0 {
		cfg.Replicas = 1
	}
	if cfg.Source == "" {
		cfg.Source = "mdc"
	}
	if cfg.InUse == nil {
		cfg.InUse = func(Image, bool) []string { return nil }
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	s, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        Stream,
		Description: "mdc image catalog: imports and deletions; the catalog is their fold",
		Subjects:    []string{subjectPrefix + "*.*"},
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
		DenyDelete:  true,
		DenyPurge:   true,
		Duplicates:  2 * time.Minute,
	})
	if err != nil {
		return nil, fmt.Errorf("create stream %s: %w", Stream, err)
	}
	return &Catalog{
		js: js, stream: s, cfg: cfg, log: cfg.Logger,
		byName: map[string]Image{}, lastSeq: map[string]uint64{}, notify: make(chan struct{}),
		readyC: make(chan struct{}),
	}, nil
}

// Run replays the stream into the catalog and follows it until ctx ends.
// The catalog is ready once the replay reached the stream's end as it was
// when Run started.
func (c *Catalog) Run(ctx context.Context) error {
	info, err := c.stream.Info(ctx)
	if err != nil {
		return fmt.Errorf("stream %s info: %w", Stream, err)
	}
	last := info.State.LastSeq
	from := c.applied.Load() + 1
	if last < from {
		c.markReady()
	}
	cfg := jetstream.OrderedConsumerConfig{}
	if from > 1 {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, from
	}
	cons, err := c.stream.OrderedConsumer(ctx, cfg)
	if ctx.Err() != nil {
		return nil
	}
	if err != nil {
		return fmt.Errorf("follow %s: %w", Stream, err)
	}
	it, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("follow %s: %w", Stream, err)
	}
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	defer it.Stop()
	for {
		msg, err := it.Next()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("follow %s: %w", Stream, err)
		}
		md, err := msg.Metadata()
		if err != nil {
			continue
		}
		e, err := Decode(msg.Data())
		e.Seq = md.Sequence.Stream
		if err != nil {
			c.log.Warn("skipping undecodable image event", "subject", msg.Subject(), "seq", e.Seq, "err", err)
		}
		c.apply(e, err == nil)
		if e.Seq >= last {
			c.markReady()
		}
	}
}

// apply folds one stored event. A bad event is logged and skipped but still
// advances the applied sequence: the log is the truth, one bad event must
// not stop the catalog.
func (c *Catalog) apply(e Event, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ok {
		if err := c.fold(e); err != nil {
			c.log.Warn("image event not applied", "image", e.Image, "type", e.Type, "seq", e.Seq, "err", err)
		}
		c.lastSeq[e.Image] = e.Seq
	}
	if e.Seq > c.applied.Load() {
		c.applied.Store(e.Seq)
		close(c.notify)
		c.notify = make(chan struct{})
	}
}

func (c *Catalog) fold(e Event) error {
	switch e.Type {
	case Imported:
		var img Image
		if err := json.Unmarshal(e.Data, &img); err != nil {
			return fmt.Errorf("imported data: %w", err)
		}
		if img.Name != e.Image {
			return fmt.Errorf("imported data names %q", img.Name)
		}
		img.Seq = e.Seq
		c.byName[e.Image] = img
	case Deleted:
		delete(c.byName, e.Image)
	default:
		// A newer mdc's event type: nothing this one folds.
	}
	return nil
}

func (c *Catalog) markReady() {
	if c.ready.CompareAndSwap(false, true) {
		close(c.readyC)
	}
}

// Ready reports whether the initial replay is done.
func (c *Catalog) Ready() bool { return c.ready.Load() }

// WaitReady blocks until the initial replay is done or ctx ends.
func (c *Catalog) WaitReady(ctx context.Context) error {
	select {
	case <-c.readyC:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Applied is the newest stream sequence folded.
func (c *Catalog) Applied() uint64 { return c.applied.Load() }

// waitFor returns once sequence seq is folded, or ctx ends.
func (c *Catalog) waitFor(ctx context.Context, seq uint64) error {
	for {
		c.mu.RLock()
		ch := c.notify
		c.mu.RUnlock()
		if c.applied.Load() >= seq {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Get returns the image of that name.
func (c *Catalog) Get(name string) (Image, bool) {
	c.mu.RLock()
	img, ok := c.byName[name]
	c.mu.RUnlock()
	return img.clone(), ok
}

// List returns the images of role (all when role is ""), by name.
func (c *Catalog) List(role string) []Image {
	c.mu.RLock()
	out := make([]Image, 0, len(c.byName))
	for _, img := range c.byName {
		if role == "" || img.Role == role {
			out = append(out, img.clone())
		}
	}
	c.mu.RUnlock()
	slices.SortFunc(out, func(a, b Image) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Current returns the image machines of role boot: the newest imported.
func (c *Catalog) Current(role string) (Image, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.current(role)
}

func (c *Catalog) current(role string) (Image, bool) {
	var best Image
	found := false
	for _, img := range c.byName {
		if img.Role == role && (!found || img.Seq > best.Seq) {
			best, found = img, true
		}
	}
	return best.clone(), found
}

// Usage says who uses an image and whether it is its role's current one.
type Usage struct {
	Current bool     `json:"current"`
	UsedBy  []string `json:"used_by,omitempty"`
}

// Usage of the image of that name.
func (c *Catalog) Usage(name string) (Usage, bool) {
	c.mu.RLock()
	img, ok := c.byName[name]
	cur, _ := c.current(img.Role)
	c.mu.RUnlock()
	if !ok {
		return Usage{}, false
	}
	u := Usage{Current: cur.Name == name}
	u.UsedBy = c.cfg.InUse(img, u.Current)
	slices.Sort(u.UsedBy)
	return u, true
}

// Add records img (its blobs already stored). An image of that name with
// the same content leaves the catalog as it is: Add returns it and added
// false, and appends nothing. Another content under that name is
// ErrExists. It returns once the catalog shows the change.
func (c *Catalog) Add(ctx context.Context, img Image) (Image, bool, error) {
	if !c.Ready() {
		return Image{}, false, ErrNotReady
	}
	if img.Created.IsZero() {
		img.Created = time.Now().UTC()
	}
	img.Seq = 0
	if err := img.validate(); err != nil {
		return Image{}, false, err
	}
	e, err := newEvent(img.Name, Imported, c.cfg.Source, img)
	if err != nil {
		return Image{}, false, err
	}
	var got Image
	added, err := c.append(ctx, e, func() error {
		old, ok := c.Get(img.Name)
		if !ok {
			return nil
		}
		if old.sameContent(img) {
			got = old
			return errUnchanged
		}
		return fmt.Errorf("%w: %s (kernel %s, %d initrd(s)); import under a new name, or delete it first",
			ErrExists, img.Name, old.Kernel.Digest, len(old.Initrds))
	})
	if err != nil {
		return Image{}, false, err
	}
	if !added {
		return got, false, nil
	}
	now, _ := c.Get(img.Name)
	return now, true, nil
}

// Delete removes an image from the catalog unless machines use it. Its
// blobs stay in the store (another image may share them).
func (c *Catalog) Delete(ctx context.Context, name string, d DeletedData) (Image, error) {
	if !c.Ready() {
		return Image{}, ErrNotReady
	}
	e, err := newEvent(name, Deleted, c.cfg.Source, d)
	if err != nil {
		return Image{}, err
	}
	var img Image
	_, err = c.append(ctx, e, func() error {
		var ok bool
		if img, ok = c.Get(name); !ok {
			return fmt.Errorf("%w: %s", ErrNotFound, name)
		}
		u, _ := c.Usage(name)
		if len(u.UsedBy) > 0 {
			why := "named by their last boot"
			if u.Current {
				why = "its role's current image, or named by their last boot"
			}
			return fmt.Errorf("%w: %s is used by %d machine(s) (%s): %s; retire them or import a newer %s image first",
				ErrInUse, name, len(u.UsedBy), why, strings.Join(u.UsedBy, ", "), img.Role)
		}
		return nil
	})
	return img, err
}

// errUnchanged stops append without an error: nothing to do.
var errUnchanged = errors.New("unchanged")

const maxAttempts = 8

// append decides against the catalog (check), then appends e if nothing
// changed the image meanwhile, and waits until the catalog shows it. When
// another writer got there first it catches up and decides again.
func (c *Catalog) append(ctx context.Context, e Event, check func() error) (bool, error) {
	b, err := Encode(e)
	if err != nil {
		return false, err
	}
	for attempt := 1; ; attempt++ {
		c.mu.RLock()
		expect := c.lastSeq[e.Image]
		c.mu.RUnlock()
		if err := check(); errors.Is(err, errUnchanged) {
			return false, nil
		} else if err != nil {
			return false, err
		}
		msg := &nats.Msg{Subject: Subject(e.Image, e.Type), Data: b}
		ack, err := c.js.PublishMsg(ctx, msg, jetstream.WithMsgID(e.ID),
			jetstream.WithExpectLastSequenceForSubject(expect, filter(e.Image)))
		if err == nil {
			if err := c.waitFor(ctx, ack.Sequence); err != nil {
				return true, fmt.Errorf("appended %s of %s as sequence %d, but the catalog did not catch up: %w", e.Type, e.Image, ack.Sequence, err)
			}
			return true, nil
		}
		var apiErr *jetstream.APIError
		if !errors.As(err, &apiErr) || (apiErr.ErrorCode != jetstream.JSErrCodeStreamWrongLastSequence &&
			apiErr.ErrorCode != jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
			return false, fmt.Errorf("append %s of %s: %w", e.Type, e.Image, err)
		}
		if attempt == maxAttempts {
			return false, fmt.Errorf("append %s of %s: %w", e.Type, e.Image, ErrConflict)
		}
		// Another writer (maybe another mdc) moved the image: catch up.
		info, err := c.stream.Info(ctx)
		if err != nil {
			return false, fmt.Errorf("stream %s info: %w", Stream, err)
		}
		if err := c.waitFor(ctx, info.State.LastSeq); err != nil {
			return false, err
		}
	}
}

// History reads an image's events from the stream, oldest first.
func (c *Catalog) History(ctx context.Context, name string) ([]Event, error) {
	cons, err := c.stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{filter(name)}})
	if err != nil {
		return nil, fmt.Errorf("history of %s: %w", name, err)
	}
	var out []Event
	for {
		batch, err := cons.FetchNoWait(500)
		if err != nil {
			return nil, fmt.Errorf("history of %s: %w", name, err)
		}
		n := 0
		for msg := range batch.Messages() {
			n++
			e, err := Decode(msg.Data())
			if err != nil {
				continue
			}
			if md, err := msg.Metadata(); err == nil {
				e.Seq = md.Sequence.Stream
			}
			out = append(out, e)
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			return nil, fmt.Errorf("history of %s: %w", name, err)
		}
		if n == 0 {
			slices.SortFunc(out, func(a, b Event) int { return cmp.Compare(a.Seq, b.Seq) })
			return out, nil
		}
	}
}
