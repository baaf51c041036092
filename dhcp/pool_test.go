package dhcp

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"
)

// Offers are held in memory only: a client asking again gets the address
// already held for it, no one else gets a held address until the hold ends,
// and ended holds are forgotten.
func TestOfferHolds(t *testing.T) {
	sn := testSubnet() // 10 addresses
	if err := sn.validate(); err != nil {
		t.Fatal(err)
	}
	c := newLeaseCache(NewMemoryStore(), "mdc-a", 30*time.Second, nil)
	t0 := time.Now()
	none := netip.Addr{}

	a1, ok := c.offer(&sn, "c1", none, none, t0)
	if !ok {
		t.Fatal("no offer for c1")
	}
	if again, _ := c.offer(&sn, "c1", none, none, t0.Add(time.Second)); again != a1 {
		t.Errorf("c1 asked again and was offered %v, want the held %v", again, a1)
	}
	// c2 asks for c1's held address and gets another one.
	if a2, ok := c.offer(&sn, "c2", none, a1, t0.Add(time.Second)); !ok || a2 == a1 {
		t.Errorf("c2 was offered %v (%v), the address held for c1", a2, ok)
	}
	// Eight more clients take the rest of the pool; the eleventh gets none.
	for i := 3; i <= 10; i++ {
		if _, ok := c.offer(&sn, fmt.Sprint("c", i), none, none, t0.Add(2*time.Second)); !ok {
			t.Fatalf("client %d: no offer with the pool not yet empty", i)
		}
	}
	if a, ok := c.offer(&sn, "c11", none, none, t0.Add(2*time.Second)); ok {
		t.Errorf("c11 was offered %v from a pool whose every address is held", a)
	}
	// Once the holds end (c1's was renewed at t0+1s) the addresses are free
	// again and the bookkeeping is gone.
	later := t0.Add(33 * time.Second)
	if _, ok := c.offer(&sn, "c11", none, a1, later); !ok {
		t.Error("c11: no offer after every hold ended")
	}
	if len(c.offers) != 1 || len(c.offerOf) != 1 {
		t.Errorf("after the holds ended %d offers and %d clients are held, want 1 and 1", len(c.offers), len(c.offerOf))
	}
	// A committed lease ends the hold.
	a11 := c.offerOf["c11"]
	if _, err := c.commit(context.Background(), a11, "c11", time.Hour, later); err != nil {
		t.Fatal(err)
	}
	if len(c.offers) != 0 || len(c.offerOf) != 0 {
		t.Errorf("after the commit %d offers are held, want none", len(c.offers))
	}
}

// Holding many offers stays cheap: expiring them is not a scan of all of
// them on every DISCOVER (it was, and it dominated the profile under load).
func TestOfferHoldsExpireInOrder(t *testing.T) {
	sn := Subnet{Prefix: netip.MustParsePrefix("10.0.0.0/8"), Start: netip.MustParseAddr("10.1.0.0"), End: netip.MustParseAddr("10.200.0.0")}
	if err := sn.validate(); err != nil {
		t.Fatal(err)
	}
	c := newLeaseCache(NewMemoryStore(), "mdc-a", time.Second, nil)
	t0 := time.Now()
	for i := range 50000 {
		c.offer(&sn, fmt.Sprint(i), netip.Addr{}, netip.Addr{}, t0.Add(time.Duration(i)*time.Millisecond/10))
	}
	// At t0+5s every hold but the last second's ended.
	if n := len(c.offers); n < 9000 || n > 11000 {
		t.Errorf("%d offers held, want about the last second's 10000", n)
	}
	if n := len(c.holds) - c.holdHead; n != len(c.offers) {
		t.Errorf("%d holds queued for %d offers", n, len(c.offers))
	}
}

// A client sends RELEASE once: a stale cached revision (another instance
// renewed the lease meanwhile) must not lose it.
func TestReleaseAfterConflict(t *testing.T) {
	ctx := context.Background()
	store := NewMemoryStore()
	c := newLeaseCache(store, "mdc-a", 30*time.Second, nil)
	now := time.Now()
	a := netip.MustParseAddr("10.0.0.10")
	if _, err := c.commit(ctx, a, "client-1", time.Hour, now); err != nil {
		t.Fatal(err)
	}
	// Another instance renews behind this cache's back.
	_, rev, err := store.Get(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Update(ctx, Lease{Addr: a, Client: "client-1", State: LeaseBound, Expires: now.Add(2 * time.Hour), Server: "mdc-b"}, rev); err != nil {
		t.Fatal(err)
	}
	if err := c.end(ctx, a, "client-1", LeaseReleased, 0, now); err != nil {
		t.Fatalf("release with a stale revision: %v", err)
	}
	got, _, err := store.Get(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	if got.State != LeaseReleased {
		t.Errorf("stored lease after release: %+v, want released", got)
	}
}
