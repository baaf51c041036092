package vrack

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// InitrdModules are the modules the busybox initrd loads, in dependency
// order (docs/agent.md): virtio NIC and disks.
var InitrdModules = []string{"virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci",
	"failover", "net_failover", "virtio_net", "virtio_blk"}

const initScript = `#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in ` + "MODULES" + `; do insmod /lib/modules/$m.ko; done
ip link set lo up
ip link set eth0 up
udhcpc -i eth0 -q -n -t 10 -T 2
AGENT
sleep 2
poweroff -f
`

// AgentRun is the initrd's step that runs mdc-agent.
const AgentRun = `/bin/mdc-agent
echo "init: mdc-agent exited with status $?"`

// NoAgentRun is a commissioning image that never checks in.
const NoAgentRun = `echo "init: this image has no agent"
sleep 600`

const udhcpcScript = `#!/bin/sh
case "$1" in bound|renew)
	ip addr flush dev "$interface"; ip addr add "$ip/${mask:-24}" dev "$interface"
	[ -n "$router" ] && ip route add default via "${router%% *}" dev "$interface";;
esac
exit 0
`

const joinHook = `#!/bin/sh
# The test role's join hook: nothing to join; the evidence is the kernel.
echo "{\"kernel\":\"$(cat /proc/sys/kernel/osrelease)\",\"hook\":\"test\"}"
`

// DefaultCacheDir is where downloads are kept between runs:
// $MDC_CACHE, else $XDG_CACHE_HOME/mdc, else ~/.cache/mdc (the place
// hack/test-kernel.sh uses too).
func DefaultCacheDir() string {
	if d := os.Getenv("MDC_CACHE"); d != "" {
		return d
	}
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "mdc")
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".cache", "mdc")
}

// TestKernel returns a Debian kernel (a bzImage with an EFI stub, so one
// image serves both firmwares): the version linux-image-amd64 depends on,
// fetched once with apt-get download into cacheDir/test-kernel and
// unpacked, never installed.
func TestKernel(cacheDir string) (string, error) {
	dir := filepath.Join(cacheDir, "test-kernel")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	out, _ := exec.Command("apt-cache", "depends", "linux-image-amd64").Output()
	var pkg string
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "Depends: linux-image-"); ok && v != "" && v[0] >= '0' && v[0] <= '9' {
			pkg = "linux-image-" + v
			break
		}
	}
	if pkg == "" {
		// No package lists: whatever an earlier run left.
		found, _ := filepath.Glob(filepath.Join(dir, "vmlinuz-*"))
		if len(found) == 0 {
			return "", errors.New("test kernel: apt-cache knows no linux-image-amd64; run apt-get update")
		}
		return found[len(found)-1], nil
	}
	ver := strings.TrimPrefix(pkg, "linux-image-")
	kernel := filepath.Join(dir, "vmlinuz-"+ver)
	if st, err := os.Stat(kernel); err == nil && st.Size() > 0 {
		return kernel, nil
	}
	if err := unpackDeb(dir, pkg, "./boot/vmlinuz-"+ver); err != nil {
		return "", err
	}
	return kernel, nil
}

// unpackDeb downloads pkg into a temporary directory under dir and moves
// the members matching the tar patterns into dir (flattened).
func unpackDeb(dir, pkg string, patterns ...string) error {
	tmp, err := os.MkdirTemp(dir, "dl.")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	dl := exec.Command("apt-get", "download", pkg)
	dl.Dir = tmp
	if out, err := dl.CombinedOutput(); err != nil {
		return fmt.Errorf("apt-get download %s: %v\n%s", pkg, err, out)
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(debs) != 1 {
		return fmt.Errorf("apt-get download %s left %v", pkg, debs)
	}
	x := exec.Command("sh", append([]string{"-c", `d=$1 deb=$2; shift 2; dpkg-deb --fsys-tarfile "$deb" | tar -x --wildcards -C "$d" "$@"`, "sh", tmp, debs[0]}, patterns...)...)
	if out, err := x.CombinedOutput(); err != nil {
		return fmt.Errorf("unpack %s: %v\n%s", debs[0], err, out)
	}
	return filepath.Walk(tmp, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() || strings.HasSuffix(p, ".deb") {
			return err
		}
		return os.Rename(p, filepath.Join(dir, filepath.Base(p)))
	})
}

// TestModules returns the directory holding InitrdModules from the Debian
// package of kernel (vmlinuz-VERSION), unpacked once next to it.
func TestModules(kernel string) (string, error) {
	ver := strings.TrimPrefix(filepath.Base(kernel), "vmlinuz-")
	dir := filepath.Join(filepath.Dir(kernel), "modules-"+ver)
	have := func() bool {
		for _, m := range InitrdModules {
			if _, err := os.Stat(filepath.Join(dir, m+".ko")); err != nil {
				return false
			}
		}
		return true
	}
	if have() {
		return dir, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	var pats []string
	for _, m := range InitrdModules {
		pats = append(pats, "*/"+m+".ko")
	}
	if err := unpackDeb(dir, "linux-image-"+ver, pats...); err != nil {
		return "", fmt.Errorf("the NIC and disk modules: %w", err)
	}
	if !have() {
		return "", fmt.Errorf("modules of linux-image-%s: want %v in %s", ver, InitrdModules, dir)
	}
	return dir, nil
}

// StaticBusybox returns the path of a statically linked busybox.
func StaticBusybox() (string, error) {
	bb, err := exec.LookPath("busybox")
	if err != nil {
		return "", errors.New("no busybox (busybox-static, hack/deps/vrack.txt)")
	}
	f, err := elf.Open(bb)
	if err != nil {
		return "", fmt.Errorf("%s: %w", bb, err)
	}
	defer f.Close()
	if HasInterp(f) {
		return "", fmt.Errorf("%s is not a static busybox (busybox-static, hack/deps/vrack.txt)", bb)
	}
	return bb, nil
}

// HasInterp reports whether f asks for a dynamic loader.
func HasInterp(f *elf.File) bool {
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return true
		}
	}
	return false
}

// WriteInitrd writes a gzipped newc cpio: busybox, mdc-agent, the modules
// from mods, /init doing run (AgentRun or NoAgentRun) after DHCP, the
// udhcpc script and the test role's join hook.
func WriteInitrd(path, busybox, agent, mods, run string) error {
	init := strings.Replace(strings.Replace(initScript, "MODULES", strings.Join(InitrdModules, " "), 1), "AGENT", run, 1)
	var cw cpioWriter
	for _, d := range []string{"bin", "dev", "etc", "etc/mdc", "etc/udhcpc", "lib", "lib/modules", "proc", "sys", "run", "tmp", "usr", "usr/bin", "usr/sbin", "sbin", "var", "var/lib"} {
		cw.add(d, 0o40755, nil, 0, 0)
	}
	cw.add("dev/console", 0o20600, nil, 5, 1)
	cw.add("init", 0o100755, []byte(init), 0, 0)
	cw.add("etc/udhcpc/default.script", 0o100755, []byte(udhcpcScript), 0, 0)
	cw.add("etc/mdc/join", 0o100755, []byte(joinHook), 0, 0)
	for _, f := range [][2]string{{"bin/busybox", busybox}, {"bin/mdc-agent", agent}} {
		b, err := os.ReadFile(f[1])
		if err != nil {
			return err
		}
		cw.add(f[0], 0o100755, b, 0, 0)
	}
	names := append([]string(nil), InitrdModules...)
	sort.Strings(names)
	for _, m := range names {
		b, err := os.ReadFile(filepath.Join(mods, m+".ko"))
		if err != nil {
			return err
		}
		cw.add("lib/modules/"+m+".ko", 0o100644, b, 0, 0)
	}
	cw.add("TRAILER!!!", 0, nil, 0, 0)
	var gz bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&gz, gzip.BestSpeed)
	if _, err := zw.Write(cw.b.Bytes()); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	return os.WriteFile(path, gz.Bytes(), 0o644)
}

// TestImage is a kernel and an initrd that runs mdc-agent.
type TestImage struct {
	Kernel, Initrd, Modules, Busybox string
}

// BuildTestImage fetches (or reuses from cacheDir) the Debian kernel and
// its modules and writes dir/initrd.gz with agent as mdc-agent.
func BuildTestImage(cacheDir, agent, dir string) (TestImage, error) {
	var img TestImage
	var err error
	if img.Busybox, err = StaticBusybox(); err != nil {
		return img, err
	}
	if img.Kernel, err = TestKernel(cacheDir); err != nil {
		return img, err
	}
	if img.Modules, err = TestModules(img.Kernel); err != nil {
		return img, err
	}
	img.Initrd = filepath.Join(dir, "initrd.gz")
	return img, WriteInitrd(img.Initrd, img.Busybox, agent, img.Modules, AgentRun)
}

// cpioWriter writes the "newc" cpio format the kernel unpacks.
type cpioWriter struct {
	b   bytes.Buffer
	ino int
}

func (w *cpioWriter) add(name string, mode int, data []byte, rmaj, rmin int) {
	w.ino++
	nlink := 1
	if mode&0o40000 != 0 {
		nlink = 2
	}
	fmt.Fprintf(&w.b, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		w.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rmaj, rmin, len(name)+1, 0)
	w.b.WriteString(name)
	w.b.WriteByte(0)
	w.pad()
	w.b.Write(data)
	w.pad()
}

func (w *cpioWriter) pad() {
	for w.b.Len()%4 != 0 {
		w.b.WriteByte(0)
	}
}
