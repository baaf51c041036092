package bmc

import (
	"fmt"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/microdc/mdc/hack/vrack/redfish"
)

// BenchmarkRedfishOps measures the BMC operations per second one Pool
// sustains against a rack of 50 Redfish BMCs (the virtual rack's service,
// one Memory system each, on loopback), with concurrent callers reading
// power status, with the default rate limit and without, logging in per
// operation (the default) and keeping sessions.
func BenchmarkRedfishOps(b *testing.B) {
	const machines = 50
	eps := make([]Endpoint, machines)
	for i := range machines {
		svc, err := redfish.New(redfish.Config{User: testCred.User, Password: testCred.Password,
			Systems: map[string]redfish.System{"1": redfish.NewMemory(testInfo(i))}})
		if err != nil {
			b.Fatal(err)
		}
		srv := httptest.NewServer(svc)
		b.Cleanup(srv.Close)
		eps[i] = endpointOf(b, srv.URL)
	}
	for _, tc := range []struct {
		name     string
		interval time.Duration
		idle     time.Duration
	}{
		{"ratelimit=200ms", DefaultMinInterval, 0},
		{"ratelimit=off", 0, 0},
		// Options.SessionIdle: one login per BMC instead of one per operation.
		{"ratelimit=200ms/keep-session", DefaultMinInterval, time.Minute},
		{"ratelimit=off/keep-session", 0, time.Minute},
	} {
		b.Run(tc.name, func(b *testing.B) {
			pool := NewPool(Options{Timeout: 10 * time.Second, MinInterval: tc.interval, SessionIdle: tc.idle})
			ctrls := make([]*Controller, machines)
			for i, ep := range eps {
				ctrls[i] = pool.Controller(fmt.Sprintf("m%02d", i), ep, testCred)
			}
			var next atomic.Int64
			b.SetParallelism(machines) // GOMAXPROCS × 50 callers
			b.ResetTimer()
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					c := ctrls[next.Add(1)%machines]
					if st, err := c.PowerStatus(b.Context()); err != nil || st != PowerOff {
						b.Errorf("PowerStatus = %q, %v", st, err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "ops/s")
			b.StopTimer()
			pool.Close(b.Context())
		})
	}
}
