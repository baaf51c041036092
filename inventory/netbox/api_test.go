package netbox

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/microdc/mdc/api"
	"github.com/microdc/mdc/machine"
)

// apiInventory is the adapter cmd/mdc uses, in small.
type apiInventory struct{ s *Syncer }

func (a apiInventory) Resync(ctx context.Context) error { return a.s.Resync(ctx) }
func (a apiInventory) Status(ctx context.Context) api.InventoryStatus {
	st := a.s.Status(ctx)
	return api.InventoryStatus{Backend: st.Backend, Target: st.Target, Lag: st.Lag, LastAppliedSeq: st.LastAppliedSeq,
		Applied: st.Applied, Failing: st.Failing, LastError: st.LastError, LastErrorAt: st.LastErrorAt, Resyncs: st.Resyncs}
}

// TestInventoryAPI: the status and resync routes, as mdc inventory uses them.
func TestInventoryAPI(t *testing.T) {
	e := startEnv(t, Config{})
	e.append(t, machine.MustParseID("52:54:00:00:00:01"), machine.Discovered, machine.DiscoveredData{Via: "dhcp"})
	e.level(t, 10*time.Second)
	srv := api.New(api.Config{Machines: e.store, Token: "admin", Inventory: apiInventory{e.sync}})
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()
	do := func(method, path, tok string) (int, api.InventoryStatus) {
		req, _ := http.NewRequest(method, hs.URL+path, nil)
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var st api.InventoryStatus
		_ = json.Unmarshal(b, &st)
		if strings.Contains(string(b), testToken) {
			t.Errorf("the NetBox token is in an answer: %s", b)
		}
		return resp.StatusCode, st
	}
	code, st := do("GET", "/api/v1/inventory/status", "")
	if code != 200 || st.Backend != "netbox" || st.Lag != 0 || st.LastAppliedSeq != 1 || st.Target != e.url {
		t.Errorf("status: %d %+v", code, st)
	}
	if code, _ := do("POST", "/api/v1/inventory/resync", ""); code != http.StatusUnauthorized {
		t.Errorf("resync without the admin token: HTTP %d", code)
	}
	code, st = do("POST", "/api/v1/inventory/resync", "admin")
	if code != http.StatusAccepted || st.Resyncs != 1 {
		t.Errorf("resync: %d %+v", code, st)
	}
	e.level(t, 10*time.Second)
	if n := len(e.nb.Objects("dcim/devices")); n != 1 {
		t.Errorf("%d devices after resync", n)
	}
}
