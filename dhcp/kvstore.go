package dhcp

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// DefaultLeaseBucket is the JetStream KV bucket leases live in.
const DefaultLeaseBucket = "mdc_dhcp_leases"

// KVStore keeps leases in a JetStream key-value bucket, one key per address.
// Create and Update with a revision are JetStream's compare-and-swap, so two
// mdc instances on one NATS cannot both hold one address.
//
// Writes are published asynchronously and each waits for its own
// acknowledgement, so the writes of concurrent requests share flushes and
// round trips to the server (group commit) while every caller still learns
// only after JetStream stored its record.
type KVStore struct {
	js  jetstream.JetStream
	kv  jetstream.KeyValue
	pre string // subject prefix of the bucket's keys
}

// writeTimeout bounds a write when the caller's context has no deadline (as
// jetstream's synchronous publish does).
const writeTimeout = 5 * time.Second

// NewKVStore opens (or creates) the lease bucket. History 1: only the
// current record of an address matters.
func NewKVStore(ctx context.Context, js jetstream.JetStream, bucket string) (*KVStore, error) {
	if bucket == "" {
		bucket = DefaultLeaseBucket
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      bucket,
		Description: "mdc DHCP leases, one key per IPv4 address",
		History:     1,
		Storage:     jetstream.FileStorage,
	})
	if err != nil {
		return nil, fmt.Errorf("open DHCP lease bucket %q: %w (is JetStream enabled on the NATS server?)", bucket, err)
	}
	return &KVStore{js: js, kv: kv, pre: "$KV." + kv.Bucket() + "."}, nil
}

// Keys are the dotted address: valid KV keys, readable with `nats kv get`.
func leaseKey(a netip.Addr) string { return a.String() }

// Get implements LeaseStore.
func (s *KVStore) Get(ctx context.Context, addr netip.Addr) (Lease, uint64, error) {
	e, err := s.kv.Get(ctx, leaseKey(addr))
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return Lease{}, 0, fmt.Errorf("get lease %v: %w", addr, ErrNoLease)
	}
	if err != nil {
		return Lease{}, 0, fmt.Errorf("get lease %v: %w", addr, err)
	}
	l, err := decodeLease(e.Value())
	if err != nil {
		return Lease{}, 0, fmt.Errorf("get lease %v: %w", addr, err)
	}
	return l, e.Revision(), nil
}

// Create implements LeaseStore.
func (s *KVStore) Create(ctx context.Context, l Lease) (uint64, error) {
	rev, err := s.put(ctx, l, 0)
	if errors.Is(err, ErrConflict) {
		// A deleted key (someone ran `nats kv del`) has a marker to write
		// over: jetstream's Create knows how.
		rev, err = s.kv.Create(ctx, leaseKey(l.Addr), encodeLease(l))
		if errors.Is(err, jetstream.ErrKeyExists) {
			return 0, fmt.Errorf("create lease %v: %w", l.Addr, ErrConflict)
		}
	}
	if err != nil {
		return 0, fmt.Errorf("create lease %v: %w", l.Addr, err)
	}
	return rev, nil
}

// Update implements LeaseStore.
func (s *KVStore) Update(ctx context.Context, l Lease, rev uint64) (uint64, error) {
	n, err := s.put(ctx, l, rev)
	if errors.Is(err, ErrConflict) {
		return 0, fmt.Errorf("update lease %v at revision %d: %w", l.Addr, rev, err)
	}
	if err != nil {
		return 0, fmt.Errorf("update lease %v: %w", l.Addr, err)
	}
	return n, nil
}

// put writes l if its key is at revision rev (0: absent), and returns once
// JetStream has stored it (written to its file, so it survives a kill of
// the process) or refused it.
func (s *KVStore) put(ctx context.Context, l Lease, rev uint64) (uint64, error) {
	m := &nats.Msg{Subject: s.pre + leaseKey(l.Addr), Data: encodeLease(l), Header: nats.Header{}}
	f, err := s.js.PublishMsgAsync(m, jetstream.WithExpectLastSequencePerSubject(rev))
	if err != nil {
		return 0, err
	}
	var timeout <-chan time.Time
	if _, ok := ctx.Deadline(); !ok {
		t := time.NewTimer(writeTimeout)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case ack := <-f.Ok():
		return ack.Sequence, nil
	case err := <-f.Err():
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
			return 0, ErrConflict
		}
		return 0, err
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-timeout:
		return 0, fmt.Errorf("no acknowledgement from JetStream in %v", writeTimeout)
	}
}

// Watch implements LeaseStore.
func (s *KVStore) Watch(ctx context.Context, fn func(Lease, uint64), ready func()) error {
	w, err := s.kv.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("watch DHCP leases: %w", err)
	}
	// Stop deletes the consumer with a request that waits for the API
	// timeout when NATS is gone; Serve must not wait for that.
	defer func() { go w.Stop() }()
	readyDone := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-w.Updates():
			if !ok {
				if ctx.Err() != nil {
					return nil
				}
				return errors.New("watch DHCP leases: watcher closed by the NATS client")
			}
			if e == nil { // end of the initial values
				if !readyDone {
					readyDone = true
					ready()
				}
				continue
			}
			if e.Operation() != jetstream.KeyValuePut {
				continue
			}
			l, err := decodeLease(e.Value())
			if err != nil {
				continue // not ours to judge; the CAS paths re-read it
			}
			fn(l, e.Revision())
		}
	}
}
