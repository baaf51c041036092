package bmc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"
)

// Defaults for Options.
const (
	DefaultTimeout     = 20 * time.Second
	DefaultMinInterval = 200 * time.Millisecond
	DefaultBootRetries = 3
)

// Options tune a Controller. The zero value means: 20 s timeout, no rate
// limit, no boot retries; DefaultOptions gives the recommended values.
type Options struct {
	// Timeout bounds each call to the BMC (one bmclib call: a login and a
	// few requests, or one ipmitool run). 0 means DefaultTimeout.
	Timeout time.Duration
	// MinInterval is the least time between the end of one call to a BMC
	// and the start of the next; 0 turns the rate limit off.
	MinInterval time.Duration
	// BootRetries is how many more times SetNextBootPXE sets the override
	// when the read-back shows it did not hold.
	BootRetries int
	// InsecureTLS skips certificate checks for redfishs:// (BMCs mostly
	// have self-signed certificates).
	InsecureTLS bool
	// Logger gets debug lines per call and warnings; nil discards.
	Logger *slog.Logger
	// IpmitoolPath is the ipmitool binary; "" looks it up in PATH.
	IpmitoolPath string
	// SessionIdle keeps a Redfish session open between operations for up
	// to this long, saving a login and a logout per operation; Close ends
	// it. 0 logs out after every operation (BMCs have few session slots).
	SessionIdle time.Duration
}

// DefaultOptions are the recommended options.
func DefaultOptions() Options {
	return Options{Timeout: DefaultTimeout, MinInterval: DefaultMinInterval, BootRetries: DefaultBootRetries}
}

func (o Options) withDefaults() Options {
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.MinInterval < 0 {
		o.MinInterval = 0
	}
	if o.BootRetries < 0 {
		o.BootRetries = 0
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// Inventory is what a BMC tells about its machine.
type Inventory struct {
	MACs                        []net.HardwareAddr
	Serial, UUID, Vendor, Model string
}

// driver speaks one protocol to one BMC. Its methods are called with the
// BMC's gate held, one at a time.
type driver interface {
	powerState(ctx context.Context) (string, error)
	powerSet(ctx context.Context, action PowerAction) error
	setBootPXE(ctx context.Context, opt BootOptions) error
	bootOverride(ctx context.Context) (bootOverride, error)
	inventory(ctx context.Context) (Inventory, error)
	// release ends an operation; the driver may keep its session.
	release(ctx context.Context) error
	// close ends what the driver keeps open (a Redfish session).
	close(ctx context.Context) error
	// classify says what kind of failure err is, or false if it cannot tell.
	classify(err error) (Kind, bool)
}

// Controller drives one machine's BMC. It is safe for concurrent use; calls
// to one BMC are serialized and spaced by Options.MinInterval.
type Controller struct {
	ep   Endpoint
	cred Credentials
	opt  Options
	log  *slog.Logger
	g    *gate
	drv  driver // guarded by g
	err  error  // a bad endpoint, reported by every call
}

// New returns a Controller for the BMC at ep. It does not contact the BMC.
func New(ep Endpoint, cred Credentials, opt Options) *Controller {
	return newController(ep, cred, opt, newGate())
}

func newController(ep Endpoint, cred Credentials, opt Options, g *gate) *Controller {
	opt = opt.withDefaults()
	c := &Controller{ep: ep, cred: cred, opt: opt, g: g,
		log: opt.Logger.With("bmc", ep.String())}
	if err := ep.Validate(); err != nil {
		c.err = err
		return c
	}
	switch ep.Protocol {
	case Redfish:
		c.drv = newRedfishDriver(ep, cred, opt)
	case IPMI:
		c.drv = newIPMIDriver(ep, cred, opt)
	}
	return c
}

// Endpoint is the BMC this controller drives.
func (c *Controller) Endpoint() Endpoint { return c.ep }

// PowerStatus reads the machine's power state.
func (c *Controller) PowerStatus(ctx context.Context) (PowerState, error) {
	st := PowerUnknown
	err := c.run(ctx, "power status", func(s *session) error {
		var err error
		st, err = s.powerStatus()
		return err
	})
	return st, err
}

// Power performs action. "cycle" powers on a machine that is off, since
// BMCs refuse to cycle one.
func (c *Controller) Power(ctx context.Context, action PowerAction) error {
	if _, err := ParsePowerAction(string(action)); err != nil {
		return c.newError("power", Failed, err)
	}
	return c.run(ctx, "power "+string(action), func(s *session) error {
		if action == ActionCycle {
			st, err := s.powerStatus()
			if err != nil {
				return err
			}
			if st == PowerOff {
				action = ActionOn
			}
		}
		return s.call(func(ctx context.Context) error { return c.drv.powerSet(ctx, action) })
	})
}

// SetNextBootPXE sets the next boot (or every boot, opt.Persistent) to PXE,
// then reads the override back, because some BMCs accept it and drop it. It
// sets it again up to Options.BootRetries times; if it never holds the error
// is ErrBootNotHeld.
func (c *Controller) SetNextBootPXE(ctx context.Context, opt BootOptions) error {
	return c.run(ctx, "set next boot "+opt.String(), func(s *session) error {
		var last bootOverride
		for attempt := 0; attempt <= c.opt.BootRetries; attempt++ {
			if err := s.call(func(ctx context.Context) error { return c.drv.setBootPXE(ctx, opt) }); err != nil {
				return err
			}
			err := s.call(func(ctx context.Context) error {
				var err error
				last, err = c.drv.bootOverride(ctx)
				return err
			})
			if err != nil {
				return err
			}
			if last.holds(opt) {
				c.log.Debug("boot override held", "boot", last.String(), "attempt", attempt+1)
				return nil
			}
			c.log.Warn("BMC did not keep the boot override", "want", opt.String(), "got", last.String(), "attempt", attempt+1)
		}
		return &Error{Kind: BootNotHeld, Err: fmt.Errorf("asked for %s %d times, the BMC reports %q", opt, c.opt.BootRetries+1, last.String())}
	})
}

// Inventory reads the machine's MACs, serial number and UUID. Only Redfish
// can; over IPMI it returns ErrUnsupported.
func (c *Controller) Inventory(ctx context.Context) (Inventory, error) {
	if c.err == nil && c.ep.Protocol == IPMI {
		return Inventory{}, c.newError("inventory", Unsupported, errors.New("IPMI cannot read MACs; give --mac"))
	}
	var inv Inventory
	err := c.run(ctx, "inventory", func(s *session) error {
		return s.call(func(ctx context.Context) error {
			var err error
			inv, err = c.drv.inventory(ctx)
			return err
		})
	})
	if err != nil {
		// inv may still be written by a call that timed out.
		return Inventory{}, err
	}
	return inv, nil
}

// Close ends any session the controller keeps with the BMC.
func (c *Controller) Close(ctx context.Context) error {
	if c.err != nil {
		return nil
	}
	if err := c.g.acquire(ctx); err != nil {
		return c.describe("close", err)
	}
	defer c.g.release()
	cctx, cancel := context.WithTimeout(ctx, c.opt.Timeout)
	defer cancel()
	err := c.drv.close(cctx)
	if ci, ok := c.drv.(interface{ closeIdle() }); ok {
		ci.closeIdle()
	}
	if err != nil {
		return c.newError("close", Failed, err)
	}
	return nil
}

func (c *Controller) newError(op string, k Kind, err error) *Error {
	return &Error{BMC: c.ep.String(), Op: op, Kind: k, Err: err, secret: c.cred.Password}
}

// describe names the BMC and operation in err, an *Error from a call.
func (c *Controller) describe(op string, err error) *Error {
	d := Error{Kind: Failed, Err: err}
	var e *Error
	if errors.As(err, &e) {
		d = *e // a copy: never write to a shared value such as a sentinel
	}
	d.BMC, d.Op, d.secret = c.ep.String(), op, c.cred.Password
	return &d
}

// run holds the BMC's gate for one operation, which may make several calls,
// and ends the driver's session afterwards.
func (c *Controller) run(ctx context.Context, op string, fn func(*session) error) error {
	if c.err != nil {
		return c.newError(op, Failed, c.err)
	}
	start := time.Now()
	if err := c.g.acquire(ctx); err != nil {
		return c.describe(op, err)
	}
	defer c.g.release()
	s := &session{c: c, ctx: ctx}
	err := fn(s)
	if !s.stuck {
		// Logging out is part of the last call, so it is not spaced.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.opt.Timeout)
		if cerr := c.drv.release(cctx); cerr != nil {
			c.log.Debug("closing BMC session", "err", cerr)
		}
		cancel()
		c.g.last = time.Now()
	}
	if err != nil {
		e := c.describe(op, err)
		c.log.Debug("bmc operation failed", "op", op, "kind", e.Kind.String(), "elapsed", time.Since(start))
		return e
	}
	c.log.Debug("bmc operation", "op", op, "elapsed", time.Since(start))
	return nil
}

// session is one operation's access to the BMC, gate held.
type session struct {
	c     *Controller
	ctx   context.Context
	stuck bool // a call timed out and is still running
}

func (s *session) powerStatus() (PowerState, error) {
	var raw string
	err := s.call(func(ctx context.Context) error {
		var err error
		raw, err = s.c.drv.powerState(ctx)
		return err
	})
	if err != nil {
		return PowerUnknown, err
	}
	st := NormalizePowerState(raw)
	if st == PowerUnknown {
		s.c.log.Warn("BMC reported a power state mdc does not know", "state", fmt.Sprintf("%.80q", raw))
	}
	return st, nil
}

// call makes one call to the BMC: it waits out the rate limit, bounds the
// call by Options.Timeout, and classifies its error.
func (s *session) call(fn func(context.Context) error) error {
	c, g := s.c, s.c.g
	if s.stuck {
		return &Error{Kind: Timeout, Err: errors.New("an earlier call is still running")}
	}
	if wait := time.Until(g.last.Add(c.opt.MinInterval)); c.opt.MinInterval > 0 && wait > 0 {
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-s.ctx.Done():
			t.Stop()
			return ctxError(s.ctx.Err())
		}
	}
	ctx, cancel := context.WithTimeout(s.ctx, c.opt.Timeout)
	done := make(chan error, 1)
	go func() { done <- fn(ctx) }()
	var err error
	select {
	case err = <-done:
		cancel()
	case <-ctx.Done():
		// gofish takes no context; its requests end only by the HTTP
		// client's timeout. Return now, and make the gate's next holder wait
		// until this call is really over, so calls never overlap at the BMC.
		pending := make(chan struct{})
		go func() {
			<-done
			cancel()
			close(pending)
		}()
		g.pending = pending
		s.stuck = true
		err = ctx.Err()
	}
	g.last = time.Now()
	if err == nil {
		return nil
	}
	return s.classify(ctx, err)
}

func (s *session) classify(ctx context.Context, err error) error {
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	if ctx.Err() == context.DeadlineExceeded || errors.Is(err, context.DeadlineExceeded) {
		return &Error{Kind: Timeout, Err: fmt.Errorf("no answer within %v", s.c.opt.Timeout)}
	}
	if errors.Is(err, context.Canceled) {
		return &Error{Kind: Failed, Err: err}
	}
	if k, ok := s.c.drv.classify(err); ok {
		return &Error{Kind: k, Err: err}
	}
	if k, ok := classifyNet(err); ok {
		return &Error{Kind: k, Err: err}
	}
	return &Error{Kind: Failed, Err: err}
}

func ctxError(err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return &Error{Kind: Timeout, Err: err}
	}
	return &Error{Kind: Failed, Err: err}
}

// classifyNet recognises failures to reach a host at all.
func classifyNet(err error) (Kind, bool) {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return Timeout, true
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return Unreachable, true
	}
	var opErr *net.OpError
	if errors.As(err, &opErr) && opErr.Op == "dial" {
		return Unreachable, true
	}
	// Libraries that flatten errors into strings (pkg/errors, fmt %v).
	msg := err.Error()
	for _, s := range []string{"connection refused", "no route to host", "network is unreachable", "no such host", "host is down"} {
		if strings.Contains(msg, s) {
			return Unreachable, true
		}
	}
	if strings.Contains(msg, "Client.Timeout exceeded") || strings.Contains(msg, "i/o timeout") {
		return Timeout, true
	}
	return 0, false
}

// gate serializes calls to one BMC and spaces them.
type gate struct {
	sem     chan struct{}
	last    time.Time     // end of the last call; guarded by sem
	pending chan struct{} // closed when a timed-out call ends; guarded by sem
}

func newGate() *gate { return &gate{sem: make(chan struct{}, 1)} }

func (g *gate) acquire(ctx context.Context) error {
	select {
	case g.sem <- struct{}{}:
	case <-ctx.Done():
		return ctxError(ctx.Err())
	}
	if g.pending != nil {
		select {
		case <-g.pending:
			g.pending = nil
			g.last = time.Now()
		case <-ctx.Done():
			<-g.sem
			return ctxError(ctx.Err())
		}
	}
	return nil
}

func (g *gate) release() { <-g.sem }

// Pool shares Controllers among callers: one per key (a machine id), and
// one gate per BMC address (host:port), so machines behind one BMC (a
// Redfish service presenting several systems) are serialized together.
type Pool struct {
	opt   Options
	mu    sync.Mutex
	gates map[string]*gate
	ctrls map[string]*Controller
}

// NewPool returns an empty Pool whose controllers use opt.
func NewPool(opt Options) *Pool {
	return &Pool{opt: opt, gates: map[string]*gate{}, ctrls: map[string]*Controller{}}
}

// Controller returns the pool's controller for key, making it on first use
// or when ep or cred differ from the ones it was made with.
func (p *Pool) Controller(key string, ep Endpoint, cred Credentials) *Controller {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.ctrls[key]; ok && c.ep == ep && c.cred == cred {
		return c
	}
	addr := strings.ToLower(ep.Addr())
	g, ok := p.gates[addr]
	if !ok {
		g = newGate()
		p.gates[addr] = g
	}
	c := newController(ep, cred, p.opt, g)
	p.ctrls[key] = c
	return c
}

// Remove forgets key's controller (a retired machine).
func (p *Pool) Remove(key string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.ctrls, key)
}

// Close closes every controller.
func (p *Pool) Close(ctx context.Context) error {
	p.mu.Lock()
	ctrls := make([]*Controller, 0, len(p.ctrls))
	for _, c := range p.ctrls {
		ctrls = append(ctrls, c)
	}
	p.mu.Unlock()
	var errs []error
	for _, c := range ctrls {
		if err := c.Close(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
