package events

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/microdc/mdc/machine"
)

// Metrics of the event log and the machine table. A nil *Metrics records
// nothing, so tests and tools need not build one.
type Metrics struct {
	appendedByType *prometheus.CounterVec
	appendLatency  prometheus.Histogram
	conflicts      prometheus.Counter
	dropped        prometheus.Counter
	rejected       prometheus.Counter
	lag            prometheus.Gauge
	applied        prometheus.Gauge
	byState        *prometheus.GaugeVec
}

// NewMetrics registers the event log's metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		appendedByType: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mdc_events_appended_total", Help: "Events appended, by type.",
		}, []string{"type"}),
		appendLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "mdc_event_append_seconds",
			Help:    "Time to append one lifecycle event (JetStream round trip with the per-machine check).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
		conflicts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mdc_event_append_conflicts_total", Help: "Appends refused because another writer moved the machine first.",
		}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mdc_telemetry_dropped_total", Help: "Telemetry events that could not be queued for JetStream.",
		}),
		rejected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mdc_projection_rejected_total", Help: "Stored events the machine table could not apply (illegal or malformed).",
		}),
		lag: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "mdc_projection_lag_events", Help: "Lifecycle events stored but not yet applied to the machine table.",
		}),
		applied: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "mdc_projection_applied_sequence", Help: "Stream sequence the machine table has applied.",
		}),
		byState: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mdc_machines", Help: "Machines by lifecycle state.",
		}, []string{"state"}),
	}
	reg.MustRegister(m.appendedByType, m.appendLatency, m.conflicts, m.dropped, m.rejected, m.lag, m.applied, m.byState)
	for _, t := range append(machine.LifecycleEvents(), machine.TelemetryEvents()...) {
		m.appendedByType.WithLabelValues(string(t))
	}
	for _, s := range machine.States() {
		m.byState.WithLabelValues(string(s))
	}
	return m
}

func (m *Metrics) appended(t machine.EventType, d time.Duration) {
	if m == nil {
		return
	}
	m.appendedByType.WithLabelValues(string(t)).Inc()
	if d > 0 {
		m.appendLatency.Observe(d.Seconds())
	}
}

func (m *Metrics) conflict() {
	if m != nil {
		m.conflicts.Inc()
	}
}

func (m *Metrics) telemetryDropped() {
	if m != nil {
		m.dropped.Inc()
	}
}

func (m *Metrics) rejectedEvent() {
	if m != nil {
		m.rejected.Inc()
	}
}

func (m *Metrics) progress(seq, pending uint64) {
	if m != nil {
		m.applied.Set(float64(seq))
		m.lag.Set(float64(pending))
	}
}

func (m *Metrics) stateChange(from, to machine.State) {
	if m == nil || from == to {
		return
	}
	if from != machine.Absent {
		m.byState.WithLabelValues(string(from)).Dec()
	}
	m.byState.WithLabelValues(string(to)).Inc()
}
