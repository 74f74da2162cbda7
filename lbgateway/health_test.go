package lbgateway

import (
	"net/http"
	"sync/atomic"
	"testing"
	"time"
)

// TestActiveHealth: a backend whose checks fail goes down after fall
// checks and comes back after rise; with HealthDrain404 a 404 means
// draining, not down.
func TestActiveHealth(t *testing.T) {
	b1, b2 := newBackend(t, "b1"), newBackend(t, "b2")
	var status atomic.Int64
	status.Store(200)
	b2.setHandler(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			w.WriteHeader(int(status.Load()))
		}
	})
	cfg := testConfig(b1, b2)
	cfg.HealthPath, cfg.HealthInterval, cfg.HealthRise, cfg.HealthFall = "/healthz", 20*time.Millisecond, 2, 3
	cfg.HealthDrain404 = true
	g := startGateway(t, nil, cfg)

	steps := []struct {
		status int
		want   string
	}{
		{500, "down"},
		{200, "up"},
		{404, "draining"},
		{200, "up"},
	}
	for _, s := range steps {
		status.Store(int64(s.status))
		waitFor(t, 5*time.Second, "b2 "+s.want, func() bool {
			st := backendState(g.Gateway, "b2")
			return st == s.want || (s.want == "up" && st == "slow-start")
		})
		if s.want == "down" || s.want == "draining" {
			for range 20 {
				resp, _ := get(t, http.DefaultClient, g.url+"/")
				if resp.Header.Get("X-Backend") != "b1" {
					t.Fatalf("a new session went to b2 while it is %s", s.want)
				}
			}
		}
	}
}

// TestPassiveEjection: consecutive 5xx answers eject a backend for a
// growing time; it serves again afterwards.
func TestPassiveEjection(t *testing.T) {
	b1, bad := newBackend(t, "b1"), newBackend(t, "bad")
	var failing atomic.Bool
	failing.Store(true)
	bad.setHandler(func(w http.ResponseWriter, r *http.Request) {
		if failing.Load() {
			w.WriteHeader(http.StatusInternalServerError)
		}
	})
	cfg := testConfig(b1, bad)
	cfg.EjectAfter, cfg.EjectTime, cfg.EjectMax = 3, time.Second, 2*time.Second
	g := startGateway(t, nil, cfg)
	var ejectedAt time.Time
	waitFor(t, 5*time.Second, "bad ejected", func() bool {
		get(t, http.DefaultClient, g.url+"/")
		if backendState(g.Gateway, "bad") == "ejected" {
			ejectedAt = time.Now()
			return true
		}
		return false
	})
	hits := bad.hits.Load()
	for range 30 {
		if resp, _ := get(t, http.DefaultClient, g.url+"/"); resp.Header.Get("X-Backend") != "b1" {
			if time.Since(ejectedAt) < cfg.EjectTime/2 {
				t.Fatal("an ejected backend got a new session")
			}
		}
	}
	if bad.hits.Load() != hits && time.Since(ejectedAt) < cfg.EjectTime/2 {
		t.Fatal("requests reached an ejected backend")
	}
	// Still failing after the ejection: ejected again, for twice as long.
	waitFor(t, 5*time.Second, "bad ejected a second time", func() bool {
		get(t, http.DefaultClient, g.url+"/")
		for _, b := range g.Status().Backends {
			if b.ID == "bad" && b.Ejections >= 2 {
				return true
			}
		}
		return false
	})
	failing.Store(false)
	waitFor(t, 10*time.Second, "bad serves again", func() bool {
		resp, _ := get(t, http.DefaultClient, g.url+"/")
		return resp.Header.Get("X-Backend") == "bad" && resp.StatusCode == 200
	})
}
