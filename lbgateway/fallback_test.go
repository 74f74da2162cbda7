package lbgateway

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus"
)

// TestFallback: with every backend down, or with fallback on in the
// cluster state, cached pages are served however stale, nothing reaches
// a backend, and other requests get an immediate 503 with Retry-After.
func TestFallback(t *testing.T) {
	c := newCluster(t)
	b := newBackend(t, "b1")
	b.setHandler(staticHandler)
	cfg := cachingConfig(b)
	cfg.HealthPath, cfg.HealthInterval, cfg.HealthRise, cfg.HealthFall = "/static/health", 20*time.Millisecond, 1, 1
	g := startGateway(t, c, cfg)
	_, page := get(t, http.DefaultClient, g.url+"/static/a")

	expectFallback := func(t *testing.T) {
		t.Helper()
		resp, body := get(t, http.DefaultClient, g.url+"/static/a")
		if resp.StatusCode != 200 || body != page || resp.Header.Get("X-Cache") == "MISS" {
			t.Fatalf("cached page in fallback: %d %q X-Cache %q", resp.StatusCode, body, resp.Header.Get("X-Cache"))
		}
		// A reload asks for a fresh copy; in fallback it gets the cached one.
		resp, body = get(t, http.DefaultClient, g.url+"/static/a", "Cache-Control", "no-cache")
		if resp.StatusCode != 200 || body != page {
			t.Fatalf("reload in fallback: %d %q", resp.StatusCode, body)
		}
		start := time.Now()
		resp, _ = get(t, http.DefaultClient, g.url+"/app/not-cached")
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
			t.Fatalf("uncached request in fallback: %d, Retry-After %q; want 503 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Errorf("the 503 took %s: fallback must not wait on the origin", took)
		}
	}

	t.Run("manual", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := c.state.SetFallback(ctx, c.pub, bus.Fallback{On: true, Scope: "*", Reason: "test"}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 5*time.Second, "fallback on", func() bool { return g.Status().Fallback.On })
		hits := b.hits.Load()
		expectFallback(t)
		// The health checks alone reach the backend.
		if n := b.hits.Load() - hits; n > 10 {
			t.Errorf("%d requests reached the backend in fallback", n)
		}
		if _, err := c.state.SetFallback(ctx, c.pub, bus.Fallback{On: false, Scope: "*"}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 5*time.Second, "fallback off", func() bool { return !g.Status().Fallback.On })
		if resp, _ := get(t, http.DefaultClient, g.url+"/app/x"); resp.StatusCode != 200 {
			t.Fatalf("after fallback: %d", resp.StatusCode)
		}
	})

	t.Run("automatic: every backend down", func(t *testing.T) {
		stopped := make(chan struct{})
		b.setHandler(func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-stopped:
				w.WriteHeader(http.StatusServiceUnavailable)
			default:
				staticHandler(w, r)
			}
		})
		close(stopped)
		waitFor(t, 5*time.Second, "automatic fallback", func() bool {
			st := g.Status()
			return st.Fallback.On && st.Fallback.Auto
		})
		expectFallback(t)
		b.setHandler(staticHandler)
		waitFor(t, 5*time.Second, "fallback ends with a backend back", func() bool { return !g.Status().Fallback.On })
	})
}
