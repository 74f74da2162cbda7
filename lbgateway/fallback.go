package lbgateway

import (
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// In fallback the gateway never waits on the origin: a cacheable request
// gets its cached copy however stale, any other gets an immediate 503.
// Fallback is on when the cluster state says so for the cache's namespace
// (or "*"), or, with AutoFallback, while no backend of the pool is up;
// health checks go on, and the automatic fallback ends with the first
// backend back.

// inFallback says why requests at now are answered in fallback, or ""
// when they are not.
func (g *Gateway) inFallback(now time.Time) string {
	if fbs := g.fallbacks.Load(); fbs != nil {
		for _, f := range *fbs {
			if f.Active(now) {
				return "the site is in fallback mode: only cached pages are served"
			}
		}
	}
	if g.autoFallback(now) {
		return "no app server is up"
	}
	return ""
}

// autoFallback says whether the pool has no backend up, with a cache to
// answer from.
func (g *Gateway) autoFallback(now time.Time) bool {
	return g.cfg.AutoFallback && g.cache != nil && !g.pool.anyLive(now)
}

// unavailable answers 503 with a short page and Retry-After.
func (g *Gateway) unavailable(w http.ResponseWriter, why string) {
	h := w.Header()
	h.Set("Retry-After", strconv.Itoa(int(max(g.cfg.RetryAfter.Seconds(), 1))))
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusServiceUnavailable)
	fmt.Fprintf(w, unavailablePage, why)
}

const unavailablePage = `<!doctype html>
<html><head><meta charset="utf-8"><title>Temporarily unavailable</title></head>
<body style="font-family:sans-serif;max-width:36em;margin:4em auto">
<h1>Temporarily unavailable</h1>
<p>This page cannot be served right now (%s). Please try again in a moment.</p>
</body></html>
`
