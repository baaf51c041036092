package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/microdc/mdc/api"
	"github.com/microdc/mdc/machine"
)

// buildMDC builds the mdc binary once per test run.
var buildOnce = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "mdc-bin-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "mdc")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
})

// mdcProcess is `mdc serve` running as a separate process.
type mdcProcess struct {
	cmd    *exec.Cmd
	url    string
	stderr *bytes.Buffer
}

func startServe(t *testing.T, dataDir string, extra ...string) *mdcProcess {
	t.Helper()
	bin, err := buildOnce()
	if err != nil {
		t.Fatal(err)
	}
	args := append([]string{"serve", "--data-dir", dataDir, "--http-addr", "127.0.0.1:0", "--log-level", "warn"}, extra...)
	cmd := exec.Command(bin, args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &mdcProcess{cmd: cmd, stderr: &bytes.Buffer{}}
	cmd.Stderr = p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	// Runs first: on failure, a goroutine dump of the live server explains a hang.
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		if cmd.ProcessState == nil {
			_ = cmd.Process.Signal(syscall.SIGQUIT)
			done := make(chan struct{})
			go func() { _ = cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
			}
		}
		out := p.stderr.String()
		if len(out) > 200_000 {
			out = out[len(out)-200_000:]
		}
		t.Logf("mdc serve stderr:\n%s", out)
	})
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if u, ok := strings.CutPrefix(sc.Text(), "mdc ready on "); ok {
				ready <- u
			}
		}
	}()
	select {
	case p.url = <-ready:
	case <-time.After(60 * time.Second):
		t.Fatalf("mdc serve did not become ready; stderr:\n%s", p.stderr)
	}
	return p
}

// TestDurabilityUnderSIGKILL appends a burst of 10,000 events over 1,000
// machines through the API, SIGKILLs mdc in the middle, restarts it on the
// same data directory, and checks that every acknowledged event is there
// exactly once and that the machine table equals a fresh fold of the log.
// Requests in flight at the kill are retried with the same Idempotency-Key
// after the restart: each must land exactly once too.
func TestDurabilityUnderSIGKILL(t *testing.T) {
	const (
		machines = 1000
		perMach  = 10 // register + 9 changes
		workers  = 32
		killAt   = 4000 // acknowledged events before the kill
	)
	dataDir := t.TempDir()
	p := startServe(t, dataDir)
	token := readToken(t, dataDir)

	type step struct {
		id     machine.ID
		method string
		path   string
		body   string
		key    string
	}
	stepFor := func(m, k int) step {
		id := machine.ID(fmt.Sprintf("5254%08x", m))
		s := step{id: id, key: fmt.Sprintf("burst-%d-%d", m, k)}
		switch {
		case k == 0:
			s.method, s.path, s.body = "POST", "/api/v1/machines", fmt.Sprintf(`{"mac":%q}`, id.MAC())
		case k%2 == 1:
			s.method, s.path, s.body = "PATCH", "/api/v1/machines/"+string(id), fmt.Sprintf(`{"name":"m%d-%d"}`, m, k)
		default:
			s.method, s.path, s.body = "POST", "/api/v1/machines/"+string(id)+"/assign", fmt.Sprintf(`{"role":"r%d"}`, k)
		}
		return s
	}
	send := func(base string, s step) (api.WriteResult, error) {
		req, _ := http.NewRequest(s.method, base+s.path, strings.NewReader(s.body))
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Idempotency-Key", s.key)
		resp, err := testClient.Do(req)
		if err != nil {
			return api.WriteResult{}, err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode/100 != 2 {
			return api.WriteResult{}, fmt.Errorf("%s %s: %d %s", s.method, s.path, resp.StatusCode, b)
		}
		var r api.WriteResult
		return r, json.Unmarshal(b, &r)
	}

	var mu sync.Mutex
	acked := map[string]uint64{}  // event id (= key) -> seq
	next := make([]int, machines) // next step of each machine
	var ackCount atomic.Int64
	var killed atomic.Bool
	var wg sync.WaitGroup
	run := func(base string, stopAfterKill bool) {
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for m := w; m < machines; m += workers {
					for next[m] < perMach {
						s := stepFor(m, next[m])
						r, err := send(base, s)
						if err != nil {
							if stopAfterKill && killed.Load() {
								return // in flight at the kill: retried after restart
							}
							t.Errorf("%s: %v", s.key, err)
							return
						}
						if r.Event.ID != s.key {
							t.Errorf("%s: stored as event %q", s.key, r.Event.ID)
						}
						mu.Lock()
						acked[s.key] = r.Event.Seq
						mu.Unlock()
						next[m]++
						if ackCount.Add(1) == killAt && stopAfterKill {
							killed.Store(true)
							_ = p.cmd.Process.Signal(syscall.SIGKILL)
						}
					}
				}
			}()
		}
		wg.Wait()
	}
	run(p.url, true)
	if t.Failed() {
		return
	}
	_ = p.cmd.Wait()
	if ws, ok := p.cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("mdc was not killed by SIGKILL: %v", p.cmd.ProcessState)
	}
	t.Logf("killed after %d acknowledged events", ackCount.Load())

	p2 := startServe(t, dataDir)
	check := func(phase string) {
		list := getJSON[api.MachineList](t, p2.url+"/api/v1/machines", token)
		seen := map[string]int{}
		for _, m := range list.Machines {
			evs := getJSON[api.EventList](t, p2.url+"/api/v1/machines/"+string(m.ID)+"/events", token)
			folded, err := machine.Fold(evs.Events)
			if err != nil {
				t.Fatalf("%s: fold %s: %v", phase, m.ID, err)
			}
			if diff := cmp.Diff(folded, m); diff != "" {
				t.Fatalf("%s: table differs from a fresh fold of %s (-fold +table):\n%s", phase, m.ID, diff)
			}
			for _, e := range evs.Events {
				seen[e.ID]++
			}
		}
		mu.Lock()
		defer mu.Unlock()
		for key, seq := range acked {
			if seen[key] != 1 {
				t.Fatalf("%s: acknowledged event %s (seq %d) stored %d times", phase, key, seq, seen[key])
			}
		}
		for key, n := range seen {
			if n != 1 {
				t.Fatalf("%s: event %s stored %d times", phase, key, n)
			}
		}
		t.Logf("%s: %d machines, %d events stored, %d acknowledged", phase, len(list.Machines), len(seen), len(acked))
	}
	check("after restart")
	// Finish the burst, retrying what was in flight at the kill.
	run(p2.url, false)
	check("after the burst")
	mu.Lock()
	defer mu.Unlock()
	if len(acked) != machines*perMach {
		t.Fatalf("%d events acknowledged, want %d", len(acked), machines*perMach)
	}
}

func readToken(t *testing.T, dataDir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dataDir, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func getJSON[T any](t *testing.T, url, token string) T {
	t.Helper()
	var v T
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := testClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s: %d %s", url, resp.StatusCode, b)
	}
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

// testClient bounds every request, so that a hung server fails the test with a
// goroutine dump instead of running into the suite's timeout.
var testClient = &http.Client{Timeout: 30 * time.Second}
