package dhcp

import (
	"fmt"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	packets       *prometheus.CounterVec // type, result
	malformed     *prometheus.CounterVec // reason
	offers        prometheus.Counter
	acks          prometheus.Counter
	naks          prometheus.Counter
	eventsDropped prometheus.Counter
	storeErrors   prometheus.Counter
	// byType caches packets' counters of the message types a server takes
	// (a label lookup per packet showed in profiles).
	byType [dhcpv4.MessageTypeInform + 1][2]prometheus.Counter
}

var results = [2]string{resReplied, resIgnored}

// packet is packets.WithLabelValues(typ, result); mt is typ's number, 0
// for none.
func (m *metrics) packet(typ string, mt dhcpv4.MessageType, result string) prometheus.Counter {
	if int(mt) < len(m.byType) && mt != 0 {
		for i, r := range results {
			if r == result {
				return m.byType[mt][i]
			}
		}
	}
	return m.packets.WithLabelValues(typ, result)
}

// Results of handling a packet (label "result").
const (
	resReplied   = "replied"
	resIgnored   = "ignored"
	resMalformed = "malformed"
	resError     = "error"
)

func newMetrics(reg prometheus.Registerer, cfg *Config, cache *leaseCache) (*metrics, error) {
	m := &metrics{
		packets: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mdc_dhcp_packets_total", Help: "DHCP requests received, by message type and what was done.",
		}, []string{"type", "result"}),
		malformed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mdc_dhcp_malformed_total", Help: "DHCP packets dropped as malformed, by reason.",
		}, []string{"reason"}),
		offers:        prometheus.NewCounter(prometheus.CounterOpts{Name: "mdc_dhcp_offers_total", Help: "DHCPOFFERs sent."}),
		acks:          prometheus.NewCounter(prometheus.CounterOpts{Name: "mdc_dhcp_acks_total", Help: "DHCPACKs sent."}),
		naks:          prometheus.NewCounter(prometheus.CounterOpts{Name: "mdc_dhcp_naks_total", Help: "DHCPNAKs sent."}),
		eventsDropped: prometheus.NewCounter(prometheus.CounterOpts{Name: "mdc_dhcp_events_dropped_total", Help: "Discovered and telemetry events dropped because the queue was full."}),
		storeErrors:   prometheus.NewCounter(prometheus.CounterOpts{Name: "mdc_dhcp_lease_store_errors_total", Help: "Lease store operations that failed (the request was dropped; the client retries)."}),
	}
	for mt := dhcpv4.MessageTypeDiscover; mt <= dhcpv4.MessageTypeInform; mt++ {
		for i, r := range results {
			m.byType[mt][i] = m.packets.WithLabelValues(mt.String(), r)
		}
	}
	cs := []prometheus.Collector{m.packets, m.malformed, m.offers, m.acks, m.naks, m.eventsDropped, m.storeErrors}
	for i := range cfg.Subnets {
		sn := &cfg.Subnets[i]
		labels := prometheus.Labels{"subnet": sn.Prefix.String()}
		cs = append(cs,
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "mdc_dhcp_pool_size", Help: "Addresses in the pool.", ConstLabels: labels},
				func() float64 { return float64(sn.size()) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "mdc_dhcp_pool_free", Help: "Pool addresses without an active lease.", ConstLabels: labels},
				func() float64 { return float64(int(sn.size()) - cache.used(sn, time.Now())) }))
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register DHCP metrics: %w (one registry per DHCP server)", err)
		}
	}
	// Known label values appear at zero from the start.
	for _, r := range []string{badTruncated, badOversized, badOp, badCookie, badOptions, badHardware, badHops, badMsgType, badOption, badRelayOption, badAddr} {
		m.malformed.WithLabelValues(r)
	}
	return m, nil
}
