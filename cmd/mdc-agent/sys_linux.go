package main

import (
	"errors"
	"os"
	"os/exec"
	"syscall"

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
