// Package vrack is a virtual rack for mdc's tests and demo: a network
// namespace with a bridge (the rack network), mdc running inside it, QEMU
// machines on taps of the bridge booting from the network, and BMCs for
// them (OpenIPMI's ipmi_sim, or a Redfish service driving QEMU over QMP).
//
// Everything is made by the rack and removed by Close: the namespace, its
// bridge and taps, and every process it started, stopped by PID. Nothing
// touches the host's interfaces. Functions return errors and log to the
// slog.Logger they are given, so tests and the vrack program share them.
package vrack

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Config describes a rack.
type Config struct {
	// Name of the network namespace; default vrack<pid>.
	Name string
	// Dir holds the rack's files (logs, disks, BMC state); it must exist.
	Dir string
	// Subnet is the rack network's first three octets; default 10.79.0.
	// The bridge (mdc's side) is .1.
	Subnet string
	Logger *slog.Logger
}

// Rack is one network namespace with a bridge br0.
type Rack struct {
	NS     string
	Dir    string
	Subnet string
	log    *slog.Logger

	mu      sync.Mutex
	taps    int
	addrs   int
	closers []func() // run in reverse order by Close
	closed  bool
	rt      string // runtimeDir
}

// New makes the namespace, its bridge br0 with address Subnet.1/24, and
// brings them up.
func New(cfg Config) (*Rack, error) {
	if cfg.Name == "" {
		cfg.Name = fmt.Sprintf("vrack%d", os.Getpid()%100000)
	}
	if cfg.Subnet == "" {
		cfg.Subnet = "10.79.0"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.Dir == "" {
		return nil, errors.New("vrack: Config.Dir is required")
	}
	r := &Rack{NS: cfg.Name, Dir: cfg.Dir, Subnet: cfg.Subnet, log: cfg.Logger}
	if _, err := os.Stat("/run/netns/" + r.NS); err == nil {
		return nil, fmt.Errorf("vrack: namespace %s exists (a rack left behind?): remove it with ip netns delete %s, or choose another name", r.NS, r.NS)
	}
	if err := ip("netns", "add", r.NS); err != nil {
		return nil, err
	}
	r.onClose(func() {
		if err := ip("netns", "delete", r.NS); err != nil {
			r.log.Warn("remove namespace", "ns", r.NS, "err", err)
		}
	})
	for _, args := range [][]string{
		{"link", "set", "lo", "up"},
		{"link", "add", "br0", "type", "bridge"},
		{"addr", "add", r.ServerIP() + "/24", "dev", "br0"},
		{"link", "set", "br0", "up"},
	} {
		if err := ip(append([]string{"-n", r.NS}, args...)...); err != nil {
			r.Close()
			return nil, err
		}
	}
	r.log.Info("rack namespace up", "ns", r.NS, "bridge", "br0", "addr", r.ServerIP())
	return r, nil
}

// ServerIP is the bridge's address: where mdc listens.
func (r *Rack) ServerIP() string { return r.Subnet + ".1" }

// onClose registers fn to run at Close (last registered runs first).
func (r *Rack) onClose(fn func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closers = append(r.closers, fn)
}

// Close stops everything the rack started, by PID, and removes the
// namespace. It is safe to call more than once.
func (r *Rack) Close() {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	r.closed = true
	cs := r.closers
	r.mu.Unlock()
	for i := len(cs) - 1; i >= 0; i-- {
		cs[i]()
	}
}

// AddTap adds a tap on the bridge for one machine and returns its name.
func (r *Rack) AddTap() (string, error) {
	r.mu.Lock()
	name := fmt.Sprintf("tap%d", r.taps)
	r.taps++
	r.mu.Unlock()
	for _, args := range [][]string{
		{"tuntap", "add", name, "mode", "tap"},
		{"link", "set", name, "master", "br0"},
		{"link", "set", name, "up"},
	} {
		if err := ip(append([]string{"-n", r.NS}, args...)...); err != nil {
			return "", err
		}
	}
	return name, nil
}

// AddAddress adds another address on the bridge (a BMC's management
// address), Subnet.(240-n) for the n-th call, and returns it.
func (r *Rack) AddAddress() (string, error) {
	r.mu.Lock()
	n := r.addrs
	r.addrs++
	r.mu.Unlock()
	if n >= 40 {
		return "", errors.New("vrack: out of management addresses")
	}
	a := fmt.Sprintf("%s.%d", r.Subnet, 240-n)
	if err := ip("-n", r.NS, "addr", "add", a+"/24", "dev", "br0"); err != nil {
		return "", err
	}
	return a, nil
}

// PeerNS makes another namespace NS+suffix joined to the bridge by a veth
// (veth0 inside it, with addr in CIDR form), for a server that is not mdc.
func (r *Rack) PeerNS(suffix, addr string) (string, error) {
	ns := r.NS + suffix
	if err := ip("netns", "add", ns); err != nil {
		return "", err
	}
	r.onClose(func() { _ = ip("netns", "delete", ns) })
	vpeer := "vp" + suffix
	for _, args := range [][]string{
		{"-n", r.NS, "link", "add", vpeer, "type", "veth", "peer", "name", "veth0", "netns", ns},
		{"-n", r.NS, "link", "set", vpeer, "master", "br0"},
		{"-n", r.NS, "link", "set", vpeer, "up"},
		{"-n", ns, "addr", "add", addr, "dev", "veth0"},
		{"-n", ns, "link", "set", "veth0", "up"},
		{"-n", ns, "link", "set", "lo", "up"},
	} {
		if err := ip(args...); err != nil {
			return "", err
		}
	}
	return ns, nil
}

func ip(args ...string) error {
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// InNS runs fn on an OS thread inside the rack's namespace: sockets it
// opens stay there. The thread is thrown away afterwards.
func (r *Rack) InNS(fn func() error) error { return InNS(r.NS, fn) }

// InNS runs fn on an OS thread inside namespace ns.
func InNS(ns string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		f, err := os.Open("/run/netns/" + ns)
		if err != nil {
			errc <- err
			return
		}
		err = unix.Setns(int(f.Fd()), unix.CLONE_NEWNET)
		f.Close()
		if err != nil {
			errc <- fmt.Errorf("setns %s: %w", ns, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// Listen opens a listener inside the namespace.
func (r *Rack) Listen(network, addr string) (net.Listener, error) {
	var l net.Listener
	err := r.InNS(func() error {
		var err error
		l, err = net.Listen(network, addr)
		return err
	})
	return l, err
}

// DialContext dials from inside the namespace.
func (r *Rack) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := r.InNS(func() error {
		var err error
		c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// HTTPClient reaches servers inside the namespace.
func (r *Rack) HTTPClient() *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext:       r.DialContext,
	}}
}
