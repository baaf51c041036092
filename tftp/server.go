// Package tftp is mdc's read-only TFTP server for first-stage boot loaders:
// it serves the iPXE binaries from one directory and nothing outside it.
//
// The protocol engine is github.com/pin/tftp/v3 (RFC 1350 with the RFC 2347
// option negotiation, RFC 2348 blksize and RFC 2349 tsize); this package adds
// the path rules, the confinement to the root, metrics and telemetry.
package tftp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/pin/tftp/v3"
	"github.com/prometheus/client_golang/prometheus"
)

// DefaultRoot is where Debian's ipxe package puts the iPXE binaries.
const DefaultRoot = "/usr/lib/ipxe"

// DefaultAddr is the address ListenAndServe binds when Config.Addr is empty.
const DefaultAddr = ":69"

// Served describes one file sent to the end.
type Served struct {
	// Client is the boot loader's address. The TFTP server knows no MAC: the
	// caller maps the IP to a machine from what DHCP handed out.
	Client netip.AddrPort
	// Local is the server address the request came in on (invalid if the
	// kernel did not say).
	Local     netip.Addr
	Path      string // cleaned, relative to the root
	Bytes     int64
	Duration  time.Duration // from the request to the last acknowledgement
	BlockSize int           // negotiated blksize; 0 if unknown (netascii mode)
}

// Recorder receives a Served for every file sent completely (the caller turns
// it into a machine.TFTPServed event). It runs on the transfer's goroutine,
// so it must return promptly.
type Recorder interface {
	Served(ctx context.Context, f Served)
}

// Config configures a Server. Only Root is needed; zero values get defaults.
type Config struct {
	// Root is the directory served (--ipxe-dir); DefaultRoot if empty.
	Root string
	// Addr is what ListenAndServe binds (--tftp-addr); DefaultAddr if empty.
	Addr string
	// Logger defaults to discarding.
	Logger *slog.Logger
	// Registerer takes the server's metrics; nil records none.
	Registerer prometheus.Registerer
	// Recorder gets telemetry for each file served; nil records none.
	Recorder Recorder
	// Timeout is how long to wait for a client's ACK before sending a block
	// again, and Retries how many times to send it; pin/tftp's defaults
	// (5 s, 5) if zero. They also bound how long Serve waits, after its
	// context ends, for a client that stopped answering.
	Timeout time.Duration
	Retries int
}

// Server is mdc's read-only TFTP server.
type Server struct {
	root     string
	addr     string
	log      *slog.Logger
	metrics  *metrics
	recorder Recorder
	timeout  time.Duration
	retries  int
}

// New checks cfg and builds a server; nothing is opened or bound yet.
func New(cfg Config) (*Server, error) {
	s := &Server{
		root:     cfg.Root,
		addr:     cfg.Addr,
		log:      cfg.Logger,
		recorder: cfg.Recorder,
		timeout:  cfg.Timeout,
		retries:  cfg.Retries,
	}
	if s.root == "" {
		s.root = DefaultRoot
	}
	if s.addr == "" {
		s.addr = DefaultAddr
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.timeout < 0 || s.retries < 0 {
		return nil, fmt.Errorf("tftp: negative timeout (%v) or retries (%d)", s.timeout, s.retries)
	}
	abs, err := filepath.Abs(s.root)
	if err != nil {
		return nil, fmt.Errorf("tftp: root %q: %w", s.root, err)
	}
	s.root = abs
	fi, err := os.Stat(s.root)
	if err != nil {
		return nil, fmt.Errorf("tftp: root %w; point --ipxe-dir at the directory with the iPXE binaries (Debian: apt install ipxe)", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("tftp: root %s is not a directory; point --ipxe-dir at the directory with the iPXE binaries", s.root)
	}
	s.metrics, err = newMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("tftp: %w", err)
	}
	return s, nil
}

// Root returns the absolute path of the directory served.
func (s *Server) Root() string { return s.root }

// ListenAndServe binds Config.Addr (UDP) and serves on it until ctx ends.
func (s *Server) ListenAndServe(ctx context.Context) error {
	conn, err := net.ListenPacket("udp", s.addr)
	if err != nil {
		return fmt.Errorf("tftp: listen on %s: %w (port 69 needs root or CAP_NET_BIND_SERVICE; or set --tftp-addr)", s.addr, err)
	}
	return s.Serve(ctx, conn)
}

// Serve answers TFTP requests arriving on conn until ctx ends, then stops
// taking requests, ends the transfers in flight, closes conn and returns nil.
//
// conn should be a *net.UDPConn: pin/tftp then reads the destination address
// and interface of each request (IP_PKTINFO), so every transfer answers from
// the address the client asked and blksize is capped by that interface's MTU.
// Transfers run on their own sockets (a new TID per transfer, RFC 1350).
func (s *Server) Serve(ctx context.Context, conn net.PacketConn) error {
	root, err := os.OpenRoot(s.root)
	if err != nil {
		conn.Close()
		return fmt.Errorf("tftp: open root: %w", err)
	}
	defer root.Close()

	t := &transfers{s: s, ctx: ctx, root: root}
	ps := tftp.NewServer(t.read, t.write)
	ps.SetHook(t)
	if s.timeout > 0 {
		ps.SetTimeout(s.timeout)
	}
	if s.retries > 0 {
		ps.SetRetries(s.retries)
	}
	s.log.Info("tftp serving", "addr", conn.LocalAddr().String(), "root", s.root)

	done := make(chan error, 1)
	go func() { done <- ps.Serve(conn) }()
	select {
	case err := <-done:
		// Serve ends by itself only when it cannot use conn.
		ps.Shutdown()
		return fmt.Errorf("tftp: serve on %s: %w", conn.LocalAddr(), err)
	case <-ctx.Done():
	}
	// Shutdown closes conn and waits for the transfers it knows of; the
	// readers see ctx and end them at the next block.
	ps.Shutdown()
	<-done
	// The loop may have read one last request before conn closed and started
	// it after Shutdown's wait; the loop has ended now, so a second Shutdown
	// waits for that one too.
	ps.Shutdown()
	s.log.Info("tftp stopped", "addr", conn.LocalAddr().String())
	return nil
}

// transfers holds what the handlers of one Serve call share.
type transfers struct {
	s    *Server
	ctx  context.Context
	root *os.Root
}

// readerPool reuses the read-ahead buffers: one 64 KiB read from the file
// feeds 128 blocks of 512 bytes, and a transfer allocates nothing per block.
var readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 64<<10) }}

func (t *transfers) read(name string, rf io.ReaderFrom) error {
	start := time.Now()
	s := t.s
	client, local := addrs(rf)
	log := s.log.With("client", client.String(), "file", name)

	rel, err := cleanPath(name)
	if err != nil {
		s.metrics.fail(reasonRefusedPath)
		log.Warn("tftp request refused", "err", err)
		return err
	}
	f, size, err := t.open(rel)
	if err != nil {
		reason, msg := classify(err)
		s.metrics.fail(reason)
		log.Info("tftp request not served", "reason", reason, "err", err)
		return errors.New(msg)
	}
	defer f.Close()
	if ot, ok := rf.(tftp.OutgoingTransfer); ok {
		// The buffered reader below hides Seek, which pin/tftp would use
		// to answer tsize.
		ot.SetSize(size)
	}

	s.metrics.start()
	defer s.metrics.done()
	br := readerPool.Get().(*bufio.Reader)
	br.Reset(f)
	r := &fileReader{ctx: t.ctx, r: br}
	n, err := rf.ReadFrom(r)
	br.Reset(nil)
	readerPool.Put(br)
	s.metrics.sent(n, err == nil)
	if err != nil {
		s.metrics.fail(reasonTransfer)
		log.Warn("tftp transfer failed", "sent", n, "size", size, "err", err)
		return err
	}
	served := Served{Client: client, Local: local, Path: rel, Bytes: n,
		Duration: time.Since(start), BlockSize: max(r.blksize, 0)}
	log.Info("tftp file served", "bytes", n, "blksize", served.BlockSize, "duration", served.Duration)
	if s.recorder != nil {
		s.recorder.Served(t.ctx, served)
	}
	return nil
}

func (t *transfers) write(name string, wt io.WriterTo) error {
	client := netip.AddrPort{}
	if it, ok := wt.(tftp.IncomingTransfer); ok {
		a := it.RemoteAddr()
		client = a.AddrPort()
	}
	t.s.metrics.fail(reasonWrite)
	t.s.log.Warn("tftp write request refused", "client", client.String(), "file", name)
	return errors.New("access violation: this TFTP server is read-only")
}

// OnSuccess is pin/tftp's hook; read already accounts for transfers.
func (t *transfers) OnSuccess(tftp.TransferStats) {}

// OnFailure counts the requests pin/tftp dropped before any handler ran
// (unparsable datagrams); failures of a transfer are accounted in read.
func (t *transfers) OnFailure(st tftp.TransferStats, err error) {
	if st.RemoteAddr != nil || t.ctx.Err() != nil {
		return
	}
	t.s.metrics.fail(reasonMalformed)
	t.s.log.Debug("tftp datagram dropped", "err", err)
}

var errNotRegular = errors.New("not a regular file")

// open opens rel inside the root. Directories on the way must be inside the
// root (os.Root enforces it, also against symlinks). A symlink as the last
// element is followed wherever it points, because the operator put it there:
// Debian's ipxe package itself links /usr/lib/ipxe/ipxe.efi to
// /boot/ipxe.efi. Only regular files are served; the type is checked before
// opening so a FIFO cannot block the transfer goroutine.
func (t *transfers) open(rel string) (*os.File, int64, error) {
	fi, err := t.root.Lstat(rel)
	if err != nil {
		return nil, 0, err
	}
	var f *os.File
	switch {
	case fi.Mode().IsRegular():
		f, err = t.root.Open(rel)
	case fi.Mode()&fs.ModeSymlink != 0:
		var target string
		target, err = t.root.Readlink(rel)
		if err != nil {
			return nil, 0, err
		}
		if !filepath.IsAbs(target) {
			target = filepath.Join(t.s.root, filepath.Dir(rel), target)
		}
		if fi, err = os.Stat(target); err != nil {
			return nil, 0, err
		}
		if !fi.Mode().IsRegular() {
			return nil, 0, errNotRegular
		}
		f, err = os.Open(target)
	default:
		return nil, 0, errNotRegular
	}
	if err != nil {
		return nil, 0, err
	}
	fi, err = f.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = errNotRegular
	}
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	return f, fi.Size(), nil
}

// classify maps an open error to a metrics reason and the message the
// client gets. pin/tftp sends every handler error with TFTP error code 1
// ("file not found"); the message tells the cases apart.
func classify(err error) (reason, msg string) {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return reasonNotFound, "file not found"
	case errors.Is(err, errNotRegular):
		return reasonNotRegular, "access violation: not a regular file"
	case errors.Is(err, fs.ErrPermission):
		return reasonUnreadable, "access violation: permission denied"
	}
	// os.Root's refusals (a directory symlink leading out of the root) have
	// no sentinel error; an unexpected error is treated the same way.
	var pe *fs.PathError
	if errors.As(err, &pe) && pe.Err.Error() == "path escapes from parent" {
		return reasonRefusedPath, "access violation: path leaves the TFTP root"
	}
	return reasonUnreadable, "access violation: file cannot be read"
}

// addrs returns the client's and the local address of a transfer.
func addrs(rf io.ReaderFrom) (client netip.AddrPort, local netip.Addr) {
	if ot, ok := rf.(tftp.OutgoingTransfer); ok {
		a := ot.RemoteAddr()
		client = a.AddrPort()
		client = netip.AddrPortFrom(client.Addr().Unmap(), client.Port())
	}
	if pi, ok := rf.(tftp.RequestPacketInfo); ok {
		if ip, ok := netip.AddrFromSlice(pi.LocalIP()); ok {
			local = ip.Unmap()
		}
	}
	return client, local
}

// fileReader feeds pin/tftp's sender. It ends the transfer when the server's
// context ends and notes the block size, which pin/tftp does not expose: in
// octet mode the sender reads exactly one block per call.
type fileReader struct {
	ctx     context.Context
	r       io.Reader
	blksize int
}

var errShutdown = errors.New("server shutting down, try again later")

func (r *fileReader) Read(p []byte) (int, error) {
	if r.blksize == 0 {
		// netascii mode reads through a 256-byte buffer: blksize unknown.
		if len(p) >= 512 {
			r.blksize = len(p)
		} else {
			r.blksize = -1
		}
	}
	if r.ctx.Err() != nil {
		return 0, errShutdown
	}
	return r.r.Read(p)
}
