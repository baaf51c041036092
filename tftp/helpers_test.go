package tftp

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// fakeRecorder keeps what the server reports.
type fakeRecorder struct {
	mu     sync.Mutex
	served []Served
}

func (r *fakeRecorder) Served(_ context.Context, f Served) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.served = append(r.served, f)
}

func (r *fakeRecorder) all() []Served {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Served(nil), r.served...)
}

// wait returns what was recorded once there are n events, or after 10 s.
func (r *fakeRecorder) wait(t *testing.T, n int) []Served {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := r.all()
		if len(got) >= n || time.Now().After(deadline) {
			return got
		}
		time.Sleep(time.Millisecond)
	}
}

// testServer is a Server on 127.0.0.1, port 0.
type testServer struct {
	*Server
	addr string
	reg  *prometheus.Registry
	rec  *fakeRecorder
	stop func() error // cancels Serve and returns what it returned
}

func startServer(t *testing.T, cfg Config) *testServer {
	t.Helper()
	ts := &testServer{reg: prometheus.NewRegistry(), rec: &fakeRecorder{}}
	cfg.Registerer = ts.reg
	cfg.Recorder = ts.rec
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ts.Server = s
	conn, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts.addr = conn.LocalAddr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, conn) }()
	var once sync.Once
	var serveErr error
	ts.stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case serveErr = <-done:
			case <-time.After(30 * time.Second):
				serveErr = errors.New("Serve did not return 30 s after its context ended")
			}
		})
		return serveErr
	}
	t.Cleanup(func() {
		if err := ts.stop(); err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return ts
}

func (ts *testServer) errors(reason string) float64 {
	return value(ts.metrics.errors.WithLabelValues(reason))
}

// randomFile writes size random bytes to dir/name and returns them.
func randomFile(t testing.TB, dir, name string, size int) []byte {
	t.Helper()
	b := make([]byte, size)
	rand.Read(b)
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return b
}

// tftpError is an ERROR packet as a client sees it.
type tftpError struct {
	Code uint16
	Msg  string
}

// rawRequest sends one datagram to addr and returns the first reply. It is
// the client for requests pin/tftp's client cannot make (NUL in names, odd
// modes, garbage).
func rawRequest(t *testing.T, addr string, pkt []byte) []byte {
	t.Helper()
	conn, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.WriteTo(pkt, ua); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 65536)
	n, _, err := conn.ReadFrom(buf)
	if err != nil {
		t.Fatalf("no reply to %q: %v", pkt, err)
	}
	return buf[:n]
}

// rrq builds a read request; fields are joined with NULs.
func rrq(fields ...string) []byte {
	b := []byte{0, 1}
	for _, f := range fields {
		b = append(b, f...)
		b = append(b, 0)
	}
	return b
}

// asError decodes an ERROR packet, or fails the test.
func asError(t *testing.T, p []byte) tftpError {
	t.Helper()
	if len(p) < 4 || binary.BigEndian.Uint16(p) != 5 {
		t.Fatalf("reply is not a TFTP ERROR packet: % x", p[:min(len(p), 32)])
	}
	return tftpError{Code: binary.BigEndian.Uint16(p[2:]), Msg: string(bytes.TrimRight(p[4:], "\x00"))}
}

// value reads a counter or gauge.
func value(m prometheus.Metric) float64 {
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		panic(err)
	}
	if d.Counter != nil {
		return d.Counter.GetValue()
	}
	return d.Gauge.GetValue()
}
