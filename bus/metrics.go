package bus

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the bus's Prometheus metrics. One Metrics is shared by every
// connection, publisher and subscriber of a process.
type Metrics struct {
	// Applied counts events handed to a handler, by kind and by the path
	// that delivered them first (core or log).
	Applied *prometheus.CounterVec
	// Duplicates counts second copies of an event, dropped, by path.
	Duplicates *prometheus.CounterVec
	// Rejected counts malformed messages, by kind and the rejected field.
	Rejected *prometheus.CounterVec
	// Gaps counts resumes whose next sequence was no longer in the log.
	Gaps prometheus.Counter
	// Flushes counts flushes asked of handlers because of a gap.
	Flushes prometheus.Counter
	// Published counts acknowledged publishes, by kind.
	Published *prometheus.CounterVec
	// PublishRetries counts publish attempts that were not acknowledged.
	PublishRetries prometheus.Counter
	// Members is the number of known members, by role and state.
	Members *prometheus.GaugeVec
}

// NewMetrics creates the bus metrics and registers them with reg, when reg
// is not nil.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Applied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cachebus_bus_events_applied_total",
			Help: "Events applied by subscribers, by kind and by the path that delivered them first.",
		}, []string{"kind", "via"}),
		Duplicates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cachebus_bus_events_duplicate_total",
			Help: "Second copies of events dropped by subscribers, by path.",
		}, []string{"via"}),
		Rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cachebus_bus_messages_rejected_total",
			Help: "Malformed messages rejected, by kind and the field at fault.",
		}, []string{"kind", "reason"}),
		Gaps: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cachebus_bus_log_gaps_total",
			Help: "Times a subscriber found its next event already removed from the event log.",
		}),
		Flushes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cachebus_bus_gap_flushes_total",
			Help: "Flushes asked of handlers because events were lost from the log.",
		}),
		Published: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cachebus_bus_published_total",
			Help: "Events published and acknowledged by the event log, by kind.",
		}, []string{"kind"}),
		PublishRetries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cachebus_bus_publish_retries_total",
			Help: "Publish attempts not acknowledged and retried.",
		}),
		Members: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "cachebus_bus_members",
			Help: "Members known from heartbeats, by role and state.",
		}, []string{"role", "state"}),
	}
	if reg != nil {
		reg.MustRegister(m.Applied, m.Duplicates, m.Rejected, m.Gaps, m.Flushes,
			m.Published, m.PublishRetries, m.Members)
	}
	return m
}
