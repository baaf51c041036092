package netbox

import "github.com/prometheus/client_golang/prometheus"

// Metrics of the NetBox sync.
type Metrics struct {
	lag      prometheus.Gauge
	lastSeq  prometheus.Gauge
	applied  prometheus.Counter
	errors   prometheus.Counter
	skipped  prometheus.Counter
	imported prometheus.Counter
	requests *prometheus.CounterVec
}

// NewMetrics registers the sync's metrics on reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		lag: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "mdc_inventory_lag_events", Help: "Lifecycle events not yet applied to NetBox.",
		}),
		lastSeq: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "mdc_inventory_last_applied_seq", Help: "Stream sequence of the newest event applied to NetBox.",
		}),
		applied: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mdc_inventory_applied_events_total", Help: "Lifecycle events applied to NetBox.",
		}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mdc_inventory_errors_total", Help: "Failed attempts to apply an event to NetBox (each is retried).",
		}),
		skipped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mdc_inventory_skipped_events_total", Help: "Events skipped after NetBox refused them repeatedly.",
		}),
		imported: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mdc_inventory_imported_machines_total", Help: "Machines enrolled from devices recorded in NetBox first.",
		}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mdc_inventory_netbox_requests_total", Help: "Requests to NetBox by method and status code (error: no answer).",
		}, []string{"method", "code"}),
	}
	if reg != nil {
		reg.MustRegister(m.lag, m.lastSeq, m.applied, m.errors, m.skipped, m.imported, m.requests)
	}
	return m
}
