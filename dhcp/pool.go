package dhcp

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"
)

// errTaken: the address belongs to another client; the request gets a NAK.
var errTaken = errors.New("address belongs to another client")

// leaseCache is this instance's copy of the lease store, kept current by the
// store's watch and by its own writes. Reads and address choice happen here,
// in memory; only committing a lease (REQUEST, RELEASE, DECLINE) goes to the
// store, as a compare-and-swap on the address's record. Offers are held here
// only (RFC 2131 lets a server not commit at OFFER): a REQUEST for an address
// another instance committed meanwhile fails its CAS and is NAKed.
type leaseCache struct {
	store    LeaseStore
	server   string
	hold     time.Duration
	reserved map[netip.Addr]string // address -> the client it is reserved for

	mu       sync.Mutex
	byAddr   map[netip.Addr]cached
	byClient map[string]netip.Addr
	offers   map[netip.Addr]offerHold
	offerOf  map[string]netip.Addr // client -> the address held for it
	// holds lists offers in the order they were made; as every hold lasts
	// the same time, expired ones are at the front (O(1) per offer, where
	// scanning the map was O(offers) and dominated under load).
	holds    []heldAt
	holdHead int
	cursor   map[*Subnet]uint32
}

type heldAt struct {
	addr  netip.Addr
	until time.Time
}

type cached struct {
	lease Lease
	rev   uint64
}

type offerHold struct {
	client string
	until  time.Time
}

func newLeaseCache(store LeaseStore, server string, hold time.Duration, reserved map[netip.Addr]string) *leaseCache {
	return &leaseCache{
		store: store, server: server, hold: hold, reserved: reserved,
		byAddr:   make(map[netip.Addr]cached),
		byClient: make(map[string]netip.Addr),
		offers:   make(map[netip.Addr]offerHold),
		offerOf:  make(map[string]netip.Addr),
		cursor:   make(map[*Subnet]uint32),
	}
}

// apply records a lease seen in the store; older revisions are ignored, so
// the watch replaying our own writes is harmless.
func (c *leaseCache) apply(l Lease, rev uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.applyLocked(l, rev)
}

func (c *leaseCache) applyLocked(l Lease, rev uint64) {
	old, ok := c.byAddr[l.Addr]
	if ok && old.rev >= rev {
		return
	}
	if ok && old.lease.Client != l.Client && c.byClient[old.lease.Client] == l.Addr {
		delete(c.byClient, old.lease.Client)
	}
	c.byAddr[l.Addr] = cached{l, rev}
	if l.Client != "" {
		c.byClient[l.Client] = l.Addr
	}
	if h, ok := c.offers[l.Addr]; ok && h.client != l.Client {
		c.dropHold(l.Addr, h.client)
	}
}

// dropHold forgets the offer of a to client. Caller holds mu.
func (c *leaseCache) dropHold(a netip.Addr, client string) {
	delete(c.offers, a)
	if c.offerOf[client] == a {
		delete(c.offerOf, client)
	}
}

// expireHolds forgets offers whose hold ended. Caller holds mu.
func (c *leaseCache) expireHolds(now time.Time) {
	for ; c.holdHead < len(c.holds) && !now.Before(c.holds[c.holdHead].until); c.holdHead++ {
		a := c.holds[c.holdHead].addr
		if h, ok := c.offers[a]; ok && !now.Before(h.until) {
			c.dropHold(a, h.client)
		}
	}
	if c.holdHead > 1024 && c.holdHead > len(c.holds)/2 { // amortised O(1)
		c.holds = append(c.holds[:0], c.holds[c.holdHead:]...)
		c.holdHead = 0
	}
}

// usable reports whether client may be given a at now. Caller holds mu.
func (c *leaseCache) usable(a netip.Addr, client string, now time.Time) bool {
	if r, ok := c.reserved[a]; ok && r != client {
		return false
	}
	if e, ok := c.byAddr[a]; ok && e.lease.Client != client && e.lease.ActiveAt(now) {
		return false
	}
	if h, ok := c.offers[a]; ok && h.client != client && now.Before(h.until) {
		return false
	}
	return true
}

// offer picks an address for client in sn and holds it for the offer time:
// the client's reservation, else its current or last address (a machine
// keeps its address), else the address it asks for, else a never-used one,
// else one whose lease expired.
func (c *leaseCache) offer(sn *Subnet, client string, reserved, requested netip.Addr, now time.Time) (netip.Addr, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.expireHolds(now)
	pick := func(a netip.Addr) (netip.Addr, bool) {
		if old, ok := c.offerOf[client]; ok && old != a && c.offers[old].client == client {
			delete(c.offers, old) // one hold per client
		}
		until := now.Add(c.hold)
		c.offers[a] = offerHold{client, until}
		c.offerOf[client] = a
		c.holds = append(c.holds, heldAt{a, until})
		return a, true
	}
	if reserved.IsValid() {
		if c.usable(reserved, client, now) {
			return pick(reserved)
		}
		return netip.Addr{}, false
	}
	if a, ok := c.byClient[client]; ok && sn.inRange(a) && c.usable(a, client, now) {
		return pick(a)
	}
	if a, ok := c.offerOf[client]; ok && sn.inRange(a) && c.usable(a, client, now) {
		return pick(a) // a repeated DISCOVER gets the address already held
	}
	if requested.IsValid() && sn.inRange(requested) && c.usable(requested, client, now) {
		return pick(requested)
	}
	size := sn.size()
	start := c.cursor[sn]
	for i := uint32(0); i < size; i++ { // never used, from where we left off
		n := (start + i) % size
		a := sn.nth(n)
		if _, ok := c.byAddr[a]; ok {
			continue
		}
		if c.usable(a, client, now) {
			c.cursor[sn] = (n + 1) % size
			return pick(a)
		}
	}
	for i := uint32(0); i < size; i++ { // then expired or released ones
		a := sn.nth(i)
		if c.usable(a, client, now) {
			return pick(a)
		}
	}
	return netip.Addr{}, false
}

// lookup returns the record of a.
func (c *leaseCache) lookup(a netip.Addr) (Lease, uint64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.byAddr[a]
	return e.lease, e.rev, ok
}

// clientAddr returns the address client holds or held last.
func (c *leaseCache) clientAddr(client string) (netip.Addr, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	a, ok := c.byClient[client]
	return a, ok
}

// commit binds a to client until now+d with a compare-and-swap on a's record.
// errTaken means someone else holds it (here or in another instance).
func (c *leaseCache) commit(ctx context.Context, a netip.Addr, client string, d time.Duration, now time.Time) (Lease, error) {
	c.mu.Lock()
	if r, ok := c.reserved[a]; ok && r != client {
		c.mu.Unlock()
		return Lease{}, errTaken
	}
	e, have := c.byAddr[a]
	c.mu.Unlock()
	if have && e.lease.Client != client && e.lease.ActiveAt(now) {
		return Lease{}, errTaken
	}
	l := Lease{Addr: a, Client: client, State: LeaseBound, Expires: now.Add(d).Truncate(time.Second), Server: c.server}
	var rev uint64
	var err error
	if have {
		rev, err = c.store.Update(ctx, l, e.rev)
	} else {
		rev, err = c.store.Create(ctx, l)
	}
	if errors.Is(err, ErrConflict) {
		// Our copy was stale: read the record, and try once more if it is
		// still free for this client.
		cur, curRev, gerr := c.store.Get(ctx, a)
		if gerr != nil {
			return Lease{}, fmt.Errorf("commit %v after a conflict: %w", a, gerr)
		}
		c.apply(cur, curRev)
		if cur.Client != client && cur.ActiveAt(now) {
			return Lease{}, errTaken
		}
		rev, err = c.store.Update(ctx, l, curRev)
		if errors.Is(err, ErrConflict) {
			return Lease{}, errTaken
		}
	}
	if err != nil {
		return Lease{}, err
	}
	c.mu.Lock()
	c.applyLocked(l, rev)
	if h, ok := c.offers[a]; ok {
		c.dropHold(a, h.client)
	}
	c.mu.Unlock()
	return l, nil
}

// end marks client's lease on a released (state released, expired now) or
// declined (no client, held for hold). Nothing happens if client does not
// hold a.
func (c *leaseCache) end(ctx context.Context, a netip.Addr, client string, st LeaseState, hold time.Duration, now time.Time) error {
	cur, rev, ok := c.lookup(a)
	if !ok || cur.Client != client || !cur.ActiveAt(now) {
		return nil
	}
	l := Lease{Addr: a, Client: client, State: st, Expires: now, Server: c.server}
	if st == LeaseDeclined {
		l.Client = ""
		l.Expires = now.Add(hold)
	}
	n, err := c.store.Update(ctx, l, rev)
	if errors.Is(err, ErrConflict) {
		// Our copy was stale. A client sends RELEASE and DECLINE once and
		// never retries, so read the record and try again if the client
		// still holds the address.
		cur, curRev, gerr := c.store.Get(ctx, a)
		if gerr != nil {
			return fmt.Errorf("end lease %v after a conflict: %w", a, gerr)
		}
		c.apply(cur, curRev)
		if cur.Client != client || !cur.ActiveAt(now) {
			return nil
		}
		n, err = c.store.Update(ctx, l, curRev)
	}
	if err != nil {
		return err
	}
	c.apply(l, n)
	return nil
}

// stats counts the addresses of sn that are not free at now.
func (c *leaseCache) used(sn *Subnet, now time.Time) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for a, e := range c.byAddr {
		if sn.inRange(a) && e.lease.ActiveAt(now) {
			n++
		}
	}
	return n
}
