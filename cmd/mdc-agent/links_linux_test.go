package main

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// bringUp raises a down link (and only down ones) in a network namespace
// the test makes, so that its carrier can be read.
func TestBringUp(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a network namespace")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs ip (iproute2)")
	}
	ns := fmt.Sprintf("mdc-agent-links-%d", os.Getpid())
	ip := func(args ...string) string {
		out, err := exec.Command("ip", args...).CombinedOutput()
		if err != nil {
			t.Fatalf("ip %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	ip("netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	ip("-n", ns, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
	ip("-n", ns, "link", "set", "v1", "up")

	var up []string
	done := make(chan error, 1)
	go func() {
		// This thread enters the namespace and dies with it: never reused.
		runtime.LockOSThread()
		f, err := os.Open("/run/netns/" + ns)
		if err == nil {
			err = unix.Setns(int(f.Fd()), unix.CLONE_NEWNET)
			f.Close()
		}
		if err == nil {
			up = bringUp([]string{"v0", "v1", "nosuch0"})
		}
		done <- err
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if strings.Join(up, ",") != "v0" {
		t.Errorf("brought up %v, want only v0 (v1 was up, nosuch0 does not exist)", up)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		out := ip("-n", ns, "-br", "link", "show", "v0")
		if strings.Contains(out, "LOWER_UP") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("v0 has no carrier after bringUp: %s", out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
