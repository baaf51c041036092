package events

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/microdc/mdc/machine"
)

// ErrConflict means another writer moved the machine first: re-read it and
// decide again, or give up.
var ErrConflict = errors.New("the machine was changed by another writer")

// LogConfig shapes the streams.
type LogConfig struct {
	// Replicas for both streams (1 on an embedded server; 3 on a NATS cluster).
	Replicas int
	// TelemetryMaxAge is how long boot telemetry is kept.
	TelemetryMaxAge time.Duration
	Logger          *slog.Logger
	Metrics         *Metrics
}

// Log is the event log on JetStream.
type Log struct {
	js       jetstream.JetStream
	machines jetstream.Stream
	boot     jetstream.Stream
	log      *slog.Logger
	metrics  *Metrics
}

// OpenLog creates the streams if they are missing (or updates their limits)
// and returns the log.
func OpenLog(ctx context.Context, nc *nats.Conn, cfg LogConfig) (*Log, error) {
	if cfg.Replicas == 0 {
		cfg.Replicas = 1
	}
	if cfg.TelemetryMaxAge == 0 {
		cfg.TelemetryMaxAge = 7 * 24 * time.Hour
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	machines, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        MachineStream,
		Description: "mdc machine lifecycle events; the machines' state is their fold",
		Subjects:    []string{machinePrefix + "*.*"},
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
		DenyDelete:  true,
		DenyPurge:   true,
		Duplicates:  2 * time.Minute,
		AllowDirect: true, // History reads by direct get
	})
	if err != nil {
		return nil, fmt.Errorf("create stream %s: %w", MachineStream, err)
	}
	boot, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        BootStream,
		Description: "mdc boot telemetry: DHCP, TFTP, scripts, blobs, agent check-ins",
		Subjects:    []string{bootPrefix + "*.*"},
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
		MaxAge:      cfg.TelemetryMaxAge,
		Duplicates:  time.Minute,
		AllowDirect: true,
	})
	if err != nil {
		return nil, fmt.Errorf("create stream %s: %w", BootStream, err)
	}
	return &Log{js: js, machines: machines, boot: boot, log: cfg.Logger, metrics: cfg.Metrics}, nil
}

// Append stores a lifecycle event if the machine's newest event is still at
// stream sequence expect (0: the machine has no events). It returns the
// event's stream sequence. A retry of an event already stored (same id,
// within two minutes) returns the stored sequence and stores nothing.
func (l *Log) Append(ctx context.Context, e machine.Event, expect uint64) (uint64, error) {
	if !e.Type.Lifecycle() {
		return 0, fmt.Errorf("append %s: not a lifecycle event", e.Type)
	}
	b, err := Encode(e)
	if err != nil {
		return 0, fmt.Errorf("append %s: %w", e.Type, err)
	}
	msg := &nats.Msg{Subject: MachineSubject(e.Machine, e.Type), Data: b, Header: nats.Header{}}
	start := time.Now()
	ack, err := l.js.PublishMsg(ctx, msg,
		jetstream.WithMsgID(e.ID),
		jetstream.WithExpectLastSequenceForSubject(expect, MachineFilter(e.Machine)))
	if err != nil {
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
			l.metrics.conflict()
			return 0, fmt.Errorf("append %s to %s: %w", e.Type, e.Machine, ErrConflict)
		}
		return 0, fmt.Errorf("append %s to %s: %w", e.Type, e.Machine, err)
	}
	l.metrics.appended(e.Type, time.Since(start))
	return ack.Sequence, nil
}

// AppendTelemetry stores boot telemetry without waiting for the ack; a lost
// telemetry event costs a line of a boot timeline, never state.
func (l *Log) AppendTelemetry(e machine.Event) error {
	if !e.Type.Telemetry() {
		return fmt.Errorf("telemetry %s: not a telemetry event", e.Type)
	}
	b, err := Encode(e)
	if err != nil {
		return err
	}
	msg := &nats.Msg{Subject: BootSubject(e.Machine, e.Type), Data: b}
	if _, err := l.js.PublishMsgAsync(msg, jetstream.WithMsgID(e.ID)); err != nil {
		l.metrics.telemetryDropped()
		return fmt.Errorf("telemetry %s for %s: %w", e.Type, e.Machine, err)
	}
	l.metrics.appended(e.Type, 0)
	return nil
}

// LastSeq is the lifecycle stream's newest sequence (0 when empty).
func (l *Log) LastSeq(ctx context.Context) (uint64, error) {
	info, err := l.machines.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("stream %s info: %w", MachineStream, err)
	}
	return info.State.LastSeq, nil
}

// History reads one machine's lifecycle events from the stream, oldest first.
func (l *Log) History(ctx context.Context, id machine.ID) ([]machine.Event, error) {
	var out []machine.Event
	err := l.read(ctx, l.machines, MachineFilter(id), func(e machine.Event) { out = append(out, e) })
	if err != nil {
		return nil, fmt.Errorf("history of %s: %w", id, err)
	}
	return out, nil
}

// Telemetry reads one machine's boot telemetry still kept, oldest first.
func (l *Log) Telemetry(ctx context.Context, id machine.ID) ([]machine.Event, error) {
	var out []machine.Event
	err := l.read(ctx, l.boot, bootPrefix+string(id)+".*", func(e machine.Event) { out = append(out, e) })
	if err != nil {
		return nil, fmt.Errorf("telemetry of %s: %w", id, err)
	}
	return out, nil
}

// read delivers every stored message on filter, oldest first, by direct
// gets of the next message on the subject. A consumer per read would pile
// up on the server (they linger until inactive) under bursts of reads.
func (l *Log) read(ctx context.Context, s jetstream.Stream, filter string, fn func(machine.Event)) error {
	for seq := uint64(1); ; seq++ {
		msg, err := s.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(filter))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		seq = msg.Sequence
		e, err := Decode(msg.Data)
		if err != nil {
			l.log.Warn("skipping undecodable event", "subject", msg.Subject, "seq", seq, "err", err)
			continue
		}
		e.Seq = seq
		fn(e)
	}
}

// Follow calls fn for every lifecycle event from sequence from (1: all),
// waiting for new ones, until ctx ends or fn fails. pending is how many
// stored events fn has not seen yet: 0 means fn is caught up.
func (l *Log) Follow(ctx context.Context, from uint64, filter string, fn func(e machine.Event, pending uint64) error) error {
	cfg := jetstream.OrderedConsumerConfig{}
	if from > 1 {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, from
	}
	if filter != "" {
		cfg.FilterSubjects = []string{filter}
	}
	c, err := l.machines.OrderedConsumer(ctx, cfg)
	if ctx.Err() != nil {
		return nil
	}
	if err != nil {
		return fmt.Errorf("follow %s from %d: %w", MachineStream, from, err)
	}
	it, err := c.Messages(jetstream.PullMaxMessages(2048))
	if err != nil {
		return fmt.Errorf("follow %s from %d: %w", MachineStream, from, err)
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
			return fmt.Errorf("follow %s: %w", MachineStream, err)
		}
		e, err := decodeMsg(msg)
		if err != nil {
			l.log.Warn("skipping undecodable event", "subject", msg.Subject(), "err", err)
			continue
		}
		md, _ := msg.Metadata()
		var pending uint64
		if md != nil {
			pending = md.NumPending
		}
		if err := fn(e, pending); err != nil {
			return err
		}
	}
}

func decodeMsg(msg jetstream.Msg) (machine.Event, error) {
	e, err := Decode(msg.Data())
	if err != nil {
		return e, err
	}
	if md, err := msg.Metadata(); err == nil {
		e.Seq = md.Sequence.Stream
	}
	return e, nil
}
