package bmc

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/microdc/mdc/hack/vrack/redfish"
)

var testCred = Credentials{User: "admin", Password: "redfish-Secret-51c0"}

func testInfo(i int) redfish.Info {
	return redfish.Info{
		UUID:         "4c4c4544-0000-1000-8000-0000000000" + strconv.Itoa(10+i),
		SerialNumber: "SN-" + strconv.Itoa(1000+i),
		Manufacturer: "mdc",
		Model:        "vrack-1",
		MACs:         []string{"52:54:00:12:34:" + strconv.Itoa(10+i), "52:54:00:ab:cd:" + strconv.Itoa(10+i)},
	}
}

// serveRedfish serves systems (id → System) on 127.0.0.1 behind wrap (nil:
// none) and returns the endpoint.
func serveRedfish(t testing.TB, systems map[string]redfish.System, wrap func(http.Handler) http.Handler) Endpoint {
	t.Helper()
	svc, err := redfish.New(redfish.Config{User: testCred.User, Password: testCred.Password, Systems: systems})
	if err != nil {
		t.Fatal(err)
	}
	var h http.Handler = svc
	if wrap != nil {
		h = wrap(h)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return endpointOf(t, srv.URL)
}

func endpointOf(t testing.TB, rawURL string) Endpoint {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	port, _ := strconv.Atoi(u.Port())
	return Endpoint{Protocol: Redfish, Host: u.Hostname(), Port: port}
}

func redfishTestOptions() Options {
	return Options{Timeout: 10 * time.Second, BootRetries: 2}
}

func TestRedfishPower(t *testing.T) {
	m := redfish.NewMemory(testInfo(1))
	ep := serveRedfish(t, map[string]redfish.System{"1": m}, nil)
	c := New(ep, testCred, redfishTestOptions())
	ctx := t.Context()
	defer c.Close(ctx)

	status := func(want PowerState) {
		t.Helper()
		st, err := c.PowerStatus(ctx)
		if err != nil || st != want {
			t.Fatalf("PowerStatus = %q, %v; want %q", st, err, want)
		}
		if got, _ := m.PowerState(ctx); NormalizePowerState(got) != want {
			t.Fatalf("the system is %q, PowerStatus says %q", got, want)
		}
	}
	lastReset := func(want string) {
		t.Helper()
		r := m.Resets()
		if len(r) == 0 || r[len(r)-1] != want {
			t.Fatalf("resets = %q, want the last to be %q", r, want)
		}
	}
	status(PowerOff)
	if err := c.Power(ctx, ActionOn); err != nil {
		t.Fatal(err)
	}
	lastReset("On")
	status(PowerOn)
	if err := c.Power(ctx, ActionCycle); err != nil {
		t.Fatal(err)
	}
	lastReset("ForceRestart")
	status(PowerOn)
	if err := c.Power(ctx, ActionSoft); err != nil {
		t.Fatal(err)
	}
	lastReset("GracefulShutdown")
	status(PowerOff)
	m.SetPowerState(redfish.PowerOn)
	if err := c.Power(ctx, ActionOff); err != nil {
		t.Fatal(err)
	}
	lastReset("ForceOff")
	status(PowerOff)
	// Cycling a machine that is off powers it on.
	if err := c.Power(ctx, ActionCycle); err != nil {
		t.Fatal(err)
	}
	lastReset("On")
	status(PowerOn)

	if err := c.Power(ctx, "dance"); err == nil {
		t.Fatal("Power(dance) succeeded")
	}
}

func TestRedfishSetNextBootPXE(t *testing.T) {
	for name, tc := range map[string]struct {
		opt  BootOptions
		want redfish.Boot
	}{
		"once uefi":       {BootOptions{EFI: true}, redfish.Boot{Target: "Pxe", Enabled: "Once", Mode: "UEFI"}},
		"once legacy":     {BootOptions{}, redfish.Boot{Target: "Pxe", Enabled: "Once", Mode: "Legacy"}},
		"persistent uefi": {BootOptions{Persistent: true, EFI: true}, redfish.Boot{Target: "Pxe", Enabled: "Continuous", Mode: "UEFI"}},
	} {
		t.Run(name, func(t *testing.T) {
			m := redfish.NewMemory(testInfo(1))
			ep := serveRedfish(t, map[string]redfish.System{"1": m}, nil)
			c := New(ep, testCred, redfishTestOptions())
			ctx := t.Context()
			if err := c.SetNextBootPXE(ctx, tc.opt); err != nil {
				t.Fatal(err)
			}
			got, _ := m.BootOverride(ctx)
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Fatalf("boot override (-want +got):\n%s", d)
			}
			// The machine then really boots from the network.
			if err := c.Power(ctx, ActionCycle); err != nil {
				t.Fatal(err)
			}
			boots := m.Boots()
			if len(boots) != 1 || boots[0].Target != "Pxe" {
				t.Fatalf("boots = %+v, want one from Pxe", boots)
			}
		})
	}
}

// dropBoot is a BMC that answers 200 to a boot override and keeps nothing.
type dropBoot struct {
	*redfish.Memory
	sets atomic.Int32
}

func (d *dropBoot) SetBootOverride(ctx context.Context, b redfish.Boot) error {
	d.sets.Add(1)
	return nil
}

func TestRedfishBootNotHeld(t *testing.T) {
	sys := &dropBoot{Memory: redfish.NewMemory(testInfo(1))}
	ep := serveRedfish(t, map[string]redfish.System{"1": sys}, nil)
	opt := redfishTestOptions()
	opt.BootRetries = 2
	c := New(ep, testCred, opt)
	err := c.SetNextBootPXE(t.Context(), BootOptions{EFI: true})
	if !errors.Is(err, ErrBootNotHeld) {
		t.Fatalf("SetNextBootPXE = %v, want ErrBootNotHeld", err)
	}
	if n := sys.sets.Load(); n != 3 {
		t.Errorf("the override was set %d times, want 3 (1 + BootRetries)", n)
	}
	if !strings.Contains(err.Error(), ep.Addr()) {
		t.Errorf("error does not name the BMC: %v", err)
	}
	t.Log(err)
}

func TestRedfishHangingBMC(t *testing.T) {
	// An HTTP server whose handlers never answer.
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) })

	// A listener that accepts connections and never says a word.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns sync.WaitGroup
	t.Cleanup(func() { ln.Close(); conns.Wait() })
	conns.Add(1)
	go func() {
		defer conns.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			go func() {
				defer conns.Done()
				defer c.Close()
				buf := make([]byte, 512)
				for {
					if _, err := c.Read(buf); err != nil {
						return
					}
				}
			}()
		}
	}()
	silent := Endpoint{Protocol: Redfish, Host: "127.0.0.1", Port: ln.Addr().(*net.TCPAddr).Port}

	for name, ep := range map[string]Endpoint{"handler": endpointOf(t, srv.URL), "listener": silent} {
		t.Run(name, func(t *testing.T) {
			timeout := 500 * time.Millisecond
			c := New(ep, testCred, Options{Timeout: timeout})
			start := time.Now()
			_, err := c.PowerStatus(t.Context())
			took := time.Since(start)
			if !errors.Is(err, ErrTimeout) {
				t.Fatalf("PowerStatus on a hanging BMC = %v, want ErrTimeout", err)
			}
			if took > timeout+time.Second {
				t.Fatalf("PowerStatus took %v with a %v timeout", took, timeout)
			}
			t.Log(err)
		})
	}
}

func TestRedfishWrongPassword(t *testing.T) {
	m := redfish.NewMemory(testInfo(1))
	ep := serveRedfish(t, map[string]redfish.System{"1": m}, nil)
	bad := Credentials{User: testCred.User, Password: "wrong-Password-9"}
	var logs bytes.Buffer
	opt := redfishTestOptions()
	opt.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	c := New(ep, bad, opt)
	start := time.Now()
	err := c.Power(t.Context(), ActionOn)
	if !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("Power with a wrong password = %v, want ErrAuthFailed", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("took %v to report a wrong password; it should not wait for the timeout", d)
	}
	if strings.Contains(err.Error(), bad.Password) || strings.Contains(err.Error(), testCred.Password) {
		t.Fatalf("error shows a password: %v", err)
	}
	if !strings.Contains(err.Error(), ep.Addr()) || !strings.Contains(err.Error(), "password") {
		t.Errorf("error does not name the BMC and what to check: %v", err)
	}
	if st, _ := m.PowerState(t.Context()); st != redfish.PowerOff {
		t.Errorf("the machine was powered on with a wrong password")
	}
	// The right password, through the same logger.
	c = New(ep, testCred, opt)
	if err := c.SetNextBootPXE(t.Context(), BootOptions{}); err != nil {
		t.Fatal(err)
	}
	if logs.Len() == 0 {
		t.Fatal("nothing logged at debug level")
	}
	if strings.Contains(logs.String(), bad.Password) || strings.Contains(logs.String(), testCred.Password) {
		t.Fatalf("a password reached the log:\n%s", logs.String())
	}
	t.Log(err)
}

func TestRedfishUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close() // nothing listens there now
	ep := Endpoint{Protocol: Redfish, Host: "127.0.0.1", Port: port}
	c := New(ep, testCred, redfishTestOptions())
	start := time.Now()
	_, err = c.PowerStatus(t.Context())
	if !errors.Is(err, ErrUnreachable) {
		t.Fatalf("PowerStatus on a closed port = %v, want ErrUnreachable", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("took %v to report a closed port; it should not wait for the timeout", d)
	}
	if !strings.Contains(err.Error(), ep.Addr()) {
		t.Errorf("error does not name the BMC: %v", err)
	}
	t.Log(err)
}

func TestRedfishInventory(t *testing.T) {
	info := testInfo(3)
	ep := serveRedfish(t, map[string]redfish.System{"1": redfish.NewMemory(info)}, nil)
	c := New(ep, testCred, redfishTestOptions())
	inv, err := c.Inventory(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var macs []string
	for _, m := range inv.MACs {
		macs = append(macs, m.String())
	}
	got := struct {
		MACs                        []string
		Serial, UUID, Vendor, Model string
	}{macs, inv.Serial, inv.UUID, inv.Vendor, inv.Model}
	want := struct {
		MACs                        []string
		Serial, UUID, Vendor, Model string
	}{info.MACs, info.SerialNumber, info.UUID, info.Manufacturer, info.Model}
	if d := cmp.Diff(want, got); d != "" {
		t.Fatalf("inventory (-want +got):\n%s", d)
	}
}

func TestRedfishSeveralSystems(t *testing.T) {
	m1, m2 := redfish.NewMemory(testInfo(1)), redfish.NewMemory(testInfo(2))
	ep := serveRedfish(t, map[string]redfish.System{"1": m1, "2": m2}, nil)
	ctx := t.Context()

	// Without a system name the controller cannot choose, and says how.
	if _, err := New(ep, testCred, redfishTestOptions()).Inventory(ctx); err == nil || !strings.Contains(err.Error(), "system=") {
		t.Fatalf("Inventory on a 2-system BMC without ?system = %v, want an error naming ?system=", err)
	}
	ep2, err := ParseURL("redfish://" + ep.Addr() + "?system=System+2")
	if err != nil {
		t.Fatal(err)
	}
	c := New(ep2, testCred, redfishTestOptions())
	if err := c.Power(ctx, ActionOn); err != nil {
		t.Fatal(err)
	}
	if st, _ := m2.PowerState(ctx); st != redfish.PowerOn {
		t.Fatal("system 2 not powered on")
	}
	if st, _ := m1.PowerState(ctx); st != redfish.PowerOff {
		t.Fatal("system 1 powered on instead")
	}
	inv, err := c.Inventory(ctx)
	if err != nil || inv.Serial != testInfo(2).SerialNumber {
		t.Fatalf("Inventory of system 2 = %+v, %v", inv, err)
	}
}

// inFlight counts concurrent requests at the BMC.
type inFlight struct {
	mu       sync.Mutex
	now, max int
	reqs     []reqSpan
}

type reqSpan struct {
	method, path string
	start, end   time.Time
}

func (f *inFlight) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.now++
		f.max = max(f.max, f.now)
		f.mu.Unlock()
		start := time.Now()
		h.ServeHTTP(w, r)
		f.mu.Lock()
		f.now--
		f.reqs = append(f.reqs, reqSpan{r.Method, strings.TrimSuffix(r.URL.Path, "/"), start, time.Now()})
		f.mu.Unlock()
	})
}

func TestRedfishSerialized(t *testing.T) {
	var f inFlight
	m := redfish.NewMemory(testInfo(1))
	ep := serveRedfish(t, map[string]redfish.System{"1": m}, f.wrap)
	pool := NewPool(Options{Timeout: 5 * time.Second})
	ctx := t.Context()
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Two keys, one BMC: still one gate.
			c := pool.Controller("machine-"+strconv.Itoa(i%2), ep, testCred)
			for j := range 4 {
				var err error
				if j%2 == 0 {
					_, err = c.PowerStatus(ctx)
				} else {
					err = c.Power(ctx, ActionOn)
				}
				if err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if err := pool.Close(ctx); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.max != 1 {
		t.Fatalf("%d requests at once at the BMC, want 1", f.max)
	}
	if len(f.reqs) < 32 {
		t.Fatalf("only %d requests reached the BMC", len(f.reqs))
	}
	if a, b := pool.Controller("machine-0", ep, testCred), pool.Controller("machine-0", ep, testCred); a != b {
		t.Error("the pool made two controllers for one key")
	}
}

func TestRedfishRateLimit(t *testing.T) {
	var f inFlight
	ep := serveRedfish(t, map[string]redfish.System{"1": redfish.NewMemory(testInfo(1))}, f.wrap)
	const interval = 150 * time.Millisecond
	c := New(ep, testCred, Options{Timeout: 5 * time.Second, MinInterval: interval})
	ctx := t.Context()
	start := time.Now()
	const n = 5
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := c.PowerStatus(ctx); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if took := time.Since(start); took < (n-1)*interval {
		t.Fatalf("%d calls took %v, want at least %v", n, took, (n-1)*interval)
	}
	// Each operation starts by fetching the service root; between the end
	// of the previous operation and that, at least the interval passes.
	f.mu.Lock()
	defer f.mu.Unlock()
	reqs := slices.Clone(f.reqs)
	slices.SortFunc(reqs, func(a, b reqSpan) int { return a.start.Compare(b.start) })
	ops := 0
	for i, r := range reqs {
		if r.method != http.MethodGet || r.path != "/redfish/v1" {
			continue
		}
		ops++
		if i == 0 {
			continue
		}
		if gap := r.start.Sub(reqs[i-1].end); gap < interval-5*time.Millisecond {
			t.Errorf("operation %d started %v after the previous request ended, want >= %v", ops, gap, interval)
		}
	}
	if ops != n {
		t.Fatalf("saw %d operations at the BMC, want %d", ops, n)
	}
}

func TestRedfishTLS(t *testing.T) {
	m := redfish.NewMemory(testInfo(1))
	svc, err := redfish.New(redfish.Config{User: testCred.User, Password: testCred.Password, Systems: map[string]redfish.System{"1": m}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewTLSServer(svc)
	t.Cleanup(srv.Close)
	ep := endpointOf(t, srv.URL)
	ep.TLS = true
	if !strings.HasPrefix(ep.String(), "redfishs://") {
		t.Fatalf("endpoint %s", ep)
	}
	opt := redfishTestOptions()
	// The test server's certificate is self-signed, like most BMCs'.
	if _, err := New(ep, testCred, opt).PowerStatus(t.Context()); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("PowerStatus with an untrusted certificate = %v, want a certificate error", err)
	}
	opt.InsecureTLS = true
	if st, err := New(ep, testCred, opt).PowerStatus(t.Context()); err != nil || st != PowerOff {
		t.Fatalf("PowerStatus with InsecureTLS = %q, %v", st, err)
	}
}

func TestRedfishRefusesDebugDump(t *testing.T) {
	ep := serveRedfish(t, map[string]redfish.System{"1": redfish.NewMemory(testInfo(1))}, nil)
	t.Setenv("DEBUG_BMCLIB", "true")
	if _, err := New(ep, testCred, redfishTestOptions()).PowerStatus(t.Context()); err == nil || !strings.Contains(err.Error(), "DEBUG_BMCLIB") {
		t.Fatalf("PowerStatus with DEBUG_BMCLIB=true = %v, want a refusal", err)
	}
}

func (f *inFlight) count(method, pathPrefix string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, r := range f.reqs {
		if r.method == method && strings.HasPrefix(r.path, pathPrefix) {
			n++
		}
	}
	return n
}

const sessionsPath = "/redfish/v1/SessionService/Sessions"

func TestRedfishSessions(t *testing.T) {
	ctx := t.Context()
	t.Run("one per operation", func(t *testing.T) {
		var f inFlight
		ep := serveRedfish(t, map[string]redfish.System{"1": redfish.NewMemory(testInfo(1))}, f.wrap)
		c := New(ep, testCred, redfishTestOptions())
		for range 3 {
			if _, err := c.PowerStatus(ctx); err != nil {
				t.Fatal(err)
			}
		}
		// Set and read-back share the operation's session.
		if err := c.SetNextBootPXE(ctx, BootOptions{}); err != nil {
			t.Fatal(err)
		}
		if in, out := f.count("POST", sessionsPath), f.count("DELETE", sessionsPath+"/"); in != 4 || out != 4 {
			t.Fatalf("%d logins and %d logouts for 4 operations, want 4 and 4", in, out)
		}
	})
	t.Run("kept", func(t *testing.T) {
		var f inFlight
		// A BMC that forgets its sessions when told to, as after a reset.
		var forget atomic.Bool
		var mu sync.Mutex
		forgotten := map[string]bool{}
		var tokens []string
		ep := serveRedfish(t, map[string]redfish.System{"1": redfish.NewMemory(testInfo(1))}, func(h http.Handler) http.Handler {
			return f.wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				tok := r.Header.Get("X-Auth-Token")
				mu.Lock()
				if forget.Swap(false) {
					for _, t := range tokens {
						forgotten[t] = true
					}
				}
				gone := tok != "" && forgotten[tok]
				mu.Unlock()
				if gone {
					http.Error(w, `{"error":{"code":"Base.1.0.NoValidSession","message":"session expired"}}`, http.StatusUnauthorized)
					return
				}
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, r)
				if v := rec.Header().Get("X-Auth-Token"); v != "" {
					mu.Lock()
					tokens = append(tokens, v)
					mu.Unlock()
				}
				for k, v := range rec.Header() {
					w.Header()[k] = v
				}
				w.WriteHeader(rec.Code)
				w.Write(rec.Body.Bytes())
			}))
		})
		opt := redfishTestOptions()
		opt.SessionIdle = time.Minute
		c := New(ep, testCred, opt)
		for range 3 {
			if _, err := c.PowerStatus(ctx); err != nil {
				t.Fatal(err)
			}
		}
		if in, out := f.count("POST", sessionsPath), f.count("DELETE", sessionsPath+"/"); in != 1 || out != 0 {
			t.Fatalf("%d logins and %d logouts for 3 operations with a kept session, want 1 and 0", in, out)
		}
		// The BMC drops the session: the controller logs in again, once.
		forget.Store(true)
		if err := c.Power(ctx, ActionOn); err != nil {
			t.Fatalf("Power after the BMC dropped the session: %v", err)
		}
		if in := f.count("POST", sessionsPath); in != 2 {
			t.Fatalf("%d logins, want 2", in)
		}
		if err := c.Close(ctx); err != nil {
			t.Fatal(err)
		}
		if out := f.count("DELETE", sessionsPath+"/"); out != 1 {
			t.Fatalf("%d logouts after Close, want 1", out)
		}
	})
	t.Run("idle too long", func(t *testing.T) {
		var f inFlight
		ep := serveRedfish(t, map[string]redfish.System{"1": redfish.NewMemory(testInfo(1))}, f.wrap)
		opt := redfishTestOptions()
		opt.SessionIdle = 50 * time.Millisecond
		c := New(ep, testCred, opt)
		if _, err := c.PowerStatus(ctx); err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
		if _, err := c.PowerStatus(ctx); err != nil {
			t.Fatal(err)
		}
		if in, out := f.count("POST", sessionsPath), f.count("DELETE", sessionsPath+"/"); in != 2 || out != 1 {
			t.Fatalf("%d logins and %d logouts, want 2 and 1 (the idle session replaced)", in, out)
		}
	})
}
