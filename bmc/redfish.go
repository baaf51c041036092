package bmc

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	bmclibbmc "github.com/bmc-toolbox/bmclib/v2/bmc"
	bmclibErrs "github.com/bmc-toolbox/bmclib/v2/errors"
	"github.com/bmc-toolbox/bmclib/v2/providers/redfish"
	"github.com/go-logr/logr"
	"github.com/stmcginnis/gofish"
	"github.com/stmcginnis/gofish/common"
	gfredfish "github.com/stmcginnis/gofish/redfish"
)

// redfishDriver uses bmclib's gofish provider, and only it: the URL said
// Redfish, so nothing is probed. A session is opened on a BMC's first call in
// an operation and closed at its end, since BMCs have few session slots;
// with Options.SessionIdle it is kept for the next operation instead.
type redfishDriver struct {
	ep   Endpoint
	cred Credentials
	hc   *http.Client
	conn *redfish.Conn
	open bool

	idle   time.Duration // Options.SessionIdle
	keptAt time.Time     // when release kept the open session; zero while in use
}

func newRedfishDriver(ep Endpoint, cred Credentials, opt Options) *redfishDriver {
	tr := &http.Transport{
		Proxy:                 nil, // BMC networks are reached directly, never through a proxy
		DialContext:           (&net.Dialer{Timeout: opt.Timeout, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:       &tls.Config{InsecureSkipVerify: opt.InsecureTLS}, //nolint:gosec // the operator's choice, for self-signed BMC certificates
		TLSHandshakeTimeout:   opt.Timeout,
		ResponseHeaderTimeout: opt.Timeout,
		MaxIdleConnsPerHost:   2,
		IdleConnTimeout:       30 * time.Second,
	}
	hc := &http.Client{Transport: tr, Timeout: opt.Timeout}
	d := &redfishDriver{ep: ep, cred: cred, hc: hc, idle: opt.SessionIdle}
	d.conn = redfish.New(d.baseURL(), cred.User, cred.Password, logr.Discard(),
		redfish.WithHttpClient(hc),
		redfish.WithPort(strconv.Itoa(ep.Port)),
		redfish.WithSystemName(ep.System),
	)
	return d
}

// baseURL is scheme://host without the port, as bmclib wants it.
func (d *redfishDriver) baseURL() string {
	scheme := "http://"
	if d.ep.TLS {
		scheme = "https://"
	}
	host := d.ep.Host
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	return scheme + host
}

// errDebugDump: bmclib dumps every Redfish request, login body included, to
// stdout when DEBUG_BMCLIB=true.
var errDebugDump = errors.New("DEBUG_BMCLIB=true makes bmclib print Redfish requests, passwords included; unset it")

func (d *redfishDriver) ensureOpen(ctx context.Context) error {
	if d.open {
		return nil
	}
	if os.Getenv("DEBUG_BMCLIB") == "true" {
		return errDebugDump
	}
	if err := d.conn.Open(ctx); err != nil {
		return err
	}
	d.open = true
	return nil
}

// do runs fn in a session: the kept one if there is one, else a new one.
// A kept session the BMC has ended (expiry, BMC reset) is replaced once.
func (d *redfishDriver) do(ctx context.Context, fn func() error) error {
	if d.open && !d.keptAt.IsZero() && time.Since(d.keptAt) > d.idle {
		_ = d.close(ctx) // kept too long: the BMC may have dropped it
	}
	d.keptAt = time.Time{}
	// gofish takes no context: bound each request by this call's deadline.
	if dl, ok := ctx.Deadline(); ok {
		d.hc.Timeout = max(time.Until(dl), time.Millisecond)
	}
	reused := d.open
	if err := d.ensureOpen(ctx); err != nil {
		return err
	}
	err := fn()
	if err != nil && reused {
		if k, _ := d.classify(err); k == AuthFailed {
			d.open = false
			if err := d.ensureOpen(ctx); err != nil {
				return err
			}
			err = fn()
		}
	}
	return err
}

func (d *redfishDriver) powerState(ctx context.Context) (state string, err error) {
	err = d.do(ctx, func() error {
		state, err = d.conn.PowerStateGet(ctx)
		return err
	})
	return state, err
}

func (d *redfishDriver) powerSet(ctx context.Context, action PowerAction) error {
	return d.do(ctx, func() error {
		// bmclib's "ok" is false for a graceful shutdown it did start;
		// errors are what count.
		_, err := d.conn.PowerSet(ctx, string(action))
		return err
	})
}

func (d *redfishDriver) setBootPXE(ctx context.Context, opt BootOptions) error {
	return d.do(ctx, func() error {
		_, err := d.conn.BootDeviceSet(ctx, string(bmclibbmc.BootDeviceTypePXE), opt.Persistent, opt.EFI)
		return err
	})
}

func (d *redfishDriver) bootOverride(ctx context.Context) (bootOverride, error) {
	var o bmclibbmc.BootDeviceOverride
	err := d.do(ctx, func() error {
		var err error
		o, err = d.conn.BootDeviceOverrideGet(ctx)
		return err
	})
	if err != nil {
		return bootOverride{}, err
	}
	return bootOverride{
		Device:          string(o.Device),
		Persistent:      o.IsPersistent,
		EFI:             o.IsEFIBoot,
		PersistentKnown: true,
	}, nil
}

// inventory reads the System with gofish directly: bmclib's Inventory finds
// MACs only through NetworkAdapters and has no UUID, while every Redfish BMC
// lists its System's EthernetInterfaces.
func (d *redfishDriver) inventory(ctx context.Context) (Inventory, error) {
	api, err := gofish.ConnectContext(ctx, gofish.ClientConfig{
		Endpoint:   d.baseURL() + ":" + strconv.Itoa(d.ep.Port),
		Username:   d.cred.User,
		Password:   d.cred.Password,
		HTTPClient: d.hc,
	})
	if err != nil {
		return Inventory{}, err
	}
	defer api.Logout()
	systems, err := api.Service.Systems()
	if err != nil {
		return Inventory{}, err
	}
	sys, err := pickSystem(systems, d.ep.System)
	if err != nil {
		return Inventory{}, err
	}
	eths, err := ethernetInterfaces(api, sys)
	if err != nil {
		return Inventory{}, err
	}
	inv := Inventory{Serial: sys.SerialNumber, UUID: sys.UUID, Vendor: sys.Manufacturer, Model: sys.Model}
	seen := map[string]bool{}
	for _, e := range eths {
		s := e.MACAddress
		if s == "" {
			s = e.PermanentMACAddress
		}
		mac, err := net.ParseMAC(s)
		if err != nil || len(mac) != 6 || isZeroMAC(mac) || seen[mac.String()] {
			continue
		}
		seen[mac.String()] = true
		inv.MACs = append(inv.MACs, mac)
	}
	return inv, nil
}

// ethernetInterfaces reads a System's EthernetInterfaces in the order the
// BMC lists them (gofish fetches members concurrently and loses it), one
// request at a time: the first is usually the NIC the machine boots from.
func ethernetInterfaces(api *gofish.APIClient, sys *gfredfish.ComputerSystem) ([]*gfredfish.EthernetInterface, error) {
	resp, err := api.Get(sys.ODataID)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var raw struct {
		EthernetInterfaces common.Link
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&raw); err != nil {
		return nil, fmt.Errorf("reading system %s: %w", sys.ODataID, err)
	}
	if raw.EthernetInterfaces == "" {
		return nil, fmt.Errorf("system %s lists no EthernetInterfaces; give --mac", sys.ODataID)
	}
	coll, err := common.GetCollection(api, string(raw.EthernetInterfaces))
	if err != nil {
		return nil, err
	}
	var out []*gfredfish.EthernetInterface
	for _, link := range coll.ItemLinks {
		e, err := gfredfish.GetEthernetInterface(api, link)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, nil
}

func isZeroMAC(m net.HardwareAddr) bool {
	for _, b := range m {
		if b != 0 {
			return false
		}
	}
	return true
}

// pickSystem chooses the System the way bmclib does: by Name, or the only one.
func pickSystem(systems []*gfredfish.ComputerSystem, name string) (*gfredfish.ComputerSystem, error) {
	var names []string
	for _, s := range systems {
		if s == nil {
			continue
		}
		if name != "" && s.Name == name {
			return s, nil
		}
		names = append(names, s.Name)
	}
	if name == "" && len(names) == 1 {
		for _, s := range systems {
			if s != nil {
				return s, nil
			}
		}
	}
	if name != "" {
		return nil, fmt.Errorf("no system named %q on this BMC (it has %s)", name, strings.Join(names, ", "))
	}
	return nil, fmt.Errorf("the BMC presents %d systems (%s); name one with ?system=NAME in the BMC URL", len(names), strings.Join(names, ", "))
}

// release ends an operation: the session is logged out, or kept for the
// next operation when Options.SessionIdle allows.
func (d *redfishDriver) release(ctx context.Context) error {
	if d.idle > 0 && d.open {
		d.keptAt = time.Now()
		return nil
	}
	return d.close(ctx)
}

// closeIdle drops idle keep-alive connections, when the controller closes.
func (d *redfishDriver) closeIdle() { d.hc.CloseIdleConnections() }

func (d *redfishDriver) close(ctx context.Context) error {
	if !d.open {
		return nil
	}
	d.open = false
	return d.conn.Close(ctx)
}

var httpStatusInText = regexp.MustCompile(`(^|[\s"])40[13]: `)

func (d *redfishDriver) classify(err error) (Kind, bool) {
	var ge *common.Error
	if errors.As(err, &ge) {
		switch ge.HTTPReturnedStatusCode {
		case http.StatusUnauthorized, http.StatusForbidden:
			return AuthFailed, true
		}
		return Failed, true
	}
	if errors.Is(err, bmclibErrs.ErrNotAuthenticated) {
		return AuthFailed, true
	}
	// gofish flattens errors of collection members into a string.
	if httpStatusInText.MatchString(err.Error()) {
		return AuthFailed, true
	}
	return 0, false
}
