package netbox

import (
	"testing"

	"go.uber.org/goleak"
)

// Every goroutine of the sync ends with its context: consumer, workers,
// lag reader, lease watcher, intent poller.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
