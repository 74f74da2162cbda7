package lbgateway

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/bus/bustest"
)

// TestDrainUnderLoad: while sticky sessions run, a drain of one backend
// of three fails no request, moves no session and sends no new session
// to it; once its sessions stop, it is drained and the state bucket says
// so.
func TestDrainUnderLoad(t *testing.T) {
	c := newCluster(t)
	bs := []*backend{newBackend(t, "b1"), newBackend(t, "b2"), newBackend(t, "b3")}
	cfg := testConfig(bs...)
	// Long enough that no pause of the load on a loaded machine looks like
	// the end of b2's sessions.
	cfg.DrainIdle = 2 * time.Second
	g := startGateway(t, c, cfg)

	type session struct {
		c     *http.Client
		first string
	}
	var failed, moved, served atomic.Int64
	var newOnB2 atomic.Int64
	var draining atomic.Bool
	stopB2 := make(chan struct{}) // the sessions on b2 end
	stop := make(chan struct{})
	var wg sync.WaitGroup
	run := func(i int) {
		defer wg.Done()
		s := session{c: newClient(t)}
		for n := 0; ; n++ {
			select {
			case <-stop:
				return
			default:
			}
			if s.first == "b2" {
				select {
				case <-stopB2:
					return
				default:
				}
			}
			wasDraining := draining.Load()
			resp, err := s.c.Get(fmt.Sprintf("%s/app/%d", g.url, n))
			if err != nil || resp.StatusCode != 200 {
				failed.Add(1)
				if err == nil {
					resp.Body.Close()
				}
				continue
			}
			resp.Body.Close()
			served.Add(1)
			at := resp.Header.Get("X-Backend")
			switch {
			case s.first == "":
				s.first = at
				if at == "b2" && wasDraining {
					newOnB2.Add(1)
				}
			case at != s.first:
				moved.Add(1)
			}
		}
	}
	for i := range 12 {
		wg.Add(1)
		go run(i)
	}
	// New sessions keep arriving during the drain.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			wasDraining := draining.Load()
			resp, err := http.Get(g.url + "/new")
			if err != nil || resp.StatusCode != 200 {
				failed.Add(1)
				continue
			}
			resp.Body.Close()
			if resp.Header.Get("X-Backend") == "b2" && wasDraining {
				newOnB2.Add(1)
			}
		}
	}()
	waitFor(t, 10*time.Second, "sessions on b2", func() bool { return bs[1].hits.Load() > 100 })

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.state.SetDrain(ctx, c.pub, "app", "b2", bus.Drain{On: true}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "gateway sees the drain", func() bool {
		s := backendState(g.Gateway, "b2")
		return s == "draining" || s == "drained"
	})
	draining.Store(true)
	hitsAtDrain := bs[1].hits.Load()
	waitFor(t, 10*time.Second, "sticky load on b2 continues", func() bool { return bs[1].hits.Load() > hitsAtDrain+200 })
	if s := backendState(g.Gateway, "b2"); s != "draining" {
		t.Fatalf("b2 is %s while its sessions are active, want draining", s)
	}
	close(stopB2)
	waitFor(t, 10*time.Second, "b2 drained and marked in the state bucket", func() bool {
		cs, err := c.state.Load(ctx)
		return err == nil && cs.Drains["app/b2"].Drained
	})
	close(stop)
	wg.Wait()
	if n := failed.Load(); n != 0 {
		t.Errorf("%d requests failed during the drain, want 0", n)
	}
	if n := moved.Load(); n != 0 {
		t.Errorf("%d sticky requests moved during the drain, want 0", n)
	}
	if n := newOnB2.Load(); n != 0 {
		t.Errorf("%d new sessions went to the draining backend, want 0", n)
	}
	t.Logf("%d requests served during the drain; b2 drained (%s)", served.Load(), backendState(g.Gateway, "b2"))
}

// TestDrainByHeartbeat: an app announcing "draining" gets no new
// sessions and keeps its own; it is drained when it reports no sessions;
// an app gone is removed and its sessions go elsewhere.
func TestDrainByHeartbeat(t *testing.T) {
	c := newCluster(t)
	app1, app2 := newBackend(t, "app1"), newBackend(t, "app2")
	cfg := testConfig()
	cfg.DrainIdle = time.Hour // only the session count can end this drain
	g := startGateway(t, c, cfg)
	beat := func(b *backend) *bus.Heartbeater {
		hb, err := bus.StartHeartbeat(bustest.Connect(t, c.url), bus.Heartbeat{ID: b.id, Role: bus.RoleApp, Addr: b.srv.URL},
			50*time.Millisecond, func(h *bus.Heartbeat) { h.Sessions = int(b.hits.Load()%7) + 1 })
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { hb.Stop(context.Background()) })
		return hb
	}
	hb1 := beat(app1)
	beat(app2)
	waitFor(t, 5*time.Second, "both apps in the pool", func() bool {
		return backendState(g.Gateway, "app1") == "up" && backendState(g.Gateway, "app2") == "up"
	})
	// A session on app1.
	var cookie string
	for cookie == "" {
		resp, _ := get(t, http.DefaultClient, g.url+"/")
		if resp.Header.Get("X-Backend") == "app1" {
			cookie = routeCookie(resp)
		}
	}
	hb1.SetState(bus.StateDraining)
	waitFor(t, 5*time.Second, "app1 draining", func() bool { return backendState(g.Gateway, "app1") == "draining" })
	for range 50 {
		resp, _ := get(t, http.DefaultClient, g.url+"/")
		if resp.Header.Get("X-Backend") != "app2" {
			t.Fatal("a new session went to the draining app")
		}
		resp, _ = get(t, http.DefaultClient, g.url+"/", "Cookie", "cbroute="+cookie)
		if resp.Header.Get("X-Backend") != "app1" {
			t.Fatal("the draining app lost its sticky session")
		}
	}
	hb1.Stop(context.Background())
	waitFor(t, 5*time.Second, "app1 gone from the pool", func() bool { return backendState(g.Gateway, "app1") == "absent" })
	resp, _ := get(t, http.DefaultClient, g.url+"/", "Cookie", "cbroute="+cookie)
	if resp.StatusCode != 200 || resp.Header.Get("X-Backend") != "app2" || routeCookie(resp) == "" {
		t.Fatalf("session of a gone app: %d from %s, cookie %q; want redispatched to app2 with a new cookie",
			resp.StatusCode, resp.Header.Get("X-Backend"), routeCookie(resp))
	}
}

// TestDrainedBySessions: an app that counts its sessions is drained as
// soon as it reports none.
func TestDrainedBySessions(t *testing.T) {
	c := newCluster(t)
	app := newBackend(t, "app1")
	cfg := testConfig()
	cfg.DrainIdle = time.Hour
	g := startGateway(t, c, cfg)
	var sessions atomic.Int64
	sessions.Store(3)
	hb, err := bus.StartHeartbeat(bustest.Connect(t, c.url), bus.Heartbeat{ID: "app1", Role: bus.RoleApp, Addr: app.srv.URL},
		50*time.Millisecond, func(h *bus.Heartbeat) { h.Sessions = int(sessions.Load()) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hb.Stop(context.Background()) })
	waitFor(t, 5*time.Second, "app1 up", func() bool { return backendState(g.Gateway, "app1") == "up" })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.state.SetDrain(ctx, c.pub, "app", "app1", bus.Drain{On: true}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "app1 draining", func() bool { return backendState(g.Gateway, "app1") == "draining" })
	sessions.Store(0)
	waitFor(t, 5*time.Second, "drain marked done", func() bool {
		cs, err := c.state.Load(ctx)
		return err == nil && cs.Drains["app/app1"].Drained
	})
}
