package events

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/microdc/mdc/machine"
)

// testEnv is an embedded NATS on a data directory, with a log, table and store.
type testEnv struct {
	dir   string
	conn  *Conn
	store *Store
	stop  func()
}

func startEnv(t testing.TB, dir string) *testEnv {
	t.Helper()
	ctx := context.Background()
	conn, err := Connect(ctx, NATSConfig{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	metrics := NewMetrics(prometheus.NewRegistry())
	l, err := OpenLog(ctx, conn.NC, LogConfig{Metrics: metrics})
	if err != nil {
		conn.Close()
		t.Fatal(err)
	}
	s := NewStore(l, NewTable(nil, metrics), nil)
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- s.Run(runCtx) }()
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	defer wcancel()
	if err := s.WaitReady(wctx); err != nil {
		cancel()
		conn.Close()
		t.Fatalf("store not ready: %v", err)
	}
	env := &testEnv{dir: dir, conn: conn, store: s}
	var once sync.Once
	env.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("store run: %v", err)
			}
			conn.Close()
		})
	}
	t.Cleanup(env.stop)
	return env
}

func mustEvent(t testing.TB, id machine.ID, typ machine.EventType, data any) machine.Event {
	t.Helper()
	e, err := machine.NewEvent(id, typ, "test", data)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func discover(id machine.ID) Decision {
	return func(m machine.Machine) (machine.Event, error) {
		return machine.NewEvent(id, machine.Discovered, "test", machine.DiscoveredData{Via: "api"})
	}
}

func TestEnvelopeRoundTrip(t *testing.T) {
	e := mustEvent(t, "525400123456", machine.RoleAssigned, machine.RoleAssignedData{Role: "nats", By: "operator"})
	b, err := Encode(e)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(e, got); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
	for _, field := range []string{`"specversion":"1.0"`, `"type":"mdc.machine.role_assigned"`, `"subject":"525400123456"`, `"datacontenttype":"application/json"`} {
		if !strings.Contains(string(b), field) {
			t.Errorf("envelope %s lacks %s", b, field)
		}
	}
}

func FuzzDecode(f *testing.F) {
	e, _ := machine.NewEvent("525400123456", machine.Discovered, "dhcp", machine.DiscoveredData{Via: "dhcp"})
	b, _ := Encode(e)
	f.Add(b)
	f.Add([]byte(`{"specversion":"1.0","id":"x","type":"mdc.machine.retired","subject":"525400123456"}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := Decode(b)
		if err != nil {
			if !errors.Is(err, ErrBadEnvelope) {
				t.Fatalf("error does not wrap ErrBadEnvelope: %v", err)
			}
			return
		}
		if !e.Machine.Valid() || e.ID == "" {
			t.Fatalf("accepted %q as %+v", b, e)
		}
		if _, err := Encode(e); err != nil {
			t.Fatalf("re-encode: %v", err)
		}
	})
}

func TestAppendRaceOneWinner(t *testing.T) {
	env := startEnv(t, t.TempDir())
	ctx := context.Background()
	id := machine.ID("525400000001")
	m, _, err := env.store.Update(ctx, id, discover(id))
	if err != nil {
		t.Fatal(err)
	}
	// 32 writers all believe the machine is at m.LastSeq; exactly one may win.
	const writers = 32
	var wins, conflicts atomic.Int32
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			e := mustEvent(t, id, machine.Renamed, machine.RenamedData{Name: fmt.Sprintf("w%d", i)})
			<-start
			_, err := env.store.Log.Append(ctx, e, m.LastSeq)
			switch {
			case err == nil:
				wins.Add(1)
			case errors.Is(err, ErrConflict):
				conflicts.Add(1)
			default:
				t.Errorf("writer %d: %v", i, err)
			}
		}()
	}
	close(start)
	wg.Wait()
	if wins.Load() != 1 || conflicts.Load() != writers-1 {
		t.Fatalf("wins %d, conflicts %d; want 1 and %d", wins.Load(), conflicts.Load(), writers-1)
	}
	h, err := env.store.Log.History(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if len(h) != 2 {
		t.Fatalf("history has %d events, want 2", len(h))
	}
}

func TestUpdateRaceRetireOnce(t *testing.T) {
	env := startEnv(t, t.TempDir())
	ctx := context.Background()
	id := machine.ID("525400000002")
	if _, _, err := env.store.Update(ctx, id, discover(id)); err != nil {
		t.Fatal(err)
	}
	// Writers that re-read and decide again: one retires, the rest find the
	// machine retired and are refused with an illegal transition.
	const writers = 16
	var wins, refused atomic.Int32
	var wg sync.WaitGroup
	for range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _, err := env.store.Update(ctx, id, func(m machine.Machine) (machine.Event, error) {
				return machine.NewEvent(id, machine.Retired, "test", machine.RetiredData{Reason: "race"})
			})
			switch {
			case err == nil:
				wins.Add(1)
			case errors.Is(err, machine.ErrIllegalTransition):
				refused.Add(1)
			default:
				t.Errorf("update: %v", err)
			}
		}()
	}
	wg.Wait()
	if wins.Load() != 1 || refused.Load() != writers-1 {
		t.Fatalf("wins %d, refused %d", wins.Load(), refused.Load())
	}
	m, ok := env.store.Table.Get(id)
	if !ok || m.State != machine.StRetired || m.Events != 2 {
		t.Fatalf("machine %+v", m)
	}
}

func TestAppendIdempotentRetry(t *testing.T) {
	env := startEnv(t, t.TempDir())
	ctx := context.Background()
	id := machine.ID("525400000003")
	e := mustEvent(t, id, machine.Discovered, machine.DiscoveredData{Via: "api"})
	seq1, err := env.store.Log.Append(ctx, e, 0)
	if err != nil {
		t.Fatal(err)
	}
	// The ack was "lost": the writer retries the same event. The store
	// finds it in the log and reports success without a second copy.
	m, stored, err := env.store.Update(ctx, id, func(machine.Machine) (machine.Event, error) { return e, nil })
	if err != nil {
		t.Fatal(err)
	}
	if stored.Seq != seq1 || m.Events != 1 {
		t.Fatalf("retry stored seq %d (first %d), machine has %d events", stored.Seq, seq1, m.Events)
	}
	// The same retry once the table has applied the event (then it is no
	// longer a legal next event): still success, still one copy.
	if err := env.store.Table.WaitFor(ctx, seq1); err != nil {
		t.Fatal(err)
	}
	m, stored, err = env.store.Update(ctx, id, func(machine.Machine) (machine.Event, error) { return e, nil })
	if err != nil || stored.Seq != seq1 || m.Events != 1 {
		t.Fatalf("retry after the table caught up: %v, seq %d (first %d), %d events", err, stored.Seq, seq1, m.Events)
	}
	h, _ := env.store.Log.History(ctx, id)
	if len(h) != 1 {
		t.Fatalf("history has %d events, want 1", len(h))
	}
}

func TestIllegalEventNotAppended(t *testing.T) {
	env := startEnv(t, t.TempDir())
	ctx := context.Background()
	id := machine.ID("525400000004")
	_, _, err := env.store.Update(ctx, id, func(machine.Machine) (machine.Event, error) {
		return machine.NewEvent(id, machine.Joined, "test", nil)
	})
	if !errors.Is(err, machine.ErrIllegalTransition) {
		t.Fatalf("want illegal transition, got %v", err)
	}
	last, err := env.store.Log.LastSeq(ctx)
	if err != nil || last != 0 {
		t.Fatalf("stream last seq %d, %v; want nothing appended", last, err)
	}
}

func TestReplayEqualsLiveTableAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	env := startEnv(t, dir)
	ctx := context.Background()
	for i := range 50 {
		id := machine.ID(fmt.Sprintf("5254000100%02x", i))
		if _, _, err := env.store.Update(ctx, id, discover(id)); err != nil {
			t.Fatal(err)
		}
		for j := range i % 4 {
			_, _, err := env.store.Update(ctx, id, func(machine.Machine) (machine.Event, error) {
				return machine.NewEvent(id, machine.Renamed, "test", machine.RenamedData{Name: fmt.Sprintf("n%d-%d", i, j)})
			})
			if err != nil {
				t.Fatal(err)
			}
		}
		if i%5 == 0 {
			_, _, err := env.store.Update(ctx, id, func(machine.Machine) (machine.Event, error) {
				return machine.NewEvent(id, machine.Retired, "test", nil)
			})
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	live := env.store.Table.List(Filter{})
	retired := env.store.Table.List(Filter{State: machine.StRetired})
	if len(live) != 50 || len(retired) != 10 {
		t.Fatalf("live %d machines, %d retired", len(live), len(retired))
	}
	env.stop()

	again := startEnv(t, dir)
	if diff := cmp.Diff(live, again.store.Table.List(Filter{})); diff != "" {
		t.Fatalf("replayed table differs from the live one (-live +replayed):\n%s", diff)
	}
	// Per-machine history folds to the same machine as the table.
	for _, m := range live[:5] {
		h, err := again.store.Log.History(ctx, m.ID)
		if err != nil {
			t.Fatal(err)
		}
		folded, err := machine.Fold(h)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(m, folded); diff != "" {
			t.Errorf("%s: history fold differs:\n%s", m.ID, diff)
		}
	}
}

func TestLookupMACFindsSecondaryNICs(t *testing.T) {
	env := startEnv(t, t.TempDir())
	ctx := context.Background()
	id := machine.ID("525400000005")
	steps := []machine.Event{
		mustEvent(t, id, machine.Discovered, machine.DiscoveredData{Via: "dhcp"}),
		mustEvent(t, id, machine.CommissioningStarted, nil),
		mustEvent(t, id, machine.FactsReported, machine.Facts{NICs: []machine.NIC{{Name: "eth1", MAC: "52:54:00:99:99:99"}}}),
	}
	for _, e := range steps {
		if _, _, err := env.store.Update(ctx, id, func(machine.Machine) (machine.Event, error) { return e, nil }); err != nil {
			t.Fatal(err)
		}
	}
	m, ok := env.store.Table.LookupMAC("525400999999")
	if !ok || m.ID != id || m.State != machine.Ready {
		t.Fatalf("LookupMAC secondary: %v %+v", ok, m)
	}
	if _, ok := env.store.Table.LookupMAC("525400000006"); ok {
		t.Fatal("unknown MAC found")
	}
}

func TestTelemetryKeptApart(t *testing.T) {
	env := startEnv(t, t.TempDir())
	ctx := context.Background()
	id := machine.ID("525400000007")
	if err := env.store.Log.AppendTelemetry(mustEvent(t, id, machine.DHCPOffered, nil)); err != nil {
		t.Fatal(err)
	}
	if err := env.store.Log.AppendTelemetry(mustEvent(t, id, machine.Discovered, nil)); err == nil {
		t.Fatal("a lifecycle event was accepted as telemetry")
	}
	if _, err := env.store.Log.Append(ctx, mustEvent(t, id, machine.DHCPAcked, nil), 0); err == nil {
		t.Fatal("telemetry was accepted as a lifecycle event")
	}
	var got []machine.Event
	deadline := time.Now().Add(5 * time.Second)
	for len(got) == 0 && time.Now().Before(deadline) {
		var err error
		if got, err = env.store.Log.Telemetry(ctx, id); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond) // the async publish may still be in flight
	}
	if len(got) != 1 || got[0].Type != machine.DHCPOffered {
		t.Fatalf("telemetry %+v", got)
	}
	if _, ok := env.store.Table.Get(id); ok {
		t.Fatal("telemetry created a machine")
	}
}

func TestWaitForHonoursContext(t *testing.T) {
	tab := NewTable(nil, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := tab.WaitFor(ctx, 1); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitFor: %v", err)
	}
	done := make(chan error)
	go func() { done <- tab.WaitFor(context.Background(), 2) }()
	tab.Apply(machine.Event{ID: "a", Type: machine.Discovered, Machine: "525400000008", Seq: 2})
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// Reading histories must leave nothing behind on the server: under a burst
// of conflicting writes every retry reads one, and consumers left to expire
// once filled the server's consumer limit and failed writes.
func TestHistoryLeavesNoConsumers(t *testing.T) {
	env := startEnv(t, t.TempDir())
	ctx := context.Background()
	var ids []machine.ID
	for i := range 20 {
		id := machine.ID(fmt.Sprintf("5254000001%02x", i))
		ids = append(ids, id)
		if _, _, err := env.store.Update(ctx, id, discover(id)); err != nil {
			t.Fatal(err)
		}
		if err := env.store.Log.AppendTelemetry(mustEvent(t, id, machine.DHCPOffered, nil)); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 3000 {
		id := ids[i%len(ids)]
		h, err := env.store.History(ctx, id)
		if err != nil {
			t.Fatalf("read %d: %v", i, err)
		}
		if len(h) != 1 || h[0].Machine != id || h[0].Seq == 0 {
			t.Fatalf("history of %s: %+v", id, h)
		}
		if _, err := env.store.Telemetry(ctx, id); err != nil {
			t.Fatalf("telemetry read %d: %v", i, err)
		}
	}
	for _, s := range []jetstream.Stream{env.store.Log.machines, env.store.Log.boot} {
		info, err := s.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// The store's own follower is the one consumer allowed.
		if info.State.Consumers > 1 {
			t.Errorf("stream %s has %d consumers after reads", info.Config.Name, info.State.Consumers)
		}
	}
}
