package lbgateway

import (
	"log/slog"
	"net/url"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/persistence"
)

// Backend is one app server of the pool. The counters and the ejection
// are atomics because every request touches them; the rest changes
// rarely and is guarded by mu.
type Backend struct {
	// ID names the backend in sticky cookies, drains and the status.
	ID string
	// URL is where requests go.
	URL *url.URL
	// Static is set for a backend of GATEWAY_BACKENDS.
	Static bool

	// up carries the requests to a plain-HTTP backend; nil for HTTPS,
	// which goes through the gateway's Transport.
	up *upstream

	inflight     atomic.Int64
	requests     atomic.Uint64
	failures     atomic.Uint64
	lastSticky   atomic.Int64 // Unix ns of the last request routed by cookie
	ejectedUntil atomic.Int64 // Unix ns; passive health
	errRun       atomic.Int32 // failed requests in a row
	ejections    atomic.Int32 // ejections in a row

	mu sync.Mutex
	// From heartbeats.
	member          bool
	hbState         string
	sessions        int
	reportsSessions bool // sessions was ever > 0: the app counts them
	started         time.Time
	// Active health.
	checked   bool // active checks run: healthy is meaningful
	healthy   bool
	okRun     int
	badRun    int
	checkErr  string
	says404   bool
	lastCheck time.Time
	// Drain.
	kvDrain   *persistence.DrainState // a drain from the state bucket that applies to this instance
	drainFrom time.Time               // when this gateway first saw it draining
	drainedAt time.Time
	drainedBy string
	marked    bool // the state bucket says drained
	// Slow start.
	upSince time.Time
	live    bool

	stopHealth chan struct{}
}

// Inflight is how many requests the backend is serving for this gateway.
func (b *Backend) Inflight() int64 { return b.inflight.Load() }

// draining says whether the backend takes no new sessions; b.mu held.
func (b *Backend) drainingLocked(drain404 bool) bool {
	return b.kvDrain != nil || b.hbState == bus.StateDraining || (drain404 && b.says404)
}

// liveLocked says whether the backend may serve requests at all; b.mu held.
func (b *Backend) liveLocked() bool {
	return (b.Static || b.member) && (!b.checked || b.healthy)
}

// ejected says whether passive health keeps the backend out at now.
func (b *Backend) ejected(now time.Time) bool {
	return b.ejectedUntil.Load() > now.UnixNano()
}

// view is what request routing reads, rebuilt on every change of the
// pool so that a request takes no lock.
type view struct {
	// sticky holds every live backend, draining ones included.
	sticky map[string]*Backend
	// fresh holds the live backends that take new sessions.
	fresh []*Backend
	// slowUntil holds the fresh backends still in slow start, with when
	// it ends.
	slowUntil map[*Backend]time.Time
	slowStart time.Duration
	// plain is set when every backend is plain HTTP with no path: the
	// fast path can reach any of them.
	plain bool
}

// Pool is the set of backends: static ones and those announced by
// heartbeats, with their health and drains.
type Pool struct {
	cfg *Config
	log *slog.Logger
	// onAdd is called with the pool locked for each new backend, before
	// it is in a view: it starts the backend's active checks.
	onAdd func(*Backend)

	mu     sync.Mutex
	all    map[string]*Backend
	drains map[string]persistence.DrainState // app drains by id, from the state bucket
	cur    atomic.Pointer[view]
	// changed is poked after every rebuild, for the drain loop and tests.
	changed chan struct{}
}

func newPool(cfg *Config, log *slog.Logger) *Pool {
	p := &Pool{cfg: cfg, log: log, all: map[string]*Backend{}, drains: map[string]persistence.DrainState{},
		changed: make(chan struct{}, 1)}
	p.cur.Store(&view{sticky: map[string]*Backend{}})
	return p
}

// addStatic adds the backends of GATEWAY_BACKENDS.
func (p *Pool) addStatic(list []StaticBackend) {
	p.mu.Lock()
	var added []*Backend
	for _, s := range list {
		b := &Backend{ID: s.ID, URL: s.URL, Static: true, hbState: bus.StateUp}
		p.all[s.ID] = b
		p.applyDrainLocked(b)
		if p.onAdd != nil {
			p.onAdd(b)
		}
		added = append(added, b)
	}
	p.rebuildLocked()
	p.mu.Unlock()
	for _, b := range added {
		p.log.Info("backend added", "backend", b.ID, "url", b.URL.String(), "source", "static")
	}
}

// memberBeat applies an app heartbeat: a new backend, a new address,
// a state or session count.
func (p *Pool) memberBeat(m bus.Member) {
	u, err := ParseBackendURL(m.Addr)
	if err != nil {
		p.log.Warn("app heartbeat with an unusable addr: not routed to", "backend", m.ID, "addr", m.Addr, "err", err)
		return
	}
	p.mu.Lock()
	b, ok := p.all[m.ID]
	replaced := ok && !b.Static && b.URL.String() != u.String()
	var added *Backend
	if !ok || replaced {
		if replaced {
			p.stopLocked(b)
		}
		b = &Backend{ID: m.ID, URL: u}
		p.all[m.ID] = b
		added = b
	}
	b.mu.Lock()
	b.member = true
	b.hbState = m.State
	b.sessions = m.Sessions
	if m.Sessions > 0 {
		b.reportsSessions = true
	}
	newInstance := !b.started.Equal(m.Started)
	b.started = m.Started
	b.mu.Unlock()
	if newInstance || added != nil {
		p.applyDrainLocked(b)
	}
	if added != nil && p.onAdd != nil {
		p.onAdd(added)
	}
	p.rebuildLocked()
	p.mu.Unlock()
	if added != nil {
		p.log.Info("backend added", "backend", m.ID, "url", u.String(), "source", "heartbeat", "state", m.State)
	}
}

// memberLeft removes a backend whose heartbeats stopped or said gone; a
// static backend stays, routed to by its health alone.
func (p *Pool) memberLeft(m bus.Member, reason string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	b, ok := p.all[m.ID]
	if !ok {
		return
	}
	if b.Static {
		b.mu.Lock()
		b.member = false
		b.mu.Unlock()
		return
	}
	p.stopLocked(b)
	delete(p.all, m.ID)
	p.rebuildLocked()
	p.log.Info("backend removed", "backend", m.ID, "reason", reason)
}

func (p *Pool) stopLocked(b *Backend) {
	if b.stopHealth != nil {
		close(b.stopHealth)
		b.stopHealth = nil
	}
	if b.up != nil {
		b.up.close()
	}
}

// setDrains takes the app drains of the cluster state.
func (p *Pool) setDrains(cs persistence.ClusterState) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.drains = map[string]persistence.DrainState{}
	for _, ds := range cs.Drains {
		if ds.Role == bus.RoleApp {
			p.drains[ds.ID] = ds
		}
	}
	for _, b := range p.all {
		p.applyDrainLocked(b)
	}
	p.rebuildLocked()
}

// applyDrainLocked decides whether the state bucket's drain of b's id
// applies to b: a drain is for the instance that was running when it was
// given, so an app restarted after it (a rolling deploy) takes sessions
// again; a static backend has no instances, its drain lasts until
// cancelled. p.mu held.
func (p *Pool) applyDrainLocked(b *Backend) {
	ds, ok := p.drains[b.ID]
	b.mu.Lock()
	defer b.mu.Unlock()
	if !ok || !ds.On || (!b.Static && b.started.After(ds.Since)) {
		b.kvDrain = nil
		return
	}
	b.kvDrain = &ds
	b.marked = ds.Drained
}

// rebuildLocked publishes a new view; p.mu held.
func (p *Pool) rebuildLocked() {
	now := time.Now()
	v := &view{sticky: make(map[string]*Backend, len(p.all)), slowUntil: map[*Backend]time.Time{}, slowStart: p.cfg.SlowStart,
		plain: true}
	for _, b := range p.all {
		if b.up == nil || b.URL.Path != "" || b.URL.RawPath != "" {
			v.plain = false
		}
		b.mu.Lock()
		live := b.liveLocked()
		if live && !b.live {
			b.upSince = now
		}
		if !live && b.live {
			p.log.Warn("backend down", "backend", b.ID, "member", b.member, "healthy", !b.checked || b.healthy, "check", b.checkErr)
		}
		b.live = live
		draining := b.drainingLocked(p.cfg.HealthDrain404)
		if draining && b.drainFrom.IsZero() {
			b.drainFrom = now
		}
		if !draining {
			b.drainFrom, b.drainedAt, b.drainedBy = time.Time{}, time.Time{}, ""
		}
		if live {
			v.sticky[b.ID] = b
			if !draining {
				v.fresh = append(v.fresh, b)
				// Backends that come up together (the gateway's start)
				// ramp together, so their shares stay equal.
				if p.cfg.SlowStart > 0 && now.Sub(b.upSince) < p.cfg.SlowStart {
					v.slowUntil[b] = b.upSince.Add(p.cfg.SlowStart)
				}
			}
		}
		b.mu.Unlock()
	}
	sort.Slice(v.fresh, func(i, j int) bool { return v.fresh[i].ID < v.fresh[j].ID })
	p.cur.Store(v)
	select {
	case p.changed <- struct{}{}:
	default:
	}
}

// rebuild is rebuildLocked for callers without the lock (health checks).
func (p *Pool) rebuild() {
	p.mu.Lock()
	p.rebuildLocked()
	p.mu.Unlock()
}

// backends lists every backend, sorted by id.
func (p *Pool) backends() []*Backend {
	p.mu.Lock()
	out := make([]*Backend, 0, len(p.all))
	for _, b := range p.all {
		out = append(out, b)
	}
	p.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// anyLive says whether some backend can serve a request: while none can,
// automatic fallback is on.
func (p *Pool) anyLive(now time.Time) bool {
	for _, b := range p.cur.Load().sticky {
		if !b.ejected(now) {
			return true
		}
	}
	return false
}

// stop ends every backend's health checks.
func (p *Pool) stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, b := range p.all {
		p.stopLocked(b)
	}
}
