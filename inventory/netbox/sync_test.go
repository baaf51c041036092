package netbox

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go"
	nb "github.com/netbox-community/go-netbox/v4"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/microdc/mdc/dhcp"
	"github.com/microdc/mdc/events"
	"github.com/microdc/mdc/inventory"
	"github.com/microdc/mdc/inventory/netbox/netboxtest"
	"github.com/microdc/mdc/machine"
)

const testToken = "0123456789abcdef0123456789abcdef01234567"

// env is an embedded NATS with the event store, the NetBox stand-in and a
// running sync.
type env struct {
	ctx   context.Context
	store *events.Store
	nb    *netboxtest.Server
	url   string
	sync  *Syncer
	stop  func()
}

func startEnv(t testing.TB, cfg Config) *env {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	conn, err := events.Connect(ctx, events.NATSConfig{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	metrics := events.NewMetrics(prometheus.NewRegistry())
	l, err := events.OpenLog(ctx, conn.NC, events.LogConfig{Metrics: metrics})
	if err != nil {
		t.Fatal(err)
	}
	store := events.NewStore(l, events.NewTable(nil, metrics), nil)
	storeDone := make(chan error, 1)
	go func() { storeDone <- store.Run(ctx) }()
	if err := store.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	srv, hs := netboxtest.Start(t, testToken)
	cfg.URL, cfg.Token = hs.URL, testToken
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff, cfg.MaxBackoff = 20*time.Millisecond, 200*time.Millisecond
	}
	cfg.Metrics = NewMetrics(prometheus.NewRegistry())
	if cfg.Leases == withLeases {
		kv, err := dhcp.NewKVStore(ctx, jsOf(t, conn.NC), "")
		if err != nil {
			t.Fatal(err)
		}
		cfg.Leases = kvLeases{kv}
	}
	s, err := New(cfg, conn.NC, StoreMachines(store))
	if err != nil {
		t.Fatal(err)
	}
	syncDone := make(chan error, 1)
	go func() { syncDone <- s.Run(ctx) }()
	e := &env{ctx: ctx, store: store, nb: srv, url: hs.URL, sync: s}
	stopped := false
	e.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-syncDone; err != nil {
			t.Errorf("sync: %v", err)
		}
		if err := <-storeDone; err != nil {
			t.Errorf("store: %v", err)
		}
		conn.Close()
	}
	t.Cleanup(e.stop)
	return e
}

// append records one event through the store, as the API and agent do.
func (e *env) append(t testing.TB, id machine.ID, typ machine.EventType, data any) {
	t.Helper()
	_, _, err := e.store.Update(e.ctx, id, func(m machine.Machine) (machine.Event, error) {
		return machine.NewEvent(id, typ, "test", data)
	})
	if err != nil {
		t.Fatalf("%s %s: %v", id, typ, err)
	}
}

// level waits until NetBox has every event of the log.
func (e *env) level(t testing.TB, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		last, err := e.store.LastSeq(e.ctx)
		if err != nil {
			t.Fatal(err)
		}
		st := e.sync.Status(e.ctx)
		if st.Lag == 0 && st.LastAppliedSeq >= last {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("NetBox not level after %v: %+v (log at %d)", within, st, last)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (e *env) client() *nb.APIClient {
	cfg := nb.NewConfiguration()
	cfg.Servers = nb.ServerConfigurations{{URL: e.url}}
	cfg.AddDefaultHeader("Authorization", "Token "+testToken)
	return nb.NewAPIClient(cfg)
}

// view is what an operator sees of one device in NetBox.
type view struct {
	Name, Status, Role, Serial, Description string
	Tags                                    []string
	CF                                      map[string]string
	Interfaces                              []string // "name primary-MAC [other MACs]"
}

func slug(v any) string {
	m, _ := v.(map[string]any)
	return fmt.Sprint(m["slug"])
}

// devices shows NetBox's devices by mdc_id (or name for a device without one).
func (e *env) devices(t testing.TB) map[string]view {
	t.Helper()
	out := map[string]view{}
	ifaces := e.nb.Objects("dcim/interfaces")
	for _, d := range e.nb.Objects("dcim/devices") {
		v := view{Name: fmt.Sprint(d["name"]), Status: fmt.Sprint(d["status"].(map[string]any)["value"]),
			Role: slug(d["role"]), Serial: fmt.Sprint(d["serial"]), Description: fmt.Sprint(d["description"]), CF: map[string]string{}}
		if v.Serial == "<nil>" {
			v.Serial = ""
		}
		if v.Description == "<nil>" {
			v.Description = ""
		}
		for _, tg := range d["tags"].([]any) {
			v.Tags = append(v.Tags, slug(tg))
		}
		for k, val := range d["custom_fields"].(map[string]any) {
			if val != nil {
				v.CF[k] = cfString(val)
			}
		}
		for _, ifc := range ifaces {
			if ifc["device"].(map[string]any)["id"] != d["id"] {
				continue
			}
			line := fmt.Sprint(ifc["name"])
			if p, ok := ifc["primary_mac_address"].(map[string]any); ok {
				line += " " + fmt.Sprint(p["mac_address"])
			}
			for _, m := range ifc["mac_addresses"].([]any) {
				mac := fmt.Sprint(m.(map[string]any)["mac_address"])
				if !strings.Contains(line, mac) {
					line += " +" + mac
				}
			}
			v.Interfaces = append(v.Interfaces, line)
		}
		sort.Strings(v.Interfaces)
		key := v.CF[CFID]
		if key == "" {
			key = v.Name
		}
		if _, dup := out[key]; dup {
			t.Errorf("two NetBox devices for %s", key)
		}
		out[key] = v
	}
	return out
}

var facts = machine.Facts{
	Vendor: "QEMU", Product: "Standard PC", Serial: "SN-0001", CPUModel: "AMD EPYC 7302", CPUs: 16,
	MemoryBytes: 2 << 40, // 2 TiB: MiB beyond what %v prints without an exponent
	Disks:       []machine.Disk{{Name: "nvme0n1", SizeBytes: 960e9}, {Name: "sda", SizeBytes: 4e12, Rotational: true}},
	NICs:        []machine.NIC{{Name: "eno1", MAC: "52:54:00:00:00:01"}, {Name: "eno2", MAC: "52:54:00:00:01:01"}},
}

// lifecycle takes a machine from discovered to joined.
func (e *env) lifecycle(t testing.TB, id machine.ID) {
	e.append(t, id, machine.Discovered, machine.DiscoveredData{Via: "dhcp"})
	e.append(t, id, machine.CommissioningStarted, machine.CommissioningBootData{})
	e.append(t, id, machine.FactsReported, facts)
	e.append(t, id, machine.RoleAssigned, machine.RoleAssignedData{Role: "ceph", By: "policy"})
	e.append(t, id, machine.ProvisioningStarted, machine.ProvisioningBootData{ProvisioningStartedData: machine.ProvisioningStartedData{Role: "ceph"}})
	e.append(t, id, machine.Booted, machine.BootedData{})
	e.append(t, id, machine.Joined, machine.JoinedData{Role: "ceph"})
}

func joinedView() view {
	return view{
		Name: "mdc-525400000001", Status: "active", Role: "ceph", Serial: "SN-0001", Tags: []string{"mdc"},
		CF: map[string]string{CFID: "525400000001", CFState: "joined", CFCPU: "16 × AMD EPYC 7302",
			CFMemory: "2097152", CFDisks: "nvme0n1 960 GB SSD, sda 4.0 TB HDD"},
		Interfaces: []string{"eno1 52:54:00:00:00:01", "eno2 52:54:00:00:01:01"},
	}
}

func TestLifecycleReachesNetBox(t *testing.T) {
	e := startEnv(t, Config{})
	id := machine.MustParseID("52:54:00:00:00:01")

	e.append(t, id, machine.Discovered, machine.DiscoveredData{Via: "dhcp"})
	e.level(t, 10*time.Second)
	want := map[string]view{"525400000001": {
		Name: "mdc-525400000001", Status: "planned", Role: "mdc-unassigned", Tags: []string{"mdc"},
		CF:         map[string]string{CFID: "525400000001", CFState: "discovered"},
		Interfaces: []string{"pxe0 52:54:00:00:00:01"},
	}}
	if diff := cmp.Diff(want, e.devices(t)); diff != "" {
		t.Errorf("after discovered (-want +got):\n%s", diff)
	}

	e.append(t, id, machine.CommissioningStarted, machine.CommissioningBootData{})
	e.append(t, id, machine.FactsReported, facts)
	e.append(t, id, machine.RoleAssigned, machine.RoleAssignedData{Role: "ceph", By: "policy"})
	e.level(t, 10*time.Second)
	got := e.devices(t)["525400000001"]
	if got.Status != "staged" || got.Role != "ceph" || got.CF[CFState] != "provisioning" {
		t.Errorf("after role_assigned: %+v", got)
	}

	e.append(t, id, machine.ProvisioningStarted, machine.ProvisioningBootData{ProvisioningStartedData: machine.ProvisioningStartedData{Role: "ceph"}})
	e.append(t, id, machine.Booted, machine.BootedData{})
	e.append(t, id, machine.Joined, machine.JoinedData{Role: "ceph"})
	e.level(t, 10*time.Second)
	if diff := cmp.Diff(map[string]view{"525400000001": joinedView()}, e.devices(t)); diff != "" {
		t.Errorf("after joined (-want +got):\n%s", diff)
	}
	// Exactly the objects expected, nothing twice.
	counts := map[string]int{}
	for _, k := range []string{"dcim/devices", "dcim/interfaces", "dcim/mac-addresses", "dcim/device-roles", "dcim/sites", "dcim/device-types", "extras/tags", "extras/custom-fields"} {
		counts[k] = len(e.nb.Objects(k))
	}
	wantCounts := map[string]int{"dcim/devices": 1, "dcim/interfaces": 2, "dcim/mac-addresses": 2, "dcim/device-roles": 2,
		"dcim/sites": 1, "dcim/device-types": 1, "extras/tags": 1, "extras/custom-fields": 5}
	if diff := cmp.Diff(wantCounts, counts); diff != "" {
		t.Errorf("NetBox objects (-want +got):\n%s", diff)
	}
	for _, m := range e.nb.Objects("dcim/mac-addresses") {
		if m["assigned_object"] == nil {
			t.Errorf("MAC %v is not assigned to an interface", m["mac_address"])
		}
	}
	st := e.sync.Status(e.ctx)
	if st.Failing || st.LastError != "" {
		t.Errorf("status after a clean run: %+v", st)
	}
	t.Logf("%d NetBox requests for one machine's lifecycle: %v", e.nb.Requests(), e.nb.RequestCounts())
}

func TestResyncCreatesNothingTwiceAndKeepsOperatorEdits(t *testing.T) {
	e := startEnv(t, Config{})
	id := machine.MustParseID("52:54:00:00:00:01")
	e.lifecycle(t, id)
	e.level(t, 10*time.Second)
	before := map[string]int{}
	for _, k := range []string{"dcim/devices", "dcim/interfaces", "dcim/mac-addresses", "dcim/device-roles"} {
		before[k] = len(e.nb.Objects(k))
	}

	// The operator renames the device and describes it.
	dev := e.nb.Objects("dcim/devices")[0]
	p := nb.NewPatchedWritableDeviceWithConfigContextRequest()
	p.SetName("ceph-a1")
	p.SetDescription("rack A, slot 1")
	if _, _, err := e.client().DcimAPI.DcimDevicesPartialUpdate(e.ctx, int32(dev["id"].(float64))).PatchedWritableDeviceWithConfigContextRequest(*p).Execute(); err != nil {
		t.Fatal(err)
	}

	writes := func() int {
		n := 0
		for k, v := range e.nb.RequestCounts() {
			if !strings.HasPrefix(k, "GET ") {
				n += v
			}
		}
		return n
	}
	before["writes"] = writes()
	if err := e.sync.Resync(e.ctx); err != nil {
		t.Fatal(err)
	}
	e.level(t, 10*time.Second)
	if st := e.sync.Status(e.ctx); st.Resyncs != 1 {
		t.Errorf("resyncs %d", st.Resyncs)
	}
	after := map[string]int{}
	for k := range before {
		after[k] = len(e.nb.Objects(k))
	}
	// Everything was level: the replay only read.
	after["writes"] = writes()
	if diff := cmp.Diff(before, after); diff != "" {
		t.Errorf("objects after resync (-before +after):\n%s", diff)
	}
	want := joinedView()
	want.Name, want.Description = "ceph-a1", "rack A, slot 1"
	if diff := cmp.Diff(map[string]view{"525400000001": want}, e.devices(t)); diff != "" {
		t.Errorf("after resync (-want +got):\n%s", diff)
	}
	// A later event changes what mdc owns and nothing else.
	e.append(t, id, machine.Failed, machine.FailedData{Reason: "OSD down"})
	e.level(t, 10*time.Second)
	want.Status, want.CF[CFState] = "failed", "failed"
	if diff := cmp.Diff(map[string]view{"525400000001": want}, e.devices(t)); diff != "" {
		t.Errorf("after failed (-want +got):\n%s", diff)
	}
}

func TestSyncRestartsWhereItStopped(t *testing.T) {
	e := startEnv(t, Config{})
	id := machine.MustParseID("52:54:00:00:00:01")
	e.lifecycle(t, id)
	e.level(t, 10*time.Second)
	// A second sync on the same durable consumer (mdc restarted) has
	// nothing left to do and creates nothing.
	n := e.nb.Requests()
	s2, err := New(Config{URL: e.url, Token: testToken}, natsOf(t, e), StoreMachines(e.store))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(e.ctx)
	done := make(chan error, 1)
	go func() { done <- s2.Run(ctx) }()
	time.Sleep(300 * time.Millisecond)
	if st := s2.Status(ctx); st.Lag != 0 {
		t.Errorf("restarted sync lag %d", st.Lag)
	}
	cancel()
	<-done
	if got := e.nb.Requests() - n; got != 0 {
		t.Errorf("a restart with nothing new made %d NetBox requests", got)
	}
}

func TestNetBoxDownLosesNothing(t *testing.T) {
	e := startEnv(t, Config{HTTPClient: &http.Client{Timeout: 300 * time.Millisecond}})
	e.level(t, 5*time.Second)
	e.nb.SetFault(netboxtest.Unavailable)
	var ids []machine.ID
	for i := 1; i <= 5; i++ {
		id := machine.MustParseID(fmt.Sprintf("52:54:00:00:00:%02x", i))
		ids = append(ids, id)
		e.append(t, id, machine.Discovered, machine.DiscoveredData{Via: "dhcp"})
	}
	st := e.statusUntil(func(st inventory.SyncStatus) bool {
		return st.Failing && strings.Contains(st.LastError, "503") && st.Lag > 0
	})
	if !st.Failing || !strings.Contains(st.LastError, "503") || st.Lag == 0 {
		t.Errorf("status while NetBox answers 503: %+v", st)
	}
	e.nb.SetFault(netboxtest.Reset)
	e.append(t, ids[0], machine.CommissioningStarted, machine.CommissioningBootData{})
	e.append(t, ids[0], machine.FactsReported, facts)
	st = e.statusUntil(func(st inventory.SyncStatus) bool { return st.Failing && st.Lag > 0 })
	if !st.Failing || st.Lag == 0 {
		t.Errorf("status while NetBox resets connections: %+v", st)
	}
	t.Logf("while down: %+v", st)
	// Then too slow to answer within the client's timeout.
	e.nb.SetFault(netboxtest.NoFault)
	e.nb.SetDelay(time.Second)
	e.append(t, ids[1], machine.Retired, machine.RetiredData{Reason: "test"})
	// The client's timeout or the sync's own deadline for the call, which
	// ever ends first: both say the call timed out.
	timedOut := func(st inventory.SyncStatus) bool {
		return st.Failing && (strings.Contains(st.LastError, "Timeout") || strings.Contains(st.LastError, "deadline exceeded"))
	}
	if st = e.statusUntil(timedOut); !timedOut(st) {
		t.Errorf("status while NetBox is slow: %+v", st)
	}
	e.nb.SetDelay(0)
	e.level(t, 15*time.Second)
	devs := e.devices(t)
	if len(devs) != 5 {
		t.Fatalf("%d devices, want 5", len(devs))
	}
	for _, id := range ids {
		v, ok := devs[string(id)]
		if !ok {
			t.Errorf("no device for %s", id)
			continue
		}
		wantIfaces := 1
		if id == ids[0] {
			wantIfaces = 2
		}
		if id == ids[1] && v.Status != "decommissioning" {
			t.Errorf("%s: status %s after retired", id, v.Status)
		}
		if len(v.Interfaces) != wantIfaces {
			t.Errorf("%s: interfaces %v", id, v.Interfaces)
		}
	}
	if n := len(e.nb.Objects("dcim/mac-addresses")); n != 6 {
		t.Errorf("%d MAC objects, want 6", n)
	}
	if st := e.sync.Status(e.ctx); st.Failing {
		t.Errorf("still failing after NetBox came back: %+v", st)
	}
}

func natsOf(t testing.TB, e *env) *nats.Conn {
	t.Helper()
	return e.sync.nc
}

// statusUntil polls the sync's status until ok holds, for up to 5 s, and
// returns the last status read.
func (e *env) statusUntil(ok func(inventory.SyncStatus) bool) inventory.SyncStatus {
	deadline := time.Now().Add(5 * time.Second)
	for {
		st := e.sync.Status(e.ctx)
		if ok(st) || time.Now().After(deadline) {
			return st
		}
		time.Sleep(20 * time.Millisecond)
	}
}
