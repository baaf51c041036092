package blob

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the blob store's and handler's Prometheus metrics. A nil
// *Metrics counts nothing.
type Metrics struct {
	corrupt     *prometheus.CounterVec
	verified    *prometheus.CounterVec
	putBytes    prometheus.Counter
	puts        *prometheus.CounterVec
	requests    *prometheus.CounterVec
	servedBytes prometheus.Counter
}

// NewMetrics registers the blob metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		corrupt: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mdc_blob_corrupt_total",
			Help: "Stored blobs that failed verification and were quarantined.",
		}, []string{"backend"}),
		verified: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mdc_blob_verified_bytes_total",
			Help: "Bytes of stored blobs re-hashed on read-back or scrub.",
		}, []string{"backend"}),
		putBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mdc_blob_put_bytes_total",
			Help: "Bytes read by blob imports.",
		}),
		puts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mdc_blob_puts_total",
			Help: "Blob imports by result (stored, existed, mismatch, error).",
		}, []string{"result"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mdc_blob_http_requests_total",
			Help: "HTTP requests for blobs by status code.",
		}, []string{"code"}),
		servedBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mdc_blob_served_bytes_total",
			Help: "Blob body bytes sent over HTTP.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.corrupt, m.verified, m.putBytes, m.puts, m.requests, m.servedBytes)
	}
	return m
}

func (m *Metrics) corrupted(backend string) {
	if m != nil {
		m.corrupt.WithLabelValues(backend).Inc()
	}
}

func (m *Metrics) verifiedBytes(backend string, n int64) {
	if m != nil {
		m.verified.WithLabelValues(backend).Add(float64(n))
	}
}

func (m *Metrics) put(result string, n int64) {
	if m != nil {
		m.puts.WithLabelValues(result).Inc()
		m.putBytes.Add(float64(n))
	}
}

func (m *Metrics) served(code string, n int64) {
	if m != nil {
		m.requests.WithLabelValues(code).Inc()
		m.servedBytes.Add(float64(n))
	}
}
