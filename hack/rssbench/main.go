// Command rssbench measures the memory of `mdc serve` (issue 2): idle on an
// empty data directory, and holding 10,000 machines of 20 lifecycle events
// each, stored into the data directory through package events before serve
// starts, so that the figure includes serve's replay. Its peer is a process
// that only runs the same embedded JetStream on that store (after serve has
// stopped) and reads every event once without folding it: the difference is
// what the machine table and the rest of mdc cost.
//
//	rssbench [-mdc PATH] [-machines N] [-events N] [-settle DUR]
//	rssbench peer -dir DIR -http-addr ADDR   (run by rssbench itself: the JetStream peer)
//
// Every process it starts it stops by PID. It prints one line per case:
//
//	rss case=full machines=10000 events=200000 ready_s=… rss_ready_kib=… rss_settled_kib=… hwm_kib=… heap_inuse_kib=…
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/microdc/mdc/events"
	"github.com/microdc/mdc/machine"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "rssbench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "peer" {
		fs := flag.NewFlagSet("peer", flag.ContinueOnError)
		dir := fs.String("dir", "", "data directory holding nats/")
		addr := fs.String("http-addr", "127.0.0.1:0", "where to answer /readyz and /metrics")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		return peer(ctx, *dir, *addr)
	}
	fs := flag.NewFlagSet("rssbench", flag.ContinueOnError)
	mdcBin := fs.String("mdc", "", "the mdc binary (default: go build ./cmd/mdc into a temporary directory)")
	machines := fs.Int("machines", 10_000, "machines to store")
	perMachine := fs.Int("events", 20, "lifecycle events per machine (at most 20)")
	settle := fs.Duration("settle", 12*time.Second, "how long after ready to read RSS again (JetStream block caches expire after 10s)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *perMachine < 1 || *perMachine > len(lifeTypes) {
		return fmt.Errorf("-events %d: want 1 to %d", *perMachine, len(lifeTypes))
	}
	tmp, err := os.MkdirTemp("", "mdc-rssbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if *mdcBin == "" {
		*mdcBin = filepath.Join(tmp, "mdc")
		build := exec.CommandContext(ctx, "go", "build", "-o", *mdcBin, "./cmd/mdc")
		build.Stdout, build.Stderr = stderr, stderr
		if err := build.Run(); err != nil {
			return fmt.Errorf("go build ./cmd/mdc (run rssbench from the repository root, or pass -mdc): %w", err)
		}
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}

	idle, err := measureServe(ctx, *mdcBin, filepath.Join(tmp, "idle"), *settle, stderr)
	if err != nil {
		return fmt.Errorf("idle mdc: %w", err)
	}
	idle.print(stdout, "idle", 0, 0)

	full := filepath.Join(tmp, "full")
	start := time.Now()
	n := *machines * *perMachine
	if err := fill(ctx, full, *machines, *perMachine); err != nil {
		return fmt.Errorf("fill: %w", err)
	}
	fmt.Fprintf(stderr, "stored %d events in %s\n", n, time.Since(start).Round(time.Millisecond))
	loaded, err := measureServe(ctx, *mdcBin, full, *settle, stderr)
	if err != nil {
		return fmt.Errorf("mdc with %d events: %w", n, err)
	}
	if loaded.machines != *machines || loaded.applied != uint64(n) {
		return fmt.Errorf("mdc reports %d machines at sequence %d, want %d and %d", loaded.machines, loaded.applied, *machines, n)
	}
	loaded.print(stdout, "full", *machines, n)

	port, err := freePort()
	if err != nil {
		return err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	raw, err := measure(ctx, exec.Command(self, "peer", "-dir", full, "-http-addr", addr), "http://"+addr, *settle, stderr)
	if err != nil {
		return fmt.Errorf("JetStream peer: %w", err)
	}
	raw.print(stdout, "raw-js", *machines, n)
	return nil
}

// figures of one process.
type figures struct {
	ready                        time.Duration
	rssReady, rssSettled, hwmKiB int64
	heapInuseKiB                 int64 // from /metrics
	machines                     int
	applied                      uint64
}

func (f figures) print(w io.Writer, name string, machines, n int) {
	fmt.Fprintf(w, "rss case=%s machines=%d events=%d ready_s=%.2f rss_ready_kib=%d rss_settled_kib=%d hwm_kib=%d heap_inuse_kib=%d\n",
		name, machines, n, f.ready.Seconds(), f.rssReady, f.rssSettled, f.hwmKiB, f.heapInuseKiB)
}

// measureServe runs mdc serve on dir and measures it.
func measureServe(ctx context.Context, bin, dir string, settle time.Duration, stderr io.Writer) (figures, error) {
	port, err := freePort()
	if err != nil {
		return figures{}, err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	cmd := exec.Command(bin, "serve", "--data-dir", dir, "--http-addr", addr, "--log-level", "warn")
	f, err := measure(ctx, cmd, "http://"+addr, settle, stderr)
	return f, err
}

// measure starts cmd, waits until base's /readyz answers 200, reads its
// memory at once and again after settle, and stops it by PID.
func measure(ctx context.Context, cmd *exec.Cmd, base string, settle time.Duration, stderr io.Writer) (figures, error) {
	var f figures
	cmd.Stdout, cmd.Stderr = io.Discard, stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return f, err
	}
	pid := cmd.Process.Pid
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		// Stop what we started, by its PID: SIGTERM, then SIGKILL.
		_ = syscall.Kill(pid, syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			_ = syscall.Kill(pid, syscall.SIGKILL)
			<-exited
		}
	}()

	deadline := time.After(3 * time.Minute)
	client := &http.Client{Timeout: 2 * time.Second}
	for {
		if resp, err := client.Get(base + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		select {
		case err := <-exited:
			return f, fmt.Errorf("exited before ready: %v", err)
		case <-deadline:
			return f, errors.New("not ready after 3 minutes")
		case <-ctx.Done():
			return f, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	f.ready = time.Since(start)
	rss, hwm, err := procMemory(pid)
	if err != nil {
		return f, err
	}
	f.rssReady = rss
	select {
	case <-time.After(settle):
	case err := <-exited:
		return f, fmt.Errorf("exited while settling: %v", err)
	case <-ctx.Done():
		return f, ctx.Err()
	}
	if f.rssSettled, f.hwmKiB, err = procMemory(pid); err != nil {
		return f, err
	}
	// The kernel's RSS counters are per CPU and may lag a little behind.
	f.hwmKiB = max(f.hwmKiB, hwm, rss)
	return f, readMetrics(base, &f)
}

// procMemory reads VmRSS and VmHWM (KiB) from /proc/PID/status.
func procMemory(pid int) (rss, hwm int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for line := range strings.Lines(string(b)) {
		k, v, ok := strings.Cut(line, ":")
		if !ok || (k != "VmRSS" && k != "VmHWM") {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("%s in /proc/%d/status: %q", k, pid, v)
		}
		if k == "VmRSS" {
			rss = n
		} else {
			hwm = n
		}
	}
	if rss == 0 || hwm == 0 {
		return 0, 0, fmt.Errorf("no VmRSS/VmHWM in /proc/%d/status", pid)
	}
	return rss, hwm, nil
}

// readMetrics takes the Go heap, the machine count and the applied sequence
// from mdc's /metrics.
func readMetrics(base string, f *figures) error {
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), " ")
		if !ok || strings.HasPrefix(name, "#") {
			continue
		}
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			continue
		}
		switch {
		case name == "go_memstats_heap_inuse_bytes":
			f.heapInuseKiB = int64(v) / 1024
		case strings.HasPrefix(name, "mdc_machines{"):
			f.machines += int(v)
		case name == "mdc_projection_applied_sequence":
			f.applied = uint64(v)
		}
	}
	return sc.Err()
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// peer runs the embedded JetStream on dir, reads every lifecycle event once
// with an ordered consumer, and answers /readyz (then) and /metrics (the Go
// runtime's) on addr until it is stopped.
func peer(ctx context.Context, dir, addr string) error {
	var ready atomic.Bool
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector())
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if !ready.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()

	conn, err := events.Connect(ctx, events.NATSConfig{DataDir: dir})
	if err != nil {
		return err
	}
	defer conn.Close()
	js, err := jetstream.New(conn.NC)
	if err != nil {
		return err
	}
	s, err := js.Stream(ctx, events.MachineStream)
	if err != nil {
		return err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return err
	}
	c, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		return err
	}
	it, err := c.Messages(jetstream.PullMaxMessages(2048))
	if err != nil {
		return err
	}
	var bytes int
	for range info.State.Msgs {
		msg, err := it.Next()
		if err != nil {
			return err
		}
		bytes += len(msg.Data())
	}
	it.Stop()
	ready.Store(true)
	<-ctx.Done()
	return nil
}

// lifeTypes is a believable life, every step legal for the fold; the same
// one events/bench_test.go stores.
var lifeTypes = []machine.EventType{
	machine.Discovered, machine.CommissioningStarted, machine.FactsReported, machine.RoleAssigned,
	machine.PowerRequested, machine.PowerChanged, machine.ProvisioningStarted, machine.Booted,
	machine.Joined, machine.Renamed,
	machine.PowerRequested, machine.PowerChanged, machine.ProvisioningStarted, machine.Booted, machine.Joined,
	machine.PowerRequested, machine.PowerChanged, machine.ProvisioningStarted, machine.Booted, machine.Joined,
}

func mustJSON(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

func machineID(i int) machine.ID { return machine.ID(fmt.Sprintf("5254%08x", i)) }
func secondNIC(i int) machine.ID { return machine.ID(fmt.Sprintf("5255%08x", i)) }

func lifeData(i, stage int) json.RawMessage {
	switch stage {
	case 0:
		return mustJSON(machine.DiscoveredData{Via: "dhcp", Arch: "x86_64-efi", VendorClass: "PXEClient:Arch:00007:UNDI:003016", Interface: "eth0"})
	case 1:
		return mustJSON(machine.ImageData{Image: "commissioning-25.11"})
	case 2:
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
				{Name: "eth0", MAC: machineID(i).MAC(), Driver: "ixgbe", SpeedMbps: 10000, Carrier: true},
				{Name: "eth1", MAC: secondNIC(i).MAC(), Driver: "ixgbe", SpeedMbps: 10000, Carrier: true},
			},
		})
	case 3:
		return mustJSON(machine.RoleAssignedData{Role: "ceph", By: "policy", Reason: "4 disks"})
	case 9:
		return mustJSON(machine.RenamedData{Name: fmt.Sprintf("rack%d-u%02d", i/42, i%42)})
	}
	base := 4
	if stage >= 15 {
		base = 15
	} else if stage >= 10 {
		base = 10
	}
	image := "ceph-25.11." + strconv.Itoa(base)
	switch stage - base {
	case 0:
		return mustJSON(machine.PowerData{Action: "cycle", Result: "ok"})
	case 1:
		return mustJSON(machine.PowerData{State: "on"})
	case 2:
		return mustJSON(machine.ProvisioningStartedData{Role: "ceph", Image: image})
	case 3:
		return mustJSON(machine.BootedData{Image: image, Kernel: "6.12.48"})
	default:
		return mustJSON(machine.JoinedData{Role: "ceph", Evidence: map[string]string{"osd": "up", "in": "true"}})
	}
}

// fill stores the machines' lives in dir through package events, a stage at
// a time across the rack, as mdc would have appended them, but pipelined
// over loopback TCP (faster than the in-process pipe). Without Nats-Msg-Id:
// serve starts within the two-minute dedupe window, and would otherwise hold
// an id per event that a server restarted later does not.
func fill(ctx context.Context, dir string, machines, stages int) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	const token = "rssbench"
	conn, err := events.Connect(ctx, events.NATSConfig{DataDir: dir, Listen: "127.0.0.1:-1", Token: token})
	if err != nil {
		return err
	}
	defer conn.Close()
	if _, err := events.OpenLog(ctx, conn.NC, events.LogConfig{}); err != nil {
		return err
	}
	nc, err := nats.Connect(conn.ClientURL(), nats.Token(token))
	if err != nil {
		return err
	}
	defer nc.Close()
	var failed atomic.Int64
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096),
		jetstream.WithPublishAsyncErrHandler(func(jetstream.JetStream, *nats.Msg, error) { failed.Add(1) }))
	if err != nil {
		return err
	}
	at := time.Now().Add(-24 * time.Hour)
	for st := range stages {
		for i := range machines {
			e := machine.Event{
				ID: machine.NewEventID(), Type: lifeTypes[st], Machine: machineID(i),
				Time: at.Add(time.Duration(st) * time.Minute), Source: "rssbench", Data: lifeData(i, st),
			}
			b, err := events.Encode(e)
			if err != nil {
				return err
			}
			if _, err := js.PublishMsgAsync(&nats.Msg{Subject: events.MachineSubject(e.Machine, e.Type), Data: b},
				jetstream.WithStallWait(30*time.Second)); err != nil {
				return err
			}
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(2 * time.Minute):
		return errors.New("acks missing after two minutes")
	case <-ctx.Done():
		return ctx.Err()
	}
	if n := failed.Load(); n > 0 {
		return fmt.Errorf("%d publishes failed", n)
	}
	return nil
}
