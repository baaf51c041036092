package vrack

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// MDC is `mdc serve` running in the rack's namespace.
type MDC struct {
	Proc    *Proc
	Bin     string
	DataDir string
	// URL reaches the API from inside the namespace (Rack.HTTPClient).
	URL string
}

// StartMDC runs `bin serve --data-dir dataDir --http-addr :port --log-level
// debug flags...` in the namespace and waits until it says it is ready.
func (r *Rack) StartMDC(bin, dataDir string, port int, flags ...string) (*MDC, error) {
	ready := make(chan struct{})
	var once sync.Once
	args := append([]string{bin, "serve", "--data-dir", dataDir, "--http-addr", fmt.Sprintf(":%d", port), "--log-level", "debug"}, flags...)
	p, err := r.Start("mdc-serve", lineWatcher("mdc ready on ", func() { once.Do(func() { close(ready) }) }), args...)
	if err != nil {
		return nil, err
	}
	select {
	case <-ready:
	case <-p.Done:
		return nil, fmt.Errorf("mdc serve exited: %s", p.Tail(4000))
	case <-time.After(30 * time.Second):
		return nil, fmt.Errorf("mdc serve not ready after 30 s: %s", p.Tail(4000))
	}
	r.log.Info("mdc serving", "ns", r.NS, "port", port, "data", dataDir)
	return &MDC{Proc: p, Bin: bin, DataDir: dataDir, URL: fmt.Sprintf("http://127.0.0.1:%d", port)}, nil
}

// AdminToken is mdc's admin token from its data directory.
func (m *MDC) AdminToken() (string, error) {
	b, err := os.ReadFile(filepath.Join(m.DataDir, "admin.token"))
	return strings.TrimSpace(string(b)), err
}

// ImportImage imports kernel and initrd with the CLI as image name of role.
func (r *Rack) ImportImage(m *MDC, kernel, initrd, cmdline, name, role string) error {
	imp := exec.Command("ip", "netns", "exec", r.NS, m.Bin, "images", "import", "--server", m.URL, "--data-dir", m.DataDir,
		"--kernel", kernel, "--initrd", initrd, "--cmdline", cmdline, "--name", name, "--role", role)
	if out, err := imp.CombinedOutput(); err != nil {
		return fmt.Errorf("mdc images import %s: %v\n%s", name, err, out)
	}
	return nil
}

// lineWatcher calls fn when a line starting with prefix goes by.
func lineWatcher(prefix string, fn func()) io.Writer {
	pr, pw := io.Pipe()
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), prefix) {
				fn()
			}
		}
		_, _ = io.Copy(io.Discard, pr)
	}()
	return pw
}

// Forward listens on hostAddr in the program's own namespace (the host's
// loopback, say) and relays each connection to nsAddr inside the rack's
// namespace: how a user on the host reaches mdc's API. It stops at Close
// and returns the address it listens on.
func (r *Rack) Forward(hostAddr, nsAddr string) (string, error) {
	ln, err := net.Listen("tcp", hostAddr)
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				if !errors.Is(err, net.ErrClosed) {
					r.log.Warn("forwarder", "err", err)
				}
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				dctx, dcancel := context.WithTimeout(ctx, 5*time.Second)
				u, err := r.DialContext(dctx, "tcp", nsAddr)
				dcancel()
				if err != nil {
					r.log.Warn("forwarder dial", "to", nsAddr, "err", err)
					return
				}
				defer u.Close()
				stop := context.AfterFunc(ctx, func() { c.Close(); u.Close() })
				defer stop()
				done := make(chan struct{})
				go func() { _, _ = io.Copy(u, c); u.(*net.TCPConn).CloseWrite(); close(done) }()
				_, _ = io.Copy(c, u)
				_ = c.(*net.TCPConn).CloseWrite()
				<-done
			}()
		}
	}()
	r.onClose(func() { cancel(); ln.Close(); wg.Wait() })
	return ln.Addr().String(), nil
}
