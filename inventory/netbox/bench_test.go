package netbox

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/microdc/mdc/machine"
)

// BenchmarkSync1000: 1,000 machines are discovered at once; how long until
// NetBox (the stand-in on loopback) has all of them, and how many NetBox
// requests each machine cost. Bounded: one round per b.N, 2 minutes at most.
func BenchmarkSync1000(b *testing.B) {
	const n = 1000
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		e := startEnv(b, Config{})
		e.level(b, 30*time.Second)
		base := e.nb.Requests()
		ids := make(chan machine.ID, n)
		for j := 0; j < n; j++ {
			ids <- machine.MustParseID(fmt.Sprintf("02:00:00:%02x:%02x:%02x", i, j>>8, j&0xff))
		}
		close(ids)
		b.StartTimer()
		start := time.Now()
		var wg sync.WaitGroup
		for w := 0; w < 16; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for id := range ids {
					e.append(b, id, machine.Discovered, machine.DiscoveredData{Via: "dhcp"})
				}
			}()
		}
		wg.Wait()
		appended := time.Since(start)
		e.level(b, 2*time.Minute)
		took := time.Since(start)
		b.StopTimer()
		if got := len(e.nb.Objects("dcim/devices")); got != n {
			b.Fatalf("%d devices, want %d", got, n)
		}
		b.ReportMetric(took.Seconds(), "s-to-level")
		b.ReportMetric(appended.Seconds(), "s-to-append")
		b.ReportMetric(float64(e.nb.Requests()-base)/n, "requests/machine")
		e.stop()
	}
}
