package lbgateway

import (
	"encoding/json"
	"html/template"
	"net/http"
	"strconv"
	"time"
)

// cacheResult is how a cacheable request was answered.
type cacheResult int

const (
	cachehit cacheResult = iota
	cachestale
	cachemiss
	cacheResults
)

var cacheResultNames = [cacheResults]string{"hit", "stale", "miss"}

func (g *Gateway) countCache(r cacheResult) {
	g.cacheCounts[r].Add(1)
	g.metrics.cache.WithLabelValues(cacheResultNames[r]).Inc()
}

// Status is what the gateway shows at /_cachebus/ and in
// /_cachebus/status.json.
type Status struct {
	ID       string          `json:"id"`
	Started  time.Time       `json:"started"`
	Inflight int64           `json:"inflight"`
	Fallback FallbackStatus  `json:"fallback"`
	Cache    *CacheStatus    `json:"cache,omitempty"`
	Backends []BackendStatus `json:"backends"`
}

// FallbackStatus says whether the gateway answers in fallback, and why.
type FallbackStatus struct {
	On     bool   `json:"on"`
	Auto   bool   `json:"auto,omitempty"` // no backend is up
	Reason string `json:"reason,omitempty"`
}

// CacheStatus counts how cacheable requests were answered.
type CacheStatus struct {
	Hits     uint64     `json:"hits"`
	Stale    uint64     `json:"stale"`
	Misses   uint64     `json:"misses"`
	HitRatio float64    `json:"hit_ratio"` // hits and stale over all
	Store    CacheStats `json:"store"`
}

// BackendStatus is one backend as the gateway sees it.
type BackendStatus struct {
	ID     string `json:"id"`
	URL    string `json:"url"`
	Source string `json:"source"` // static or heartbeat
	// State is up, slow-start, draining, drained, ejected or down.
	State      string       `json:"state"`
	Sessions   int          `json:"sessions"`
	Inflight   int64        `json:"inflight"`
	Requests   uint64       `json:"requests"`
	Failures   uint64       `json:"failures"`
	Ejections  int32        `json:"ejections,omitempty"`
	EjectedFor string       `json:"ejected_for,omitempty"`
	Check      string       `json:"check,omitempty"` // last failed active check
	Drain      *DrainStatus `json:"drain,omitempty"`
}

// DrainStatus is a backend's drain.
type DrainStatus struct {
	Since     time.Time `json:"since"`
	Deadline  time.Time `json:"deadline,omitzero"`
	Source    string    `json:"source"` // command, heartbeat or health
	DrainedAt time.Time `json:"drained_at,omitzero"`
	Reason    string    `json:"reason,omitempty"` // why it counts as drained
}

// Status reports the gateway's state now.
func (g *Gateway) Status() Status {
	now := time.Now()
	st := Status{ID: g.cfg.ID, Started: g.started.UTC(), Inflight: g.inflight.Load()}
	if fbs := g.fallbacks.Load(); fbs != nil {
		for _, f := range *fbs {
			if f.Active(now) {
				st.Fallback = FallbackStatus{On: true, Reason: f.Reason}
			}
		}
	}
	if !st.Fallback.On && g.autoFallback(now) {
		st.Fallback = FallbackStatus{On: true, Auto: true, Reason: "no backend is up"}
	}
	if g.cache != nil {
		cs := &CacheStatus{Hits: g.cacheCounts[cachehit].Load(), Stale: g.cacheCounts[cachestale].Load(),
			Misses: g.cacheCounts[cachemiss].Load(), Store: g.cache.Stats()}
		if all := cs.Hits + cs.Stale + cs.Misses; all > 0 {
			cs.HitRatio = float64(cs.Hits+cs.Stale) / float64(all)
		}
		st.Cache = cs
	}
	v := g.pool.cur.Load()
	for _, b := range g.pool.backends() {
		st.Backends = append(st.Backends, g.backendStatus(b, v, now))
	}
	return st
}

func (g *Gateway) backendStatus(b *Backend, v *view, now time.Time) BackendStatus {
	bs := BackendStatus{ID: b.ID, URL: b.URL.String(), Source: "heartbeat", Inflight: b.inflight.Load(),
		Requests: b.requests.Load(), Failures: b.failures.Load(), Ejections: b.ejections.Load()}
	if b.Static {
		bs.Source = "static"
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	bs.Sessions, bs.Check = b.sessions, b.checkErr
	draining := b.drainingLocked(g.cfg.HealthDrain404)
	if draining {
		d := &DrainStatus{Since: b.drainFrom, DrainedAt: b.drainedAt, Reason: b.drainedBy, Source: "health"}
		switch {
		case b.kvDrain != nil:
			d.Source, d.Deadline = "command", b.kvDrain.Deadline
		case b.hbState == "draining":
			d.Source = "heartbeat"
		}
		bs.Drain = d
	}
	_, slow := v.slowUntil[b]
	switch {
	case !b.liveLocked():
		bs.State = "down"
	case b.ejected(now):
		bs.State = "ejected"
		bs.EjectedFor = time.Duration(b.ejectedUntil.Load() - now.UnixNano()).Round(time.Millisecond).String()
	case draining && !b.drainedAt.IsZero():
		bs.State = "drained"
	case draining:
		bs.State = "draining"
	case slow && now.Sub(b.upSince) < g.cfg.SlowStart:
		bs.State = "slow-start"
	default:
		bs.State = "up"
	}
	return bs
}

// statusHandler serves the status page and its JSON.
func (g *Gateway) statusHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+statusPrefix+"status.json", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(g.Status())
	})
	mux.HandleFunc("GET "+statusPrefix+"{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		if err := statusPage.Execute(w, g.Status()); err != nil {
			g.log.Warn("status page", "err", err)
		}
	})
	mux.HandleFunc(statusPrefix, func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no such page: see "+statusPrefix+" and "+statusPrefix+"status.json", http.StatusNotFound)
	})
	return mux
}

var statusPage = template.Must(template.New("status").Funcs(template.FuncMap{
	"pct":  func(f float64) string { return template.HTMLEscapeString(formatPct(f)) },
	"when": func(t time.Time) string { return t.Format(time.RFC3339) },
}).Parse(`<!doctype html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="2">
<title>cachebus gateway {{.ID}}</title>
<style>
body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}
td,th{padding:.3em .8em;border-bottom:1px solid #ddd;text-align:left}
.up{color:#070}.down,.ejected{color:#b00}.draining,.drained,.slow-start{color:#a60}
.fallback{background:#fee;padding:.5em 1em;border:1px solid #b00}
</style></head><body>
<h1>gateway {{.ID}}</h1>
<p>up since {{when .Started}} · {{.Inflight}} requests in flight · <a href="status.json">status.json</a></p>
{{if .Fallback.On}}<p class="fallback"><b>Fallback on</b>{{if .Fallback.Auto}} (automatic){{end}}: {{.Fallback.Reason}} — cached pages only, nothing reaches the backends.</p>{{end}}
<h2>Backends</h2>
<table><tr><th>id</th><th>url</th><th>source</th><th>state</th><th>sessions</th><th>in flight</th><th>requests</th><th>failures</th><th>ejections</th><th>drain</th><th>last check</th></tr>
{{range .Backends}}<tr><td>{{.ID}}</td><td>{{.URL}}</td><td>{{.Source}}</td><td class="{{.State}}">{{.State}}{{if .EjectedFor}} ({{.EjectedFor}}){{end}}</td>
<td>{{.Sessions}}</td><td>{{.Inflight}}</td><td>{{.Requests}}</td><td>{{.Failures}}</td><td>{{.Ejections}}</td>
<td>{{with .Drain}}{{.Source}} since {{when .Since}}{{if .Reason}}; drained ({{.Reason}}){{end}}{{end}}</td><td>{{.Check}}</td></tr>
{{else}}<tr><td colspan="11">no backends: start apps with heartbeats (cachebus announce), or set CACHEBUS_GATEWAY_BACKENDS</td></tr>{{end}}
</table>
{{with .Cache}}<h2>Cache</h2>
<p>hit ratio {{pct .HitRatio}} · {{.Hits}} hits · {{.Stale}} stale · {{.Misses}} misses</p>{{end}}
</body></html>
`))

func formatPct(f float64) string {
	return strconv.FormatFloat(f*100, 'f', 1, 64) + "%"
}
