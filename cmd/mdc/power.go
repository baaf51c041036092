package main

// The BMC side of `mdc serve`: enrolment, power, reprovisioning, and the
// follower that power-cycles machines with a BMC into their role image and
// retries failed ones (docs/bmc.md).

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/microdc/mdc/api"
	"github.com/microdc/mdc/bmc"
	"github.com/microdc/mdc/events"
	"github.com/microdc/mdc/machine"
)

// bmcSource is the CloudEvents source of what the BMC side appends.
const bmcSource = "mdc/bmc"

type bmcFlags struct {
	timeout, minInterval time.Duration
	bootRetries          int
	retries              int
	backoff              time.Duration
	insecureTLS          bool
	bootMode             string
}

func addBMCFlags(fs *flag.FlagSet) *bmcFlags {
	f := &bmcFlags{}
	fs.DurationVar(&f.timeout, "bmc-timeout", 20*time.Second, "bound on every call to a BMC")
	fs.DurationVar(&f.minInterval, "bmc-min-interval", 200*time.Millisecond, "least time between two calls to one BMC (BMCs freeze under bursts; 0: no limit)")
	fs.IntVar(&f.bootRetries, "bmc-boot-retries", 3, "times mdc sets the PXE boot override again when the read-back shows it did not hold")
	fs.IntVar(&f.retries, "bmc-retries", 2, "times mdc power-cycles a failed machine with a BMC to try again (0: never)")
	fs.DurationVar(&f.backoff, "bmc-retry-backoff", 2*time.Minute, "wait before the first such retry; it doubles for each next one")
	fs.BoolVar(&f.insecureTLS, "bmc-insecure-tls", false, "accept any certificate from redfishs:// BMCs (self-signed BMC certificates)")
	fs.StringVar(&f.bootMode, "bmc-boot-mode", "uefi", "PXE boot mode asked of a BMC while the machine's facts do not say: uefi or legacy")
	return f
}

func (f *bmcFlags) config() (*bmcFlags, error) {
	switch {
	case f.timeout < time.Second:
		return nil, usagef("--bmc-timeout %s: want at least 1s", f.timeout)
	case f.minInterval < 0:
		return nil, usagef("--bmc-min-interval %s: want 0 or more", f.minInterval)
	case f.bootRetries < 0 || f.bootRetries > 10:
		return nil, usagef("--bmc-boot-retries %d: want 0 to 10", f.bootRetries)
	case f.retries < 0 || f.retries > 10:
		return nil, usagef("--bmc-retries %d: want 0 to 10", f.retries)
	case f.retries > 0 && f.backoff < time.Second:
		return nil, usagef("--bmc-retry-backoff %s: want at least 1s", f.backoff)
	case f.bootMode != "uefi" && f.bootMode != "legacy":
		return nil, usagef("--bmc-boot-mode %q: want uefi or legacy", f.bootMode)
	}
	return f, nil
}

// bmcSide implements api.BMCs.
type bmcSide struct {
	cfg     *bmcFlags
	store   *events.Store
	dataDir string
	log     *slog.Logger
	pool    *bmc.Pool
	ops     *prometheus.CounterVec

	mu      sync.Mutex
	retries map[machine.ID]int // failed-machine retries since its last join or enrolment
}

func newBMCSide(cfg *bmcFlags, store *events.Store, dataDir string, reg prometheus.Registerer, log *slog.Logger) *bmcSide {
	b := &bmcSide{
		cfg: cfg, store: store, dataDir: dataDir, log: log,
		pool: bmc.NewPool(bmc.Options{Timeout: cfg.timeout, MinInterval: cfg.minInterval, BootRetries: cfg.bootRetries,
			InsecureTLS: cfg.insecureTLS, Logger: log}),
		ops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mdc_bmc_operations_total", Help: "BMC operations by operation and result (ok, or the error kind).",
		}, []string{"op", "result"}),
		retries: make(map[machine.ID]int),
	}
	reg.MustRegister(b.ops)
	return b
}

// count records one operation's result in the metrics.
func (b *bmcSide) count(op string, err error) {
	result := "ok"
	if err != nil {
		result = "error"
		var be *bmc.Error
		if errors.As(err, &be) {
			result = be.Kind.String()
		}
	}
	b.ops.WithLabelValues(op, result).Inc()
}

// controller is the shared controller of m's BMC, with the credentials
// from the data directory.
func (b *bmcSide) controller(m machine.Machine) (*bmc.Controller, error) {
	if m.BMC == nil {
		return nil, api.NewError(http.StatusConflict, api.CodeNoBMC,
			"machine %s has no BMC: enrol it with mdc enroll --bmc URL …, or power it by hand", m.ID)
	}
	ep, err := bmc.ParseURL(m.BMC.URL)
	if err != nil {
		return nil, fmt.Errorf("machine %s: recorded BMC %q: %w", m.ID, m.BMC.URL, err)
	}
	cred, err := bmc.LoadCredentials(b.dataDir, m.BMC.Credential)
	if err != nil {
		return nil, api.NewError(http.StatusConflict, api.CodeBMCAuth,
			"machine %s: the BMC credentials are gone from the data directory (%v): enrol it again", m.ID, err)
	}
	return b.pool.Controller(string(m.ID), ep, cred), nil
}

// bmcAPIError turns a bmc error into an API error that says what to check.
func bmcAPIError(err error) error {
	var be *bmc.Error
	if !errors.As(err, &be) {
		return err
	}
	status, code := http.StatusBadGateway, api.CodeBMCFailed
	switch {
	case errors.Is(err, bmc.ErrUnreachable):
		code = api.CodeBMCUnreachable
	case errors.Is(err, bmc.ErrAuthFailed):
		code = api.CodeBMCAuth
	case errors.Is(err, bmc.ErrUnsupported):
		code = api.CodeBMCUnsupported
	case errors.Is(err, bmc.ErrBootNotHeld):
		code = api.CodeBMCBootNotHeld
	case errors.Is(err, bmc.ErrTimeout):
		status, code = http.StatusGatewayTimeout, api.CodeBMCTimeout
	}
	return api.NewError(status, code, "%v", err)
}

// record appends one BMC event to id.
func (b *bmcSide) record(ctx context.Context, id machine.ID, typ machine.EventType, data any) (machine.Machine, error) {
	m, _, err := b.store.Update(ctx, id, func(machine.Machine) (machine.Event, error) {
		return machine.NewEvent(id, typ, bmcSource, data)
	})
	return m, err
}

// Enroll implements api.BMCs. Everything that can fail at the BMC before
// the machine is known is tried first, so a wrong password or an
// unreachable BMC records nothing.
func (b *bmcSide) Enroll(ctx context.Context, req api.EnrollRequest) (api.EnrollResult, error) {
	ep, err := bmc.ParseURL(req.BMC)
	if err != nil {
		return api.EnrollResult{}, api.NewError(http.StatusBadRequest, api.CodeInvalidValue, "bmc: %v", err)
	}
	if req.MAC == "" && ep.Protocol == bmc.IPMI {
		return api.EnrollResult{}, api.NewError(http.StatusBadRequest, api.CodeMACNeeded,
			"%s: IPMI cannot read the machine's MACs: give the MAC of the NIC it network-boots from (--mac)", ep)
	}
	cred := bmc.Credentials{User: req.User, Password: req.Password}
	// The probe shares the pool's per-host gate, so it too waits its turn.
	probeKey := "enroll " + ep.String()
	probe := b.pool.Controller(probeKey, ep, cred)
	defer func() {
		b.pool.Remove(probeKey)
		_ = probe.Close(context.WithoutCancel(ctx)) // real BMCs have few session slots
	}()
	state, err := probe.PowerStatus(ctx)
	b.count("power_status", err)
	if err != nil {
		return api.EnrollResult{}, bmcAPIError(err)
	}
	var inv bmc.Inventory
	if req.MAC == "" || ep.Protocol == bmc.Redfish {
		inv, err = probe.Inventory(ctx)
		b.count("inventory", err)
		switch {
		case req.MAC == "" && errors.Is(err, bmc.ErrUnsupported):
			return api.EnrollResult{}, api.NewError(http.StatusBadRequest, api.CodeMACNeeded,
				"%s cannot read the machine's MACs (IPMI has no way to): give the MAC of the NIC it network-boots from (--mac)", ep)
		case req.MAC == "" && err != nil:
			return api.EnrollResult{}, bmcAPIError(err)
		case req.MAC == "" && len(inv.MACs) == 0:
			return api.EnrollResult{}, api.NewError(http.StatusBadRequest, api.CodeMACNeeded,
				"%s reports no network interfaces: give the MAC of the NIC the machine network-boots from (--mac)", ep)
		case err != nil:
			b.log.Warn("BMC inventory unreadable; enrolling with the MAC given", "bmc", ep.String(), "err", err)
		}
	}
	// BMCs list NICs in no fixed order; the lowest MAC names the machine,
	// and it may network-boot from any of them (the boot path looks up
	// every MAC of a machine).
	slices.SortFunc(inv.MACs, func(a, b net.HardwareAddr) int { return bytes.Compare(a, b) })
	mac := req.MAC
	if mac == "" {
		mac = inv.MACs[0].String()
	}
	id, err := machine.ParseID(mac)
	if err != nil {
		return api.EnrollResult{}, api.NewError(http.StatusBadRequest, api.CodeInvalidMAC, "mac: %v", err)
	}
	macs := []string{id.MAC()}
	for _, hw := range inv.MACs {
		if x, err := machine.ParseID(hw.String()); err == nil && x != id {
			macs = append(macs, x.MAC())
		}
	}
	for _, s := range macs {
		x, _ := machine.ParseID(s)
		if owner, ok := b.store.LookupMAC(x); ok && owner.ID != id {
			return api.EnrollResult{}, api.NewError(http.StatusConflict, api.CodeExists, "MAC %s is a NIC of machine %s", s, owner.ID)
		}
	}
	ref, err := bmc.SaveCredentials(b.dataDir, string(id), cred)
	if err != nil {
		return api.EnrollResult{}, err
	}
	rec := &machine.BMC{URL: ep.String(), User: req.User, Credential: ref}
	old, known := b.store.Get(id)
	same := known && old.State != machine.StRetired && old.BMC != nil && *old.BMC == *rec &&
		(req.Name == "" || req.Name == old.Name) && (req.Role == "" || req.Role == old.Role)
	m := old
	if !same {
		data := machine.EnrolledData{BMC: rec, MACs: macs, Serial: inv.Serial, UUID: inv.UUID, Name: req.Name, Role: req.Role, Via: "cli"}
		m, _, err = b.store.Update(ctx, id, func(machine.Machine) (machine.Event, error) {
			return machine.NewEvent(id, machine.Enrolled, bmcSource, data)
		})
		if err != nil {
			return api.EnrollResult{}, err
		}
		b.log.Info("machine enrolled", "machine", id, "bmc", ep.String(), "role", req.Role)
	}
	// The enrolled controller replaces any older one of this machine.
	c := b.pool.Controller(string(id), ep, cred)
	res := api.EnrollResult{Machine: m, Created: !same, Power: "none"}
	if same && old.BootDevice == "pxe" && state == bmc.PowerOn && old.State != machine.StFailed {
		return res, nil // enrolled before, set up and running: leave it alone
	}
	action := bmc.ActionOn
	if state == bmc.PowerOn {
		action = bmc.ActionCycle
	}
	if m, err = b.pxeAndPower(ctx, m, c, action); err != nil {
		return res, err
	}
	res.Machine, res.Power = m, string(action)
	return res, nil
}

// pxeAndPower sets m's next boot to PXE (read back), then powers it on or
// cycles it; each step is an event.
func (b *bmcSide) pxeAndPower(ctx context.Context, m machine.Machine, c *bmc.Controller, action bmc.PowerAction) (machine.Machine, error) {
	efi := b.cfg.bootMode == "uefi"
	if m.Facts != nil && m.Facts.BootMode != "" {
		efi = m.Facts.BootMode == "uefi"
	}
	err := c.SetNextBootPXE(ctx, bmc.BootOptions{EFI: efi})
	b.count("boot_pxe", err)
	if err != nil {
		return m, bmcAPIError(err)
	}
	if m, err = b.record(ctx, m.ID, machine.BootDeviceSet, machine.BootDeviceData{Device: "pxe", EFI: efi}); err != nil {
		return m, err
	}
	return b.power(ctx, m, c, action)
}

// power runs one power action and records it and its result.
func (b *bmcSide) power(ctx context.Context, m machine.Machine, c *bmc.Controller, action bmc.PowerAction) (machine.Machine, error) {
	if _, err := b.record(ctx, m.ID, machine.PowerRequested, machine.PowerData{Action: string(action)}); err != nil {
		return m, err
	}
	perr := c.Power(ctx, action)
	b.count("power_"+string(action), perr)
	result := "ok"
	var state bmc.PowerState
	if perr != nil {
		result = perr.Error()
	} else {
		state = b.settle(ctx, c, action)
	}
	after, err := b.record(context.WithoutCancel(ctx), m.ID, machine.PowerChanged,
		machine.PowerData{Action: string(action), State: string(state), Result: result})
	if perr != nil {
		b.log.Warn("BMC power action failed", "machine", m.ID, "action", action, "err", perr)
		return after, bmcAPIError(perr)
	}
	b.log.Info("BMC power action", "machine", m.ID, "action", action, "power", state)
	return after, err
}

// settle reads the power state after action until it shows the action's
// result, for a bounded time: BMCs report a cycle's "off" for a while, and
// IPMI chassis control answers before the machine is up.
func (b *bmcSide) settle(ctx context.Context, c *bmc.Controller, action bmc.PowerAction) bmc.PowerState {
	want := bmc.PowerOn
	switch action {
	case bmc.ActionOff:
		want = bmc.PowerOff
	case bmc.ActionSoft:
		want = "" // the OS shuts down in its own time: take the first answer
	}
	deadline := time.Now().Add(settleTime)
	for {
		state, err := c.PowerStatus(ctx)
		b.count("power_status", err)
		if err == nil && (want == "" || state == want) || time.Now().After(deadline) || ctx.Err() != nil {
			return state
		}
		select {
		case <-ctx.Done():
			return state
		case <-time.After(time.Second):
		}
	}
}

// settleTime bounds how long settle waits for a power action to show.
const settleTime = 15 * time.Second

// Power implements api.BMCs.
func (b *bmcSide) Power(ctx context.Context, id machine.ID, action string) (api.PowerResult, error) {
	m, _ := b.store.Get(id)
	c, err := b.controller(m)
	if err != nil {
		return api.PowerResult{}, err
	}
	after, err := b.power(ctx, m, c, bmc.PowerAction(action))
	if err != nil {
		return api.PowerResult{}, err
	}
	return api.PowerResult{Machine: id, Action: action, Power: after.Power}, nil
}

// PowerStatus implements api.BMCs. A state that differs from the recorded
// one is recorded, so the table says what the BMC says.
func (b *bmcSide) PowerStatus(ctx context.Context, id machine.ID) (api.PowerResult, error) {
	m, _ := b.store.Get(id)
	c, err := b.controller(m)
	if err != nil {
		return api.PowerResult{}, err
	}
	state, err := c.PowerStatus(ctx)
	b.count("power_status", err)
	if err != nil {
		return api.PowerResult{}, bmcAPIError(err)
	}
	if string(state) != m.Power && state != bmc.PowerUnknown {
		if _, err := b.record(ctx, id, machine.PowerChanged, machine.PowerData{State: string(state), Result: "observed"}); err != nil {
			return api.PowerResult{}, err
		}
	}
	return api.PowerResult{Machine: id, Power: string(state)}, nil
}

// Reprovision implements api.BMCs: the machine goes back to provisioning in
// its role; the follower power-cycles it if it has a BMC.
func (b *bmcSide) Reprovision(ctx context.Context, id machine.ID) (api.WriteResult, error) {
	m, _ := b.store.Get(id)
	if m.Role == "" {
		return api.WriteResult{}, api.NewError(http.StatusConflict, api.CodeIllegal,
			"machine %s has no role to reprovision into: give it one with mdc machines assign %s ROLE", id, id)
	}
	after, e, err := b.store.Update(ctx, id, func(cur machine.Machine) (machine.Event, error) {
		return machine.NewEvent(id, machine.RoleAssigned, bmcSource, machine.RoleAssignedData{Role: cur.Role, By: "reprovision"})
	})
	if err != nil {
		return api.WriteResult{}, err
	}
	return api.WriteResult{Machine: after, Event: api.StoredEvent{ID: e.ID, Seq: e.Seq, Type: e.Type}}, nil
}

// run follows the log from now on: a machine with a BMC that gets a role
// is set to PXE and power-cycled into it; a failed one is retried with
// backoff. Events before the start were handled by the mdc that saw them.
func (b *bmcSide) run(ctx context.Context) error {
	if b.store.WaitReady(ctx) != nil {
		return nil
	}
	from, err := b.store.LastSeq(ctx)
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	err = b.store.Follow(ctx, from+1, "", func(e machine.Event, _ uint64) error {
		switch e.Type {
		case machine.Joined, machine.Enrolled:
			b.mu.Lock()
			delete(b.retries, e.Machine)
			b.mu.Unlock()
		case machine.RoleAssigned:
			wg.Add(1)
			go func() {
				defer wg.Done()
				b.intoRole(ctx, e)
			}()
		case machine.Failed:
			wg.Add(1)
			go func() {
				defer wg.Done()
				b.retry(ctx, e)
			}()
		}
		return nil
	})
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// intoRole power-cycles a machine with a BMC into the role it was given.
func (b *bmcSide) intoRole(ctx context.Context, e machine.Event) {
	if err := b.store.Table.WaitFor(ctx, e.Seq); err != nil {
		return
	}
	m, ok := b.store.Get(e.Machine)
	if !ok || m.BMC == nil || m.State != machine.Provisioning || m.LastEventID != e.ID {
		return // no BMC, or the machine moved on meanwhile
	}
	c, err := b.controller(m)
	if err != nil {
		b.log.Warn("cannot power-cycle into the role", "machine", m.ID, "err", err)
		return
	}
	if _, err := b.pxeAndPower(ctx, m, c, "cycle"); err != nil {
		b.log.Warn("power-cycle into the role failed", "machine", m.ID, "role", m.Role, "err", err)
	}
}

// retry power-cycles a failed machine with a BMC after a backoff that
// doubles with each retry, up to --bmc-retries times.
func (b *bmcSide) retry(ctx context.Context, e machine.Event) {
	if b.cfg.retries == 0 {
		return
	}
	if err := b.store.Table.WaitFor(ctx, e.Seq); err != nil {
		return
	}
	m, ok := b.store.Get(e.Machine)
	if !ok || m.BMC == nil {
		return
	}
	b.mu.Lock()
	n := b.retries[m.ID]
	if n >= b.cfg.retries {
		b.mu.Unlock()
		b.log.Warn("machine failed; no retries left", "machine", m.ID, "retries", n)
		return
	}
	b.retries[m.ID] = n + 1
	b.mu.Unlock()
	wait := b.cfg.backoff << n
	b.log.Info("machine failed; retrying through its BMC", "machine", m.ID, "in", wait, "retry", n+1, "of", b.cfg.retries)
	select {
	case <-ctx.Done():
		return
	case <-time.After(wait):
	}
	m, _ = b.store.Get(e.Machine)
	if m.State != machine.StFailed || m.LastEventID != e.ID {
		return // an operator or the machine itself moved on
	}
	c, err := b.controller(m)
	if err == nil {
		_, err = b.pxeAndPower(ctx, m, c, "cycle")
	}
	if err != nil {
		b.log.Warn("retry through the BMC failed", "machine", m.ID, "err", err)
	}
}
