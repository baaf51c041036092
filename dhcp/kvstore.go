package dhcp

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/nats-io/nats.go/jetstream"
)

// DefaultLeaseBucket is the JetStream KV bucket leases live in.
const DefaultLeaseBucket = "mdc_dhcp_leases"

// KVStore keeps leases in a JetStream key-value bucket, one key per address.
// Create and Update with a revision are JetStream's compare-and-swap, so two
// mdc instances on one NATS cannot both hold one address.
type KVStore struct {
	kv jetstream.KeyValue
}

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
	return &KVStore{kv: kv}, nil
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
	rev, err := s.kv.Create(ctx, leaseKey(l.Addr), encodeLease(l))
	if errors.Is(err, jetstream.ErrKeyExists) {
		return 0, fmt.Errorf("create lease %v: %w", l.Addr, ErrConflict)
	}
	if err != nil {
		return 0, fmt.Errorf("create lease %v: %w", l.Addr, err)
	}
	return rev, nil
}

// Update implements LeaseStore.
func (s *KVStore) Update(ctx context.Context, l Lease, rev uint64) (uint64, error) {
	n, err := s.kv.Update(ctx, leaseKey(l.Addr), encodeLease(l), rev)
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) {
		return 0, fmt.Errorf("update lease %v at revision %d: %w", l.Addr, rev, ErrConflict)
	}
	if err != nil {
		return 0, fmt.Errorf("update lease %v: %w", l.Addr, err)
	}
	return n, nil
}

// Watch implements LeaseStore.
func (s *KVStore) Watch(ctx context.Context, fn func(Lease, uint64), ready func()) error {
	w, err := s.kv.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("watch DHCP leases: %w", err)
	}
	defer w.Stop()
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
