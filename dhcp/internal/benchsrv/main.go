// Command benchsrv runs mdc's DHCP server in full mode with leases in an
// embedded JetStream (file storage in -data-dir), the way mdc serve will:
// hack/bench-dhcp.sh measures it beside Kea and dnsmasq. On start it prints
// how many leases it loaded, so the script can check they survive a kill.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"

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
	if err := fs.Parse(args); err != nil {
		return err
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
			n := 0
			c, cancel := context.WithCancel(ctx)
			store.Watch(c, func(dhcp.Lease, uint64) { n++ }, cancel)
			fmt.Fprintf(stdout, "have %d leases\n", n)
		}
	}()
	fmt.Fprintln(stdout, "serving")
	return srv.ListenAndServe(ctx)
}
