package tftp

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Reasons a request was not served, the values of the errors metric's label.
const (
	reasonNotFound    = "not_found"    // no such file in the root
	reasonRefusedPath = "refused_path" // the name broke the path rules or left the root
	reasonNotRegular  = "not_regular"  // a directory, device, FIFO …
	reasonUnreadable  = "unreadable"   // the file exists but could not be opened or read
	reasonWrite       = "write_attempt"
	reasonTransfer    = "transfer_failed" // the client went away or sent an error mid-transfer
	reasonMalformed   = "malformed_packet"
)

var reasons = []string{reasonNotFound, reasonRefusedPath, reasonNotRegular, reasonUnreadable,
	reasonWrite, reasonTransfer, reasonMalformed}

// metrics of the TFTP server. A nil *metrics records nothing.
type metrics struct {
	served   prometheus.Counter
	bytes    prometheus.Counter
	errors   *prometheus.CounterVec
	inFlight prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	if reg == nil {
		return nil, nil
	}
	m := &metrics{
		served: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mdc_tftp_files_served_total", Help: "Files sent to the end over TFTP.",
		}),
		bytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mdc_tftp_bytes_sent_total", Help: "File bytes sent over TFTP (completed and partial transfers).",
		}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mdc_tftp_errors_total", Help: "TFTP requests not served, by reason.",
		}, []string{"reason"}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "mdc_tftp_transfers_in_flight", Help: "TFTP read transfers in progress.",
		}),
	}
	for _, c := range []prometheus.Collector{m.served, m.bytes, m.errors, m.inFlight} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register TFTP metrics: %w (is a second TFTP server using the same registry?)", err)
		}
	}
	for _, r := range reasons {
		m.errors.WithLabelValues(r)
	}
	return m, nil
}

func (m *metrics) fail(reason string) {
	if m != nil {
		m.errors.WithLabelValues(reason).Inc()
	}
}

func (m *metrics) sent(n int64, complete bool) {
	if m == nil {
		return
	}
	m.bytes.Add(float64(n))
	if complete {
		m.served.Inc()
	}
}

func (m *metrics) start() {
	if m != nil {
		m.inFlight.Inc()
	}
}

func (m *metrics) done() {
	if m != nil {
		m.inFlight.Dec()
	}
}
