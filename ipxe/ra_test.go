package ipxe

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

// inNetns runs fn on a thread inside the named namespace; sockets it opens
// stay there. The thread is discarded afterwards.
func inNetns(ns string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		f, err := os.Open("/run/netns/" + ns)
		if err != nil {
			errc <- err
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// A router solicitation, as iPXE sends one, gets an advertisement that
// offers nothing: router lifetime 0, no flags, no options, hop limit 255,
// to all nodes. Two namespaces joined by a veth; needs root.
func TestRAResponder(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces and raw ICMPv6 sockets")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs ip (iproute2)")
	}
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	server, client := fmt.Sprintf("mdcra%d", os.Getpid()%100000), fmt.Sprintf("mdcrs%d", os.Getpid()%100000)
	for _, ns := range []string{server, client} {
		run("ip", "netns", "add", ns)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "delete", ns).Run() })
		// No duplicate address detection: link-local addresses are usable at once.
		run("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0")
	}
	run("ip", "-n", server, "link", "add", "ra0", "type", "veth", "peer", "name", "rs0", "netns", client)
	run("ip", "-n", server, "link", "set", "ra0", "up")
	run("ip", "-n", client, "link", "set", "rs0", "up")

	var conn net.PacketConn
	if err := inNetns(server, func() (err error) { conn, err = ListenRA("ra0"); return err }); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- NewRAResponder(nil).Serve(ctx, conn) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()

	err := inNetns(client, func() error {
		c, err := icmp.ListenPacket("ip6:ipv6-icmp", "::")
		if err != nil {
			return err
		}
		defer c.Close()
		ifi, err := net.InterfaceByName("rs0")
		if err != nil {
			return err
		}
		p := c.IPv6PacketConn()
		if err := p.SetControlMessage(ipv6.FlagHopLimit, true); err != nil {
			return err
		}
		var f ipv6.ICMPFilter
		f.SetAll(true)
		f.Accept(ipv6.ICMPTypeRouterAdvertisement)
		if err := p.SetICMPFilter(&f); err != nil {
			return err
		}
		rs, _ := (&icmp.Message{Type: ipv6.ICMPTypeRouterSolicitation, Body: &icmp.RawBody{Data: make([]byte, 4)}}).Marshal(nil)
		dst := &net.IPAddr{IP: net.ParseIP("ff02::2"), Zone: "rs0"}
		buf := make([]byte, 1500)
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			// Link-local addresses may take a moment to come up: ask again.
			if _, err := p.WriteTo(rs, &ipv6.ControlMessage{HopLimit: 255, IfIndex: ifi.Index}, dst); err != nil {
				time.Sleep(100 * time.Millisecond)
				continue
			}
			_ = p.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
			n, cm, src, err := p.ReadFrom(buf)
			if err != nil {
				continue
			}
			m, err := icmp.ParseMessage(58, buf[:n])
			if err != nil {
				return err
			}
			body, ok := m.Body.(*icmp.RawBody)
			switch {
			case m.Type != ipv6.ICMPTypeRouterAdvertisement || m.Code != 0:
				return fmt.Errorf("got %v code %d", m.Type, m.Code)
			case cm == nil || cm.HopLimit != 255:
				return fmt.Errorf("hop limit %v, want 255 (RFC 4861)", cm)
			case !ok || len(body.Data) != 12:
				return fmt.Errorf("advertisement body %x: want 12 bytes, no options", buf[4:n])
			case string(body.Data) != string(make([]byte, 12)):
				return fmt.Errorf("advertisement %x: want hop limit, flags, router lifetime and timers all 0", body.Data)
			case !strings.HasPrefix(src.String(), "fe80::"):
				return fmt.Errorf("advertisement from %s, want a link-local address", src)
			}
			return nil
		}
		return fmt.Errorf("no router advertisement within 5 s")
	})
	if err != nil {
		t.Fatal(err)
	}
}
