package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/microdc/mdc/api/agentapi"
)

// power reboots or powers off the node with reboot(2): the initrd of a
// commissioning image may have no init that would do it for us. The
// filesystems are synced first; the node keeps nothing on disk anyway.
func power(a agentapi.Action) error {
	cmd := syscall.LINUX_REBOOT_CMD_RESTART
	if a == agentapi.ActionPoweroff {
		cmd = syscall.LINUX_REBOOT_CMD_POWER_OFF
	}
	syscall.Sync()
	err := syscall.Reboot(cmd)
	if errors.Is(err, syscall.EPERM) {
		return errors.New("reboot(2) needs root (CAP_SYS_BOOT)")
	}
	return err
}

// killGroup makes a command's whole process group die with it: a join
// hook's children must not outlive its timeout.
func killGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
}

// sameDevice reports whether two files are the same character device
// (stderr already is the console).
func sameDevice(a, b *os.File) bool {
	var sa, sb syscall.Stat_t
	if syscall.Fstat(int(a.Fd()), &sa) != nil || syscall.Fstat(int(b.Fd()), &sb) != nil {
		return false
	}
	if sa.Mode&syscall.S_IFMT != syscall.S_IFCHR || sb.Mode&syscall.S_IFMT != syscall.S_IFCHR {
		return sa.Dev == sb.Dev && sa.Ino == sb.Ino
	}
	return sa.Rdev == sb.Rdev
}

// linksUp brings up the hardware NICs that are administratively down and
// waits up to wait for their carrier: a down link reads "no carrier" in
// sysfs whether or not a cable is in, and an operator needs to know which
// ports are cabled. It returns the links it brought up.
func linksUp(sys string, wait time.Duration) []string {
	var names []string
	for _, n := range nics(sys) {
		names = append(names, n.Name)
	}
	up := bringUp(names)
	// Autonegotiation takes a few seconds on real NICs.
	deadline := time.Now().Add(wait)
	for _, name := range up {
		for read(filepath.Join(sys, "class/net", name, "carrier")) != "1" && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
	}
	return up
}

// bringUp sets IFF_UP on the named links that are down, and returns them.
func bringUp(names []string) []string {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil
	}
	defer unix.Close(fd)
	var up []string
	for _, name := range names {
		ifr, err := unix.NewIfreq(name)
		if err != nil || unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr) != nil {
			continue
		}
		flags := ifr.Uint16()
		if flags&unix.IFF_UP != 0 {
			continue
		}
		ifr.SetUint16(flags | unix.IFF_UP)
		if unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr) == nil {
			up = append(up, name)
		}
	}
	return up
}
