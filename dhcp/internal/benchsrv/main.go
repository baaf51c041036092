// Command benchsrv runs mdc's DHCP server in full mode with leases in an
// embedded JetStream (file storage in -data-dir), the way mdc serve will:
// hack/bench-dhcp.sh measures it beside Kea and dnsmasq. On start it prints
// how many leases it loaded, so the script can check they survive a kill.
package main

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"sync"
	"syscall"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4/server4"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/microdc/mdc/dhcp"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "benchsrv:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("benchsrv", flag.ContinueOnError)
	iface := fs.String("interface", "", "interface to listen on")
	adv := fs.String("advertise-addr", "", "server address")
	rng := fs.String("range", "", "START-END/BITS")
	lease := fs.Duration("lease-time", time.Hour, "lease time")
	dataDir := fs.String("data-dir", "", "JetStream directory")
	workers := fs.Int("workers", 0, "packets handled at once (0: default)")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	null := fs.Bool("null", false, "answer every DISCOVER and REQUEST at once, keeping no leases: the most perfdhcp can measure here")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *null {
		return nullServer(ctx, *iface, *workers)
	}
	// The profile ends at SIGUSR1 (the script's lease count, just before
	// its kill -9) or at exit.
	stopProfile := func() {}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		var once sync.Once
		stopProfile = func() { once.Do(func() { pprof.StopCPUProfile(); f.Close() }) }
		defer stopProfile()
	}
	sn, err := dhcp.ParseRange(*rng)
	if err != nil {
		return err
	}
	sn.LeaseTime = *lease
	sn.Router = sn.Prefix.Addr().Next()
	a, err := netip.ParseAddr(*adv)
	if err != nil {
		return err
	}
	ns, err := server.NewServer(&server.Options{JetStream: true, StoreDir: *dataDir, DontListen: true, NoSigs: true})
	if err != nil {
		return err
	}
	ns.Start()
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
	if !ns.ReadyForConnections(30 * time.Second) {
		return errors.New("embedded NATS not ready")
	}
	nc, err := nats.Connect("", nats.InProcessServer(ns))
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	store, err := dhcp.NewKVStore(ctx, js, "")
	if err != nil {
		return err
	}
	n := 0
	loadCtx, cancel := context.WithCancel(ctx)
	store.Watch(loadCtx, func(dhcp.Lease, uint64) { n++ }, cancel)
	fmt.Fprintf(stdout, "loaded %d leases\n", n)
	srv, err := dhcp.New(dhcp.Config{
		Mode: dhcp.ModeFull, Interface: *iface, AdvertiseAddr: a, HTTPBaseURL: "http://" + a.String(),
		Subnets: []dhcp.Subnet{sn}, LeaseStore: store, Workers: *workers, ServerName: "bench",
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		return err
	}
	// SIGUSR1: print how many leases the store holds now.
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	defer signal.Stop(usr1)
	go func() {
		for range usr1 {
			stopProfile()
			n := 0
			c, cancel := context.WithCancel(ctx)
			store.Watch(c, func(dhcp.Lease, uint64) { n++ }, cancel)
			fmt.Fprintf(stdout, "have %d leases\n", n)
		}
	}()
	fmt.Fprintln(stdout, "serving")
	return srv.ListenAndServe(ctx)
}

// nullServer answers DISCOVER with OFFER and REQUEST with ACK of an address
// made from the MAC, with no lease store, no checks and no allocation: the
// ceiling the benchmark itself (perfdhcp, the veth pair, the sockets of a
// Go server) puts on any DHCP server on this machine.
func nullServer(ctx context.Context, iface string, workers int) error {
	c, err := server4.NewIPv4UDPConn(iface, &net.UDPAddr{Port: 67})
	if err != nil {
		return err
	}
	go func() { <-ctx.Done(); c.Close() }()
	c.SetReadBuffer(4 << 20)
	c.SetWriteBuffer(4 << 20)
	if workers == 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	fmt.Println("loaded 0 leases\nserving (null)")
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf, out := make([]byte, 1500), make([]byte, 0, 400)
			for {
				n, peer, err := c.ReadFromUDPAddrPort(buf)
				if err != nil {
					if ctx.Err() != nil {
						return
					}
					continue
				}
				b := buf[:n]
				if n < 240 {
					continue
				}
				typ := byte(2) // OFFER, or ACK to a REQUEST
				for i := 240; i+2 < n && b[i] != 255; {
					if b[i] == 0 {
						i++
						continue
					}
					if b[i] == 53 && b[i+2] == 3 {
						typ = 5
					}
					i += 2 + int(b[i+1])
				}
				out = append(out[:0], b[:236]...)
				out[0] = 2
				m := binary.BigEndian.Uint32(out[30:34])
				binary.BigEndian.PutUint32(out[16:20], 10<<24|77<<16|(1+m%200)<<8|(1+(m>>8)%250))
				out = append(out, 99, 130, 83, 99, 53, 1, typ, 54, 4, 10, 77, 0, 1, 51, 4, 0, 0, 14, 16,
					1, 4, 255, 255, 0, 0, 3, 4, 10, 77, 0, 1, 255)
				for len(out) < 300 {
					out = append(out, 0)
				}
				c.WriteToUDPAddrPort(out, peer)
			}
		}()
	}
	wg.Wait()
	return nil
}
