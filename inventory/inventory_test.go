package inventory

import (
	"context"
	"errors"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/microdc/mdc/events"
	"github.com/microdc/mdc/machine"
)

func TestEmbedded(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	conn, err := events.Connect(ctx, events.NATSConfig{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	metrics := events.NewMetrics(prometheus.NewRegistry())
	l, err := events.OpenLog(ctx, conn.NC, events.LogConfig{Metrics: metrics})
	if err != nil {
		t.Fatal(err)
	}
	store := events.NewStore(l, events.NewTable(nil, metrics), nil)
	done := make(chan error, 1)
	go func() { done <- store.Run(ctx) }()
	defer func() { cancel(); <-done }()
	if err := store.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	var inv Inventory = NewEmbedded(store)
	id := machine.MustParseID("52:54:00:00:00:01")

	if _, err := inv.Lookup(ctx, id); !errors.Is(err, ErrNotFound) {
		t.Errorf("lookup of an unknown machine: %v", err)
	}
	if _, err := inv.RecordFacts(ctx, id, "test", machine.Facts{}); !errors.Is(err, ErrNotFound) {
		t.Errorf("facts for an unknown machine: %v", err)
	}
	if _, err := inv.RecordState(ctx, id, "test", machine.Discovered, machine.DiscoveredData{Via: "api"}); err != nil {
		t.Fatal(err)
	}
	// Facts straight after discovered: the fold refuses, naming both.
	var te *machine.TransitionError
	if _, err := inv.RecordFacts(ctx, id, "test", machine.Facts{}); !errors.As(err, &te) {
		t.Errorf("facts in discovered: %v", err)
	}
	if _, err := inv.RecordState(ctx, id, "test", machine.CommissioningStarted, machine.CommissioningBootData{}); err != nil {
		t.Fatal(err)
	}
	nic := machine.MustParseID("52:54:00:00:01:01")
	m, err := inv.RecordFacts(ctx, id, "test", machine.Facts{Serial: "SN1", NICs: []machine.NIC{{Name: "eth1", MAC: nic.MAC()}}})
	if err != nil || m.State != machine.Ready || m.Facts.Serial != "SN1" {
		t.Fatalf("after facts: %+v %v", m, err)
	}
	if got, err := inv.Lookup(ctx, nic); err != nil || got.ID != id {
		t.Errorf("lookup by the second NIC: %v %v", got.ID, err)
	}
	list, err := inv.List(ctx, events.Filter{State: machine.Ready})
	if err != nil || len(list) != 1 || list[0].ID != id {
		t.Errorf("list ready: %v %v", list, err)
	}
}
