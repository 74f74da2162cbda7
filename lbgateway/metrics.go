package lbgateway

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are a gateway's Prometheus metrics.
type metrics struct {
	requests      *prometheus.CounterVec // backend, class: 2xx… or error
	retries       prometheus.Counter
	redispatched  prometheus.Counter
	noBackend     prometheus.Counter
	badCookies    prometheus.Counter
	cache         *prometheus.CounterVec // result: hit, stale, miss
	expires       *prometheus.CounterVec // result: ok, failed, rejected
	healthChanges *prometheus.CounterVec // backend, to
	ejections     *prometheus.CounterVec // backend
	fallback      prometheus.Counter     // requests answered in fallback
	duration      prometheus.Histogram
}

// newMetrics makes the metrics and registers them with reg, when not nil,
// labelled with the gateway's id so several can share one registry.
func newMetrics(reg prometheus.Registerer, id string) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cachebus_gateway_requests_total",
			Help: "Requests forwarded to backends, by backend and status class (error: no response)."}, []string{"backend", "class"}),
		retries: prometheus.NewCounter(prometheus.CounterOpts{Name: "cachebus_gateway_retries_total",
			Help: "Requests sent again to another backend after a connect failure or no response."}),
		redispatched: prometheus.NewCounter(prometheus.CounterOpts{Name: "cachebus_gateway_redispatched_total",
			Help: "Sticky requests whose backend could not serve them, sent to another one."}),
		noBackend: prometheus.NewCounter(prometheus.CounterOpts{Name: "cachebus_gateway_no_backend_total",
			Help: "Requests answered 503 because no backend could take them."}),
		badCookies: prometheus.NewCounter(prometheus.CounterOpts{Name: "cachebus_gateway_bad_cookies_total",
			Help: "Sticky cookies ignored: malformed, tampered, signed with an unknown key or expired."}),
		cache: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cachebus_gateway_cache_total",
			Help: "Cacheable requests by how they were answered: hit, stale, miss."}, []string{"result"}),
		expires: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cachebus_gateway_expires_total",
			Help: "Cachebus-Expire response headers by result: published, failed (not acknowledged), rejected (malformed)."}, []string{"result"}),
		healthChanges: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cachebus_gateway_health_changes_total",
			Help: "Backends going up or down by their active health checks."}, []string{"backend", "to"}),
		ejections: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cachebus_gateway_ejections_total",
			Help: "Backends ejected by passive health (failed requests in a row)."}, []string{"backend"}),
		fallback: prometheus.NewCounter(prometheus.CounterOpts{Name: "cachebus_gateway_fallback_requests_total",
			Help: "Requests answered while in fallback: a cached copy or 503, never the origin."}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "cachebus_gateway_request_duration_seconds",
			Help:    "Time from a request's arrival to the end of its answer.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}}),
	}
	if reg == nil {
		return m, nil
	}
	reg = prometheus.WrapRegistererWith(prometheus.Labels{"gateway": id}, reg)
	for _, c := range []prometheus.Collector{m.requests, m.retries, m.redispatched, m.noBackend, m.badCookies,
		m.cache, m.expires, m.healthChanges, m.ejections, m.fallback, m.duration} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("lbgateway: metrics: %w", err)
		}
	}
	return m, nil
}

// statusClass is the class label of a status code.
func statusClass(code int) string {
	switch {
	case code >= 500:
		return "5xx"
	case code >= 400:
		return "4xx"
	case code >= 300:
		return "3xx"
	case code >= 200:
		return "2xx"
	}
	return "1xx"
}
