package server

import (
	"fmt"

	"github.com/cachebus/cachebus/cachenode/wire"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are a node's Prometheus metrics.
type metrics struct {
	requests    *prometheus.CounterVec                                       // op, result
	served      [wire.OpMGet + 1][wire.StatusNotFound + 1]prometheus.Counter // requests served, by op and status OK or NotFound
	forwarded   *prometheus.CounterVec                                       // op
	messages    prometheus.Counter                                           // NATS messages carrying requests
	replication *prometheus.CounterVec                                       // result: ok, gone, failed
	replBatches prometheus.Counter
	rejected    *prometheus.CounterVec // kind: request, batch
	handover    *prometheus.CounterVec // result
	handedIn    prometheus.Counter
	handedOut   prometheus.Counter
	partitions  *prometheus.GaugeVec // state: owned, held, syncing
	ltRefused   prometheus.Counter
	isoRefused  prometheus.Counter
	isolated    prometheus.Gauge
}

// newMetrics makes the metrics and registers them with reg, when not nil,
// labelled with the node's id so several nodes can share one registry.
func newMetrics(reg prometheus.Registerer, node string) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cachebus_node_requests_total",
			Help: "Record requests served by this node, by operation and result."}, []string{"op", "result"}),
		messages: prometheus.NewCounter(prometheus.CounterOpts{Name: "cachebus_node_request_messages_total",
			Help: "NATS messages carrying record requests: a frame counts once, so requests_total over this is how many requests a message carries."}),
		forwarded: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cachebus_node_forwarded_total",
			Help: "Record requests forwarded to the node serving their partition."}, []string{"op"}),
		replication: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cachebus_node_replications_total",
			Help: "Writes sent to a backup, by result (ok; gone: the backup had no subscriber; failed)."}, []string{"result"}),
		replBatches: prometheus.NewCounter(prometheus.CounterOpts{Name: "cachebus_node_replication_batches_total",
			Help: "Replication messages sent: writes to one backup that arrived together travel in one."}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cachebus_node_rejected_total",
			Help: "Malformed messages refused, by kind."}, []string{"kind"}),
		handover: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cachebus_node_handovers_total",
			Help: "Partition copies this node made from a peer, by result."}, []string{"result"}),
		handedIn: prometheus.NewCounter(prometheus.CounterOpts{Name: "cachebus_node_handover_records_total",
			Help: "Records received while copying partitions from peers."}),
		handedOut: prometheus.NewCounter(prometheus.CounterOpts{Name: "cachebus_node_handover_sent_records_total",
			Help: "Records sent to peers taking partitions over, paced by CACHEBUS_MIGRATE_RATE."}),
		partitions: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "cachebus_node_partitions",
			Help: "Partitions of this node: owned by the assignment, held (data complete), syncing."}, []string{"state"}),
		ltRefused: prometheus.NewCounter(prometheus.CounterOpts{Name: "cachebus_node_longterm_refused_total",
			Help: "Long-term writes refused because the record log (JetStream) was unreachable or had no quorum; none of them was stored or acknowledged."}),
		isoRefused: prometheus.NewCounter(prometheus.CounterOpts{Name: "cachebus_node_isolated_refused_total",
			Help: "Writes refused while the node was cut off from the NATS majority; none of them was stored or acknowledged."}),
		isolated: prometheus.NewGauge(prometheus.GaugeOpts{Name: "cachebus_node_isolated",
			Help: "1 while the node is cut off from the NATS majority: it announces no partition and refuses writes."}),
	}
	for op := wire.OpGet; op <= wire.OpMGet; op++ {
		for st, name := range map[wire.Status]string{wire.StatusOK: "ok", wire.StatusNotFound: "not_found"} {
			m.served[op][st] = m.requests.WithLabelValues(op.String(), name)
		}
	}
	if reg == nil {
		return m, nil
	}
	reg = prometheus.WrapRegistererWith(prometheus.Labels{"node": node}, reg)
	for _, c := range []prometheus.Collector{m.requests, m.messages, m.forwarded, m.replication, m.replBatches, m.rejected, m.handover, m.handedIn, m.handedOut, m.partitions, m.ltRefused, m.isoRefused, m.isolated} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("server: metrics: %w", err)
		}
	}
	return m, nil
}
