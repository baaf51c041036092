// Package ipxe serves what iPXE asks mdc for: GET /boot.ipxe, a script
// chosen by the machine's lifecycle state (DESIGN.md), and GET /ipxe/<file>,
// the iPXE binaries for UEFI HTTP boot from the same directory TFTP serves.
//
// A script that boots an image carries a fresh per-boot machine token on
// the kernel command line; only its SHA-256 is stored, in the lifecycle
// event that records the boot (commissioning_started or
// provisioning_started). A MAC that arrives here first is recorded as
// discovered, once.
package ipxe

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"text/template"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/microdc/mdc/events"
	"github.com/microdc/mdc/images/blob"
	"github.com/microdc/mdc/machine"
)

// Image is a bootable image of the catalog.
type Image struct {
	Name    string
	Kernel  blob.Digest
	Initrds []blob.Digest
	Cmdline string
}

// Images is what the boot scripts need of the image catalog. Both are
// called on every boot script request and must not do I/O.
type Images interface {
	// Image returns the image called name (the commissioning image).
	Image(name string) (Image, bool)
	// RoleImage returns the image machines of role boot now.
	RoleImage(role string) (Image, bool)
}

// Machines is what the boot scripts need of the event store.
type Machines interface {
	LookupMAC(mac machine.ID) (machine.Machine, bool)
	Update(ctx context.Context, id machine.ID, decide events.Decision) (machine.Machine, machine.Event, error)
}

// Recorder takes script_served telemetry.
type Recorder interface {
	Telemetry(ctx context.Context, e machine.Event)
}

// Config of the boot script server.
type Config struct {
	Machines Machines // required
	Images   Images   // nil: no image is known, every boot waits
	// CommissioningImage names the image discovered and commissioning
	// machines boot (--commissioning-image).
	CommissioningImage string
	// BaseURL is how machines reach mdc's HTTP server, e.g.
	// http://10.0.0.1:8080. Empty: taken from each request's Host header,
	// which is the address the machine itself used.
	BaseURL string
	// TemplateDir holds operators' scripts (--ipxe-templates); "" for none.
	TemplateDir string
	// IPXEDir is served at /ipxe/ (--ipxe-dir, the TFTP root).
	IPXEDir string
	// WaitRetry is how long a ready machine waits between asks (30 s);
	// FailedRetry the same for a failed machine (60 s); BootRetry how long a
	// script waits before retrying a kernel or initrd download (10 s) and
	// how long a machine waits when mdc could not record its boot.
	WaitRetry, FailedRetry, BootRetry time.Duration
	// Timeout bounds the event log writes of one request (default 10 s).
	Timeout  time.Duration
	Recorder Recorder
	Logger   *slog.Logger
	Registry prometheus.Registerer
}

// Server answers /boot.ipxe and /ipxe/.
type Server struct {
	cfg     Config
	tpl     *templates
	log     *slog.Logger
	metrics *metrics
}

// source is the CloudEvents source of what this package appends.
const source = "mdc/ipxe"

// New checks cfg, loads the templates and builds the server.
func New(cfg Config) (*Server, error) {
	if cfg.Machines == nil {
		return nil, errors.New("ipxe: no machine store")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&cfg.WaitRetry, 30*time.Second)
	def(&cfg.FailedRetry, 60*time.Second)
	def(&cfg.BootRetry, 10*time.Second)
	def(&cfg.Timeout, 10*time.Second)
	cfg.BaseURL = strings.TrimRight(cfg.BaseURL, "/")
	if cfg.BaseURL != "" && !validBase(cfg.BaseURL) {
		return nil, fmt.Errorf("ipxe: base URL %q: want http://HOST[:PORT]", cfg.BaseURL)
	}
	tpl, err := loadTemplates(cfg.TemplateDir)
	if err != nil {
		return nil, err
	}
	m, err := newMetrics(cfg.Registry)
	if err != nil {
		return nil, err
	}
	return &Server{cfg: cfg, tpl: tpl, log: cfg.Logger, metrics: m}, nil
}

// Register adds GET /boot.ipxe and GET /ipxe/{file...} through mount
// (api.Server.Mount). Both are open: a booting machine has no credential.
func (s *Server) Register(mount func(pattern string, h http.Handler)) {
	mount("GET /boot.ipxe", http.HandlerFunc(s.serveScript))
	mount("GET /ipxe/{file...}", http.HandlerFunc(s.serveFile))
}

// validBase accepts http(s)://host[:port] made of plain characters: it is
// written into scripts.
func validBase(u string) bool {
	host, ok := strings.CutPrefix(u, "http://")
	if !ok {
		if host, ok = strings.CutPrefix(u, "https://"); !ok {
			return false
		}
	}
	return validHost(host)
}

func validHost(h string) bool {
	if h == "" || len(h) > 255 {
		return false
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte(".-:[]", c) >= 0) {
			return false
		}
	}
	return true
}

// plan is what one request gets.
type plan struct {
	kind   Kind
	image  Image
	reason string
	retry  time.Duration
}

func (p plan) boots() bool { return p.kind == KindCommissioning || p.kind == KindRole }

// planFor decides the script for m; pure apart from the catalog lookup.
func (s *Server) planFor(m machine.Machine) plan {
	lookup := func(what string, get func(Images, string) (Image, bool)) (Image, bool) {
		if s.cfg.Images == nil || what == "" {
			return Image{}, false
		}
		return get(s.cfg.Images, what)
	}
	switch kind := regularKind(m.State); {
	case m.State == machine.Absent:
		return plan{kind: KindWait, reason: "mdc does not know this machine yet", retry: s.cfg.BootRetry}
	case kind == KindCommissioning:
		if s.cfg.CommissioningImage == "" {
			return plan{kind: KindWait, reason: "mdc has no commissioning image configured (--commissioning-image)", retry: s.cfg.WaitRetry}
		}
		img, ok := lookup(s.cfg.CommissioningImage, Images.Image)
		if !ok {
			return plan{kind: KindWait, reason: fmt.Sprintf("the commissioning image %s is not in the image catalog: import it (mdc images import)", s.cfg.CommissioningImage), retry: s.cfg.WaitRetry}
		}
		return plan{kind: KindCommissioning, image: img, retry: s.cfg.BootRetry}
	case kind == KindRole:
		img, ok := lookup(m.Role, Images.RoleImage)
		if !ok {
			return plan{kind: KindWait, reason: fmt.Sprintf("no image for role %s in the image catalog: import one (mdc images import --role %s)", m.Role, m.Role), retry: s.cfg.WaitRetry}
		}
		return plan{kind: KindRole, image: img, retry: s.cfg.BootRetry}
	case kind == KindFailed:
		reason := "no reason recorded"
		if m.Failure != nil && m.Failure.Reason != "" {
			reason = m.Failure.Reason
		}
		return plan{kind: KindFailed, reason: reason, retry: s.cfg.FailedRetry}
	case kind == KindLocal:
		return plan{kind: KindLocal}
	default:
		return plan{kind: KindWait, reason: "waiting for a role (mdc machines assign " + string(m.ID) + " ROLE)", retry: s.cfg.WaitRetry}
	}
}

// event is the lifecycle event that records a boot of p, carrying the hash
// of the boot's token.
func (p plan) event(m machine.Machine, tok machine.BootToken) (machine.Event, error) {
	if p.kind == KindCommissioning {
		return machine.NewEvent(m.ID, machine.CommissioningStarted, source,
			machine.CommissioningBootData{ImageData: machine.ImageData{Image: p.image.Name}, BootToken: tok})
	}
	return machine.NewEvent(m.ID, machine.ProvisioningStarted, source,
		machine.ProvisioningBootData{ProvisioningStartedData: machine.ProvisioningStartedData{Role: m.Role, Image: p.image.Name}, BootToken: tok})
}

// errNoEvent: the plan boots nothing, so no event is appended.
var errNoEvent = errors.New("nothing to record")

// errKnown: the machine was discovered meanwhile.
var errKnown = errors.New("already known")

func (s *Server) serveScript(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	if r.Method == http.MethodHead {
		// Fetching a script is a boot (it records one); a probe is not.
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		return
	}
	base := s.cfg.BaseURL
	if base == "" {
		if !validHost(r.Host) {
			s.refuse(w, r, "bad_host", fmt.Errorf("Host header %q is not a plain host[:port]", r.Host))
			return
		}
		base = "http://" + r.Host
	}
	req, err := ParseQuery(r.URL.RawQuery)
	if errors.Is(err, ErrNoMAC) {
		d := ScriptData{BaseURL: base, ScriptURL: base + "/boot.ipxe?mac=${netX/mac}&platform=${platform}&buildarch=${buildarch}"}
		s.write(w, r, KindBootstrap, s.tpl.builtin[KindBootstrap], "", d)
		return
	}
	if err != nil {
		s.refuse(w, r, "bad_query", err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.Timeout)
	defer cancel()

	m, known := s.cfg.Machines.LookupMAC(req.MAC)
	if !known {
		if m, err = s.discover(ctx, req); err != nil {
			s.unavailable(w, r, req, base, machine.Machine{ID: req.MAC}, err)
			return
		}
	}

	// Decide and record in one step: if another writer moves the machine
	// first, the store reads it again and this decides again.
	token, stored := machine.NewBootToken()
	var p plan
	var seen machine.Machine
	after, _, err := s.cfg.Machines.Update(ctx, m.ID, func(cur machine.Machine) (machine.Event, error) {
		seen, p = cur, s.planFor(cur)
		if !p.boots() {
			return machine.Event{}, errNoEvent
		}
		return p.event(cur, stored)
	})
	switch {
	case errors.Is(err, errNoEvent):
		token, after = "", seen
	case err != nil:
		s.unavailable(w, r, req, base, m, err)
		return
	}
	// Scripts and templates go by the state the machine asked in.
	m = seen

	d := s.data(m, req, base, p)
	if p.boots() {
		d.Mode = string(p.kind)
		d.Image = safeText(p.image.Name)
		d.Kernel = base + p.image.Kernel.Path()
		for i, dg := range p.image.Initrds {
			d.Initrds = append(d.Initrds, Initrd{Name: fmt.Sprintf("initrd%d", i), URL: base + dg.Path()})
		}
		d.Cmdline = safeArgs(p.image.Cmdline)
		d.Token = token
		d.Args = KernelArgs(d)
	}
	tpl, file := s.tpl.pick(p.kind, m)
	if !s.write(w, r, p.kind, tpl, file, d) {
		return
	}
	s.log.Info("boot script served", "mac", req.MAC.MAC(), "machine", m.ID, "state", m.State.String(), "now", after.State.String(),
		"script", p.kind, "image", p.image.Name, "template", file, "platform", req.Platform,
		"remote", r.RemoteAddr, "duration", time.Since(start))
	s.record(ctx, m.ID, ScriptServedData{Script: string(p.kind), State: m.State.String(), Image: p.image.Name,
		Template: file, Platform: req.Platform, Arch: req.arch(), Remote: remoteAddr(r), Reason: p.reason})
}

// data fills what every script of m shows.
func (s *Server) data(m machine.Machine, req Request, base string, p plan) ScriptData {
	d := ScriptData{
		MAC: req.MAC.MAC(), Machine: string(m.ID), Name: safeText(m.Name), State: m.State.String(),
		Role: safeText(m.Role), BaseURL: base, ScriptURL: base + "/boot.ipxe?" + req.query(),
		Platform: req.Platform, Retry: seconds(p.retry), Reason: safeText(p.reason),
	}
	if m.Failure != nil {
		d.FailedIn = m.Failure.In.String()
	}
	return d
}

// discover records a MAC first seen here, once: if DHCP (or another
// request) recorded it meanwhile, nothing is appended.
func (s *Server) discover(ctx context.Context, req Request) (machine.Machine, error) {
	m, _, err := s.cfg.Machines.Update(ctx, req.MAC, func(cur machine.Machine) (machine.Event, error) {
		if cur.State != machine.Absent {
			return machine.Event{}, errKnown
		}
		return machine.NewEvent(req.MAC, machine.Discovered, source, machine.DiscoveredData{Via: "http", Arch: req.arch()})
	})
	if errors.Is(err, errKnown) {
		return m, nil
	}
	if err != nil {
		return m, fmt.Errorf("record discovery of %s: %w", req.MAC, err)
	}
	s.metrics.discovered.Inc()
	s.log.Info("machine discovered over HTTP", "mac", req.MAC.MAC(), "arch", req.arch())
	return m, nil
}

// unavailable answers when the event log could not record the boot: the
// machine waits and asks again rather than falling through to whatever
// boots next.
func (s *Server) unavailable(w http.ResponseWriter, r *http.Request, req Request, base string, m machine.Machine, err error) {
	s.log.Error("boot script: event log failed; the machine will ask again", "mac", req.MAC.MAC(), "err", err)
	s.metrics.errors.WithLabelValues("event_log").Inc()
	p := plan{kind: KindWait, reason: "mdc could not record this boot (see the mdc log)", retry: s.cfg.BootRetry}
	d := s.data(m, req, base, p)
	d.State = "unknown"
	s.write(w, r, KindWait, s.tpl.builtin[KindWait], "", d)
}

func (s *Server) refuse(w http.ResponseWriter, r *http.Request, reason string, err error) {
	s.metrics.errors.WithLabelValues(reason).Inc()
	s.log.Warn("boot script request refused", "remote", r.RemoteAddr, "err", err)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusBadRequest)
	fmt.Fprintf(w, "mdc: %v\nGET /boot.ipxe?mac=52:54:00:12:34:56 (iPXE: ?mac=${net0/mac})\n", err)
}

// write renders and sends a script; false if rendering failed (an
// operator's template that breaks on this machine's data).
func (s *Server) write(w http.ResponseWriter, r *http.Request, kind Kind, tpl *template.Template, file string, d ScriptData) bool {
	out, err := render(tpl, d)
	if err != nil {
		s.metrics.errors.WithLabelValues("template").Inc()
		s.log.Error("boot script template failed", "template", tpl.Name(), "file", file, "mac", d.MAC, "err", err)
		http.Error(w, "mdc: the boot script template failed; see mdc's log", http.StatusInternalServerError)
		return false
	}
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Cache-Control", "no-store") // every answer is for one boot
	h.Set("Content-Length", strconv.Itoa(len(out)))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(out)
	}
	s.metrics.scripts.WithLabelValues(string(kind)).Inc()
	return true
}

// record queues script_served telemetry.
func (s *Server) record(ctx context.Context, id machine.ID, d ScriptServedData) {
	if s.cfg.Recorder == nil {
		return
	}
	e, err := machine.NewEvent(id, machine.ScriptServed, source, d)
	if err != nil {
		return
	}
	s.cfg.Recorder.Telemetry(context.WithoutCancel(ctx), e)
}

// ScriptServedData is the data of script_served telemetry.
type ScriptServedData struct {
	Script   string `json:"script"` // commissioning, role, wait, failed, local
	State    string `json:"state"`
	Image    string `json:"image,omitempty"`
	Template string `json:"template,omitempty"` // the operator's file, when one was used
	Platform string `json:"platform,omitempty"`
	Arch     string `json:"arch,omitempty"`
	Remote   string `json:"remote,omitempty"`
	Reason   string `json:"reason,omitempty"`
}

func remoteAddr(r *http.Request) string {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return ""
	}
	return ap.Addr().Unmap().String()
}
