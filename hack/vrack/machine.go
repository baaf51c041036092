package vrack

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
)

// Firmware is how a machine boots from the network.
type Firmware string

const (
	// UEFI is OVMF with its own PXE stack (q35, virtio-net without a ROM).
	UEFI Firmware = "uefi"
	// BIOS is SeaBIOS with the NIC's iPXE ROM.
	BIOS Firmware = "bios"
)

// Firmware files (Debian's ovmf and ipxe packages).
const (
	OVMFCode = "/usr/share/OVMF/OVMF_CODE_4M.fd"
	OVMFVars = "/usr/share/OVMF/OVMF_VARS_4M.fd"
	IPXEDir  = "/usr/lib/ipxe"
)

// Boot devices a machine starts from.
const (
	BootPXE  = "pxe"
	BootDisk = "disk"
)

// Machine is one QEMU machine of the rack. Its files (disks, UEFI
// variables, serial console, PID, boot settings) live in Dir; Save writes
// the machine to Dir/machine.json so another process (the chassis control
// program ipmi_sim runs) can power it.
type Machine struct {
	Name      string
	MAC       string
	Firmware  Firmware
	MemoryMiB int
	CPUs      int     // 0: QEMU's default
	Disks     []int64 // sizes in bytes: sparse raw files, virtio
	NS        string  // the rack's namespace
	Tap       string
	Dir       string
	QMP       string // QMP unix socket (a short path: at most 108 bytes)
	Accel     string
	// DefaultBoot is where the machine boots without an override (BootPXE
	// or BootDisk); "" is BootPXE, like a rack of diskless-first servers.
	DefaultBoot string
	// IPMIPort, when not 0, wires QEMU's ipmi-bmc-extern to ipmi_sim's
	// serial port on 127.0.0.1 (inside the namespace).
	IPMIPort int
	// Extra are more QEMU arguments.
	Extra []string
}

// NewMachine fills in a machine on a new tap of the rack, with its files
// under r.Dir/name.
func (r *Rack) NewMachine(name, mac string, fw Firmware, memMiB, cpus int, disks []int64) (*Machine, error) {
	tap, err := r.AddTap()
	if err != nil {
		return nil, err
	}
	m := &Machine{Name: name, MAC: strings.ToLower(mac), Firmware: fw, MemoryMiB: memMiB, CPUs: cpus, Disks: disks,
		NS: r.NS, Tap: tap, Dir: filepath.Join(r.Dir, name), Accel: Accel()}
	rt, err := r.runtimeDir()
	if err != nil {
		return nil, err
	}
	m.QMP = filepath.Join(rt, name+".qmp")
	if err := os.MkdirAll(m.Dir, 0o755); err != nil {
		return nil, err
	}
	return m, nil
}

// runtimeDir is a short directory for unix sockets, removed at Close.
func (r *Rack) runtimeDir() (string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.rt != "" {
		return r.rt, nil
	}
	d, err := os.MkdirTemp("", "vrack")
	if err != nil {
		return "", err
	}
	r.rt = d
	r.closers = append(r.closers, func() { os.RemoveAll(d) })
	return d, nil
}

// Tag is the MAC without colons: unique within a rack.
func (m *Machine) Tag() string { return strings.ReplaceAll(m.MAC, ":", "") }

// SerialLog is the file the serial console goes to.
func (m *Machine) SerialLog() string { return filepath.Join(m.Dir, "serial.log") }

// UUID is the machine's SMBIOS system UUID, derived from its MAC.
func (m *Machine) UUID() string {
	h := sha256.Sum256([]byte("vrack " + m.MAC))
	h[6] = h[6]&0x0f | 0x50
	h[8] = h[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", h[0:4], h[4:6], h[6:8], h[8:10], h[10:16])
}

// Serial is the machine's SMBIOS serial number.
func (m *Machine) Serial() string { return "VR" + strings.ToUpper(m.Tag()) }

// Save writes the machine to Dir/machine.json.
func (m *Machine) Save() error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(m.Dir, "machine.json"), b, 0o644)
}

// LoadMachine reads a machine Save wrote into dir.
func LoadMachine(dir string) (*Machine, error) {
	b, err := os.ReadFile(filepath.Join(dir, "machine.json"))
	if err != nil {
		return nil, err
	}
	var m Machine
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, "machine.json"), err)
	}
	return &m, nil
}

// prepare creates the disks and the UEFI variable store once: they
// persist across power cycles like a real machine's.
func (m *Machine) prepare() error {
	if err := os.MkdirAll(m.Dir, 0o755); err != nil {
		return err
	}
	for i, size := range m.Disks {
		p := m.diskPath(i)
		if _, err := os.Stat(p); err == nil {
			continue
		}
		f, err := os.Create(p)
		if err != nil {
			return err
		}
		err = f.Truncate(size)
		f.Close()
		if err != nil {
			return err
		}
	}
	if m.Firmware == UEFI {
		if _, err := os.Stat(m.varsPath()); err != nil {
			b, err := os.ReadFile(OVMFVars)
			if err != nil {
				return err
			}
			if err := os.WriteFile(m.varsPath(), b, 0o600); err != nil {
				return err
			}
		}
	}
	return nil
}

func (m *Machine) diskPath(i int) string { return filepath.Join(m.Dir, fmt.Sprintf("disk%d.img", i)) }
func (m *Machine) varsPath() string      { return filepath.Join(m.Dir, "OVMF_VARS.fd") }

// FirmwareArgs are QEMU's arguments for the firmware and the NIC (netdev
// n0): under UEFI, OVMF with the machine's variable store and no NIC ROM,
// so OVMF's own PXE stack boots.
func (m *Machine) FirmwareArgs() []string {
	if m.Firmware != UEFI {
		return []string{"-device", "virtio-net-pci,netdev=n0,mac=" + m.MAC}
	}
	return []string{"-machine", "q35",
		"-drive", "if=pflash,format=raw,readonly=on,file=" + OVMFCode, "-drive", "if=pflash,format=raw,file=" + m.varsPath(),
		"-device", "virtio-net-pci,netdev=n0,romfile=,mac=" + m.MAC}
}

// Args is the QEMU command line booting from boot (BootPXE or BootDisk).
func (m *Machine) Args(boot string) []string {
	order := "n"
	if boot == BootDisk {
		order = "c"
	}
	args := []string{"qemu-system-x86_64", "-name", "vrack-" + m.Name, "-accel", m.Accel, "-m", fmt.Sprintf("%dM", m.MemoryMiB)}
	if m.CPUs > 0 {
		args = append(args, "-smp", fmt.Sprint(m.CPUs))
	}
	args = append(args, "-nographic", "-boot", order, "-uuid", m.UUID(),
		"-smbios", "type=1,manufacturer=microdc,product=vrack,serial="+m.Serial(),
		"-netdev", "tap,id=n0,ifname="+m.Tap+",script=no,downscript=no")
	if m.QMP != "" {
		args = append(args, "-qmp", "unix:"+m.QMP+",server=on,wait=off")
	}
	args = append(args, m.FirmwareArgs()...)
	for i := range m.Disks {
		args = append(args, "-drive", "if=virtio,format=raw,file="+m.diskPath(i))
	}
	if m.IPMIPort != 0 {
		args = append(args, "-chardev", fmt.Sprintf("socket,id=ipmi0,host=127.0.0.1,port=%d,reconnect=10", m.IPMIPort),
			"-device", "ipmi-bmc-extern,chardev=ipmi0,id=bmc0", "-device", "isa-ipmi-kcs,bmc=bmc0")
	}
	return append(args, m.Extra...)
}

// Start runs the machine attached to the rack (stopped at Close, killed if
// the program dies), booting from the network; stdout also goes to out
// when it is not nil. For machines without a BMC, and for tests.
func (r *Rack) StartMachine(m *Machine, out io.Writer) (*Proc, error) {
	if err := m.prepare(); err != nil {
		return nil, err
	}
	_ = os.Remove(m.QMP)
	return r.startLog(r.NS, "serial-"+m.Name, m.SerialLog(), out, m.Args(BootPXE)...)
}

var accelOnce = sync.OnceValue(func() string {
	cpu, _ := os.ReadFile("/proc/cpuinfo")
	if _, err := os.Stat("/dev/kvm"); err == nil && (bytes.Contains(cpu, []byte(" vmx")) || bytes.Contains(cpu, []byte(" svm"))) {
		return "kvm"
	}
	return "tcg"
})

// Accel is KVM where it works (a CPU with VT-x or AMD-V), TCG elsewhere:
// OVMF dies under a paravirtual KVM without them (shared/lab/NOTES.md).
func Accel() string { return accelOnce() }

// Missing names what the rack needs and this host lacks ("" when
// nothing): root, ip, QEMU, OVMF and iPXE.
func Missing() string {
	if os.Geteuid() != 0 {
		return "needs root to create network namespaces, bridges and taps"
	}
	for _, bin := range []string{"ip", "qemu-system-x86_64"} {
		if _, err := exec.LookPath(bin); err != nil {
			return "needs " + bin + " (hack/install-deps.sh vrack installs qemu-system-x86, ovmf, ipxe)"
		}
	}
	for _, f := range []string{OVMFCode, OVMFVars, IPXEDir + "/snponly.efi", IPXEDir + "/undionly.kpxe"} {
		if _, err := os.Stat(f); err != nil {
			return "needs " + f + " (hack/install-deps.sh vrack installs ovmf and ipxe)"
		}
	}
	return ""
}
