package lbgateway

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"time"
)

// Active checks: every backend is asked GET <url><HealthPath> each
// HealthInterval once the gateway knows it. It starts up (the heartbeat or
// the operator said it exists) and goes down after HealthFall bad checks
// in a row, up again after HealthRise good ones, as HAProxy's rise/fall.

// startChecksLocked starts b's active checks when they are configured.
func (g *Gateway) startChecksLocked(b *Backend) {
	if g.cfg.HealthPath == "" {
		return
	}
	stop := make(chan struct{})
	b.mu.Lock()
	b.checked, b.healthy = true, true
	b.mu.Unlock()
	b.stopHealth = stop
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		t := time.NewTicker(g.cfg.HealthInterval)
		defer t.Stop()
		for {
			g.check(b)
			select {
			case <-stop:
				return
			case <-g.done:
				return
			case <-t.C:
			}
		}
	}()
}

// check runs one active check of b and applies it.
func (g *Gateway) check(b *Backend) {
	ctx, cancel := context.WithTimeout(context.Background(), g.cfg.HealthTimeout)
	defer cancel()
	status, err := g.probe(ctx, b)
	ok, says404 := err == nil && status < 400, false
	reason := ""
	switch {
	case err != nil:
		reason = err.Error()
	case status == http.StatusNotFound && g.cfg.HealthDrain404:
		// Alive, and asking for no new sessions.
		ok, says404 = true, true
	case !ok:
		reason = fmt.Sprintf("status %d", status)
	}

	b.mu.Lock()
	was, wasDraining := b.healthy, b.says404
	b.lastCheck = time.Now()
	b.says404 = says404
	if ok {
		b.okRun, b.badRun, b.checkErr = b.okRun+1, 0, ""
		if !b.healthy && b.okRun >= g.cfg.HealthRise {
			b.healthy = true
		}
	} else {
		b.okRun, b.badRun, b.checkErr = 0, b.badRun+1, reason
		if b.healthy && b.badRun >= g.cfg.HealthFall {
			b.healthy = false
		}
	}
	now, nowDraining := b.healthy, b.says404
	b.mu.Unlock()

	if was != now {
		if now {
			g.log.Info("backend up: health checks pass", "backend", b.ID, "rise", g.cfg.HealthRise)
		} else {
			g.log.Warn("backend down: health checks fail", "backend", b.ID, "fall", g.cfg.HealthFall, "reason", reason)
		}
		g.metrics.healthChanges.WithLabelValues(b.ID, upDown(now)).Inc()
	}
	if was != now || wasDraining != nowDraining {
		g.pool.rebuild()
	}
}

// probe sends one check request and returns its status.
func (g *Gateway) probe(ctx context.Context, b *Backend) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, b.URL.String()+g.cfg.HealthPath, nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("User-Agent", "cachebus-gateway-check")
	resp, err := g.checks.Do(req)
	if err != nil {
		return 0, err
	}
	// Read a little so the connection can be kept for the next check.
	_, _ = io.CopyN(io.Discard, resp.Body, 4096)
	_ = resp.Body.Close()
	return resp.StatusCode, nil
}

func upDown(up bool) string {
	if up {
		return "up"
	}
	return "down"
}

// Passive checks: requests themselves tell. EjectAfter connect errors or
// 5xx answers in a row eject a backend for EjectTime, doubled for every
// ejection in a row up to EjectMax; a backend that then serves well for
// EjectMax starts from EjectTime again.

// observe records the outcome of one request to b.
func (g *Gateway) observe(b *Backend, failed bool, now time.Time) {
	if !failed {
		if b.errRun.Load() != 0 {
			b.errRun.Store(0)
		}
		if b.ejections.Load() != 0 && now.UnixNano() > b.ejectedUntil.Load()+int64(g.cfg.EjectMax) {
			b.ejections.Store(0)
		}
		return
	}
	b.failures.Add(1)
	if g.cfg.EjectAfter <= 0 || b.errRun.Add(1) < int32(g.cfg.EjectAfter) {
		return
	}
	b.errRun.Store(0)
	n := b.ejections.Add(1)
	d := g.cfg.EjectTime
	for i := int32(1); i < n && d < g.cfg.EjectMax; i++ {
		d *= 2
	}
	d = min(d, g.cfg.EjectMax)
	b.ejectedUntil.Store(now.Add(d).UnixNano())
	g.metrics.ejections.WithLabelValues(b.ID).Inc()
	g.log.Warn("backend ejected: requests fail", "backend", b.ID, "for", d, "in_a_row", n)
}
