// Package natstest gives tests a real nats-server binary, built from the
// nats-server/v2 module in go.mod, so no package is needed to run one.
package natstest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

var (
	buildOnce sync.Once
	natsBin   string
	buildErr  error
)

// ServerBinary builds nats-server once per test run into a cache directory
// beside Go's build cache, and returns its path. A test skips, saying why,
// only if the build fails.
func ServerBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		out, err := exec.Command("go", "env", "GOCACHE").Output()
		if err != nil {
			buildErr = fmt.Errorf("go env GOCACHE: %w", err)
			return
		}
		dir := filepath.Join(filepath.Dir(strings.TrimSpace(string(out))), "mdc-tools")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			buildErr = err
			return
		}
		bin := filepath.Join(dir, "nats-server-v2.15.2")
		cmd := exec.Command("go", "build", "-o", bin, "github.com/nats-io/nats-server/v2")
		if b, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build nats-server: %v\n%s", err, b)
			return
		}
		natsBin = bin
	})
	if buildErr != nil {
		t.Skipf("cannot build the nats-server binary: %v", buildErr)
	}
	return natsBin
}
