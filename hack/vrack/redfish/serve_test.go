package redfish

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"

	"go.uber.org/goleak"
)

// TestServeConcurrent serves on a loopback listener and has clients reset
// and re-point the boot override of several systems at once; Serve must
// return nil when cancelled and leave no goroutines behind.
func TestServeConcurrent(t *testing.T) {
	defer goleak.VerifyNone(t)
	systems := map[string]System{}
	mems := map[string]*Memory{}
	for i := range 5 {
		id := fmt.Sprint(i + 1)
		info := testInfo
		info.MACs = []string{fmt.Sprintf("52:54:00:00:00:%02x", i)}
		mems[id] = NewMemory(info)
		systems[id] = mems[id]
	}
	svc, err := New(Config{User: testUser, Password: testPass, Systems: systems})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- svc.Serve(ctx, ln) }()

	tr := &http.Transport{}
	cl := &http.Client{Transport: tr}
	base := "http://" + ln.Addr().String()
	send := func(method, path, body string) (int, error) {
		req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
		req.SetBasicAuth(testUser, testPass)
		resp, err := cl.Do(req)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.StatusCode, nil
	}
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for id := range systems {
		for w := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 10 {
					var code int
					var err error
					if (w+i)%2 == 0 {
						code, err = send("POST", "/redfish/v1/Systems/"+id+"/Actions/ComputerSystem.Reset", `{"ResetType":"PowerCycle"}`)
					} else {
						code, err = send("PATCH", "/redfish/v1/Systems/"+id, `{"Boot":{"BootSourceOverrideTarget":"Pxe","BootSourceOverrideEnabled":"Once"}}`)
					}
					if err == nil && code/100 != 2 {
						err = fmt.Errorf("system %s: status %d", id, code)
					}
					if err != nil {
						errs <- err
						return
					}
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for id, m := range mems {
		if got := len(m.Resets()); got != 20 {
			t.Errorf("system %s saw %d resets, want 20", id, got)
		}
	}
	tr.CloseIdleConnections()
	cancel()
	if err := <-served; err != nil {
		t.Errorf("Serve after cancel: %v", err)
	}
}
