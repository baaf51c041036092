package events

// Benchmarks of the event spine (issue 2). Every mdc path runs next to the
// raw JetStream call it wraps, on the same embedded server config and in the
// same run, so that their ratio means something on a shared, noisy machine.
// hack/bench-events.sh runs them all and prints the summary.
//
// MDC_BENCH_ROUNDS (default 1) repeats the sub-benchmarks of Append,
// AppendCold, Replay and Lookup that many times, the pairs in alternating
// order, so that noise hits both sides alike. The stores are filled with
// PublishAsync; figures are logged (go test -v) as well as reported.

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/microdc/mdc/machine"
)

// lifeStages is the number of lifecycle events of one benchmark machine.
const lifeStages = 20

// lifeTypes is a believable life: discovery, commissioning, a role, and
// two reprovisionings, every step legal for the fold.
var lifeTypes = [lifeStages]machine.EventType{
	machine.Discovered, machine.CommissioningStarted, machine.FactsReported, machine.RoleAssigned,
	machine.PowerRequested, machine.PowerChanged, machine.ProvisioningStarted, machine.Booted,
	machine.Joined, machine.Renamed,
	machine.PowerRequested, machine.PowerChanged, machine.ProvisioningStarted, machine.Booted, machine.Joined,
	machine.PowerRequested, machine.PowerChanged, machine.ProvisioningStarted, machine.Booted, machine.Joined,
}

// benchID is the id of benchmark machine i; benchNIC is its second NIC.
func benchID(i int) machine.ID  { return machine.ID(fmt.Sprintf("5254%08x", i)) }
func benchNIC(i int) machine.ID { return machine.ID(fmt.Sprintf("5255%08x", i)) }

func mustJSON(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// lifeData is the data of every stage but the facts, which name the machine's NICs.
var lifeData = func() [lifeStages]json.RawMessage {
	var d [lifeStages]json.RawMessage
	d[0] = mustJSON(machine.DiscoveredData{Via: "dhcp", Arch: "x86_64-efi", VendorClass: "PXEClient:Arch:00007:UNDI:003016", Interface: "eth0"})
	d[1] = mustJSON(machine.ImageData{Image: "commissioning-25.11"})
	d[3] = mustJSON(machine.RoleAssignedData{Role: "ceph", By: "policy", Reason: "4 disks"})
	d[9] = mustJSON(machine.RenamedData{Name: "rack1-u07"})
	for _, base := range []int{4, 10, 15} {
		d[base] = mustJSON(machine.PowerData{Action: "cycle", Result: "ok"})
		d[base+1] = mustJSON(machine.PowerData{State: "on"})
		d[base+2] = mustJSON(machine.ProvisioningStartedData{Role: "ceph", Image: "ceph-25.11." + strconv.Itoa(base)})
		d[base+3] = mustJSON(machine.BootedData{Image: "ceph-25.11." + strconv.Itoa(base), Kernel: "6.12.48"})
		d[base+4] = mustJSON(machine.JoinedData{Role: "ceph", Evidence: map[string]string{"osd": "up", "in": "true"}})
	}
	return d
}()

func benchFacts(i int) json.RawMessage {
	disks := make([]machine.Disk, 4)
	for d := range disks {
		disks[d] = machine.Disk{Name: fmt.Sprintf("nvme%dn1", d), Model: "SAMSUNG MZQL23T8HCLS", Serial: fmt.Sprintf("S64H%06dX%d", i, d), SizeBytes: 3840755982336}
	}
	return mustJSON(machine.Facts{
		Vendor: "Supermicro", Product: "SYS-1029P-WTR", Serial: fmt.Sprintf("S%09d", i),
		UUID: fmt.Sprintf("00000000-0000-4000-8000-%012x", i), BootMode: "uefi",
		CPUModel: "Intel(R) Xeon(R) Silver 4214 CPU @ 2.20GHz", CPUs: 48, MemoryBytes: 192 << 30,
		Disks: disks,
		NICs: []machine.NIC{
			{Name: "eth0", MAC: benchID(i).MAC(), Driver: "ixgbe", SpeedMbps: 10000, Carrier: true},
			{Name: "eth1", MAC: benchNIC(i).MAC(), Driver: "ixgbe", SpeedMbps: 10000, Carrier: true},
		},
	})
}

// lifeEvent is stage s of machine i's life.
func lifeEvent(i, s int, at time.Time) machine.Event {
	data := lifeData[s]
	if lifeTypes[s] == machine.FactsReported {
		data = benchFacts(i)
	}
	return machine.Event{
		ID: machine.NewEventID(), Type: lifeTypes[s], Machine: benchID(i),
		Time: at.Add(time.Duration(s) * time.Minute), Source: "bench", Data: data,
	}
}

func benchRounds() int {
	if n, err := strconv.Atoi(os.Getenv("MDC_BENCH_ROUNDS")); err == nil && n > 0 {
		return n
	}
	return 1
}

// benchEnv is the embedded server with the streams mdc makes, the log, and
// raw JetStream clients for the peers: js on the log's in-process
// connection, and with tcp also one over loopback TCP, as another process
// (or a remote NATS) would reach it.
type benchEnv struct {
	conn *Conn
	log  *Log
	js   jetstream.JetStream
	tcp  jetstream.JetStream // nil unless asked for
	// asyncFailed counts async publishes the server refused.
	asyncFailed *atomic.Int64
}

func benchServer(b *testing.B, dir string, tcp bool) benchEnv {
	b.Helper()
	ctx := context.Background()
	cfg := NATSConfig{DataDir: dir}
	if tcp {
		cfg.Listen, cfg.Token = "127.0.0.1:-1", "bench" // -1: a free port
	}
	conn, err := Connect(ctx, cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(conn.Close)
	l, err := OpenLog(ctx, conn.NC, LogConfig{Metrics: NewMetrics(prometheus.NewRegistry())})
	if err != nil {
		b.Fatal(err)
	}
	env := benchEnv{conn: conn, log: l, asyncFailed: new(atomic.Int64)}
	newJS := func(nc *nats.Conn) jetstream.JetStream {
		js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096),
			jetstream.WithPublishAsyncErrHandler(func(jetstream.JetStream, *nats.Msg, error) { env.asyncFailed.Add(1) }))
		if err != nil {
			b.Fatal(err)
		}
		return js
	}
	env.js = newJS(conn.NC)
	if tcp {
		nc, err := nats.Connect(conn.ClientURL(), nats.Token(cfg.Token))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(nc.Close)
		env.tcp = newJS(nc)
	}
	return env
}

// raw is the TCP client if there is one, else the in-process one.
func (env benchEnv) raw() jetstream.JetStream {
	if env.tcp != nil {
		return env.tcp
	}
	return env.js
}

// waitAsync waits for every async publish to be acked and fails b if any
// was refused.
func (env benchEnv) waitAsync(b *testing.B) {
	b.Helper()
	for _, js := range []jetstream.JetStream{env.js, env.tcp} {
		if js == nil {
			continue
		}
		select {
		case <-js.PublishAsyncComplete():
		case <-time.After(time.Minute):
			b.Fatal("async publishes still unacked after a minute")
		}
	}
	if n := env.asyncFailed.Load(); n > 0 {
		b.Fatalf("%d async publishes failed", n)
	}
}

// fill stores the first stages of n machines' lives with async publishes
// (without Nats-Msg-Id: the header is not read back, and a restart within
// the dedupe window would read every message to rebuild it).
// Stage-major is a rack coming up together (each machine's events spread
// over the stream); machine-major has each machine's events side by side,
// machine after machine. It returns each machine's last sequence.
func fill(b *testing.B, env benchEnv, n, stages int, machineMajor bool) []uint64 {
	b.Helper()
	base, err := env.log.LastSeq(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	at := time.Now().Add(-24 * time.Hour)
	last := make([]uint64, n)
	for k := range n * stages {
		i, st := k%n, k/n
		if machineMajor {
			i, st = k/stages, k%stages
		}
		e := lifeEvent(i, st, at)
		data, err := Encode(e)
		if err != nil {
			b.Fatal(err)
		}
		_, err = env.raw().PublishMsgAsync(&nats.Msg{Subject: MachineSubject(e.Machine, e.Type), Data: data},
			jetstream.WithStallWait(30*time.Second))
		if err != nil {
			b.Fatal(err)
		}
		last[i] = base + uint64(k+1)
	}
	env.waitAsync(b)
	got, err := env.log.LastSeq(context.Background())
	if want := base + uint64(n*stages); err != nil || got != want {
		b.Fatalf("fill: stream at %d (%v), want %d", got, err, want)
	}
	return last
}

// perSec reports ops/elapsed as unit.
func perSec(b *testing.B, ops int, unit string) {
	b.ReportMetric(float64(ops)/b.Elapsed().Seconds(), unit)
}

// reportLatencies reports each peer's appends/s (from the mean) and median
// latency. On a shared machine the mean swings with a few stalls (a
// descheduled process, a block loaded from disk); the median is the steady
// cost, and the ratio of medians the steadiest comparison.
func reportLatencies(b *testing.B, names []string, took [][]time.Duration) {
	for p, name := range names {
		var sum time.Duration
		for _, d := range took[p] {
			sum += d
		}
		slices.Sort(took[p])
		b.ReportMetric(float64(len(took[p]))/sum.Seconds(), name+"-appends/s")
		b.ReportMetric(float64(took[p][len(took[p])/2].Nanoseconds())/1000, name+"-p50-µs")
	}
}

// runWriters spreads b.N appends over w goroutines. op appends writer wr's
// next event; each writer has its own machine, so nothing conflicts.
func runWriters(b *testing.B, w int, op func(wr int) error) {
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, w)
	b.ResetTimer()
	for wr := range w {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(b.N) {
				if err := op(wr); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	perSec(b, b.N, "appends/s")
}

// appender returns peer's append of writer wr's next event to machine
// base+wr, keeping the machines' last sequences for the check. The raw peers
// publish the bytes mdc would, on the same subjects: js-check with mdc's two
// headers (Nats-Msg-Id, expected last sequence for the machine's subjects),
// js-sync with none; -tcp over loopback TCP instead of the in-process pipe.
func appender(b *testing.B, peer string, env benchEnv, writers, base int) func(wr int) error {
	ctx := context.Background()
	payload, err := Encode(lifeEvent(0, 9, time.Now()))
	if err != nil {
		b.Fatal(err)
	}
	data, now := lifeData[9], time.Now()
	last := make([]uint64, writers)
	js := env.js
	if strings.HasSuffix(peer, "-tcp") {
		js = env.tcp
	}
	switch strings.TrimSuffix(peer, "-tcp") {
	case "mdc":
		return func(wr int) error {
			e := machine.Event{ID: machine.NewEventID(), Type: machine.Renamed, Machine: benchID(base + wr), Time: now, Source: "bench", Data: data}
			seq, err := env.log.Append(ctx, e, last[wr])
			last[wr] = seq
			return err
		}
	case "js-check":
		return func(wr int) error {
			id := benchID(base + wr)
			ack, err := js.PublishMsg(ctx, &nats.Msg{Subject: MachineSubject(id, machine.Renamed), Data: payload},
				jetstream.WithMsgID(machine.NewEventID()), jetstream.WithExpectLastSequenceForSubject(last[wr], MachineFilter(id)))
			if err != nil {
				return err
			}
			last[wr] = ack.Sequence
			return nil
		}
	case "js-sync":
		return func(wr int) error {
			_, err := js.Publish(ctx, MachineSubject(benchID(base+wr), machine.Renamed), payload)
			return err
		}
	}
	b.Fatalf("no peer %q", peer)
	return nil
}

// BenchmarkAppend: Log.Append (CloudEvents encoding, Nats-Msg-Id, expected
// last sequence for the machine's subjects, metrics) against the raw
// publishes of appender, and PublishAsync pipelined (4096 in flight).
//
// One writer: one op is one append by each peer, each on its own machine,
// in rotating order, timed apart, so the peers share every moment of a noisy
// machine. 64 writers (each on its own machine, so nothing conflicts): one
// sub-benchmark per peer, each on a fresh server, in alternating order
// across rounds.
func BenchmarkAppend(b *testing.B) {
	peers := []string{"mdc", "js-check", "js-sync", "js-check-tcp", "js-sync-tcp"}
	for r := range benchRounds() {
		b.Run("writers=1", func(b *testing.B) {
			env := benchServer(b, b.TempDir(), true)
			appends := make([]func(int) error, len(peers))
			for p, name := range peers {
				appends[p] = appender(b, name, env, 1, p)
			}
			took := make([][]time.Duration, len(peers))
			b.ResetTimer()
			for i := range b.N {
				for k := range peers {
					p := (i + k) % len(peers)
					start := time.Now()
					err := appends[p](0)
					took[p] = append(took[p], time.Since(start))
					if err != nil {
						b.Fatalf("%s: %v", peers[p], err)
					}
				}
			}
			b.StopTimer()
			reportLatencies(b, peers, took)
		})
		b.Run("writers=64", func(b *testing.B) {
			order := slices.Clone(peers)
			if r%2 == 1 {
				slices.Reverse(order)
			}
			for _, name := range order {
				b.Run(name, func(b *testing.B) {
					env := benchServer(b, b.TempDir(), strings.HasSuffix(name, "-tcp"))
					runWriters(b, 64, appender(b, name, env, 64, 0))
				})
			}
		})
		async := []string{"js-async", "js-async-tcp"}
		if r%2 == 1 {
			slices.Reverse(async)
		}
		for _, name := range async {
			b.Run(name, func(b *testing.B) {
				env := benchServer(b, b.TempDir(), name == "js-async-tcp")
				payload, err := Encode(lifeEvent(0, 9, time.Now()))
				if err != nil {
					b.Fatal(err)
				}
				subj := MachineSubject(benchID(0), machine.Renamed)
				js := env.raw()
				b.ResetTimer()
				for range b.N {
					if _, err := js.PublishAsync(subj, payload, jetstream.WithStallWait(30*time.Second)); err != nil {
						b.Fatal(err)
					}
				}
				env.waitAsync(b)
				b.StopTimer()
				perSec(b, b.N, "appends/s")
			})
		}
	}
}

// BenchmarkAppendCold appends, one writer, to machines not written for a
// while: 10,000 machines × 20 events stored machine after machine, read
// after a restart, each machine written at most once, in random order. The
// per-machine check must find the machine's newest event in an old block.
//
// First it appends to every 100th machine and logs how long those took
// ("first-touch"): after a restart, or two minutes without a look, the
// server loads an 8 MiB block and its subject index for the first check that
// lands in it, and the stream takes no other append meanwhile. Then one op
// is one append by each peer, each to its own machine, in rotating order,
// timed apart: the peers see the same server at the same moment. Run it with
// a fixed -benchtime (1000x): the machines would run out.
func BenchmarkAppendCold(b *testing.B) {
	const machines = 10_000
	ctx := context.Background()
	dir := b.TempDir()
	var last []uint64
	{
		env := benchServer(b, dir, true)
		last = fill(b, env, machines, lifeStages, true)
		env.conn.Close()
	}
	env := benchServer(b, dir, false)
	// Let the restart's reads age out (block caches expire after 10s; a
	// collection drops their weak copies), so that blocks are as cold as
	// those of machines nobody touched for a while.
	time.Sleep(11 * time.Second)
	runtime.GC()
	runtime.GC()
	payload, err := Encode(lifeEvent(0, 9, time.Now()))
	if err != nil {
		b.Fatal(err)
	}
	data := lifeData[9]
	now := time.Now()
	peers := []struct {
		name   string
		append func(m int) (uint64, error)
	}{
		{"mdc", func(m int) (uint64, error) {
			e := machine.Event{ID: machine.NewEventID(), Type: machine.Renamed, Machine: benchID(m), Time: now, Source: "bench", Data: data}
			return env.log.Append(ctx, e, last[m])
		}},
		{"js-check", func(m int) (uint64, error) {
			id := benchID(m)
			ack, err := env.js.PublishMsg(ctx, &nats.Msg{Subject: MachineSubject(id, machine.Renamed), Data: payload},
				jetstream.WithMsgID(machine.NewEventID()), jetstream.WithExpectLastSequenceForSubject(last[m], MachineFilter(id)))
			if err != nil {
				return 0, err
			}
			return ack.Sequence, nil
		}},
		{"js-sync", func(m int) (uint64, error) {
			ack, err := env.js.Publish(ctx, MachineSubject(benchID(m), machine.Renamed), payload)
			if err != nil {
				return 0, err
			}
			return ack.Sequence, nil
		}},
	}

	var touch []time.Duration
	for m := 0; m < machines; m += 100 {
		start := time.Now()
		seq, err := peers[0].append(m)
		if err != nil {
			b.Fatal(err)
		}
		touch = append(touch, time.Since(start))
		last[m] = seq
	}
	slices.Sort(touch)
	var sum time.Duration
	for _, d := range touch {
		sum += d
	}
	b.Logf("first-touch: %d appends spread over the stream after a restart: mean %.3f ms, median %.3f ms, max %.1f ms, total %.2f s",
		len(touch), float64(sum.Microseconds())/float64(len(touch))/1000, float64(touch[len(touch)/2].Microseconds())/1000,
		float64(touch[len(touch)-1].Microseconds())/1000, sum.Seconds())

	var free []int // machines not written since the restart
	for m := range machines {
		if m%100 != 0 {
			free = append(free, m)
		}
	}
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(free), func(i, j int) { free[i], free[j] = free[j], free[i] })
	for range benchRounds() {
		b.Run("interleaved", func(b *testing.B) {
			if len(free) < b.N*len(peers) {
				b.Fatalf("%d unwritten machines left for %d appends: use a smaller -benchtime", len(free), b.N*len(peers))
			}
			took := make([][]time.Duration, len(peers))
			for i := range b.N {
				for k := range peers {
					p := (i + k) % len(peers)
					m := free[0]
					free = free[1:]
					start := time.Now()
					seq, err := peers[p].append(m)
					took[p] = append(took[p], time.Since(start))
					if err != nil {
						b.Fatalf("%s: %v", peers[p].name, err)
					}
					last[m] = seq
				}
			}
			names := make([]string, len(peers))
			for p, peer := range peers {
				names[p] = peer.name
			}
			reportLatencies(b, names, took)
		})
	}
}

// BenchmarkReplay: what mdc does at start (Store.Run until ready: read the
// whole lifecycle stream, decode, fold into a fresh table) against a raw
// ordered consumer that reads the same messages and does nothing with them,
// and one that also decodes the CloudEvents JSON. The stream holds 1,000,000
// events (50,000 machines × 20) and is read after a restart, as at start.
// One op is one replay of all of it.
func BenchmarkReplay(b *testing.B) {
	const machines = 50_000
	const total = machines * lifeStages
	ctx := context.Background()
	dir := b.TempDir()
	{
		env := benchServer(b, dir, true)
		start := time.Now()
		_ = fill(b, env, machines, lifeStages, false)
		b.Logf("filled %d events in %s", total, time.Since(start).Round(time.Millisecond))
		env.conn.Close()
	}
	l := benchServer(b, dir, false).log
	metrics := NewMetrics(prometheus.NewRegistry())

	// rawRead reads total messages with an ordered consumer, as Follow
	// does (same pull size), and hands each to fn.
	rawRead := func(b *testing.B, fn func(jetstream.Msg) error) {
		c, err := l.machines.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
		if err != nil {
			b.Fatal(err)
		}
		it, err := c.Messages(jetstream.PullMaxMessages(2048))
		if err != nil {
			b.Fatal(err)
		}
		defer it.Stop()
		for range total {
			msg, err := it.Next()
			if err != nil {
				b.Fatal(err)
			}
			if err := fn(msg); err != nil {
				b.Fatal(err)
			}
		}
	}
	peers := map[string]func(b *testing.B){
		"mdc": func(b *testing.B) {
			for range b.N {
				tab := NewTable(nil, metrics)
				s := NewStore(l, tab, nil)
				rctx, cancel := context.WithCancel(ctx)
				done := make(chan error, 1)
				go func() { done <- s.Run(rctx) }()
				err := s.WaitReady(rctx)
				cancel()
				if rerr := <-done; err == nil {
					err = rerr
				}
				if err != nil {
					b.Fatal(err)
				}
				if tab.Len() != machines || tab.Applied() != total {
					b.Fatalf("replayed %d machines to sequence %d, want %d and %d", tab.Len(), tab.Applied(), machines, total)
				}
			}
		},
		"js-ordered": func(b *testing.B) {
			var bytes int
			for range b.N {
				rawRead(b, func(msg jetstream.Msg) error { bytes += len(msg.Data()); return nil })
			}
			if bytes == 0 {
				b.Fatal("read nothing")
			}
		},
		"js-ordered+decode": func(b *testing.B) {
			for range b.N {
				rawRead(b, func(msg jetstream.Msg) error { _, err := Decode(msg.Data()); return err })
			}
		},
	}
	for r := range benchRounds() {
		order := []string{"mdc", "js-ordered", "js-ordered+decode"}
		if r%2 == 1 {
			order = []string{"js-ordered", "js-ordered+decode", "mdc"}
		}
		for _, name := range order {
			b.Run(name, func(b *testing.B) {
				peers[name](b)
				perSec(b, b.N*total, "events/s")
			})
		}
	}
}

// BenchmarkLookup: the table's reads (what DHCP, TFTP and HTTP do per
// request) with b.RunParallel over 10,000 machines × 20 events, alone and
// while a writer applies events (at 20,000/s, about what the log can take,
// and flat out). Peers: a bare map read without the lock (the ceiling), and
// the JetStream way without a projection: fetch the machine's newest event
// from the stream (direct get by subject), which still is not its state.
func BenchmarkLookup(b *testing.B) {
	const machines = 10_000
	metrics := NewMetrics(prometheus.NewRegistry())
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	tab := NewTable(nil, metrics)
	at := time.Now().Add(-24 * time.Hour)
	var seq uint64
	for s := range lifeStages {
		for i := range machines {
			e := lifeEvent(i, s, at)
			seq++
			e.Seq = seq
			tab.Apply(e)
		}
	}
	if tab.Len() != machines {
		b.Fatalf("table has %d machines", tab.Len())
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	b.Logf("table-heap: %d machines of %d events hold %.1f MiB of heap, %d bytes per machine",
		machines, lifeStages, float64(after.HeapAlloc-before.HeapAlloc)/(1<<20), (after.HeapAlloc-before.HeapAlloc)/machines)
	ids := make([]machine.ID, machines)
	nics := make([]machine.ID, machines)
	for i := range ids {
		ids[i], nics[i] = benchID(i), benchNIC(i)
	}
	bare := make(map[machine.ID]machine.Machine, machines)
	for _, m := range tab.List(Filter{}) {
		bare[m.ID] = m
	}

	// writer applies renames round the machines at rate events/s (0: flat
	// out) until stop is closed, and returns how many it applied.
	writer := func(rate int, stop <-chan struct{}) <-chan int {
		n := make(chan int, 1)
		data := mustJSON(machine.RenamedData{Name: "renamed"})
		go func() {
			applied := 0
			batch, tick := 1<<30, time.Duration(0)
			if rate > 0 {
				batch, tick = rate/100, 10*time.Millisecond
			}
			next := time.Now()
			for {
				for range batch {
					select {
					case <-stop:
						n <- applied
						return
					default:
					}
					seq++
					tab.Apply(machine.Event{ID: "r" + strconv.FormatUint(seq, 10), Type: machine.Renamed,
						Machine: ids[applied%machines], Time: at, Source: "bench", Data: data, Seq: seq})
					applied++
				}
				next = next.Add(tick)
				select {
				case <-stop:
					n <- applied
					return
				case <-time.After(time.Until(next)):
				}
			}
		}()
		return n
	}
	reads := map[string]func(i int) bool{
		"Get":                 func(i int) bool { _, ok := tab.Get(ids[i]); return ok },
		"LookupMAC-secondary": func(i int) bool { m, ok := tab.LookupMAC(nics[i]); return ok && m.ID == ids[i] },
	}
	parallel := func(b *testing.B, read func(i int) bool) {
		var misses atomic.Int64
		b.RunParallel(func(pb *testing.PB) {
			i := rand.IntN(machines)
			for pb.Next() {
				if !read(i) {
					misses.Add(1)
				}
				if i++; i == machines {
					i = 0
				}
			}
		})
		if misses.Load() > 0 {
			b.Fatalf("%d lookups missed", misses.Load())
		}
		perSec(b, b.N, "lookups/s")
	}
	// The same machines in a stream, for the JetStream peer.
	env := benchServer(b, b.TempDir(), true)
	_ = fill(b, env, machines, lifeStages, false)
	for range benchRounds() {
		for _, name := range []string{"Get", "LookupMAC-secondary"} {
			for _, w := range []struct {
				suffix string
				rate   int
			}{{"", -1}, {"+writer-20k", 20_000}, {"+writer-max", 0}} {
				b.Run(name+w.suffix, func(b *testing.B) {
					if w.rate < 0 {
						parallel(b, reads[name])
						return
					}
					stop := make(chan struct{})
					applied := writer(w.rate, stop)
					start := time.Now()
					parallel(b, reads[name])
					close(stop)
					b.ReportMetric(float64(<-applied)/time.Since(start).Seconds(), "applies/s")
				})
			}
		}
		b.Run("map-nolock", func(b *testing.B) {
			parallel(b, func(i int) bool { _, ok := bare[ids[i]]; return ok })
		})
		b.Run("js-last-msg", func(b *testing.B) {
			ctx := context.Background()
			parallel(b, func(i int) bool {
				msg, err := env.log.machines.GetLastMsgForSubject(ctx, MachineFilter(ids[i]))
				return err == nil && msg.Subject != ""
			})
		})
	}
}

// BenchmarkCodec: the per-event CPU of what Append and the replay do besides
// JetStream, on the benchmark life's events (one op: the 20 events of a
// machine): encoding the envelope, decoding it, and folding the decoded
// events into a fresh machine (which decodes each event's data again).
func BenchmarkCodec(b *testing.B) {
	at := time.Now()
	evs := make([]machine.Event, lifeStages)
	docs := make([][]byte, lifeStages)
	for s := range evs {
		evs[s] = lifeEvent(7, s, at)
		evs[s].Seq = uint64(s + 1)
		var err error
		if docs[s], err = Encode(evs[s]); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("Encode", func(b *testing.B) {
		for b.Loop() {
			for _, e := range evs {
				if _, err := Encode(e); err != nil {
					b.Fatal(err)
				}
			}
		}
		perSec(b, b.N*lifeStages, "events/s")
	})
	b.Run("Decode", func(b *testing.B) {
		for b.Loop() {
			for _, d := range docs {
				if _, err := Decode(d); err != nil {
					b.Fatal(err)
				}
			}
		}
		perSec(b, b.N*lifeStages, "events/s")
	})
	b.Run("Fold", func(b *testing.B) {
		for b.Loop() {
			if _, err := machine.Fold(evs); err != nil {
				b.Fatal(err)
			}
		}
		perSec(b, b.N*lifeStages, "events/s")
	})
}
