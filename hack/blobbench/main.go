// Command blobbench is the Go side of hack/bench-blob.sh: it imports a file
// into a local blob store, serves the store with blob.Handler, and drives N
// concurrent HTTP clients against any URL (mdc or nginx alike).
//
//	blobbench put   -dir DIR -file F          import F, print digest and MB/s
//	blobbench serve -dir DIR                  serve DIR on 127.0.0.1:0, print the base URL
//	blobbench load  -url URL -c N -t DUR      N clients GET URL for DUR, print MiB/s
//	blobbench port                            print a free loopback TCP port
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/microdc/mdc/images/blob"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "blobbench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return errors.New("usage: blobbench put|serve|load|port [flags]")
	}
	fs := flag.NewFlagSet(args[0], flag.ContinueOnError)
	dir := fs.String("dir", "", "blob store directory")
	file := fs.String("file", "", "file to import")
	url := fs.String("url", "", "URL to load")
	conc := fs.Int("c", 1, "concurrent clients")
	dur := fs.Duration("t", 5*time.Second, "load duration")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	switch args[0] {
	case "put":
		return put(ctx, *dir, *file, stdout)
	case "serve":
		return serve(ctx, *dir, stdout)
	case "load":
		return load(ctx, *url, *conc, *dur, stdout)
	case "port":
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		defer ln.Close()
		fmt.Fprintln(stdout, ln.Addr().(*net.TCPAddr).Port)
		return nil
	}
	return fmt.Errorf("unknown command %q", args[0])
}

func put(ctx context.Context, dir, file string, stdout io.Writer) error {
	s, err := blob.NewLocal(dir, blob.Options{})
	if err != nil {
		return err
	}
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	start := time.Now()
	info, err := s.Put(ctx, f, blob.Digest{})
	if err != nil {
		return err
	}
	sec := time.Since(start).Seconds()
	fmt.Fprintf(stdout, "%s %d %.1f\n", info.Digest.Hex(), info.Size, float64(info.Size)/1e6/sec)
	return nil
}

// serve runs until ctx is cancelled or stdin closes.
func serve(ctx context.Context, dir string, stdout io.Writer) error {
	s, err := blob.NewLocal(dir, blob.Options{})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: blob.Handler(s, nil, nil)}
	fmt.Fprintf(stdout, "http://%s\n", ln.Addr())
	ctx, cancel := context.WithCancel(ctx)
	go func() { io.Copy(io.Discard, os.Stdin); cancel() }()
	go func() { <-ctx.Done(); srv.Close() }()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// load runs c clients, each fetching url again and again until dur is up,
// and counts the body bytes that arrive inside the window.
func load(ctx context.Context, url string, c int, dur time.Duration, stdout io.Writer) error {
	tr := &http.Transport{MaxIdleConnsPerHost: c, DisableCompression: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	// One checked request first: the right status and the full size.
	resp, err := client.Get(url)
	if err != nil {
		return err
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || n != resp.ContentLength {
		return fmt.Errorf("GET %s: status %d, %d of %d bytes, %v", url, resp.StatusCode, n, resp.ContentLength, err)
	}

	ctx, cancel := context.WithTimeout(ctx, dur)
	defer cancel()
	var total, requests atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < c; i++ {
		wg.Go(func() {
			buf := make([]byte, 256<<10)
			for ctx.Err() == nil {
				req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
				resp, err := client.Do(req)
				if err != nil {
					return
				}
				for {
					n, err := resp.Body.Read(buf)
					total.Add(int64(n))
					if err != nil {
						break
					}
				}
				resp.Body.Close()
				requests.Add(1)
			}
		})
	}
	wg.Wait()
	sec := time.Since(start).Seconds()
	fmt.Fprintf(stdout, "%.1f %d %d\n", float64(total.Load())/(1<<20)/sec, total.Load(), requests.Load())
	return nil
}
