// Package eventstest runs a real event store for tests: an embedded
// nats-server with JetStream in a temporary directory, the log and the
// machine table, all stopped when the test ends.
package eventstest

import (
	"context"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/microdc/mdc/events"
)

// Fixture is one running store.
type Fixture struct {
	Ctx      context.Context // ends when the test ends
	NC       *nats.Conn      // the embedded server's in-process connection
	Store    *events.Store
	Registry *prometheus.Registry // holds the store's metrics
}

// Start runs a store that replays into its table before Start returns.
func Start(t testing.TB) *Fixture {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	conn, err := events.Connect(ctx, events.NATSConfig{DataDir: t.TempDir()})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	metrics := events.NewMetrics(reg)
	l, err := events.OpenLog(ctx, conn.NC, events.LogConfig{Metrics: metrics})
	if err != nil {
		cancel()
		conn.Close()
		t.Fatal(err)
	}
	store := events.NewStore(l, events.NewTable(nil, metrics), nil)
	done := make(chan error, 1)
	go func() { done <- store.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("store: %v", err)
		}
		conn.Close()
	})
	if err := store.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	return &Fixture{Ctx: ctx, NC: conn.NC, Store: store, Registry: reg}
}
