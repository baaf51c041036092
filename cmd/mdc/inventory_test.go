package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/microdc/mdc/api"
	"github.com/microdc/mdc/inventory/netbox/netboxtest"
)

// TestInventoryNetBox runs mdc serve against the NetBox stand-in: a
// registered machine reaches NetBox, and mdc inventory status|resync work.
func TestInventoryNetBox(t *testing.T) {
	const tok = "0123456789abcdef0123456789abcdef01234567"
	nb, hs := netboxtest.Start(t, tok)
	data := t.TempDir()
	tokFile := filepath.Join(t.TempDir(), "netbox.token")
	if err := os.WriteFile(tokFile, []byte(tok+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A token file others can read is refused.
	_, err := parseServe([]string{"--netbox-url", hs.URL, "--netbox-token-file", tokFile}, &strings.Builder{}, func(string) string { return "" })
	if err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("0644 token file: %v", err)
	}
	if err := os.Chmod(tokFile, 0o600); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	url, stop := serveInProcess(t, data, "--netbox-url", hs.URL, "--netbox-token-file", tokFile, "--netbox-poll-interval", "0")
	if _, err := mdc(t, url, data, "machines", "register", "52:54:00:aa:00:01", "--name", "node-1"); err != nil {
		t.Fatal(err)
	}
	t.Logf("serving after %v", time.Since(start))
	deadline := time.Now().Add(20 * time.Second)
	for len(nb.Objects("dcim/devices")) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the machine never reached NetBox")
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("in NetBox after %v", time.Since(start))
	if got := nb.Objects("dcim/devices")[0]["name"]; got != "node-1" {
		t.Errorf("device name %v", got)
	}
	for {
		js, err := mdc(t, url, data, "inventory", "status", "-o", "json")
		if err != nil {
			t.Fatal(err)
		}
		var st api.InventoryStatus
		if err := json.Unmarshal([]byte(js), &st); err != nil {
			t.Fatal(err)
		}
		if st.Lag == 0 && st.LastAppliedSeq >= 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("NetBox not level: %+v", st)
		}
		time.Sleep(50 * time.Millisecond)
	}
	out, err := mdc(t, url, data, "inventory", "status")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"netbox", hs.URL, "0 events not yet in NetBox", "ok"} {
		if !strings.Contains(out, want) {
			t.Errorf("mdc inventory status lacks %q:\n%s", want, out)
		}
	}
	if out, err = mdc(t, url, data, "inventory", "resync"); err != nil || !strings.Contains(out, "resync started") {
		t.Errorf("mdc inventory resync: %v\n%s", err, out)
	}
	stop()
	t.Logf("took %v", time.Since(start))
}
