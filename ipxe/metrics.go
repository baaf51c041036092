package ipxe

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	scripts    *prometheus.CounterVec
	errors     *prometheus.CounterVec
	discovered prometheus.Counter
	files      *prometheus.CounterVec
}

// newMetrics registers on reg; nil registers nothing (the counters still count).
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		scripts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mdc_ipxe_scripts_total", Help: "Boot scripts served, by kind (commissioning, role, wait, failed, local, bootstrap).",
		}, []string{"script"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mdc_ipxe_errors_total", Help: "Boot script requests not answered as asked, by reason (bad_query, bad_host, event_log, template).",
		}, []string{"reason"}),
		discovered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mdc_ipxe_discovered_total", Help: "Machines first seen through a boot script request.",
		}),
		files: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mdc_ipxe_files_total", Help: "Requests for iPXE binaries over HTTP (/ipxe/), by result (served, not_found, refused).",
		}, []string{"result"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.scripts, m.errors, m.discovered, m.files} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}
