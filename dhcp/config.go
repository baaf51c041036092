package dhcp

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/microdc/mdc/machine"
)

// Mode is how the DHCP server behaves on the network.
type Mode string

// The modes (--dhcp-mode).
const (
	// ModeProxy answers only PXE and HTTP-boot clients, with boot
	// information and never an address: safe beside an existing DHCP server.
	ModeProxy Mode = "proxy"
	// ModeFull hands out addresses from its pools, and boot information to
	// network-boot clients.
	ModeFull Mode = "full"
)

// ParseMode accepts "proxy" or "full".
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case ModeProxy, ModeFull:
		return m, nil
	}
	return "", fmt.Errorf("unknown DHCP mode %q: want proxy or full", s)
}

// Default file names of the iPXE builds (Debian's ipxe package).
const (
	DefaultBIOSBootfile  = "undionly.kpxe"
	DefaultUEFIBootfile  = "snponly.efi"
	DefaultARM64Bootfile = "snponly-arm64.efi"
	DefaultLeaseTime     = time.Hour
	DefaultOfferHold     = 30 * time.Second
	DefaultDeclineHold   = 10 * time.Minute
)

// Subnet is one address pool and what its clients are told. Requests relayed
// with a giaddr inside Prefix are served from it.
type Subnet struct {
	Prefix    netip.Prefix // e.g. 10.0.0.0/24; the mask clients get
	Start     netip.Addr   // first address of the pool
	End       netip.Addr   // last address of the pool, inclusive
	Router    netip.Addr   // option 3; unset: none
	DNS       []netip.Addr // option 6
	Domain    string       // option 15
	LeaseTime time.Duration

	start, n        uint32
	opts, leaseOpts []rawOption // encoded once by New
}

// ParseRange reads "START-END" (as --dhcp-range), with an optional "/BITS"
// suffix giving the prefix; without it, the /24 around START.
func ParseRange(s string) (Subnet, error) {
	body, bits, hasBits := strings.Cut(s, "/")
	a, b, ok := strings.Cut(body, "-")
	if !ok {
		return Subnet{}, fmt.Errorf("DHCP range %q: want START-END, e.g. 10.0.0.100-10.0.0.200", s)
	}
	start, err := netip.ParseAddr(strings.TrimSpace(a))
	if err != nil {
		return Subnet{}, fmt.Errorf("DHCP range %q: start: %w", s, err)
	}
	end, err := netip.ParseAddr(strings.TrimSpace(b))
	if err != nil {
		return Subnet{}, fmt.Errorf("DHCP range %q: end: %w", s, err)
	}
	pfx := netip.PrefixFrom(start, 24)
	if hasBits {
		if pfx, err = netip.ParsePrefix(start.String() + "/" + bits); err != nil {
			return Subnet{}, fmt.Errorf("DHCP range %q: prefix length: %w", s, err)
		}
	}
	return Subnet{Prefix: pfx.Masked(), Start: start, End: end}, nil
}

func u32(a netip.Addr) uint32 { b := a.As4(); return binary.BigEndian.Uint32(b[:]) }

func fromU32(v uint32) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

func (sn *Subnet) size() uint32            { return sn.n }
func (sn *Subnet) nth(i uint32) netip.Addr { return fromU32(sn.start + i) }
func (sn *Subnet) inRange(a netip.Addr) bool {
	v := u32(a)
	return a.Is4() && v >= sn.start && v-sn.start < sn.n
}
func (sn *Subnet) mask() []byte {
	b := make([]byte, 4)
	binary.BigEndian.PutUint32(b, ^uint32(0)<<(32-sn.Prefix.Bits()))
	return b
}
func (sn *Subnet) contains(a netip.Addr) bool { return sn.Prefix.Contains(a) }

func (sn *Subnet) validate() error {
	if !sn.Prefix.IsValid() || !sn.Prefix.Addr().Is4() || sn.Prefix.Bits() < 8 || sn.Prefix.Bits() > 30 {
		return fmt.Errorf("subnet %v: want an IPv4 prefix between /8 and /30", sn.Prefix)
	}
	sn.Prefix = sn.Prefix.Masked()
	if !sn.Start.Is4() || !sn.End.Is4() || !sn.Prefix.Contains(sn.Start) || !sn.Prefix.Contains(sn.End) {
		return fmt.Errorf("subnet %v: range %v-%v must lie inside it", sn.Prefix, sn.Start, sn.End)
	}
	if sn.End.Less(sn.Start) {
		return fmt.Errorf("subnet %v: range end %v is before start %v", sn.Prefix, sn.End, sn.Start)
	}
	if sn.Router.IsValid() && (!sn.Router.Is4() || !sn.Prefix.Contains(sn.Router)) {
		return fmt.Errorf("subnet %v: router %v is not in it", sn.Prefix, sn.Router)
	}
	for _, d := range sn.DNS {
		if !d.Is4() {
			return fmt.Errorf("subnet %v: DNS server %v is not IPv4", sn.Prefix, d)
		}
	}
	if len(sn.Domain) > 255 {
		return fmt.Errorf("subnet %v: domain longer than 255 bytes", sn.Prefix)
	}
	if sn.LeaseTime == 0 {
		sn.LeaseTime = DefaultLeaseTime
	}
	if sn.LeaseTime < 10*time.Second || sn.LeaseTime > 365*24*time.Hour {
		return fmt.Errorf("subnet %v: lease time %v: want between 10s and a year", sn.Prefix, sn.LeaseTime)
	}
	sn.start = u32(sn.Start)
	sn.n = u32(sn.End) - sn.start + 1
	return nil
}

// Machines is the in-memory machine table (a projection of the event log).
// It is called for every packet and must do no I/O.
type Machines interface {
	LookupMAC(id machine.ID) (machine.Machine, bool)
}

// Recorder takes what the DHCP server learns. Calls come from one goroutine
// fed by a bounded queue (full: dropped and counted), never from the packet
// path; an implementation may still block only briefly.
type Recorder interface {
	Discovered(ctx context.Context, id machine.ID, d machine.DiscoveredData)
	Telemetry(ctx context.Context, e machine.Event)
}

// Config is everything the DHCP server needs; New validates it.
type Config struct {
	Mode Mode
	// Interface to listen on (SO_BINDTODEVICE); empty: all.
	Interface string
	// AdvertiseAddr is the server identifier (option 54) and the address
	// clients are told to reach mdc at. Required.
	AdvertiseAddr netip.Addr
	// ListenAddr is the address ListenAndServe binds; default 0.0.0.0
	// (DHCP requests are broadcast).
	ListenAddr netip.Addr
	// Ports; tests move them. Defaults 67, 4011, 68; RelayPort (where
	// replies to relays go) defaults to ServerPort.
	ServerPort, PXEPort, ClientPort, RelayPort int
	// BroadcastAddr replies to clients without an address go to; default
	// 255.255.255.255. Loopback tests set 127.0.0.1.
	BroadcastAddr netip.Addr

	Subnets []Subnet // full mode: at least one
	// Reservations give a machine a fixed address (inside or outside the
	// pool of the subnet that contains it).
	Reservations map[machine.ID]netip.Addr

	// HTTPBaseURL is mdc's HTTP address, e.g. http://10.0.0.1:8080; iPXE is
	// sent to HTTPBaseURL/boot.ipxe, HTTP-boot firmware to
	// HTTPBaseURL/ipxe/<bootfile>.
	HTTPBaseURL string
	// TFTPAddr is the next-server (siaddr); default AdvertiseAddr.
	TFTPAddr netip.Addr
	// Boot file names; defaults DefaultBIOSBootfile etc.
	BIOSBootfile, UEFIBootfile, ARM64Bootfile string
	// IPXEDir is where the iPXE builds are; the arm64 build is offered only
	// when IPXEDir/ARM64Bootfile exists (checked once by New).
	IPXEDir string

	LeaseStore  LeaseStore // full mode; default a MemoryStore (not persistent)
	ServerName  string     // written into leases: which instance wrote them
	OfferHold   time.Duration
	DeclineHold time.Duration

	Machines Machines     // default: no machine known
	Recorder Recorder     // default: discard
	Logger   *slog.Logger // default: discard
	Registry prometheus.Registerer
	// Workers is how many packets are handled at once (full mode waits on
	// the lease store); default 64.
	Workers int
	// EventQueue bounds the recorder queue; default 4096.
	EventQueue int
}

func (c *Config) setDefaults() {
	if c.Mode == "" {
		c.Mode = ModeProxy
	}
	def := func(p *int, v int) {
		if *p == 0 {
			*p = v
		}
	}
	def(&c.ServerPort, 67)
	def(&c.PXEPort, 4011)
	def(&c.ClientPort, 68)
	def(&c.RelayPort, c.ServerPort)
	def(&c.Workers, 64)
	def(&c.EventQueue, 4096)
	if !c.BroadcastAddr.IsValid() {
		c.BroadcastAddr = netip.AddrFrom4([4]byte{255, 255, 255, 255})
	}
	if !c.ListenAddr.IsValid() {
		c.ListenAddr = netip.IPv4Unspecified()
	}
	if !c.TFTPAddr.IsValid() {
		c.TFTPAddr = c.AdvertiseAddr
	}
	for p, v := range map[*string]string{&c.BIOSBootfile: DefaultBIOSBootfile, &c.UEFIBootfile: DefaultUEFIBootfile, &c.ARM64Bootfile: DefaultARM64Bootfile} {
		if *p == "" {
			*p = v
		}
	}
	if c.OfferHold == 0 {
		c.OfferHold = DefaultOfferHold
	}
	if c.DeclineHold == 0 {
		c.DeclineHold = DefaultDeclineHold
	}
	if c.ServerName == "" {
		c.ServerName, _ = os.Hostname()
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Registry == nil {
		c.Registry = prometheus.NewRegistry()
	}
	c.HTTPBaseURL = strings.TrimRight(c.HTTPBaseURL, "/")
}

func (c *Config) validate() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if _, err := ParseMode(string(c.Mode)); err != nil {
		bad("%w", err)
	}
	if !c.AdvertiseAddr.Is4() || c.AdvertiseAddr.IsUnspecified() {
		bad("DHCP advertise address %v: want the IPv4 address clients reach mdc at (--advertise-addr, or an address on --interface)", c.AdvertiseAddr)
	}
	if !c.TFTPAddr.Is4() {
		bad("TFTP address %v: want IPv4", c.TFTPAddr)
	}
	if !c.ListenAddr.Is4() {
		bad("DHCP listen address %v: want IPv4", c.ListenAddr)
	}
	if !strings.HasPrefix(c.HTTPBaseURL, "http://") && !strings.HasPrefix(c.HTTPBaseURL, "https://") {
		bad("HTTP base URL %q: want http://HOST[:PORT] of mdc's HTTP server", c.HTTPBaseURL)
	}
	for name, p := range map[string]int{"server": c.ServerPort, "PXE": c.PXEPort, "client": c.ClientPort, "relay": c.RelayPort} {
		if p < 1 || p > 65535 {
			bad("DHCP %s port %d: want 1-65535", name, p)
		}
	}
	for name, f := range map[string]string{"BIOS": c.BIOSBootfile, "UEFI": c.UEFIBootfile, "arm64": c.ARM64Bootfile} {
		if len(f) > 100 || strings.ContainsAny(f, "\x00 ") {
			bad("%s boot file %q: want a short name without spaces", name, f)
		}
	}
	if c.Mode == ModeFull && len(c.Subnets) == 0 {
		bad("full DHCP mode needs an address range (--dhcp-range START-END)")
	}
	for i := range c.Subnets {
		if err := c.Subnets[i].validate(); err != nil {
			bad("%w", err)
		}
		for j := range i {
			if c.Subnets[j].Prefix.Overlaps(c.Subnets[i].Prefix) {
				bad("subnets %v and %v overlap", c.Subnets[j].Prefix, c.Subnets[i].Prefix)
			}
		}
	}
	seen := map[netip.Addr]machine.ID{}
	for id, a := range c.Reservations {
		if !id.Valid() {
			bad("reservation for %q: not a MAC in canonical form", id)
		}
		if other, dup := seen[a]; dup {
			bad("address %v reserved for both %v and %v", a, other, id)
		}
		seen[a] = id
		if c.subnetFor(a) == nil {
			bad("reservation %v for %v is in no configured subnet", a, id)
		}
	}
	if c.Workers < 1 || c.EventQueue < 1 || c.OfferHold < 0 || c.DeclineHold < 0 {
		bad("workers, event queue and holds must be positive")
	}
	return errors.Join(errs...)
}

func (c *Config) subnetFor(a netip.Addr) *Subnet {
	for i := range c.Subnets {
		if c.Subnets[i].contains(a) {
			return &c.Subnets[i]
		}
	}
	return nil
}

func fileExists(dir, name string) bool {
	if dir == "" {
		return false
	}
	st, err := os.Stat(filepath.Join(dir, name))
	return err == nil && st.Mode().IsRegular()
}
