package main

// The network boot side of `mdc serve`: DHCP (proxy, full or off), TFTP for
// the first-stage iPXE binaries, the iPXE boot scripts on the HTTP server,
// and the IPv6 router advertisement that ends iPXE's wait for IPv6.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4/server4"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/microdc/mdc/dhcp"
	"github.com/microdc/mdc/events"
	"github.com/microdc/mdc/images"
	"github.com/microdc/mdc/images/blob"
	"github.com/microdc/mdc/ipxe"
	"github.com/microdc/mdc/machine"
	"github.com/microdc/mdc/tftp"
)

// netbootFlags are the flags of the network boot services, as given.
type netbootFlags struct {
	iface, advertise, dhcpMode, dhcpRange, dhcpRouter, dhcpDNS, dhcpDomain string
	leaseTime                                                              time.Duration
	dhcpPort                                                               int
	tftpAddr, ipxeDir, uefiBootfile, commissioningImage, ipxeTemplates     string
	ra                                                                     bool
}

func addNetbootFlags(fs *flag.FlagSet) *netbootFlags {
	f := &netbootFlags{}
	fs.StringVar(&f.iface, "interface", "", "the rack network: DHCP and TFTP listen there and its IPv4 address is advertised (network boot is off without it or --advertise-addr)")
	fs.StringVar(&f.advertise, "advertise-addr", "", "the IPv4 address machines reach mdc at (default: the address of --interface)")
	fs.StringVar(&f.dhcpMode, "dhcp-mode", string(dhcp.ModeProxy), "proxy (beside an existing DHCP server: boot information only), full (mdc hands out addresses) or off")
	fs.StringVar(&f.dhcpRange, "dhcp-range", "", "full mode: the address pool, START-END[/BITS] (prefix /24 by default)")
	fs.StringVar(&f.dhcpRouter, "dhcp-router", "", "full mode: the default gateway clients are given")
	fs.StringVar(&f.dhcpDNS, "dhcp-dns", "", "full mode: DNS servers clients are given, comma-separated")
	fs.StringVar(&f.dhcpDomain, "dhcp-domain", "", "full mode: the domain name clients are given")
	fs.DurationVar(&f.leaseTime, "dhcp-lease-time", dhcp.DefaultLeaseTime, "full mode: lease time (10s to 1 year)")
	fs.IntVar(&f.dhcpPort, "dhcp-port", 67, "the DHCP server port (tests move it; clients always send to 67)")
	fs.StringVar(&f.tftpAddr, "tftp-addr", tftp.DefaultAddr, "UDP address of the TFTP server for the iPXE binaries, or off")
	fs.StringVar(&f.ipxeDir, "ipxe-dir", tftp.DefaultRoot, "directory of the iPXE binaries, served over TFTP and at /ipxe/ (Debian: apt install ipxe)")
	fs.StringVar(&f.uefiBootfile, "uefi-bootfile", dhcp.DefaultUEFIBootfile, "iPXE build x86-64 UEFI firmware is given (in --ipxe-dir)")
	fs.StringVar(&f.commissioningImage, "commissioning-image", "commissioning", "catalog name of the image new machines boot to report their hardware")
	fs.StringVar(&f.ipxeTemplates, "ipxe-templates", "", "directory of operator boot scripts: <state>.ipxe or role-<role>.ipxe (Go text/template)")
	fs.BoolVar(&f.ra, "ipv6-ra", true, "answer IPv6 router solicitations on --interface with an advertisement that offers nothing, so iPXE does not wait ~15 s for IPv6")
	return f
}

// netbootConfig is the validated network boot configuration.
type netbootConfig struct {
	enabled   bool // DHCP (unless off), TFTP (unless off) and the RA responder run
	iface     string
	advertise netip.Addr
	dhcpMode  string // "off", "proxy", "full"
	subnets   []dhcp.Subnet
	dhcpPort  int
	tftpAddr  string // "" when off
	ipxeDir   string
	uefiBoot  string
	ra        bool

	commissioningImage string
	templates          string
}

// config checks every netboot flag; it touches nothing but reads the
// interface's addresses.
func (f *netbootFlags) config() (*netbootConfig, error) {
	c := &netbootConfig{iface: f.iface, dhcpMode: f.dhcpMode, dhcpPort: f.dhcpPort, ipxeDir: f.ipxeDir,
		uefiBoot: f.uefiBootfile, commissioningImage: f.commissioningImage, templates: f.ipxeTemplates, ra: f.ra}
	switch f.dhcpMode {
	case "off", string(dhcp.ModeProxy), string(dhcp.ModeFull):
	default:
		return nil, usagef("--dhcp-mode %q: want proxy, full or off", f.dhcpMode)
	}
	if f.advertise != "" {
		a, err := netip.ParseAddr(f.advertise)
		if err != nil || !a.Is4() || a.IsUnspecified() || a.IsMulticast() {
			return nil, usagef("--advertise-addr %q: want the IPv4 address machines reach mdc at", f.advertise)
		}
		c.advertise = a
	}
	if f.iface != "" {
		ifi, err := net.InterfaceByName(f.iface)
		if err != nil {
			return nil, usagef("--interface %s: %v (ip -br link lists the interfaces)", f.iface, err)
		}
		if !c.advertise.IsValid() {
			if c.advertise, err = interfaceIPv4(ifi); err != nil {
				return nil, usagef("--interface %s: %v; give it an address or set --advertise-addr", f.iface, err)
			}
		}
	}
	// /boot.ipxe is served whether DHCP and TFTP run or not.
	if err := ipxe.CheckTemplates(f.ipxeTemplates); err != nil {
		return nil, usagef("--ipxe-templates: %v", err)
	}
	c.enabled = c.advertise.IsValid()
	if !c.enabled {
		if f.dhcpMode == string(dhcp.ModeFull) {
			return nil, usagef("--dhcp-mode full needs --interface IFACE (or --advertise-addr IP)")
		}
		return c, nil
	}
	if f.dhcpPort < 1 || f.dhcpPort > 65535 {
		return nil, usagef("--dhcp-port %d: want 1-65535", f.dhcpPort)
	}
	if f.dhcpMode == string(dhcp.ModeFull) {
		if f.dhcpRange == "" {
			return nil, usagef("--dhcp-mode full needs --dhcp-range START-END, e.g. 10.0.0.100-10.0.0.200")
		}
		sn, err := dhcp.ParseRange(f.dhcpRange)
		if err != nil {
			return nil, usagef("--dhcp-range: %v", err)
		}
		if f.dhcpRouter != "" {
			if sn.Router, err = netip.ParseAddr(f.dhcpRouter); err != nil {
				return nil, usagef("--dhcp-router %q: %v", f.dhcpRouter, err)
			}
		}
		for _, s := range strings.Split(f.dhcpDNS, ",") {
			if s = strings.TrimSpace(s); s == "" {
				continue
			}
			a, err := netip.ParseAddr(s)
			if err != nil {
				return nil, usagef("--dhcp-dns %q: %v", s, err)
			}
			sn.DNS = append(sn.DNS, a)
		}
		sn.Domain, sn.LeaseTime = f.dhcpDomain, f.leaseTime
		c.subnets = []dhcp.Subnet{sn}
	} else if f.dhcpRange != "" || f.dhcpRouter != "" || f.dhcpDNS != "" || f.dhcpDomain != "" {
		return nil, usagef("--dhcp-range, --dhcp-router, --dhcp-dns and --dhcp-domain are for --dhcp-mode full (now %s)", f.dhcpMode)
	}
	if f.tftpAddr != "off" {
		if _, _, err := net.SplitHostPort(f.tftpAddr); err != nil {
			return nil, usagef("--tftp-addr %q: %v (or off)", f.tftpAddr, err)
		}
		c.tftpAddr = f.tftpAddr
	}
	if st, err := os.Stat(f.ipxeDir); err != nil || !st.IsDir() {
		return nil, usagef("--ipxe-dir %s: not a directory with the iPXE binaries (Debian: apt install ipxe)", f.ipxeDir)
	}
	if _, err := os.Stat(f.ipxeDir + "/" + f.uefiBootfile); err != nil {
		return nil, usagef("--uefi-bootfile %s: not in --ipxe-dir %s", f.uefiBootfile, f.ipxeDir)
	}
	// Build the DHCP server once to run its own checks (pool inside the
	// prefix, router in it, lease time …) before anything starts.
	if c.dhcpMode != "off" {
		if _, err := dhcp.New(c.dhcpConfig("http://"+c.advertise.String(), nil, nil, nil)); err != nil {
			return nil, usagef("%v", err)
		}
	}
	return c, nil
}

func interfaceIPv4(ifi *net.Interface) (netip.Addr, error) {
	addrs, err := ifi.Addrs()
	if err != nil {
		return netip.Addr{}, err
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP.To4()); ok && n.IP.To4() != nil {
				return ip, nil
			}
		}
	}
	return netip.Addr{}, errors.New("no IPv4 address on it")
}

func (c *netbootConfig) dhcpConfig(baseURL string, store dhcp.LeaseStore, rec dhcp.Recorder, m dhcp.Machines) dhcp.Config {
	return dhcp.Config{
		Mode: dhcp.Mode(c.dhcpMode), Interface: c.iface, AdvertiseAddr: c.advertise, ServerPort: c.dhcpPort,
		Subnets: c.subnets, HTTPBaseURL: baseURL, UEFIBootfile: c.uefiBoot, IPXEDir: c.ipxeDir,
		LeaseStore: store, Recorder: rec, Machines: m, Registry: prometheus.NewRegistry(),
	}
}

// netbootDeps is what the network boot services use of the rest of mdc.
type netbootDeps struct {
	store    *events.Store
	nc       *nats.Conn  // full mode keeps leases in its JetStream
	images   ipxe.Images // the image catalog; nil until one is wired
	httpPort int         // where the HTTP server listens
	reg      prometheus.Registerer
	log      *slog.Logger
}

// netboot is the network boot services, built and bound, not yet serving.
type netboot struct {
	cfg       *netbootConfig
	log       *slog.Logger
	dhcp      *dhcp.Server
	dhcpConns []net.PacketConn
	tftp      *tftp.Server
	tftpConn  net.PacketConn
	ra        *ipxe.RAResponder
	raConn    net.PacketConn
	scripts   *ipxe.Server
	rec       *recorder
}

// newNetboot builds the services and binds their sockets, so that a taken
// port is one clear error before anything serves. Every socket (and the
// neighbour table handle) belongs to the network namespace of the calling
// thread, which tests rely on.
func newNetboot(ctx context.Context, c *netbootConfig, d netbootDeps) (_ *netboot, err error) {
	n := &netboot{cfg: c, log: d.log}
	defer func() {
		if err != nil {
			n.close()
		}
	}()
	n.rec = &recorder{store: d.store, log: d.log}
	baseURL := ""
	if c.enabled {
		baseURL = fmt.Sprintf("http://%s:%d", c.advertise, d.httpPort)
		if n.rec.arp, err = os.Open("/proc/thread-self/net/arp"); err != nil {
			d.log.Warn("no neighbour table: TFTP and blob telemetry will not name machines", "err", err)
		}
	}
	n.scripts, err = ipxe.New(ipxe.Config{
		Machines: d.store, Images: d.images, CommissioningImage: c.commissioningImage, BaseURL: baseURL,
		TemplateDir: c.templates, IPXEDir: c.ipxeDir, Recorder: n.rec, Logger: d.log, Registry: d.reg,
	})
	if err != nil {
		return nil, err
	}
	if !c.enabled {
		d.log.Info("network boot off: DHCP and TFTP need --interface (or --advertise-addr); /boot.ipxe is served on HTTP")
		return n, nil
	}
	if c.dhcpMode != "off" {
		var leases dhcp.LeaseStore
		if c.dhcpMode == string(dhcp.ModeFull) {
			js, err := jetstream.New(d.nc)
			if err != nil {
				return nil, err
			}
			if leases, err = dhcp.NewKVStore(ctx, js, ""); err != nil {
				return nil, err
			}
		}
		dc := c.dhcpConfig(baseURL, leases, n.rec, d.store)
		dc.Logger, dc.Registry = d.log, d.reg
		if n.dhcp, err = dhcp.New(dc); err != nil {
			return nil, err
		}
		if n.dhcpConns, err = listenDHCP(c); err != nil {
			return nil, err
		}
	}
	if c.tftpAddr != "" {
		if n.tftp, err = tftp.New(tftp.Config{Root: c.ipxeDir, Addr: c.tftpAddr, Logger: d.log, Registerer: d.reg, Recorder: n.rec}); err != nil {
			return nil, err
		}
		if n.tftpConn, err = net.ListenPacket("udp4", c.tftpAddr); err != nil {
			return nil, fmt.Errorf("--tftp-addr: %w (port 69 needs root or CAP_NET_BIND_SERVICE)", err)
		}
	}
	if c.ra && c.iface != "" {
		n.ra = ipxe.NewRAResponder(d.log)
		if n.raConn, err = ipxe.ListenRA(c.iface); err != nil {
			// IPv6 may be off on the interface: iPXE then only waits longer.
			d.log.Warn("IPv6 router advertisements off: iPXE will wait for IPv6 before booting", "interface", c.iface, "err", err)
			n.ra, n.raConn = nil, nil
		}
	}
	d.log.Info("network boot", "interface", c.iface, "advertise", c.advertise, "dhcp", c.dhcpMode,
		"tftp", c.tftpAddr, "ipxe_dir", c.ipxeDir, "boot_url", baseURL+"/boot.ipxe", "ipv6_ra", n.ra != nil)
	return n, nil
}

// listenDHCP opens the DHCP port (and in proxy mode the PXE port, 4011) on
// the interface, as dhcp.Server.ListenAndServe would.
func listenDHCP(c *netbootConfig) ([]net.PacketConn, error) {
	ports := []int{c.dhcpPort}
	if c.dhcpMode == string(dhcp.ModeProxy) {
		ports = append(ports, 4011)
	}
	var conns []net.PacketConn
	for _, port := range ports {
		conn, err := server4.NewIPv4UDPConn(c.iface, &net.UDPAddr{IP: net.IPv4zero, Port: port})
		if err != nil {
			for _, c := range conns {
				c.Close()
			}
			return nil, fmt.Errorf("DHCP: listen on port %d of %q: %w (needs root, or CAP_NET_BIND_SERVICE and CAP_NET_RAW)", port, c.iface, err)
		}
		conns = append(conns, conn)
	}
	return conns, nil
}

// mount puts /boot.ipxe and /ipxe/ on the HTTP server.
func (n *netboot) mount(mount func(string, http.Handler)) { n.scripts.Register(mount) }

// run serves everything in g until ctx ends.
func (n *netboot) run(ctx context.Context, g *errgroup.Group) {
	if n.dhcp != nil {
		conns := n.dhcpConns
		n.dhcpConns = nil
		g.Go(func() error { return n.dhcp.Serve(ctx, conns...) })
	}
	if n.tftp != nil {
		conn := n.tftpConn
		n.tftpConn = nil
		g.Go(func() error { return n.tftp.Serve(ctx, conn) })
	}
	if n.ra != nil {
		conn := n.raConn
		n.raConn = nil
		g.Go(func() error { return n.ra.Serve(ctx, conn) })
	}
}

// close releases what was bound but never served.
func (n *netboot) close() {
	for _, c := range n.dhcpConns {
		c.Close()
	}
	if n.tftpConn != nil {
		n.tftpConn.Close()
	}
	if n.raConn != nil {
		n.raConn.Close()
	}
	if n.rec != nil && n.rec.arp != nil {
		n.rec.arp.Close()
	}
}

// recorder turns what the servers report into events: discoveries through
// the store (once per machine), boot telemetry straight to the log.
type recorder struct {
	store *events.Store
	log   *slog.Logger

	mu  sync.Mutex
	arp *os.File // this namespace's /proc/net/arp, re-read from the start
}

var errKnown = errors.New("already known")

// Discovered implements dhcp.Recorder: one discovered event, unless the
// machine was recorded meanwhile (by an earlier packet or a boot script).
func (r *recorder) Discovered(ctx context.Context, id machine.ID, d machine.DiscoveredData) {
	_, _, err := r.store.Update(ctx, id, func(cur machine.Machine) (machine.Event, error) {
		if cur.State != machine.Absent {
			return machine.Event{}, errKnown
		}
		return machine.NewEvent(id, machine.Discovered, "mdc/dhcp", d)
	})
	if err != nil && !errors.Is(err, errKnown) {
		r.log.Error("record discovered machine", "machine", id, "err", err)
		return
	}
	if err == nil {
		r.log.Info("machine discovered by DHCP", "mac", id.MAC(), "arch", d.Arch, "vendor_class", d.VendorClass)
	}
}

// Telemetry implements dhcp.Recorder and ipxe.Recorder.
func (r *recorder) Telemetry(_ context.Context, e machine.Event) {
	if err := r.store.Log.AppendTelemetry(e); err != nil {
		r.log.Debug("telemetry dropped", "type", e.Type, "machine", e.Machine, "err", err)
	}
}

// TFTPServedData is the data of tftp_served telemetry.
type TFTPServedData struct {
	Path       string `json:"path"`
	Bytes      int64  `json:"bytes"`
	BlockSize  int    `json:"blksize,omitempty"`
	DurationMS int64  `json:"duration_ms"`
	Client     string `json:"client"`
}

// BlobServedData is the data of blob_served telemetry.
type BlobServedData struct {
	Digest     string `json:"digest"`
	Status     int    `json:"status"`
	Bytes      int64  `json:"bytes"`
	Size       int64  `json:"size"`
	Range      string `json:"range,omitempty"`
	DurationMS int64  `json:"duration_ms"`
	Client     string `json:"client"`
}

// Served implements tftp.Recorder. TFTP knows only the client's address;
// the neighbour table says which MAC has it, in proxy mode as in full.
func (r *recorder) Served(ctx context.Context, f tftp.Served) {
	id, ok := r.machineAt(f.Client.Addr())
	if !ok {
		return
	}
	r.telemetry(ctx, id, machine.TFTPServed, "mdc/tftp", TFTPServedData{Path: f.Path, Bytes: f.Bytes, BlockSize: f.BlockSize,
		DurationMS: f.Duration.Milliseconds(), Client: f.Client.Addr().String()})
}

// BlobServed is for blob.OnServed: the kernel and initrd downloads of a boot.
func (r *recorder) BlobServed(ctx context.Context, s blob.Served) {
	id, ok := r.machineAt(s.Remote.Addr())
	if !ok {
		return
	}
	r.telemetry(ctx, id, machine.BlobServed, "mdc/blobs", BlobServedData{Digest: s.Digest.String(), Status: s.Status, Bytes: s.Bytes,
		Size: s.Size, Range: s.Range, DurationMS: s.Duration.Milliseconds(), Client: s.Remote.Addr().String()})
}

func (r *recorder) telemetry(ctx context.Context, id machine.ID, t machine.EventType, source string, data any) {
	e, err := machine.NewEvent(id, t, source, data)
	if err == nil {
		r.Telemetry(ctx, e)
	}
}

// machineAt maps a client address on the rack network to a known machine
// through the kernel's neighbour table. A relayed client's neighbour is its
// router, which is no machine, so nothing is recorded for it.
func (r *recorder) machineAt(a netip.Addr) (machine.ID, bool) {
	if r.arp == nil || !a.Is4() {
		return "", false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, err := r.arp.Seek(0, io.SeekStart); err != nil {
		return "", false
	}
	b, err := io.ReadAll(r.arp)
	if err != nil {
		return "", false
	}
	mac, ok := neighbourMAC(b, a)
	if !ok {
		return "", false
	}
	m, ok := r.store.LookupMAC(mac)
	return m.ID, ok
}

// neighbourMAC finds a in /proc/net/arp's text:
// "IP address  HW type  Flags  HW address  Mask  Device".
func neighbourMAC(table []byte, a netip.Addr) (machine.ID, bool) {
	sc := bufio.NewScanner(bytes.NewReader(table))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || f[0] != a.String() || f[2] == "0x0" { // 0x0: incomplete
			continue
		}
		id, err := machine.ParseID(f[3])
		return id, err == nil
	}
	return "", false
}

// catalogImages gives the boot scripts the image catalog.
type catalogImages struct{ c *images.Catalog }

func (a catalogImages) Image(name string) (ipxe.Image, bool) {
	img, ok := a.c.Get(name)
	return bootImage(img), ok
}

func (a catalogImages) RoleImage(role string) (ipxe.Image, bool) {
	img, ok := a.c.Current(role)
	return bootImage(img), ok
}

func bootImage(img images.Image) ipxe.Image {
	b := ipxe.Image{Name: img.Name, Kernel: img.Kernel.Digest, Cmdline: img.Cmdline}
	for _, f := range img.Initrds {
		b.Initrds = append(b.Initrds, f.Digest)
	}
	return b
}
