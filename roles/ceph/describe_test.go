package ceph

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/microdc/mdc/roles"
)

// Describe reads the cluster's fsid and monitors and lists mdc's machines
// with their OSDs' states; it never shows a key.
func TestDescribe(t *testing.T) {
	r, f, _ := fakeRole(t)
	ctx := context.Background()
	st, err := r.Describe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Summary != "Ceph cluster 82130bfe…: 0 of 0 OSDs up and in; mdc machines hold 0 OSDs on 0 hosts" || len(st.Members) != 0 {
		t.Errorf("empty cluster: %+v", st)
	}
	if st.Settings["fsid"] != f.fsid || st.Settings["mon_host"] != "[v2:127.0.0.1:3300/0,v1:127.0.0.1:6789/0]" || st.Settings["user"] != "client.admin" {
		t.Errorf("settings %v", st.Settings)
	}

	m := fakeMachine()
	rc, _ := configureFake(t, r, m)
	f.boot(0, "n1")
	f.mu.Lock()
	f.kv["other/key"] = "not mdc's"
	f.mu.Unlock()
	st, err = r.Describe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []roles.Member{{Machine: m.ID, Detail: "host n1: osd.0 sda (up, in), osd.1 sdb (never booted)"}}
	if diff := cmp.Diff(want, st.Members); diff != "" {
		t.Errorf("members (-want +got):\n%s", diff)
	}
	if st.Summary != "Ceph cluster 82130bfe…: 1 of 2 OSDs up and in; mdc machines hold 2 OSDs on 1 hosts" {
		t.Errorf("summary %q", st.Summary)
	}
	js, _ := json.Marshal(st)
	for _, path := range []string{"/etc/ceph/ceph.osd.0.keyring", "/etc/ceph/ceph.osd.1.keyring"} {
		if k := keyIn(t, rc, path); strings.Contains(string(js), k) {
			t.Errorf("Describe shows the key of %s: %s", path, js)
		}
	}
	for _, c := range f.cmds {
		if c == "auth get" {
			t.Errorf("Describe read a key (auth get): %v", f.cmds)
		}
	}

	// A cluster that does not answer: an error, and at once when ctx ends.
	f.failNext["osd dump"] = 110
	if _, err := r.Describe(ctx); err == nil || !strings.Contains(err.Error(), "osd dump") {
		t.Errorf("mon error: %v", err)
	}
	f.mu.Lock()
	cctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = r.Describe(cctx)
	f.mu.Unlock() // the stuck mon answers only now
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 2*time.Second {
		t.Errorf("stuck mon: %v after %v, want the context's error at once", err, time.Since(start))
	}
}
