// Package netbox keeps NetBox in step with mdc's event log and reads the
// operator's intent back from it. A durable JetStream consumer on the
// lifecycle stream drives idempotent upserts (found by the mdc_id custom
// field or the boot MAC before anything is created); devices tagged mdc
// that mdc has never seen become enrolled machines.
package netbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	nb "github.com/netbox-community/go-netbox/v4"

	"github.com/microdc/mdc/events"
	"github.com/microdc/mdc/inventory"
	"github.com/microdc/mdc/machine"
)

// Config of the NetBox backend.
type Config struct {
	// URL of NetBox (https://netbox.example.org) and its API token.
	URL   string
	Token string
	// NameRule names a new device: {name} is the machine's name (or
	// mdc-{id} when it has none), {id} its id, {mac} its boot MAC.
	// Default "{name}". A device renamed in NetBox keeps its name.
	NameRule string
	// Site, Manufacturer and DeviceType (slugs) of new devices, and the
	// role of a device whose machine has none yet; created if missing.
	Site, Manufacturer, DeviceType, DefaultRole string
	// Workers apply events in parallel (each machine's in order). Default 8.
	Workers int
	// PollInterval is how often devices tagged mdc are read back as intent
	// (0: never).
	PollInterval time.Duration
	// Consumer is the durable consumer's name.
	Consumer string
	// Backoff between retries of a failed event.
	MinBackoff, MaxBackoff time.Duration
	// MaxRefusals is how often NetBox may refuse one event (a 4xx) before
	// it is skipped, so that one bad machine does not hold up the rest.
	MaxRefusals int
	// Leases, in full DHCP mode, puts each machine's leased address on its
	// boot interface and makes it the device's primary IPv4; Subnets give
	// the addresses their prefix length.
	Leases     LeaseSource
	Subnets    []netip.Prefix
	HTTPClient *http.Client
	Logger     *slog.Logger
	Metrics    *Metrics
}

func (c *Config) defaults() error {
	u, err := url.Parse(c.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("NetBox URL %q: want https://host[:port]", c.URL)
	}
	if c.Token == "" {
		return errors.New("NetBox needs an API token")
	}
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&c.NameRule, "{name}")
	def(&c.Site, "mdc")
	def(&c.Manufacturer, "generic")
	def(&c.DeviceType, "mdc-server")
	def(&c.DefaultRole, "mdc-unassigned")
	def(&c.Consumer, "mdc-inventory-netbox")
	if c.Workers <= 0 {
		c.Workers = 8
	}
	if c.MinBackoff <= 0 {
		c.MinBackoff = 250 * time.Millisecond
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = 30 * time.Second
	}
	if c.MaxRefusals <= 0 {
		c.MaxRefusals = 5
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.HTTPClient == nil {
		c.HTTPClient = &http.Client{Timeout: 30 * time.Second}
	}
	return nil
}

// Machines is what the sync needs of the event store.
type Machines interface {
	Get(id machine.ID) (machine.Machine, bool)
	LookupMAC(mac machine.ID) (machine.Machine, bool)
	Update(ctx context.Context, id machine.ID, decide events.Decision) (machine.Machine, machine.Event, error)
	// WaitFor returns once the projection has applied stream sequence seq.
	WaitFor(ctx context.Context, seq uint64) error
}

// StoreMachines adapts an events.Store.
func StoreMachines(s *events.Store) Machines { return storeMachines{s} }

type storeMachines struct{ *events.Store }

func (s storeMachines) WaitFor(ctx context.Context, seq uint64) error {
	return s.Table.WaitFor(ctx, seq)
}

// Syncer keeps NetBox in step with the log.
type Syncer struct {
	cfg Config
	c   *client
	nc  *nats.Conn
	js  jetstream.JetStream
	ms  Machines
	log *slog.Logger
	m   *Metrics

	mu        sync.Mutex
	devices   map[machine.ID]*device
	leases    map[machine.ID]netip.Addr
	locks     sync.Map // machine.ID → *sync.Mutex: one writer per machine
	indexed   bool
	lastErr   string
	lastErrAt time.Time
	failing   bool
	cons      jetstream.Consumer

	lastSeq  atomic.Uint64
	applied  atomic.Uint64
	imported atomic.Uint64
	resyncs  atomic.Uint64
	lag      atomic.Uint64
	resyncC  chan chan struct{}
}

// device is what the sync knows of one machine's device in NetBox.
type device struct {
	id            int32
	role          int32
	status        string
	serial        string
	cf            map[string]string // mdc-owned custom fields as NetBox has them
	tags          []int32
	primary4, oob int32            // the device's primary IPv4 and OOB address
	mgmt          int32            // the BMC interface
	ifaces        map[string]iface // upper-case MAC → interface
	synced        string           // desired state last applied in full
}

type iface struct {
	id      int32
	name    string
	macID   int32 // the MAC address object
	primary bool  // the MAC is the interface's primary MAC
}

// New builds the sync; Run starts it.
func New(cfg Config, nc *nats.Conn, ms Machines) (*Syncer, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics(nil)
	}
	hc := *cfg.HTTPClient
	hc.Transport = countingTransport{next: transportOf(cfg.HTTPClient), m: cfg.Metrics}
	return &Syncer{
		cfg: cfg, c: newClient(&cfg, &hc), nc: nc, js: js, ms: ms, log: cfg.Logger.With("component", "netbox"), m: cfg.Metrics,
		devices: map[machine.ID]*device{}, leases: map[machine.ID]netip.Addr{}, resyncC: make(chan chan struct{}),
	}, nil
}

// errResync ends one pass of the consumer so that Run can start over.
var errResync = errors.New("resync requested")

// Run applies the log to NetBox until ctx ends, and polls intent.
func (s *Syncer) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	if s.cfg.PollInterval > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.runIntent(ctx)
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.refreshLag(ctx)
	}()
	if s.cfg.Leases != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.runLeases(ctx)
		}()
	}
	for attempt := 0; ; attempt++ {
		err := s.consume(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, errResync) {
			attempt = 0
			continue
		}
		s.setError(err)
		if !s.sleep(ctx, attempt) {
			return nil
		}
	}
}

// Resync replays the whole log into NetBox: every machine is looked up and
// written again; nothing is created twice.
func (s *Syncer) Resync(ctx context.Context) error {
	done := make(chan struct{})
	select {
	case s.resyncC <- done:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// consume runs one durable consumer until ctx ends, it fails, or a resync
// is requested.
func (s *Syncer) consume(ctx context.Context) error {
	cons, err := s.js.CreateOrUpdateConsumer(ctx, events.MachineStream, jetstream.ConsumerConfig{
		Durable:       s.cfg.Consumer,
		Description:   "mdc: keeps NetBox in step with the machines' events",
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       2 * time.Minute,
		MaxAckPending: 1024,
		MaxDeliver:    -1,
	})
	if err != nil {
		return fmt.Errorf("inventory consumer on %s: %w", events.MachineStream, err)
	}
	s.mu.Lock()
	s.cons = cons
	s.mu.Unlock()
	it, err := cons.Messages(jetstream.PullMaxMessages(256))
	if err != nil {
		return fmt.Errorf("inventory consumer: %w", err)
	}
	wctx, cancel := context.WithCancel(ctx)
	queues := make([]chan jetstream.Msg, s.cfg.Workers)
	var wg sync.WaitGroup
	for i := range queues {
		queues[i] = make(chan jetstream.Msg, 64)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for msg := range queues[i] {
				s.process(wctx, msg)
			}
		}()
	}
	var resyncDone chan struct{}
	msgs := make(chan jetstream.Msg)
	nextErr := make(chan error, 1)
	go func() {
		for {
			msg, err := it.Next()
			if err != nil {
				nextErr <- err
				close(msgs)
				return
			}
			msgs <- msg
		}
	}()
	var result error
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case resyncDone = <-s.resyncC:
			result = errResync
			break loop
		case msg, ok := <-msgs:
			if !ok {
				result = fmt.Errorf("inventory consumer: %w", <-nextErr)
				break loop
			}
			subj := strings.Split(msg.Subject(), ".") // mdc.machine.<id>.<event>
			h := fnv.New32a()
			if len(subj) == 4 {
				h.Write([]byte(subj[2]))
			}
			select {
			case queues[int(h.Sum32())%len(queues)] <- msg:
			case <-ctx.Done():
				break loop
			case resyncDone = <-s.resyncC:
				result = errResync
				break loop
			}
		}
	}
	it.Stop()
	// Stop the workers; what they had not acked is delivered again (or, on
	// a resync, replayed from the start anyway).
	cancel()
	for _, q := range queues {
		close(q)
	}
	wg.Wait()
	for range msgs { // drain the reader goroutine
	}
	if resyncDone != nil {
		defer close(resyncDone)
		if err := s.js.DeleteConsumer(ctx, events.MachineStream, s.cfg.Consumer); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
			return fmt.Errorf("resync: delete consumer: %w", err)
		}
		// Forget every id: the replay looks each device up again.
		s.mu.Lock()
		s.devices, s.indexed, s.cons = map[machine.ID]*device{}, false, nil
		s.mu.Unlock()
		s.c.forget()
		s.lastSeq.Store(0)
		s.resyncs.Add(1)
	}
	return result
}

// process applies one event and acks it only once NetBox has it.
func (s *Syncer) process(ctx context.Context, msg jetstream.Msg) {
	if ctx.Err() != nil {
		return
	}
	e, err := events.Decode(msg.Data())
	if err != nil {
		s.log.Warn("skipping undecodable event", "subject", msg.Subject(), "err", err)
		_ = msg.Ack()
		return
	}
	md, err := msg.Metadata()
	if err != nil {
		return
	}
	seq := md.Sequence.Stream
	// The projection is the machine's truth; it must have this event.
	if err := s.ms.WaitFor(ctx, seq); err != nil {
		return
	}
	refusals := 0
	for attempt := 0; ; attempt++ {
		m, _ := s.ms.Get(e.Machine)
		err := s.syncMachine(ctx, m)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return // not acked: it comes back
		}
		s.setError(fmt.Errorf("machine %s (event %s, seq %d): %w", e.Machine, e.Type, seq, err))
		if permanent(err) {
			// Something mdc cached may be gone (an operator deleted it):
			// look everything up again, a bounded number of times.
			s.forget(e.Machine)
			if refusals++; refusals >= s.cfg.MaxRefusals {
				s.log.Error("NetBox keeps refusing an event; skipping it", "machine", e.Machine, "type", e.Type, "seq", seq, "err", err)
				s.m.skipped.Inc()
				break
			}
		}
		_ = msg.InProgress()
		if !s.sleep(ctx, attempt) {
			return
		}
	}
	if err := msg.Ack(); err != nil {
		s.log.Debug("ack", "seq", seq, "err", err)
	}
	s.clearFailing()
	s.applied.Add(1)
	s.m.applied.Inc()
	for {
		old := s.lastSeq.Load()
		if seq <= old || s.lastSeq.CompareAndSwap(old, seq) {
			break
		}
	}
	s.m.lastSeq.Set(float64(s.lastSeq.Load()))
}

func (s *Syncer) sleep(ctx context.Context, attempt int) bool {
	d := s.cfg.MinBackoff << min(attempt, 16)
	if d > s.cfg.MaxBackoff || d <= 0 {
		d = s.cfg.MaxBackoff
	}
	d = d/2 + rand.N(d/2+1)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func (s *Syncer) setError(err error) {
	if err == nil {
		return
	}
	s.mu.Lock()
	s.lastErr, s.lastErrAt, s.failing = err.Error(), time.Now().UTC(), true
	s.mu.Unlock()
	s.m.errors.Inc()
	s.log.Warn("NetBox sync", "err", err)
}

func (s *Syncer) clearFailing() {
	s.mu.Lock()
	s.failing = false
	s.mu.Unlock()
}

func (s *Syncer) forget(id machine.ID) {
	s.mu.Lock()
	delete(s.devices, id)
	s.indexed = false
	s.mu.Unlock()
	s.c.forget()
}

// refreshLag reads the consumer's pending count every second.
func (s *Syncer) refreshLag(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.readLag(ctx)
		}
	}
}

func (s *Syncer) readLag(ctx context.Context) (uint64, bool) {
	s.mu.Lock()
	cons := s.cons
	s.mu.Unlock()
	ictx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if cons == nil {
		// Between a resync and the new consumer: all of the log is to come.
		st, err := s.js.Stream(ictx, events.MachineStream)
		if err != nil {
			return s.lag.Load(), false
		}
		info, err := st.Info(ictx)
		if err != nil {
			return s.lag.Load(), false
		}
		lag := info.State.Msgs
		s.lag.Store(lag)
		s.m.lag.Set(float64(lag))
		return lag, true
	}
	info, err := cons.Info(ictx)
	if err != nil {
		return s.lag.Load(), false
	}
	lag := info.NumPending + uint64(info.NumAckPending)
	s.lag.Store(lag)
	s.m.lag.Set(float64(lag))
	return lag, true
}

// Status says how far NetBox is behind the log.
func (s *Syncer) Status(ctx context.Context) inventory.SyncStatus {
	lag, _ := s.readLag(ctx)
	s.mu.Lock()
	defer s.mu.Unlock()
	return inventory.SyncStatus{
		Backend: "netbox", Target: redact(s.cfg.URL), Lag: lag, LastAppliedSeq: s.lastSeq.Load(),
		Applied: s.applied.Load(), Failing: s.failing, LastError: s.lastErr, LastErrorAt: s.lastErrAt,
		Imported: s.imported.Load(), Resyncs: s.resyncs.Load(),
	}
}

// redact drops any user:password from a URL before it is shown.
func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return ""
	}
	u.User = nil
	return u.String()
}

// desired is what NetBox should show of one machine.
type desired struct {
	IP     string         `json:"ip,omitempty"`  // the lease, with its prefix length
	BMC    string         `json:"bmc,omitempty"` // the BMC's address /32
	Role   string         `json:"role,omitempty"`
	Status string         `json:"status"`
	Serial string         `json:"serial,omitempty"`
	CF     map[string]any `json:"cf"`
	NICs   []nic          `json:"nics"`
}

type nic struct {
	Name string `json:"name"`
	MAC  string `json:"mac"` // upper case, as NetBox shows it
}

// statusOf maps a lifecycle state to a NetBox device status.
func statusOf(st machine.State) nb.DeviceStatusValue {
	switch st {
	case machine.Provisioning:
		return nb.DEVICESTATUSVALUE_STAGED
	case machine.Running, machine.StJoined:
		return nb.DEVICESTATUSVALUE_ACTIVE
	case machine.StFailed:
		return nb.DEVICESTATUSVALUE_FAILED
	case machine.StRetired:
		return nb.DEVICESTATUSVALUE_DECOMMISSIONING
	}
	return nb.DEVICESTATUSVALUE_PLANNED
}

func want(m machine.Machine) desired {
	d := desired{Role: m.Role, Status: string(statusOf(m.State)), CF: map[string]any{CFID: string(m.ID), CFState: string(m.State)}}
	boot := nic{Name: bootIfacePlaceholder, MAC: strings.ToUpper(m.ID.MAC())}
	var others []nic
	if f := m.Facts; f != nil {
		d.Serial = f.Serial
		if f.CPUs > 0 || f.CPUModel != "" {
			d.CF[CFCPU] = strings.TrimSpace(fmt.Sprintf("%d × %s", f.CPUs, f.CPUModel))
		}
		if f.MemoryBytes > 0 {
			d.CF[CFMemory] = int64(f.MemoryBytes >> 20)
		}
		if len(f.Disks) > 0 {
			var parts []string
			for _, dk := range f.Disks {
				kind := "SSD"
				if dk.Rotational {
					kind = "HDD"
				}
				parts = append(parts, fmt.Sprintf("%s %s %s", dk.Name, size(dk.SizeBytes), kind))
			}
			d.CF[CFDisks] = strings.Join(parts, ", ")
		}
		for _, n := range f.NICs {
			id, err := machine.ParseID(n.MAC)
			if err != nil || n.Name == "" {
				continue
			}
			if id == m.ID {
				boot.Name = n.Name
			} else {
				others = append(others, nic{Name: n.Name, MAC: strings.ToUpper(id.MAC())})
			}
		}
	} else {
		for i, id := range m.ExtraMACs {
			others = append(others, nic{Name: fmt.Sprintf("nic%d", i+1), MAC: strings.ToUpper(id.MAC())})
		}
	}
	d.NICs = append([]nic{boot}, others...)
	return d
}

func size(b uint64) string {
	const gb = 1000 * 1000 * 1000
	if b >= 1000*gb {
		return fmt.Sprintf("%.1f TB", float64(b)/(1000*gb))
	}
	return fmt.Sprintf("%d GB", b/gb)
}

func (d desired) key() string {
	b, _ := json.Marshal(d)
	return string(b)
}

// name applies the naming rule to a new device.
func (s *Syncer) name(m machine.Machine) string {
	name := m.Name
	if name == "" {
		name = "mdc-" + string(m.ID)
	}
	return strings.NewReplacer("{name}", name, "{id}", string(m.ID), "{mac}", m.ID.MAC()).Replace(s.cfg.NameRule)
}

// syncMachine brings one machine's device, interfaces and MACs to what
// the projection says. Every step finds before it creates.
func (s *Syncer) syncMachine(ctx context.Context, m machine.Machine) error {
	if m.State == machine.Absent {
		return nil
	}
	lock, _ := s.locks.LoadOrStore(m.ID, &sync.Mutex{})
	lock.(*sync.Mutex).Lock()
	defer lock.(*sync.Mutex).Unlock()
	w := want(m)
	w.IP, w.BMC = s.leaseAddr(m.ID), bmcAddr(m)
	key := w.key()
	s.mu.Lock()
	d := s.devices[m.ID]
	s.mu.Unlock()
	if d != nil && d.synced == key {
		return nil
	}
	base, err := s.c.ensureBase(ctx)
	if err != nil {
		return err
	}
	if err := s.ensureIndex(ctx); err != nil {
		return err
	}
	role := base.defaultRole
	if w.Role != "" {
		if role, err = s.c.ensureRole(ctx, w.Role); err != nil {
			return err
		}
	}
	s.mu.Lock()
	d = s.devices[m.ID]
	s.mu.Unlock()
	created := false
	if d == nil {
		if d, created, err = s.findOrCreate(ctx, m, w, base, role); err != nil {
			return err
		}
		s.mu.Lock()
		s.devices[m.ID] = d
		s.mu.Unlock()
	}
	if !created {
		if err := s.patchDevice(ctx, d, w, base, role); err != nil {
			return err
		}
	}
	if err := s.syncInterfaces(ctx, d, w.NICs, created, base); err != nil {
		return err
	}
	if err := s.syncAddresses(ctx, d, w, base); err != nil {
		return err
	}
	d.synced = key
	return nil
}

// ensureIndex reads every device tagged mdc once, so that a device mdc
// created is found by its mdc_id even before it has a MAC.
func (s *Syncer) ensureIndex(ctx context.Context) error {
	s.mu.Lock()
	done := s.indexed
	s.mu.Unlock()
	if done {
		return nil
	}
	devs, err := s.c.devices(ctx, TagSlug, "")
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.indexed {
		return nil
	}
	for _, dv := range devs {
		raw, _ := dv.CustomFields[CFID].(string)
		id, err := machine.ParseID(raw)
		if err != nil {
			continue
		}
		if _, ok := s.devices[id]; !ok {
			s.devices[id] = snapshot(dv)
		}
	}
	s.indexed = true
	return nil
}

// snapshot keeps the fields of a NetBox device that mdc owns.
func snapshot(dv nb.DeviceWithConfigContext) *device {
	d := &device{id: dv.Id, role: dv.Role.Id, serial: dv.GetSerial(), cf: map[string]string{}}
	if dv.Status != nil && dv.Status.Value != nil {
		d.status = string(*dv.Status.Value)
	}
	for _, f := range customFields {
		if v := dv.CustomFields[f.name]; v != nil {
			d.cf[f.name] = cfString(v)
		}
	}
	for _, t := range dv.Tags {
		d.tags = append(d.tags, t.Id)
	}
	if ip, ok := dv.GetPrimaryIp4Ok(); ok && ip != nil {
		d.primary4 = ip.Id
	}
	if ip, ok := dv.GetOobIpOk(); ok && ip != nil {
		d.oob = ip.Id
	}
	return d
}

// cfString spells a custom field value one way whether it came from mdc
// (int64) or from NetBox's JSON (float64).
func cfString(v any) string {
	switch n := v.(type) {
	case float64:
		return strconv.FormatFloat(n, 'f', -1, 64)
	case int64:
		return strconv.FormatInt(n, 10)
	}
	return fmt.Sprint(v)
}

// findOrCreate finds the device by the boot MAC (a device recorded by an
// operator first, or whose mdc_id was lost) or creates it.
func (s *Syncer) findOrCreate(ctx context.Context, m machine.Machine, w desired, base baseIDs, role int32) (*device, bool, error) {
	found, err := s.c.devices(ctx, "", strings.ToUpper(m.ID.MAC()))
	if err != nil {
		return nil, false, err
	}
	if len(found) > 0 {
		dv := found[0]
		for _, f := range found {
			if f.CustomFields[CFID] == string(m.ID) {
				dv = f
			}
		}
		s.log.Info("adopting NetBox device", "machine", m.ID, "device", dv.Id, "name", dv.GetName())
		return snapshot(dv), false, nil
	}
	name := s.name(m)
	for try := 0; ; try++ {
		req := nb.NewWritableDeviceWithConfigContextRequest(
			nb.Int32AsDeviceBayTemplateRequestDeviceType(&base.deviceType),
			nb.Int32AsDeviceWithConfigContextRequestRole(&role),
			nb.Int32AsDeviceWithConfigContextRequestSite(&base.site))
		req.SetName(name)
		req.SetStatus(nb.DeviceStatusValue(w.Status))
		if w.Serial != "" {
			req.SetSerial(w.Serial)
		}
		req.SetTags([]nb.NestedTagRequest{*nb.NewNestedTagRequest(TagSlug, TagSlug)})
		req.SetCustomFields(w.CF)
		req.SetComments("Created by mdc. mdc keeps status, role, serial and the mdc_* custom fields current; everything else is yours.")
		dv, resp, err := s.c.api.DcimAPI.DcimDevicesCreate(ctx).WritableDeviceWithConfigContextRequest(*req).Execute()
		if err != nil {
			err = wrap("create device "+name, resp, err)
			// A name taken by another device: fall back to the id, once.
			if permanent(err) && try == 0 && name != "mdc-"+string(m.ID) && strings.Contains(err.Error(), "name") {
				name = "mdc-" + string(m.ID)
				continue
			}
			return nil, false, err
		}
		d := snapshot(*dv)
		d.ifaces = map[string]iface{}
		return d, true, nil
	}
}

// patchDevice writes the owned fields that differ from NetBox, and nothing
// else: an operator's name, description, rack and the rest stay.
func (s *Syncer) patchDevice(ctx context.Context, d *device, w desired, base baseIDs, role int32) error {
	p := nb.NewPatchedWritableDeviceWithConfigContextRequest()
	changed := false
	if w.Role != "" && d.role != role {
		p.SetRole(nb.Int32AsDeviceWithConfigContextRequestRole(&role))
		changed = true
	}
	if d.status != w.Status {
		p.SetStatus(nb.DeviceStatusValue(w.Status))
		changed = true
	}
	if w.Serial != "" && d.serial != w.Serial {
		p.SetSerial(w.Serial)
		changed = true
	}
	cf := map[string]any{}
	for k, v := range w.CF {
		if d.cf[k] != cfString(v) {
			cf[k] = v
		}
	}
	if len(cf) > 0 {
		p.SetCustomFields(cf)
		changed = true
	}
	if !slices.Contains(d.tags, base.tag) {
		// PATCH replaces the tag list: keep the operator's tags.
		return s.patchWithTags(ctx, d, p, append(slices.Clone(d.tags), base.tag))
	}
	if !changed {
		return nil
	}
	dv, resp, err := s.c.api.DcimAPI.DcimDevicesPartialUpdate(ctx, d.id).PatchedWritableDeviceWithConfigContextRequest(*p).Execute()
	if err != nil {
		return wrap("update device", resp, err)
	}
	s.refresh(d, *dv)
	return nil
}

// patchWithTags sends a device PATCH whose tags are given by id; the
// generated request type names tags by name and slug, so the tag objects
// are read first.
func (s *Syncer) patchWithTags(ctx context.Context, d *device, p *nb.PatchedWritableDeviceWithConfigContextRequest, tagIDs []int32) error {
	l, resp, err := s.c.api.ExtrasAPI.ExtrasTagsList(ctx).Id(tagIDs).Limit(pageSize).Execute()
	if err != nil {
		return wrap("list tags", resp, err)
	}
	tags := []nb.NestedTagRequest{}
	for _, t := range l.Results {
		tags = append(tags, *nb.NewNestedTagRequest(t.Name, t.Slug))
	}
	p.SetTags(tags)
	dv, resp, err := s.c.api.DcimAPI.DcimDevicesPartialUpdate(ctx, d.id).PatchedWritableDeviceWithConfigContextRequest(*p).Execute()
	if err != nil {
		return wrap("update device", resp, err)
	}
	s.refresh(d, *dv)
	return nil
}

func (s *Syncer) refresh(d *device, dv nb.DeviceWithConfigContext) {
	n := snapshot(dv)
	d.role, d.status, d.serial, d.cf, d.tags, d.primary4, d.oob = n.role, n.status, n.serial, n.cf, n.tags, n.primary4, n.oob
}

// syncInterfaces makes sure every NIC has an interface whose primary MAC
// is the NIC's MAC.
func (s *Syncer) syncInterfaces(ctx context.Context, d *device, nics []nic, created bool, base baseIDs) error {
	byName := map[string]int32{}
	if d.ifaces == nil || !created && s.needsLookup(d, nics) {
		d.ifaces = map[string]iface{}
		list, err := s.c.interfaces(ctx, d.id)
		if err != nil {
			return err
		}
		for _, ifc := range list {
			byName[ifc.Name] = ifc.Id
			var primary string
			if p, ok := ifc.GetPrimaryMacAddressOk(); ok && p != nil {
				primary = strings.ToUpper(p.MacAddress)
			}
			for _, mac := range ifc.MacAddresses {
				up := strings.ToUpper(mac.MacAddress)
				d.ifaces[up] = iface{id: ifc.Id, name: ifc.Name, macID: mac.Id, primary: up == primary}
			}
		}
	}
	for _, n := range nics {
		have, ok := d.ifaces[n.MAC]
		switch {
		case ok && !have.primary:
			// The MAC is on the interface but not its primary: an interface
			// has one primary MAC, and it is the one mdc boots by.
			if err := s.c.setPrimaryMAC(ctx, have.id, have.macID); err != nil {
				return err
			}
			have.primary = true
			d.ifaces[n.MAC] = have
		case ok && have.name == bootIfacePlaceholder && n.Name != bootIfacePlaceholder:
			// mdc named it before the facts said; an operator's name stays.
			if err := s.c.renameInterface(ctx, have.id, n.Name); err != nil {
				return err
			}
			have.name = n.Name
			d.ifaces[n.MAC] = have
		case ok:
		case byName[n.Name] != 0:
			// The interface exists (an operator made it) without this MAC.
			if err := s.c.addMAC(ctx, byName[n.Name], n.MAC); err != nil {
				return err
			}
			d.ifaces[n.MAC] = iface{id: byName[n.Name], name: n.Name, primary: true}
		default:
			id, err := s.c.addInterface(ctx, d.id, n.Name, n.MAC, base.tag)
			if err != nil {
				// The interface may exist without its MAC: look again next time.
				d.ifaces = nil
				return err
			}
			d.ifaces[n.MAC] = iface{id: id, name: n.Name, primary: true}
		}
	}
	return nil
}

// needsLookup says whether the cached interfaces miss one of the NICs.
func (s *Syncer) needsLookup(d *device, nics []nic) bool {
	for _, n := range nics {
		if _, ok := d.ifaces[n.MAC]; !ok {
			return true
		}
	}
	return false
}

func transportOf(c *http.Client) http.RoundTripper {
	if c.Transport != nil {
		return c.Transport
	}
	return http.DefaultTransport
}

// countingTransport counts NetBox requests by method and outcome; it never
// sees the token in a label.
type countingTransport struct {
	next http.RoundTripper
	m    *Metrics
}

func (t countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.next.RoundTrip(r)
	code := "error"
	if err == nil {
		code = fmt.Sprint(resp.StatusCode)
	}
	t.m.requests.WithLabelValues(r.Method, code).Inc()
	return resp, err
}
