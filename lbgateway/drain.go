package lbgateway

import (
	"context"
	"time"
)

// A draining backend (a drain in the state bucket, its own heartbeat
// saying "draining", or a health check answering 404 when so configured)
// gets no new sessions and keeps its sticky ones. It is drained when the
// first of these holds:
//   - it counts its sessions in its heartbeats and the count is 0;
//   - no sticky request reached it for DrainIdle;
//   - the drain's deadline has passed.
// The gateway then marks the drain done in the state bucket, which is
// what `cachebus drain app <id> --wait` and the announce sidecar wait for.
// Drained does not mean unreachable: a straggling sticky request is still
// served while the backend lives.

// drainLoop checks the draining backends until the gateway stops.
func (g *Gateway) drainLoop() {
	defer g.wg.Done()
	t := time.NewTicker(g.drainTick())
	defer t.Stop()
	for {
		select {
		case <-g.done:
			return
		case <-t.C:
		case <-g.pool.changed:
		}
		g.checkDrains(time.Now())
	}
}

// drainTick is how often drains are looked at: often enough that a short
// DrainIdle is honoured closely, rarely enough to cost nothing.
func (g *Gateway) drainTick() time.Duration {
	return min(max(g.cfg.DrainIdle/10, 10*time.Millisecond), 500*time.Millisecond)
}

// checkDrains finds backends that finished draining and marks them.
func (g *Gateway) checkDrains(now time.Time) {
	for _, b := range g.pool.backends() {
		b.mu.Lock()
		if !b.drainingLocked(g.cfg.HealthDrain404) {
			b.mu.Unlock()
			continue
		}
		if b.drainedAt.IsZero() {
			if reason := g.drainedReason(b, now); reason != "" {
				b.drainedAt, b.drainedBy = now, reason
				g.log.Info("backend drained", "backend", b.ID, "reason", reason,
					"after", now.Sub(b.drainFrom).Round(time.Millisecond))
			}
		}
		mark := !b.drainedAt.IsZero() && b.kvDrain != nil && !b.marked && g.state != nil
		b.mu.Unlock()
		if mark {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			err := g.state.MarkDrained(ctx, "app", b.ID)
			cancel()
			if err != nil {
				// Another gateway may have marked it first; the state
				// bucket tells, and the next look retries otherwise.
				g.log.Warn("drain not marked done", "backend", b.ID, "err", err)
				continue
			}
			b.mu.Lock()
			b.marked = true
			b.mu.Unlock()
		}
	}
}

// drainedReason says why b is drained at now, or "" while it is not;
// b.mu held.
func (g *Gateway) drainedReason(b *Backend, now time.Time) string {
	switch {
	case b.member && b.reportsSessions && b.sessions == 0:
		return "no sessions left"
	case b.kvDrain != nil && !b.kvDrain.Deadline.IsZero() && !now.Before(b.kvDrain.Deadline):
		return "deadline"
	}
	last := b.drainFrom
	if ls := time.Unix(0, b.lastSticky.Load()); ls.After(last) {
		last = ls
	}
	if now.Sub(last) >= g.cfg.DrainIdle {
		return "idle"
	}
	return ""
}
