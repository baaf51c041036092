package vrack

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Power control of a machine as a BMC does it: power on starts a QEMU
// process (fully detached: its own session, stdio to the serial log, so a
// chassis-control program can exit while it runs), power off ends it, a
// reset presses QEMU's reset button (QMP). Powered off means no QEMU
// process. Every operation takes a lock on the machine's directory, so the
// Redfish service and ipmi_sim's chassis program may share a machine.

// Override is the machine's boot source override, in Redfish's words:
// Target None, Pxe or Hdd; Enabled Disabled, Once or Continuous; Mode
// Legacy or UEFI (recorded; the firmware is the machine's).
type Override struct {
	Target  string
	Enabled string
	Mode    string
}

// ErrNotRunning is returned for an operation that needs a powered-on machine.
var ErrNotRunning = errors.New("vrack: machine is powered off")

func (m *Machine) file(name string) string { return filepath.Join(m.Dir, name) }

// lock takes the machine's lock (flock on Dir/lock) until unlock.
func (m *Machine) lock() (unlock func(), err error) {
	f, err := os.OpenFile(m.file("lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, err
	}
	return func() { _ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
}

// PID is the running QEMU's process id, or 0 when the machine is off.
func (m *Machine) PID() int {
	b, err := os.ReadFile(m.file("qemu.pid"))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0
	}
	// The PID must still be this machine's QEMU (not a reused PID, not a
	// zombie waiting for its parent).
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !bytes.Contains(cmdline, []byte("qemu-system")) || !bytes.Contains(cmdline, []byte(m.file("qemu.pid"))) {
		return 0
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	if i := bytes.LastIndexByte(stat, ')'); i > 0 && len(stat) > i+2 && (stat[i+2] == 'Z' || stat[i+2] == 'X') {
		return 0
	}
	return pid
}

// Running reports whether the machine's QEMU process is alive.
func (m *Machine) Running() bool { return m.PID() != 0 }

// BootOverride reads the machine's boot override (Disabled when none).
func (m *Machine) BootOverride() Override {
	o := Override{Target: "None", Enabled: "Disabled", Mode: "Legacy"}
	if m.Firmware == UEFI {
		o.Mode = "UEFI"
	}
	if b, err := os.ReadFile(m.file("boot.json")); err == nil {
		_ = json.Unmarshal(b, &o)
	}
	return o
}

// SetBootOverride records the override for the next boot (Once) or every
// boot (Continuous).
func (m *Machine) SetBootOverride(o Override) error {
	unlock, err := m.lock()
	if err != nil {
		return err
	}
	defer unlock()
	return m.writeOverride(o)
}

func (m *Machine) writeOverride(o Override) error {
	b, _ := json.Marshal(o)
	return os.WriteFile(m.file("boot.json"), b, 0o644)
}

// nextBoot is the device the next boot uses; it consumes a Once override.
func (m *Machine) nextBoot() string {
	boot := m.DefaultBoot
	if boot == "" {
		boot = BootPXE
	}
	o := m.BootOverride()
	if o.Enabled == "Once" || o.Enabled == "Continuous" {
		switch o.Target {
		case "Pxe":
			boot = BootPXE
		case "Hdd":
			boot = BootDisk
		}
	}
	if o.Enabled == "Once" {
		o.Enabled, o.Target = "Disabled", "None"
		_ = m.writeOverride(o)
	}
	return boot
}

// wantBoot is the device the next boot would use, without consuming it.
func (m *Machine) wantBoot() string {
	boot := m.DefaultBoot
	if boot == "" {
		boot = BootPXE
	}
	if o := m.BootOverride(); o.Enabled == "Once" || o.Enabled == "Continuous" {
		switch o.Target {
		case "Pxe":
			boot = BootPXE
		case "Hdd":
			boot = BootDisk
		}
	}
	return boot
}

// PowerOn starts the machine's QEMU, detached, if it is not running.
func (m *Machine) PowerOn(ctx context.Context) error {
	unlock, err := m.lock()
	if err != nil {
		return err
	}
	defer unlock()
	return m.powerOn()
}

func (m *Machine) powerOn() error {
	if m.Running() {
		return nil
	}
	if err := m.prepare(); err != nil {
		return err
	}
	boot := m.nextBoot()
	serial, err := os.OpenFile(m.SerialLog(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer serial.Close()
	fmt.Fprintf(serial, "\n=== vrack: power on %s, boot %s ===\n", time.Now().Format(time.RFC3339), boot)
	_ = os.Remove(m.QMP)
	args := append(m.Args(boot), "-pidfile", m.file("qemu.pid"))
	cmd := exec.Command("ip", append([]string{"netns", "exec", m.NS}, args...)...)
	cmd.Stdout, cmd.Stderr = serial, serial // stdin is /dev/null
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("power on %s: %w", m.Name, err)
	}
	// ip netns exec execs QEMU: the PID is QEMU's.
	if err := os.WriteFile(m.file("qemu.pid"), []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644); err != nil {
		_ = cmd.Process.Kill()
		return err
	}
	_ = os.WriteFile(m.file("booted"), []byte(boot), 0o644)
	go func() { _ = cmd.Wait() }() // reap it while this process lives
	// Ready when QMP answers (or QEMU died: its reason is in the serial log).
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(m.QMP); err == nil {
			return nil
		}
		if m.PID() == 0 {
			// The pidfile is written before the process checks; give it
			// a moment, then trust /proc.
			time.Sleep(100 * time.Millisecond)
			if m.PID() == 0 {
				return fmt.Errorf("power on %s: QEMU exited: %s", m.Name, tailFile(m.SerialLog(), 2000))
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}

// PowerOff ends the machine's QEMU (QMP quit, then SIGKILL).
func (m *Machine) PowerOff(ctx context.Context) error {
	unlock, err := m.lock()
	if err != nil {
		return err
	}
	defer unlock()
	return m.powerOff(ctx)
}

func (m *Machine) powerOff(ctx context.Context) error {
	pid := m.PID()
	if pid == 0 {
		return nil
	}
	qctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	_, _ = QMP(qctx, m.QMP, "quit", nil)
	cancel()
	if m.waitGone(pid, 3*time.Second) {
		return nil
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	if !m.waitGone(pid, 5*time.Second) {
		return fmt.Errorf("power off %s: QEMU (pid %d) did not exit", m.Name, pid)
	}
	return nil
}

func (m *Machine) waitGone(pid int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if m.PID() != pid {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
}

// Reset presses the reset button; a machine that is off is powered on,
// and one whose next boot device differs from the running process's is
// restarted with it (QEMU's boot order is fixed per process).
func (m *Machine) Reset(ctx context.Context) error {
	unlock, err := m.lock()
	if err != nil {
		return err
	}
	defer unlock()
	if !m.Running() {
		return m.powerOn()
	}
	if booted, _ := os.ReadFile(m.file("booted")); string(booted) != m.wantBoot() {
		if err := m.powerOff(ctx); err != nil {
			return err
		}
		return m.powerOn()
	}
	m.nextBoot() // consume a Once override
	_, err = QMP(ctx, m.QMP, "system_reset", nil)
	return err
}

// PowerCycle is off, then on.
func (m *Machine) PowerCycle(ctx context.Context) error {
	unlock, err := m.lock()
	if err != nil {
		return err
	}
	defer unlock()
	if err := m.powerOff(ctx); err != nil {
		return err
	}
	return m.powerOn()
}

// Shutdown presses the power button (ACPI): the OS decides. The test
// image's busybox ignores it, like an OS that hangs on shutdown.
func (m *Machine) Shutdown(ctx context.Context) error {
	if !m.Running() {
		return nil
	}
	_, err := QMP(ctx, m.QMP, "system_powerdown", nil)
	return err
}

// NMI injects a non-maskable interrupt.
func (m *Machine) NMI(ctx context.Context) error {
	if !m.Running() {
		return ErrNotRunning
	}
	_, err := QMP(ctx, m.QMP, "inject-nmi", nil)
	return err
}

// Status is QEMU's run state ("running", "paused", "shutdown", …) or "off".
func (m *Machine) Status(ctx context.Context) (string, error) {
	if !m.Running() {
		return "off", nil
	}
	raw, err := QMP(ctx, m.QMP, "query-status", nil)
	if err != nil {
		return "", err
	}
	var st struct {
		Status string `json:"status"`
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		return "", fmt.Errorf("query-status: %w", err)
	}
	return st.Status, nil
}

// QMP runs one command on the QEMU monitor socket at path and returns its
// "return" value. The socket may be appearing: dialing is retried until
// ctx ends (5 s when ctx has no deadline).
func QMP(ctx context.Context, path, command string, args any) (json.RawMessage, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
	}
	var c net.Conn
	var err error
	for {
		c, err = (&net.Dialer{}).DialContext(ctx, "unix", path)
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("qmp %s: %w", command, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
	defer c.Close()
	dl, _ := ctx.Deadline()
	_ = c.SetDeadline(dl)
	dec := json.NewDecoder(c)
	var greeting map[string]json.RawMessage
	if err := dec.Decode(&greeting); err != nil || greeting["QMP"] == nil {
		return nil, fmt.Errorf("qmp %s: no greeting: %v", command, err)
	}
	if _, err := qmpExec(c, dec, "qmp_capabilities", nil); err != nil {
		return nil, fmt.Errorf("qmp %s: %w", command, err)
	}
	ret, err := qmpExec(c, dec, command, args)
	if err != nil && command == "quit" && (errors.Is(err, os.ErrDeadlineExceeded) || strings.Contains(err.Error(), "EOF")) {
		return nil, nil // QEMU may close the socket before it answers
	}
	if err != nil {
		return nil, fmt.Errorf("qmp %s: %w", command, err)
	}
	return ret, nil
}

func qmpExec(c net.Conn, dec *json.Decoder, command string, args any) (json.RawMessage, error) {
	req := map[string]any{"execute": command}
	if args != nil {
		req["arguments"] = args
	}
	if err := json.NewEncoder(c).Encode(req); err != nil {
		return nil, err
	}
	for {
		var msg struct {
			Return json.RawMessage `json:"return"`
			Error  *struct {
				Class string `json:"class"`
				Desc  string `json:"desc"`
			} `json:"error"`
			Event string `json:"event"`
		}
		if err := dec.Decode(&msg); err != nil {
			return nil, err
		}
		switch {
		case msg.Error != nil:
			return nil, fmt.Errorf("%s: %s", msg.Error.Class, msg.Error.Desc)
		case msg.Event != "":
			continue
		default:
			return msg.Return, nil
		}
	}
}
