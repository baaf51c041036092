package dhcp

// Real DHCP clients (dhclient, udhcpc, dhcpcd) and peers (dnsmasq as a plain
// DHCP server and as a relay) against the in-process server, inside network
// namespaces the test creates. Needs root; skips with the reason otherwise.

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"
	"github.com/insomniacslk/dhcp/iana"
	"golang.org/x/sys/unix"
)

func needRoot(t *testing.T, bins ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	for _, b := range append([]string{"ip"}, bins...) {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("needs %s (hack/install-deps.sh dhcp installs it)", b)
		}
	}
}

var nsSeq atomic.Int32

// lab is a set of namespaces, links and processes torn down by t.Cleanup.
type lab struct {
	t      *testing.T
	prefix string
}

func newLab(t *testing.T) *lab {
	return &lab{t: t, prefix: fmt.Sprintf("mdcdhcp%d", os.Getpid()%100000)}
}

func (l *lab) ip(args ...string) {
	l.t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		l.t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// netns creates a namespace with lo up; deleted at cleanup.
func (l *lab) netns() string {
	l.t.Helper()
	name := fmt.Sprintf("%s-%d", l.prefix, nsSeq.Add(1))
	l.ip("netns", "add", name)
	l.t.Cleanup(func() { exec.Command("ip", "netns", "delete", name).Run() })
	l.ip("-n", name, "link", "set", "lo", "up")
	return name
}

// link joins two namespaces with a veth pair named a (in nsA) and b (in nsB).
func (l *lab) link(nsA, a, nsB, b string) {
	l.t.Helper()
	tmpA, tmpB := fmt.Sprintf("v%da", nsSeq.Add(1)), fmt.Sprintf("v%db", nsSeq.Add(1))
	l.ip("link", "add", tmpA, "type", "veth", "peer", "name", tmpB)
	l.ip("link", "set", tmpA, "netns", nsA)
	l.ip("link", "set", tmpB, "netns", nsB)
	l.ip("-n", nsA, "link", "set", tmpA, "name", a)
	l.ip("-n", nsB, "link", "set", tmpB, "name", b)
	l.ip("-n", nsA, "link", "set", a, "up")
	l.ip("-n", nsB, "link", "set", b, "up")
}

// start runs a command in ns; it is killed by PID at cleanup.
func (l *lab) start(ns string, logFile string, args ...string) *exec.Cmd {
	l.t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...)
	f, err := os.Create(logFile)
	if err != nil {
		l.t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		l.t.Fatalf("start %v: %v", args, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); f.Close(); close(done) }()
	l.t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(3 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if l.t.Failed() {
			b, _ := os.ReadFile(logFile)
			l.t.Logf("%s:\n%s", filepath.Base(logFile), b)
		}
	})
	return cmd
}

// inNetns runs fn on an OS thread moved into ns (sockets opened there stay
// there). The thread goes back to our namespace, or dies if it cannot.
func inNetns(t *testing.T, ns string, fn func() error) error {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		defer unix.Close(orig)
		target, err := unix.Open("/run/netns/"+ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		defer unix.Close(target)
		if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", ns, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns back: %w", err) // thread stays locked and exits with the goroutine
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// serveInNetns runs srv on port 67 (and 4011 in proxy mode) of iface in ns.
func serveInNetns(t *testing.T, ns, iface string, srv *Server) {
	t.Helper()
	var conns []net.PacketConn
	ports := []int{67}
	if srv.cfg.Mode == ModeProxy {
		ports = append(ports, 4011)
	}
	err := inNetns(t, ns, func() error {
		for _, p := range ports {
			c, err := server4.NewIPv4UDPConn(iface, &net.UDPAddr{Port: p})
			if err != nil {
				return err
			}
			conns = append(conns, c)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, conns...) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
}

// hookScript writes a client hook script: it records each event's
// environment (one line per event, KEY=VALUE sorted) and configures the
// address inside the client's own namespace, so renewals can be unicast. It
// never touches /etc/resolv.conf.
func hookScript(t *testing.T, dir, name, setAddr string) (script, events string) {
	events = filepath.Join(dir, name+".events")
	script = filepath.Join(dir, name+".sh")
	body := "#!/bin/sh\n" +
		"{ printf 'EVENT %s %s ' \"$1\" \"$reason\"; env | sort | tr '\\n' ' '; echo ' EOL'; } >>" + events + "\n" + setAddr + "\nexit 0\n"
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	return script, events
}

// waitEvent waits until the events file has a line containing all of want,
// and returns that line (the environment after the EVENT line).
func waitEvent(t *testing.T, file string, timeout time.Duration, want ...string) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		b, _ := os.ReadFile(file)
		for _, line := range strings.Split(string(b), "\n") {
			ok := strings.HasSuffix(line, " EOL")
			for _, w := range want {
				ok = ok && strings.Contains(line, w)
			}
			if ok && line != "" {
				return line
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	b, _ := os.ReadFile(file)
	t.Fatalf("no event with %q in %s within %v; got:\n%s", want, filepath.Base(file), timeout, b)
	return ""
}

func envValue(line, key string) string {
	for _, f := range strings.Fields(line) {
		if v, ok := strings.CutPrefix(f, key+"="); ok {
			return v
		}
	}
	return ""
}

func TestRealClientsFullMode(t *testing.T) {
	needRoot(t, "dhclient", "udhcpc", "dhcpcd")
	l := newLab(t)
	srvNS := l.netns()
	l.ip("-n", srvNS, "link", "add", "br0", "type", "bridge")
	l.ip("-n", srvNS, "addr", "add", "10.99.0.1/24", "dev", "br0")
	l.ip("-n", srvNS, "link", "set", "br0", "up")
	sn := Subnet{Prefix: netip.MustParsePrefix("10.99.0.0/24"), Start: netip.MustParseAddr("10.99.0.100"), End: netip.MustParseAddr("10.99.0.199"),
		Router: netip.MustParseAddr("10.99.0.1"), DNS: []netip.Addr{netip.MustParseAddr("10.99.0.53")}, Domain: "test.example", LeaseTime: 10 * time.Second}
	if err := sn.validate(); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	// The server's own account of each packet, printed if a client test fails.
	srvLog := &syncBuffer{}
	srv, err := New(Config{Mode: ModeFull, Interface: "br0", AdvertiseAddr: netip.MustParseAddr("10.99.0.1"), HTTPBaseURL: "http://10.99.0.1:8080",
		Subnets: []Subnet{sn}, Logger: slog.New(slog.NewTextHandler(srvLog, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	serveInNetns(t, srvNS, "br0", srv)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("server log:\n%s", srvLog)
		}
	})

	type client struct {
		name                   string
		start                  func(ns, script string) *exec.Cmd
		setAddr                string
		bound, renew, released []string // event markers
		release                func(ns, script string, cmd *exec.Cmd)
		addrVar, routerVar     string
		dnsVar, leaseVar       string
	}
	clients := []client{
		{
			name: "dhclient",
			start: func(ns, script string) *exec.Cmd {
				return l.start(ns, filepath.Join(dir, "dhclient.log"), "dhclient", "-d", "-v", "-4", "-sf", script,
					"-lf", filepath.Join(dir, "dhclient.leases"), "-pf", filepath.Join(dir, "dhclient.pid"), "eth0")
			},
			setAddr: `case "$reason" in BOUND|RENEW|REBIND|REBOOT) ip addr replace "$new_ip_address/24" dev "$interface";; esac`,
			bound:   []string{"BOUND"}, renew: []string{"RENEW"},
			release: func(ns, script string, _ *exec.Cmd) {
				out, err := exec.Command("ip", "netns", "exec", ns, "dhclient", "-r", "-v", "-4", "-sf", script,
					"-lf", filepath.Join(dir, "dhclient.leases"), "-pf", filepath.Join(dir, "dhclient.pid"), "eth0").CombinedOutput()
				if err != nil {
					t.Errorf("dhclient -r: %v\n%s", err, out)
				}
				t.Cleanup(func() {
					if t.Failed() {
						t.Logf("dhclient -r:\n%s", out)
					}
				})
			},
			addrVar: "new_ip_address", routerVar: "new_routers", dnsVar: "new_domain_name_servers", leaseVar: "new_dhcp_lease_time",
		},
		{
			name: "udhcpc",
			start: func(ns, script string) *exec.Cmd {
				return l.start(ns, filepath.Join(dir, "udhcpc.log"), "udhcpc", "-f", "-i", "eth0", "-s", script, "-t", "5", "-T", "1", "-A", "1")
			},
			setAddr: `case "$1" in bound|renew) ip addr replace "$ip/$mask" dev "$interface";; esac`,
			bound:   []string{"EVENT bound"}, renew: []string{"EVENT renew"},
			release: func(_, _ string, cmd *exec.Cmd) { cmd.Process.Signal(syscall.SIGUSR2) },
			addrVar: "ip", routerVar: "router", dnsVar: "dns", leaseVar: "lease",
		},
		{
			name: "dhcpcd",
			start: func(ns, script string) *exec.Cmd {
				conf := filepath.Join(dir, "dhcpcd.conf")
				os.WriteFile(conf, []byte("option domain_name_servers, domain_name, routers\nnohook resolv.conf\n"), 0o644)
				// dhcpcd keeps its lease in /var/lib/dhcpcd and its sockets in
				// /run: give it its own (a private mount namespace) so it
				// touches nothing of the host's.
				db := filepath.Join(dir, "dhcpcd-db")
				os.Mkdir(db, 0o755)
				return l.start(ns, filepath.Join(dir, "dhcpcd.log"), "unshare", "-m", "--propagation", "private", "sh", "-c",
					`mount -t tmpfs mdc-test-run /run && mount --bind "$1" /var/lib/dhcpcd && shift && exec "$@"`, "sh", db,
					"dhcpcd", "-B", "-d", "-4", "-f", conf, "-c", script, "--noarp", "-L", "-K", "-t", "20", "eth0")
			},
			bound: []string{"BOUND"}, renew: []string{"RENEW"},
			release: func(_, _ string, cmd *exec.Cmd) { cmd.Process.Signal(syscall.SIGALRM) }, // dhcpcd: release and exit
			addrVar: "new_ip_address", routerVar: "new_routers", dnsVar: "new_domain_name_servers", leaseVar: "new_dhcp_lease_time",
		},
	}
	for i, c := range clients {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			ns := l.netns()
			l.link(srvNS, fmt.Sprintf("c%d", i), ns, "eth0")
			l.ip("-n", srvNS, "link", "set", fmt.Sprintf("c%d", i), "master", "br0")
			script, events := hookScript(t, dir, c.name, c.setAddr)
			cmd := c.start(ns, script)

			line := waitEvent(t, events, 20*time.Second, c.bound...)
			addr, err := netip.ParseAddr(envValue(line, c.addrVar))
			if err != nil || !sn.inRange(addr) {
				t.Fatalf("%s bound to %q, want an address in the pool: %s", c.name, envValue(line, c.addrVar), line)
			}
			if got := envValue(line, c.routerVar); got != "10.99.0.1" {
				t.Errorf("router %q, want 10.99.0.1", got)
			}
			if got := envValue(line, c.dnsVar); got != "10.99.0.53" {
				t.Errorf("DNS %q, want 10.99.0.53", got)
			}
			if got := envValue(line, c.leaseVar); got != "10" {
				t.Errorf("lease time %q, want 10", got)
			}
			// T1 is 5 s: each client renews by itself.
			waitEvent(t, events, 30*time.Second, c.renew...)
			if l, _, ok := srv.cache.lookup(addr); !ok || l.State != LeaseBound || l.Client != hexMAC(macOf(t, ns)) {
				t.Errorf("server's lease for %v: %+v, want bound to the client", addr, l)
			}
			c.release(ns, script, cmd)
			waitFor(t, c.name+"'s release", func() bool {
				l, _, _ := srv.cache.lookup(addr)
				return l.State == LeaseReleased
			})
		})
	}
}

func macOf(t *testing.T, ns string) string {
	out, err := exec.Command("ip", "-n", ns, "-br", "link", "show", "eth0").Output()
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(out))
	return f[2]
}

func TestRealClientRelayed(t *testing.T) {
	needRoot(t, "udhcpc", "dnsmasq")
	l := newLab(t)
	srvNS, relayNS, clientNS := l.netns(), l.netns(), l.netns()
	l.link(srvNS, "eth0", relayNS, "up0")
	l.link(relayNS, "down0", clientNS, "eth0")
	l.ip("-n", srvNS, "addr", "add", "10.97.0.1/24", "dev", "eth0")
	l.ip("-n", srvNS, "route", "add", "10.97.1.0/24", "via", "10.97.0.2")
	l.ip("-n", relayNS, "addr", "add", "10.97.0.2/24", "dev", "up0")
	l.ip("-n", relayNS, "addr", "add", "10.97.1.1/24", "dev", "down0")
	local := Subnet{Prefix: netip.MustParsePrefix("10.97.0.0/24"), Start: netip.MustParseAddr("10.97.0.100"), End: netip.MustParseAddr("10.97.0.110")}
	remote := Subnet{Prefix: netip.MustParsePrefix("10.97.1.0/24"), Start: netip.MustParseAddr("10.97.1.100"), End: netip.MustParseAddr("10.97.1.110"),
		Router: netip.MustParseAddr("10.97.1.1"), DNS: []netip.Addr{netip.MustParseAddr("10.97.0.53")}, LeaseTime: time.Hour}
	if err := remote.validate(); err != nil {
		t.Fatal(err)
	}
	srv, err := New(Config{Mode: ModeFull, Interface: "eth0", AdvertiseAddr: netip.MustParseAddr("10.97.0.1"), HTTPBaseURL: "http://10.97.0.1:8080",
		Subnets: []Subnet{local, remote}})
	if err != nil {
		t.Fatal(err)
	}
	serveInNetns(t, srvNS, "eth0", srv)
	dir := t.TempDir()
	l.start(relayNS, filepath.Join(dir, "dnsmasq-relay.log"), "dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--port=0",
		"--conf-file=/dev/null", "--pid-file="+filepath.Join(dir, "relay.pid"), "--log-dhcp", "--log-facility=-",
		"--interface=down0", "--dhcp-relay=10.97.1.1,10.97.0.1")
	script, events := hookScript(t, dir, "udhcpc", "")
	l.start(clientNS, filepath.Join(dir, "udhcpc.log"), "udhcpc", "-f", "-i", "eth0", "-s", script, "-t", "10", "-T", "1", "-A", "1")
	line := waitEvent(t, events, 20*time.Second, "EVENT bound")
	if got := envValue(line, "ip"); !remote.inRange(netip.MustParseAddr(got)) {
		t.Errorf("relayed client got %s, want an address from the relay's subnet 10.97.1.100-110", got)
	}
	if got := envValue(line, "router"); got != "10.97.1.1" {
		t.Errorf("relayed client router %q, want 10.97.1.1", got)
	}
}

func TestProxyBesideDnsmasq(t *testing.T) {
	needRoot(t, "dnsmasq")
	l := newLab(t)
	srvNS, dhcpNS, clientNS := l.netns(), l.netns(), l.netns()
	l.ip("-n", srvNS, "link", "add", "br0", "type", "bridge")
	l.ip("-n", srvNS, "addr", "add", "10.96.0.1/24", "dev", "br0")
	l.ip("-n", srvNS, "link", "set", "br0", "up")
	l.link(srvNS, "d0", dhcpNS, "eth0")
	l.link(srvNS, "c0", clientNS, "eth0")
	l.ip("-n", srvNS, "link", "set", "d0", "master", "br0")
	l.ip("-n", srvNS, "link", "set", "c0", "master", "br0")
	l.ip("-n", dhcpNS, "addr", "add", "10.96.0.2/24", "dev", "eth0")
	dir := t.TempDir()
	l.start(dhcpNS, filepath.Join(dir, "dnsmasq.log"), "dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--port=0",
		"--conf-file=/dev/null", "--pid-file="+filepath.Join(dir, "dnsmasq.pid"), "--log-dhcp", "--log-facility=-", "--no-ping",
		"--interface=eth0", "--dhcp-range=10.96.0.150,10.96.0.160,255.255.255.0,1h", "--dhcp-option=3,10.96.0.254",
		"--dhcp-leasefile="+filepath.Join(dir, "dnsmasq.leases"))
	srv, err := New(Config{Mode: ModeProxy, Interface: "br0", AdvertiseAddr: netip.MustParseAddr("10.96.0.1"), HTTPBaseURL: "http://10.96.0.1:8080"})
	if err != nil {
		t.Fatal(err)
	}
	serveInNetns(t, srvNS, "br0", srv)

	// A UEFI PXE client, built with the library, in its own namespace.
	var conn *net.UDPConn
	if err := inNetns(t, clientNS, func() error {
		c, err := server4.NewIPv4UDPConn("eth0", &net.UDPAddr{Port: 68})
		conn = c
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hwOut, _ := exec.Command("ip", "-n", clientNS, "-br", "link", "show", "eth0").Output()
	hw, _ := net.ParseMAC(strings.Fields(string(hwOut))[2])
	pxe := append(pxeMods(iana.EFI_X86_64, "PXEClient:Arch:00007:UNDI:003016"), dhcpv4.WithBroadcast(true))
	d := discover(t, hw, pxe...)
	var addrOffer, bootOffer *dhcpv4.DHCPv4
	bcast := &net.UDPAddr{IP: net.IPv4bcast, Port: 67}
	for try := 0; try < 5 && (addrOffer == nil || bootOffer == nil); try++ {
		conn.WriteTo(d.ToBytes(), bcast)
		deadline := time.Now().Add(2 * time.Second)
		for time.Now().Before(deadline) && (addrOffer == nil || bootOffer == nil) {
			p := readReply(conn, deadline, d.TransactionID)
			if p == nil {
				break
			}
			switch {
			case p.ServerIdentifier().Equal(net.IPv4(10, 96, 0, 2)):
				addrOffer = p
			case p.ServerIdentifier().Equal(net.IPv4(10, 96, 0, 1)):
				bootOffer = p
			}
		}
	}
	if addrOffer == nil || bootOffer == nil {
		t.Fatalf("offers: from dnsmasq %v, from mdc %v; want one of each", addrOffer != nil, bootOffer != nil)
	}
	if !bootOffer.YourIPAddr.IsUnspecified() || bootOffer.BootFileName != "snponly.efi" || bootOffer.ClassIdentifier() != "PXEClient" {
		t.Errorf("mdc's proxy offer: yiaddr %v file %q class %q; want no address, snponly.efi, PXEClient", bootOffer.YourIPAddr, bootOffer.BootFileName, bootOffer.ClassIdentifier())
	}
	if addrOffer.BootFileName != "" {
		t.Errorf("dnsmasq offered a boot file %q", addrOffer.BootFileName)
	}
	// The address comes from dnsmasq...
	req := requestFor(t, addrOffer, append(pxe, dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(10, 96, 0, 2))))...)
	conn.WriteTo(req.ToBytes(), bcast)
	var ack *dhcpv4.DHCPv4
	for deadline := time.Now().Add(5 * time.Second); ack == nil && time.Now().Before(deadline); {
		if p := readReply(conn, deadline, req.TransactionID); p != nil && p.MessageType() == dhcpv4.MessageTypeAck {
			ack = p
		}
	}
	if ack == nil || !netip.MustParsePrefix("10.96.0.0/24").Contains(ip(ack.YourIPAddr)) || ack.Router()[0].String() != "10.96.0.254" {
		t.Fatalf("dnsmasq ack: %v", ack)
	}
	// ...and the boot file from mdc's PXE port, asked from that address.
	l.ip("-n", clientNS, "addr", "add", ip(ack.YourIPAddr).String()+"/24", "dev", "eth0")
	var pc *net.UDPConn
	if err := inNetns(t, clientNS, func() error {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: ack.YourIPAddr})
		pc = c
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	breq := requestFor(t, bootOffer, pxe...)
	breq.ClientIPAddr = ack.YourIPAddr
	pc.WriteTo(breq.ToBytes(), &net.UDPAddr{IP: net.IPv4(10, 96, 0, 1), Port: 4011})
	bootAck := readReply(pc, time.Now().Add(5*time.Second), breq.TransactionID)
	if bootAck == nil || bootAck.MessageType() != dhcpv4.MessageTypeAck || bootAck.BootFileName != "snponly.efi" || !bootAck.ServerIPAddr.Equal(net.IPv4(10, 96, 0, 1)) {
		t.Fatalf("boot ack from mdc's port 4011: %v", bootAck)
	}
}

func readReply(c *net.UDPConn, deadline time.Time, xid dhcpv4.TransactionID) *dhcpv4.DHCPv4 {
	buf := make([]byte, 2048)
	for {
		c.SetReadDeadline(deadline)
		n, _, err := c.ReadFrom(buf)
		if err != nil {
			return nil
		}
		p, err := dhcpv4.FromBytes(buf[:n])
		if err == nil && p.OpCode == dhcpv4.OpcodeBootReply && p.TransactionID == xid {
			return p
		}
	}
}

// syncBuffer is a bytes.Buffer the server's goroutines can log into.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
