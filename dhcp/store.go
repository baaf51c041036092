package dhcp

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"
)

// ErrConflict is returned by a LeaseStore when a compare-and-swap lost: the
// address was created or changed by someone else since the revision given.
var ErrConflict = errors.New("lease changed concurrently")

// LeaseState says what a lease record means.
type LeaseState string

// Lease states. A released or expired lease keeps its client so the client
// gets the same address back next time (stickiness).
const (
	LeaseBound    LeaseState = "bound"
	LeaseReleased LeaseState = "released"
	LeaseDeclined LeaseState = "declined" // someone else answers ARP for it
)

// Lease is one address's record. The store is keyed by address, so a
// compare-and-swap on the key is what makes an address belong to one client.
type Lease struct {
	Addr    netip.Addr `json:"addr"`
	Client  string     `json:"client"` // hex of chaddr
	State   LeaseState `json:"state"`
	Expires time.Time  `json:"expires"`
	Server  string     `json:"server,omitempty"` // the mdc instance that wrote it
}

// ActiveAt reports whether the lease still holds its address at t.
func (l Lease) ActiveAt(t time.Time) bool {
	return (l.State == LeaseBound || l.State == LeaseDeclined) && t.Before(l.Expires)
}

// LeaseStore persists leases with compare-and-swap. Create fails with
// ErrConflict when the address already has a record; Update fails with
// ErrConflict when rev is not the record's current revision. Watch calls fn
// for every record present (then ready once) and every later change, until
// ctx ends; it is how every instance keeps its in-memory copy current.
type LeaseStore interface {
	Get(ctx context.Context, addr netip.Addr) (Lease, uint64, error)
	Create(ctx context.Context, l Lease) (uint64, error)
	Update(ctx context.Context, l Lease, rev uint64) (uint64, error)
	Watch(ctx context.Context, fn func(l Lease, rev uint64), ready func()) error
}

// ErrNoLease is returned by LeaseStore.Get for an address without a record.
var ErrNoLease = errors.New("no lease for address")

// encodeLease writes the JSON of l. Every lease write and every watched
// change goes through this and decodeLease, so the common shape is done by
// hand (encoding/json cost a tenth of the CPU of a DORA); the output is
// byte for byte what json.Marshal gives, and anything unusual goes to it.
func encodeLease(l Lease) []byte {
	if !plainJSON(l.Client) || !plainJSON(string(l.State)) || !plainJSON(l.Server) || !l.Addr.Is4() ||
		l.Expires.Year() < 1000 || l.Expires.Year() > 9999 {
		b, _ := json.Marshal(l) // a Lease always marshals
		return b
	}
	b := make([]byte, 0, 96+len(l.Client)+len(l.Server))
	b = append(b, `{"addr":"`...)
	b = l.Addr.AppendTo(b)
	b = append(b, `","client":"`...)
	b = append(b, l.Client...)
	b = append(b, `","state":"`...)
	b = append(b, l.State...)
	b = append(b, `","expires":"`...)
	b = l.Expires.AppendFormat(b, time.RFC3339Nano)
	b = append(b, '"')
	if l.Server != "" {
		b = append(b, `,"server":"`...)
		b = append(b, l.Server...)
		b = append(b, '"')
	}
	return append(b, '}')
}

// plainJSON: s needs no escaping in a JSON string (json.Marshal also
// escapes <, > and &).
func plainJSON(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return false
		}
	}
	return true
}

func decodeLease(b []byte) (Lease, error) {
	l, ok := decodeLeaseFast(b)
	if !ok {
		if err := json.Unmarshal(b, &l); err != nil {
			return Lease{}, fmt.Errorf("decode lease: %w", err)
		}
	}
	if !l.Addr.Is4() {
		return Lease{}, fmt.Errorf("decode lease: address %v is not IPv4", l.Addr)
	}
	return l, nil
}

// decodeLeaseFast reads what encodeLease writes by hand; false: not that
// shape, use encoding/json.
func decodeLeaseFast(b []byte) (Lease, bool) {
	var l Lease
	// field reads "name":"value" and the ',' or '}' after it.
	field := func(name string) (v string, last, ok bool) {
		if len(b) < len(name)+4 || b[0] != '"' || string(b[1:1+len(name)]) != name || string(b[1+len(name):4+len(name)]) != `":"` {
			return "", false, false
		}
		b = b[4+len(name):]
		i := bytes.IndexByte(b, '"')
		if i < 0 || i+1 >= len(b) {
			return "", false, false
		}
		for _, c := range b[:i] { // escapes, control bytes, UTF-8: encoding/json
			if c < 0x20 || c >= 0x7f || c == '\\' {
				return "", false, false
			}
		}
		v, sep := string(b[:i]), b[i+1]
		b = b[i+2:]
		return v, sep == '}', sep == ',' || sep == '}'
	}
	if len(b) < 2 || b[0] != '{' {
		return l, false
	}
	b = b[1:]
	addr, last1, ok1 := field("addr")
	client, last2, ok2 := field("client")
	state, last3, ok3 := field("state")
	exp, last, ok4 := field("expires")
	if !ok1 || !ok2 || !ok3 || !ok4 || last1 || last2 || last3 {
		return l, false
	}
	if !last {
		srv, last, ok := field("server")
		if !ok || !last {
			return l, false
		}
		l.Server = srv
	}
	if len(b) != 0 {
		return l, false
	}
	var err error
	if l.Addr, err = netip.ParseAddr(addr); err != nil {
		return l, false
	}
	if err := l.Expires.UnmarshalText([]byte(exp)); err != nil {
		return l, false
	}
	l.Client, l.State = client, LeaseState(state)
	return l, true
}

// MemoryStore is a LeaseStore in memory, for a single instance that needs no
// persistence (and for fuzzing). Leases are lost on restart.
type MemoryStore struct {
	mu       sync.Mutex
	rev      uint64
	leases   map[netip.Addr]memEntry
	watchers []func(Lease, uint64)
}

type memEntry struct {
	lease Lease
	rev   uint64
}

// NewMemoryStore returns an empty MemoryStore.
func NewMemoryStore() *MemoryStore {
	return &MemoryStore{leases: make(map[netip.Addr]memEntry)}
}

// Get implements LeaseStore.
func (m *MemoryStore) Get(_ context.Context, addr netip.Addr) (Lease, uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.leases[addr]
	if !ok {
		return Lease{}, 0, fmt.Errorf("get lease %v: %w", addr, ErrNoLease)
	}
	return e.lease, e.rev, nil
}

// Create implements LeaseStore.
func (m *MemoryStore) Create(_ context.Context, l Lease) (uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.leases[l.Addr]; ok {
		return 0, fmt.Errorf("create lease %v: %w", l.Addr, ErrConflict)
	}
	return m.put(l), nil
}

// Update implements LeaseStore.
func (m *MemoryStore) Update(_ context.Context, l Lease, rev uint64) (uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e, ok := m.leases[l.Addr]; !ok || e.rev != rev {
		return 0, fmt.Errorf("update lease %v at revision %d: %w", l.Addr, rev, ErrConflict)
	}
	return m.put(l), nil
}

func (m *MemoryStore) put(l Lease) uint64 {
	m.rev++
	m.leases[l.Addr] = memEntry{l, m.rev}
	for _, w := range m.watchers {
		w(l, m.rev)
	}
	return m.rev
}

// Watch implements LeaseStore. fn is called with the store's lock held, so it
// must not call back into the store.
func (m *MemoryStore) Watch(ctx context.Context, fn func(Lease, uint64), ready func()) error {
	m.mu.Lock()
	for _, e := range m.leases {
		fn(e.lease, e.rev)
	}
	i := len(m.watchers)
	m.watchers = append(m.watchers, fn)
	m.mu.Unlock()
	ready()
	<-ctx.Done()
	m.mu.Lock()
	m.watchers[i] = func(Lease, uint64) {}
	m.mu.Unlock()
	return nil
}
