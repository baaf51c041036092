package netbox

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/microdc/mdc/dhcp"
	"github.com/microdc/mdc/machine"
)

// withLeases asks startEnv for the real lease bucket on the test's NATS.
var withLeases LeaseSource = kvLeases{}

// kvLeases is cmd/mdc's adapter from the DHCP lease bucket, in small.
type kvLeases struct{ kv *dhcp.KVStore }

func (k kvLeases) Watch(ctx context.Context, fn func(machine.ID, netip.Addr, bool), ready func()) error {
	return k.kv.Watch(ctx, func(l dhcp.Lease, _ uint64) {
		if id, err := machine.ParseID(l.Client); err == nil {
			fn(id, l.Addr, l.State == dhcp.LeaseBound && l.ActiveAt(time.Now()))
		}
	}, ready)
}

func jsOf(t testing.TB, nc *nats.Conn) jetstream.JetStream {
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// waitFor polls NetBox until ok says it shows what the test wants.
func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("NetBox never showed %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestLeaseAndBMCAddresses(t *testing.T) {
	e := startEnv(t, Config{Leases: withLeases, Subnets: []netip.Prefix{netip.MustParsePrefix("10.9.0.0/24")}})
	id := machine.MustParseID("52:54:00:00:00:01")
	e.append(t, id, machine.Enrolled, machine.EnrolledData{Via: "cli",
		BMC: &machine.BMC{URL: "https://10.9.1.5:443/redfish/v1", User: "admin", Credential: "bmc-525400000001"}})
	e.level(t, 10*time.Second)

	kv := e.sync.cfg.Leases.(kvLeases).kv
	if _, err := kv.Create(e.ctx, dhcp.Lease{Addr: netip.MustParseAddr("10.9.0.50"), Client: string(id),
		State: dhcp.LeaseBound, Expires: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	var dev map[string]any
	waitFor(t, "the lease as primary IPv4", func() bool {
		devs := e.nb.Objects("dcim/devices")
		if len(devs) != 1 {
			return false
		}
		dev = devs[0]
		p, _ := dev["primary_ip4"].(map[string]any)
		return p != nil && p["address"] == "10.9.0.50/24"
	})
	oob, _ := dev["oob_ip"].(map[string]any)
	if oob == nil || oob["address"] != "10.9.1.5/32" {
		t.Errorf("oob_ip %v", dev["oob_ip"])
	}
	where := map[string]string{}
	for _, ip := range e.nb.Objects("ipam/ip-addresses") {
		ao, _ := ip["assigned_object"].(map[string]any)
		where[fmt.Sprint(ip["address"])] = fmt.Sprint(ao["name"])
	}
	if where["10.9.0.50/24"] != "pxe0" || where["10.9.1.5/32"] != bmcIface || len(where) != 2 {
		t.Errorf("addresses on interfaces: %v", where)
	}
	for _, ifc := range e.nb.Objects("dcim/interfaces") {
		if ifc["name"] == bmcIface && ifc["mgmt_only"] != true {
			t.Errorf("the BMC interface is not management-only: %v", ifc)
		}
	}
	// A replay writes nothing new.
	if err := e.sync.Resync(e.ctx); err != nil {
		t.Fatal(err)
	}
	e.level(t, 10*time.Second)
	if n := len(e.nb.Objects("ipam/ip-addresses")); n != 2 {
		t.Errorf("%d IP addresses after resync", n)
	}
	if n := len(e.nb.Objects("dcim/interfaces")); n != 2 {
		t.Errorf("%d interfaces after resync", n)
	}
}
