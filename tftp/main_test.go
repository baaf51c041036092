package tftp

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
	"testing"
)

// The benchmark (hack/bench-tftp.sh) runs this package's test binary as a
// stand-alone server instead of the tests:
//
//	tftp.test -tftp.serve 127.0.0.1:0 -tftp.root DIR -tftp.addrfile FILE
//
// It writes the address it bound to FILE and serves until SIGTERM or SIGINT.
var (
	serveAddr = flag.String("tftp.serve", "", "serve TFTP on this address until SIGTERM instead of testing (benchmarks)")
	serveRoot = flag.String("tftp.root", "", "root for -tftp.serve")
	addrFile  = flag.String("tftp.addrfile", "", "write the address -tftp.serve bound to this file")
	cpuProf   = flag.String("tftp.cpuprofile", "", "write a CPU profile of -tftp.serve to this file")
)

func TestMain(m *testing.M) {
	flag.Parse()
	if *serveAddr != "" {
		if err := serveStandalone(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func serveStandalone() error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if *cpuProf != "" {
		f, err := os.Create(*cpuProf)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	s, err := New(Config{Root: *serveRoot, Logger: log})
	if err != nil {
		return err
	}
	conn, err := net.ListenPacket("udp", *serveAddr)
	if err != nil {
		return err
	}
	if *addrFile != "" {
		if err := os.WriteFile(*addrFile, []byte(conn.LocalAddr().String()+"\n"), 0o644); err != nil {
			conn.Close()
			return err
		}
	}
	return s.Serve(ctx, conn)
}
