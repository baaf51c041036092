package bmc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/bmc-toolbox/bmclib/v2/providers/ipmitool"
	"github.com/go-logr/logr"
)

// ipmiDriver uses bmclib's ipmitool provider, and only it. bmclib passes the
// password as ipmitool -E with IPMITOOL_PASSWORD in the child's environment
// (internal/ipmi), so it never appears in argv. bmclib cannot read the boot
// flags back, so a small runner of our own does that
// (`chassis bootparam get 5`), passing the password the same way.
type ipmiDriver struct {
	ep   Endpoint
	cred Credentials
	path string // ipmitool; "" until first found
	conn *ipmitool.Conn
}

func newIPMIDriver(ep Endpoint, cred Credentials, opt Options) *ipmiDriver {
	return &ipmiDriver{ep: ep, cred: cred, path: opt.IpmitoolPath}
}

var errNoIpmitool = errors.New("ipmitool not found in PATH; install it (Debian package ipmitool)")

// hostArg is the host as bmclib splits it from host:port (IPv6 in brackets).
func (d *ipmiDriver) hostArg() string {
	if strings.Contains(d.ep.Host, ":") {
		return "[" + d.ep.Host + "]"
	}
	return d.ep.Host
}

func (d *ipmiDriver) provider() (*ipmitool.Conn, error) {
	if d.conn != nil {
		return d.conn, nil
	}
	if d.path == "" {
		p, err := exec.LookPath("ipmitool")
		if err != nil {
			return nil, errNoIpmitool
		}
		d.path = p
	}
	conn, err := ipmitool.New(d.hostArg(), d.cred.User, d.cred.Password,
		ipmitool.WithPort(strconv.Itoa(d.ep.Port)),
		ipmitool.WithIpmitoolPath(d.path),
		ipmitool.WithLogger(logr.Discard()),
	)
	if err != nil {
		return nil, fmt.Errorf("ipmitool at %s: %w", d.path, err)
	}
	d.conn = conn
	return conn, nil
}

func (d *ipmiDriver) powerState(ctx context.Context) (out string, err error) {
	p, err := d.provider()
	if err != nil {
		return "", err
	}
	err = d.guard(ctx, func(ctx context.Context) error {
		out, err = p.PowerStateGet(ctx)
		return d.explain(ctx, err)
	})
	return out, err
}

func (d *ipmiDriver) powerSet(ctx context.Context, action PowerAction) error {
	p, err := d.provider()
	if err != nil {
		return err
	}
	return d.guard(ctx, func(ctx context.Context) error {
		ok, err := p.PowerSet(ctx, string(action))
		if err != nil {
			return d.explain(ctx, err)
		}
		if !ok {
			return fmt.Errorf("the BMC did not confirm power %s", action)
		}
		return nil
	})
}

func (d *ipmiDriver) setBootPXE(ctx context.Context, opt BootOptions) error {
	p, err := d.provider()
	if err != nil {
		return err
	}
	return d.guard(ctx, func(ctx context.Context) error {
		ok, err := p.BootDeviceSet(ctx, "pxe", opt.Persistent, opt.EFI)
		if err != nil {
			return d.explain(ctx, err)
		}
		if !ok {
			return errors.New("the BMC did not confirm the boot device")
		}
		return nil
	})
}

func (d *ipmiDriver) bootOverride(ctx context.Context) (o bootOverride, err error) {
	if _, err := d.provider(); err != nil {
		return bootOverride{}, err
	}
	var out string
	err = d.guard(ctx, func(ctx context.Context) error {
		out, err = d.run(ctx, nil, "chassis", "bootparam", "get", "5")
		return d.explain(ctx, err)
	})
	if err != nil {
		return bootOverride{}, err
	}
	o, err = parseBootParam5(out)
	if err != nil {
		return bootOverride{}, fmt.Errorf("reading the boot flags back: %w", err)
	}
	return o, nil
}

var errRefused = errors.New("nothing listens at the BMC's IPMI port (ICMP port unreachable)")

// guard runs fn while an RMCP presence ping asks whether anything listens at
// the BMC's address. ipmitool retries a refused port until its own timeout;
// the ping's ICMP error ends the wait at once. A BMC that ignores pings only
// costs the ping.
func (d *ipmiDriver) guard(ctx context.Context, fn func(context.Context) error) error {
	gctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := rmcpPing(gctx, d.ep.Addr()); err != nil {
			cancel(err)
		}
	}()
	err := fn(gctx)
	if err != nil {
		if cause := context.Cause(gctx); errors.Is(cause, errRefused) {
			err = &Error{Kind: Unreachable, Err: cause}
		}
	}
	cancel(nil)
	<-done
	return err
}

// rmcpPresencePing is an ASF presence ping in an RMCP packet (DSP0136, IPMI
// v2 section 13.2.3), which IPMI BMCs answer without a session.
var rmcpPresencePing = []byte{
	0x06, 0x00, 0xff, 0x06, // RMCP v1, reserved, no ack, class ASF
	0x00, 0x00, 0x11, 0xbe, // IANA enterprise 4542 (ASF)
	0x80, 0x00, 0x00, 0x00, // presence ping, tag, reserved, no data
}

// rmcpPing returns errRefused if the BMC's host says nothing listens at
// addr, and nil once anything answers, the BMC stays silent for a few
// tries, or ctx ends. Its answer is not parsed: any datagram will do.
func rmcpPing(ctx context.Context, addr string) error {
	var dialer net.Dialer
	conn, err := dialer.DialContext(ctx, "udp", addr)
	if err != nil {
		return nil // no route and the like: ipmitool will say so
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	buf := make([]byte, 64)
	for range 3 {
		if _, err := conn.Write(rmcpPresencePing); err != nil {
			return refusal(err)
		}
		conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		_, err := conn.Read(buf)
		if err == nil || ctx.Err() != nil {
			return nil
		}
		if e := refusal(err); e != nil {
			return e
		}
	}
	return nil
}

func refusal(err error) error {
	if errors.Is(err, syscall.ECONNREFUSED) {
		return errRefused
	}
	return nil
}

func (d *ipmiDriver) inventory(context.Context) (Inventory, error) {
	return Inventory{}, &Error{Kind: Unsupported, Err: errors.New("IPMI cannot read MACs; give --mac")}
}

func (d *ipmiDriver) release(context.Context) error { return nil }
func (d *ipmiDriver) close(context.Context) error   { return nil }

func (d *ipmiDriver) classify(err error) (Kind, bool) {
	if errors.Is(err, errNoIpmitool) {
		return Failed, true
	}
	return 0, false
}

// ipmitool's output when it could not log in: the same for a wrong password
// and for a BMC that does not answer.
const noSession = "Unable to establish IPMI v2 / RMCP+ session"

// explain classifies an ipmitool failure. When ipmitool could not open a
// session it says the same for a bad password and a silent BMC, so one
// short verbose run tells which.
func (d *ipmiDriver) explain(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	msg := err.Error()
	switch {
	case strings.Contains(msg, "Insufficient privilege"):
		return &Error{Kind: AuthFailed, Err: fmt.Errorf("%w; the BMC user needs operator or administrator privilege", err)}
	case !strings.Contains(msg, noSession):
		return err
	}
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for _, cs := range []string{"3", "17"} {
		out, derr := d.runCipher(dctx, cs, []string{"-v", "-N", "1", "-R", "1"}, "chassis", "power", "status")
		if k, ok := diagnoseSession(out); ok {
			return &Error{Kind: k, Err: errors.New(noSession)}
		}
		if derr == nil {
			return err // it works now; report the first failure as it was
		}
	}
	return err // e.g. no cipher suite in common: ipmitool's words say more
}

// diagnoseSession reads `ipmitool -v` output of a failed session setup.
func diagnoseSession(out string) (Kind, bool) {
	switch {
	case strings.Contains(out, "RAKP 2 HMAC is invalid"),
		strings.Contains(out, "unauthorized name"),
		strings.Contains(out, "RAKP 2 message indicates an error"),
		strings.Contains(out, "RAKP 4 message indicates an error"),
		strings.Contains(out, "invalid integrity check value"):
		return AuthFailed, true
	case strings.Contains(out, "Get Auth Capabilities error"),
		strings.Contains(out, "Get Channel Authentication Capabilities"),
		strings.Contains(out, "No response from remote controller"):
		return Unreachable, true
	}
	return 0, false
}

// run is our own ipmitool runner, for what bmclib lacks. The password goes
// to ipmitool through the environment (-E reads IPMI_PASSWORD), never argv:
// every local user can read a process's command line. It tries cipher suite
// 3 first (else ipmitool spends ~10 s asking), then 17 for BMCs that dropped
// 3, as bmclib does; on failure out holds every attempt's output.
func (d *ipmiDriver) run(ctx context.Context, extra []string, args ...string) (out string, err error) {
	var outs []string
	for _, cs := range []string{"3", "17"} {
		out, err = d.runCipher(ctx, cs, extra, args...)
		if err == nil {
			return out, nil
		}
		outs = append(outs, out)
		if ctx.Err() != nil {
			return strings.Join(outs, "\n"), ctx.Err()
		}
	}
	return strings.Join(outs, "\n"), fmt.Errorf("%s: %w", outs[len(outs)-1], err)
}

func (d *ipmiDriver) runCipher(ctx context.Context, cipher string, extra []string, args ...string) (string, error) {
	argv := []string{"-I", "lanplus", "-H", d.ep.Host, "-p", strconv.Itoa(d.ep.Port), "-U", d.cred.User, "-E", "-C", cipher}
	argv = append(append(argv, extra...), args...)
	cmd := exec.CommandContext(ctx, d.path, argv...)
	cmd.Env = []string{"IPMI_PASSWORD=" + d.cred.Password, "LC_ALL=C"}
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}
