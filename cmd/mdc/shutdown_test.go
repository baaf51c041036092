package main

import (
	"bufio"
	"context"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/microdc/mdc/api"
)

// SIGTERM with a live event feed open: mdc ends the feed (well before the
// 60s drain timeout), drains, exits 0,
// and everything acknowledged before is there after a restart. The admin
// token appears nowhere in what mdc printed.
func TestSIGTERMDrainsAndKeepsEverything(t *testing.T) {
	dataDir := t.TempDir()
	p := startServe(t, dataDir, "--log-level", "debug", "--shutdown-timeout", "60s")
	token := readToken(t, dataDir)

	for _, mac := range []string{"52:54:00:aa:00:01", "52:54:00:aa:00:02"} {
		req, _ := http.NewRequest("POST", p.url+"/api/v1/machines", strings.NewReader(`{"mac":"`+mac+`"}`))
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/json")
		resp, err := testClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 201 && resp.StatusCode != 200 {
			t.Fatalf("register %s: %d", mac, resp.StatusCode)
		}
	}

	// A follower that would listen forever.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", p.url+"/api/v1/events?since=1", nil)
	resp, err := http.DefaultClient.Do(req) // no client timeout: the feed is long-lived
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	seen := 0
	for seen < 2 && sc.Scan() {
		if strings.HasPrefix(sc.Text(), "id: ") {
			seen++
		}
	}
	if seen != 2 {
		t.Fatalf("feed showed %d of 2 events", seen)
	}

	start := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	feedEnded := make(chan struct{})
	go func() {
		for sc.Scan() {
		}
		close(feedEnded)
	}()
	select {
	case <-feedEnded:
	case <-time.After(15 * time.Second):
		t.Fatal("the event feed was not closed on SIGTERM")
	}
	if err := p.cmd.Wait(); err != nil {
		t.Fatalf("mdc serve after SIGTERM: %v (want exit 0)", err)
	}
	t.Logf("stopped %s after SIGTERM", time.Since(start).Round(time.Millisecond))
	logs := p.stderr.String()
	if !strings.Contains(logs, "mdc stopped") {
		t.Errorf("no \"mdc stopped\" in the log:\n%s", logs)
	}
	if strings.Contains(logs, token) {
		t.Error("the admin token appears in mdc's log")
	}

	p2 := startServe(t, dataDir)
	list := getJSON[api.MachineList](t, p2.url+"/api/v1/machines", token)
	if list.Count != 2 {
		t.Fatalf("after restart: %d machines, want 2", list.Count)
	}
}
