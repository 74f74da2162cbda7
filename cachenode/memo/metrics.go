package memo

import (
	"fmt"

	"github.com/cachebus/cachebus/cachenode"
	"github.com/prometheus/client_golang/prometheus"
)

// metrics of one client, labelled by namespace.
type metrics struct {
	hits, misses, stale, staleOnError prometheus.Counter
	fnErrors                          prometheus.Counter
	superseded                        prometheus.Counter
	flushesSent                       *prometheus.CounterVec // by kind: key, prefix, tag, all
	flushesApplied                    *prometheus.CounterVec // by origin
	seedsSent                         prometheus.Counter
	seedsApplied                      *prometheus.CounterVec // by origin
	gapFlushes                        prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, ns string, store *cachenode.Store) (*metrics, error) {
	labels := prometheus.Labels{"ns": ns}
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help, ConstLabels: labels})
	}
	m := &metrics{
		hits:         counter("cachebus_memo_hits_total", "Do calls answered from memory."),
		misses:       counter("cachebus_memo_misses_total", "Do calls that had to call fn."),
		stale:        counter("cachebus_memo_stale_served_total", "Stale copies served while fallback is on."),
		staleOnError: counter("cachebus_memo_stale_on_error_total", "Stale copies served because fn failed."),
		fnErrors:     counter("cachebus_memo_fn_errors_total", "Calls of fn that returned an error."),
		superseded: counter("cachebus_memo_loads_superseded_total",
			"Values fn returned but not kept, because a flush of the key came while fn ran."),
		seedsSent:  counter("cachebus_memo_seeds_sent_total", "Seeds sent to the peers."),
		gapFlushes: counter("cachebus_memo_gap_flushes_total", "Whole-namespace flushes because events were lost from the log."),
		flushesSent: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cachebus_memo_flushes_sent_total",
			Help: "Flushes sent to the peers, by kind.", ConstLabels: labels}, []string{"kind"}),
		flushesApplied: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cachebus_memo_flushes_applied_total",
			Help: "Flushes applied from peers, by origin.", ConstLabels: labels}, []string{"origin"}),
		seedsApplied: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cachebus_memo_seeds_applied_total",
			Help: "Seeds applied from peers, by origin.", ConstLabels: labels}, []string{"origin"}),
	}
	if reg != nil {
		entries := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "cachebus_memo_entries",
			Help: "Entries held, flushed ones not yet swept included.", ConstLabels: labels},
			func() float64 { return float64(store.Stats(ns).Entries) })
		bytes := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "cachebus_memo_bytes",
			Help: "Bytes of memory held by the namespace's cache.", ConstLabels: labels},
			func() float64 { return float64(store.Stats(ns).Bytes) })
		for _, c := range []prometheus.Collector{m.hits, m.misses, m.stale, m.staleOnError, m.fnErrors, m.superseded,
			m.seedsSent, m.gapFlushes, m.flushesSent, m.flushesApplied, m.seedsApplied, entries, bytes} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("memo: metrics of namespace %s: %w", ns, err)
			}
		}
	}
	return m, nil
}
