package vrack

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/microdc/mdc/hack/vrack/redfish"
)

// BMC is how mdc reaches one machine's BMC.
type BMC struct {
	URL          string // ipmi://10.79.0.240:623, redfish://10.79.0.239:80
	User         string
	PasswordFile string // 0600
}

// The ipmi_sim command file: one BMC at IPMB 0x20 with chassis support
// (shared/lab/ipmi-bmc.emu).
const ipmiEmu = `mc_setbmc 0x20
mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr
sel_enable 0x20 1000 0x0a
mc_enable 0x20
`

// newPassword writes a random password to dir/name (0600) and returns it.
func newPassword(dir, name string) (pw, file string, err error) {
	b := make([]byte, 8) // 16 characters: IPMI 1.5 passwords hold at most 16
	if _, err := rand.Read(b); err != nil {
		return "", "", err
	}
	pw = hex.EncodeToString(b)
	file = filepath.Join(dir, name)
	return pw, file, os.WriteFile(file, []byte(pw), 0o600)
}

// StartIPMI gives m an IPMI BMC: ipmi_sim listening for IPMI over LAN on
// addr:623 (an address of the rack's bridge), its serial interface wired
// to QEMU's ipmi-bmc-extern on 127.0.0.1:serialPort inside the namespace,
// and chassis as its chassis-control program (argv prefix; the rack adds
// "--state DIR"), which powers m. The user is admin with a random
// password in a 0600 file. Call before m.Save, as it sets m.IPMIPort.
func (r *Rack) StartIPMI(m *Machine, addr string, serialPort int, chassis []string) (*BMC, error) {
	if _, err := lookPath("ipmi_sim"); err != nil {
		return nil, errors.New("no ipmi_sim (openipmi, hack/deps/vrack.txt)")
	}
	dir := filepath.Join(m.Dir, "ipmi")
	if err := os.MkdirAll(filepath.Join(dir, "state"), 0o700); err != nil {
		return nil, err
	}
	pw, pwFile, err := newPassword(m.Dir, "bmc-password")
	if err != nil {
		return nil, err
	}
	m.IPMIPort = serialPort
	ctl := strings.Join(append(append([]string(nil), chassis...), "--state", m.Dir), " ")
	conf := fmt.Sprintf(`name "%s"
set_working_mc 0x20
  startlan 1
    addr %s 623
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid %s
  endlan
  serial 15 127.0.0.1 %d codec VM
  chassis_control "%s"
  user 2 true "admin" "%s" admin 10 none md2 md5 straight
`, m.Name, addr, strings.ReplaceAll(m.UUID(), "-", ""), serialPort, ctl, pw)
	// lan.conf holds the password: 0600, like the BMC's own flash.
	if err := os.WriteFile(filepath.Join(dir, "lan.conf"), []byte(conf), 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "ipmi-bmc.emu"), []byte(ipmiEmu), 0o644); err != nil {
		return nil, err
	}
	p, err := r.Start("ipmi-"+m.Name, nil, "ipmi_sim", "-n", "-c", filepath.Join(dir, "lan.conf"),
		"-f", filepath.Join(dir, "ipmi-bmc.emu"), "-s", filepath.Join(dir, "state"))
	if err != nil {
		return nil, err
	}
	// Ready when its LAN socket is bound (UDP: nothing to connect to).
	deadline := time.Now().Add(5 * time.Second)
	for !udpBound(p.Cmd.Process.Pid, 623) {
		if p.Exited() || time.Now().After(deadline) {
			return nil, fmt.Errorf("ipmi_sim for %s did not start: %s", m.Name, p.Tail(2000))
		}
		time.Sleep(50 * time.Millisecond)
	}
	r.log.Info("IPMI BMC up", "machine", m.Name, "addr", addr)
	return &BMC{URL: "ipmi://" + addr + ":623", User: "admin", PasswordFile: pwFile}, nil
}

// udpBound reports whether process pid's namespace has a UDP socket on port.
func udpBound(pid, port int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/udp", pid))
	if err != nil {
		return false
	}
	return strings.Contains(string(b), fmt.Sprintf(":%04X ", port))
}

// StartRedfish gives m a Redfish BMC: the redfish package's service on
// http://addr:80 inside the namespace, its system backed by m's QEMU over
// QMP. The user is admin with a random password in a 0600 file.
func (r *Rack) StartRedfish(m *Machine, addr string) (*BMC, error) {
	pw, pwFile, err := newPassword(m.Dir, "bmc-password")
	if err != nil {
		return nil, err
	}
	svc, err := redfish.New(redfish.Config{User: "admin", Password: pw,
		Systems: map[string]redfish.System{"1": &QEMUSystem{M: m}},
		Logger:  r.log.With("bmc", m.Name)})
	if err != nil {
		return nil, err
	}
	ln, err := r.Listen("tcp", net.JoinHostPort(addr, "80"))
	if err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: svc, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			r.log.Error("redfish service", "machine", m.Name, "err", err)
		}
	}()
	r.onClose(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-done
	})
	r.log.Info("Redfish BMC up", "machine", m.Name, "addr", addr)
	return &BMC{URL: "redfish://" + addr + ":80", User: "admin", PasswordFile: pwFile}, nil
}

// PowerOffAtClose makes Close end m's QEMU (started by a BMC, detached).
func (r *Rack) PowerOffAtClose(m *Machine) {
	r.onClose(func() {
		if err := m.PowerOff(context.Background()); err != nil {
			r.log.Warn("power off", "machine", m.Name, "err", err)
		}
	})
}

// QEMUSystem is a redfish.System backed by a rack machine.
type QEMUSystem struct{ M *Machine }

var _ redfish.System = (*QEMUSystem)(nil)

// PowerState is On while the QEMU process runs (whatever its guest does).
func (s *QEMUSystem) PowerState(ctx context.Context) (string, error) {
	if !s.M.Running() {
		return redfish.PowerOff, nil
	}
	if _, err := s.M.Status(ctx); err != nil && s.M.Running() {
		return "", err
	}
	return redfish.PowerOn, nil
}

// Reset maps Redfish's reset types onto QEMU.
func (s *QEMUSystem) Reset(ctx context.Context, resetType string) error {
	switch resetType {
	case "On", "ForceOn":
		return s.M.PowerOn(ctx)
	case "ForceOff":
		return s.M.PowerOff(ctx)
	case "GracefulShutdown":
		return s.M.Shutdown(ctx)
	case "ForceRestart", "GracefulRestart":
		// The test image has no ACPI daemon: a graceful restart is a reset.
		return s.M.Reset(ctx)
	case "PowerCycle":
		return s.M.PowerCycle(ctx)
	case "Nmi":
		return s.M.NMI(ctx)
	}
	return fmt.Errorf("%w: %s", redfish.ErrUnsupportedReset, resetType)
}

// BootOverride is the machine's boot override.
func (s *QEMUSystem) BootOverride(ctx context.Context) (redfish.Boot, error) {
	o := s.M.BootOverride()
	return redfish.Boot{Target: o.Target, Enabled: o.Enabled, Mode: o.Mode}, nil
}

// SetBootOverride records the override the next power on or reset uses
// (Pxe and Hdd change QEMU's boot order; other targets boot the default).
func (s *QEMUSystem) SetBootOverride(ctx context.Context, b redfish.Boot) error {
	if err := b.Validate(); err != nil {
		return err
	}
	return s.M.SetBootOverride(Override{Target: b.Target, Enabled: b.Enabled, Mode: b.Mode})
}

// Info is the machine's identity as its BMC knows it.
func (s *QEMUSystem) Info() redfish.Info {
	return redfish.Info{UUID: s.M.UUID(), SerialNumber: s.M.Serial(), Manufacturer: "microdc", Model: "vrack QEMU " + string(s.M.Firmware),
		Name: s.M.Name, MACs: []string{s.M.MAC}}
}

// Chassis is ipmi_sim's chassis-control program: args are
// "--state DIR get power|boot ..." or "--state DIR set power 1|0 | reset 1 |
// shutdown 1 | boot pxe|default|none|cdrom|bios". It prints "power:1",
// "boot:pxe" lines for get. QEMU it starts is fully detached, as ipmi_sim
// reads this program's output to its end.
func Chassis(ctx context.Context, args []string, stdout io.Writer, log *slog.Logger) error {
	fs := flag.NewFlagSet("chassis", flag.ContinueOnError)
	state := fs.String("state", "", "the machine's directory (machine.json)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *state == "" || fs.NArg() < 2 {
		return errors.New("usage: vrack chassis --state DIR get power|boot ... | set power 1|0|reset 1|shutdown 1|boot DEV ...")
	}
	m, err := LoadMachine(*state)
	if err != nil {
		return err
	}
	rest := fs.Args()
	log.Info("chassis", "machine", m.Name, "args", strings.Join(rest, " "))
	switch rest[0] {
	case "get":
		for _, k := range rest[1:] {
			switch k {
			case "power":
				v := 0
				if m.Running() {
					v = 1
				}
				fmt.Fprintf(stdout, "power:%d\n", v)
			case "boot":
				v := "none"
				if o := m.BootOverride(); o.Enabled != "Disabled" {
					switch o.Target {
					case "Pxe":
						v = "pxe"
					case "Hdd":
						v = "default"
					}
				}
				fmt.Fprintf(stdout, "boot:%s\n", v)
			default:
				return fmt.Errorf("chassis get: unknown %q", k)
			}
		}
		return nil
	case "set":
		kv := rest[1:]
		if len(kv)%2 != 0 {
			return fmt.Errorf("chassis set: want name value pairs, got %q", kv)
		}
		for i := 0; i < len(kv); i += 2 {
			if err := chassisSet(ctx, m, kv[i], kv[i+1]); err != nil {
				return err
			}
		}
		return nil
	}
	return fmt.Errorf("chassis: unknown operation %q", rest[0])
}

func chassisSet(ctx context.Context, m *Machine, k, v string) error {
	switch k {
	case "power":
		if v == "0" {
			return m.PowerOff(ctx)
		}
		return m.PowerOn(ctx)
	case "reset":
		return m.Reset(ctx)
	case "shutdown":
		return m.Shutdown(ctx)
	case "boot":
		o := m.BootOverride()
		o.Enabled = "Once"
		switch v {
		case "pxe":
			o.Target = "Pxe"
		case "default":
			o.Target = "Hdd" // IPMI's "force boot from default hard drive"
		default: // none, cdrom, bios: nothing the rack can boot
			o.Target, o.Enabled = "None", "Disabled"
		}
		return m.SetBootOverride(o)
	}
	return fmt.Errorf("chassis set: unknown %q", k)
}
