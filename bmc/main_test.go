package bmc

import (
	"testing"

	"go.uber.org/goleak"
)

// Every call's goroutines end: a timed-out call's too, once the BMC answers.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
