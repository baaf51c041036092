package bmc

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// stubbornDriver ignores contexts, like gofish: a call ends when it ends.
type stubbornDriver struct {
	block         chan struct{} // powerState waits for it once
	inFlight, max atomic.Int32
	calls         atomic.Int32
	closes        atomic.Int32
}

func (d *stubbornDriver) enter() func() {
	n := d.inFlight.Add(1)
	for {
		m := d.max.Load()
		if n <= m || d.max.CompareAndSwap(m, n) {
			break
		}
	}
	d.calls.Add(1)
	return func() { d.inFlight.Add(-1) }
}

func (d *stubbornDriver) powerState(ctx context.Context) (string, error) {
	defer d.enter()()
	if d.calls.Load() == 1 {
		<-d.block
	}
	return "On", nil
}
func (d *stubbornDriver) powerSet(context.Context, PowerAction) error {
	defer d.enter()()
	return nil
}
func (d *stubbornDriver) setBootPXE(context.Context, BootOptions) error {
	defer d.enter()()
	return nil
}
func (d *stubbornDriver) bootOverride(context.Context) (bootOverride, error) {
	defer d.enter()()
	return bootOverride{Device: "pxe"}, nil
}
func (d *stubbornDriver) inventory(context.Context) (Inventory, error) { return Inventory{}, nil }
func (d *stubbornDriver) release(ctx context.Context) error            { return d.close(ctx) }
func (d *stubbornDriver) close(context.Context) error {
	defer d.enter()()
	d.closes.Add(1)
	return nil
}
func (d *stubbornDriver) classify(error) (Kind, bool) { return 0, false }

// A call that times out but keeps running (gofish takes no context) must
// still keep the next call away from the BMC until it is over.
func TestTimedOutCallStillSerializes(t *testing.T) {
	d := &stubbornDriver{block: make(chan struct{})}
	c := New(Endpoint{Protocol: Redfish, Host: "192.0.2.1", Port: 80}, testCred, Options{Timeout: 100 * time.Millisecond})
	c.drv = d

	start := time.Now()
	_, err := c.PowerStatus(t.Context())
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("PowerStatus = %v, want ErrTimeout", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("timed-out call returned after %v", took)
	}

	// The next caller waits for the stuck call; it gets through once that ends.
	done := make(chan error, 1)
	go func() { done <- c.Power(context.Background(), ActionOn) }()
	select {
	case err := <-done:
		t.Fatalf("second call finished (%v) while the first was still at the BMC", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(d.block)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if m := d.max.Load(); m != 1 {
		t.Fatalf("%d calls at once at the BMC, want 1", m)
	}

	// A caller whose context ends while waiting gives up.
	d2 := &stubbornDriver{block: make(chan struct{})}
	c2 := New(Endpoint{Protocol: Redfish, Host: "192.0.2.2", Port: 80}, testCred, Options{Timeout: 50 * time.Millisecond})
	c2.drv = d2
	if _, err := c2.PowerStatus(t.Context()); !errors.Is(err, ErrTimeout) {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if err := c2.Power(ctx, ActionOn); !errors.Is(err, ErrTimeout) {
		t.Fatalf("waiting behind a stuck call past the deadline = %v, want ErrTimeout", err)
	}
	close(d2.block)
}

func TestGateSpacing(t *testing.T) {
	d := &stubbornDriver{block: make(chan struct{})}
	close(d.block)
	const interval = 40 * time.Millisecond
	c := New(Endpoint{Protocol: Redfish, Host: "192.0.2.1", Port: 80}, testCred, Options{MinInterval: interval})
	c.drv = d
	start := time.Now()
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := c.SetNextBootPXE(t.Context(), BootOptions{}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	// 4 operations of 2 calls each: 7 gaps of at least the interval.
	if took := time.Since(start); took < 7*interval {
		t.Fatalf("8 calls took %v, want >= %v", took, 7*interval)
	}
	if m := d.max.Load(); m != 1 {
		t.Fatalf("%d calls at once, want 1", m)
	}
}
