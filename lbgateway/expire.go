package lbgateway

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/cachebus/cachebus/bus"
)

// ExpireHeader is the response header by which a backend expires entries
// on every cache of the cluster: "<ns> <key> <prefix*> …", one namespace
// per header line. The gateway publishes it and removes it from the
// response.
const ExpireHeader = "Cachebus-Expire"

// ParseExpireHeader reads the values of ExpireHeader: each names a
// namespace, then keys, or prefixes ending in "*", separated by spaces.
// Lines of the same namespace merge.
func ParseExpireHeader(values []string) (map[string]*bus.Expire, error) {
	out := map[string]*bus.Expire{}
	for _, v := range values {
		fields := strings.Fields(v)
		if len(fields) == 0 {
			continue
		}
		ns := fields[0]
		if err := bus.CheckNamespace(ns); err != nil {
			return nil, fmt.Errorf("lbgateway: %s %q: %w", ExpireHeader, v, err)
		}
		if len(fields) == 1 {
			return nil, fmt.Errorf("lbgateway: %s %q: no key or prefix after the namespace", ExpireHeader, v)
		}
		e := out[ns]
		if e == nil {
			e = &bus.Expire{}
			out[ns] = e
		}
		for _, f := range fields[1:] {
			if p, ok := strings.CutSuffix(f, "*"); ok {
				e.Prefixes = append(e.Prefixes, p)
			} else {
				e.Keys = append(e.Keys, f)
			}
		}
	}
	for ns, e := range out {
		if err := e.Validate(); err != nil {
			return nil, fmt.Errorf("lbgateway: %s for %s: %w", ExpireHeader, ns, err)
		}
	}
	return out, nil
}

// publishExpires publishes what a backend's ExpireHeader asks, through the
// acknowledged path, before the response goes on: once the client has
// the answer, every cache of the cluster has been told. The gateway's own
// cache applies it at once (its own events are not handed back to it).
func (g *Gateway) publishExpires(ctx context.Context, b *Backend, values []string) {
	exps, err := ParseExpireHeader(values)
	if err != nil {
		g.metrics.expires.WithLabelValues("rejected").Inc()
		g.log.Warn("backend expire header rejected", "backend", b.ID, "err", err)
		return
	}
	for ns, e := range exps {
		e.Origin, e.TS = g.cfg.ID, time.Now().UTC()
		if g.cache != nil && ns == g.cfg.CacheNS {
			g.cache.Purge(*e)
		}
		if g.pub == nil {
			continue
		}
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		seq, err := g.pub.Expire(pctx, ns, *e)
		cancel()
		if err != nil {
			g.metrics.expires.WithLabelValues("failed").Inc()
			g.log.Error("backend expire not published", "backend", b.ID, "ns", ns, "err", err)
			continue
		}
		g.metrics.expires.WithLabelValues("published").Inc()
		g.log.Info("expire published for backend", "backend", b.ID, "ns", ns, "keys", len(e.Keys),
			"prefixes", len(e.Prefixes), "seq", seq)
	}
}
