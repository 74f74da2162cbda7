package memo_test

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/bus/bustest"
	"github.com/cachebus/cachebus/cachenode/memo"
	"github.com/cachebus/cachebus/persistence"
)

// observed is what one client's Observe saw.
type observed struct {
	mu     sync.Mutex
	events []bus.Event
	// missed counts the expires after which the expired key was already
	// gone from memory when Observe ran.
	missed int
}

func (o *observed) list() []bus.Event {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.events)
}

// TestObserveSeesPeersFlush checks that Observe runs after a peer's Flush
// is applied (the key is gone when it runs) and never for the client's own.
func TestObserveSeesPeersFlush(t *testing.T) {
	tg := bustest.Embedded(t)
	cl := &cluster{url: tg.URL, admin: bustest.Connect(t, tg.URL)}
	bustest.EnsureEvents(t, cl.admin, persistence.EventLogConfig{})
	src := newSource()
	obs := map[string]*observed{"memo-a": {}, "memo-b": {}}
	var clients sync.Map // id → *memo.Client, set before any flush
	for _, id := range []string{"memo-a", "memo-b"} {
		o := obs[id]
		var calls atomic.Int64
		cl.add(t, tg.URL, memo.Options{Namespace: "users", Observe: func(ev bus.Event) {
			c, _ := clients.Load(id)
			missed := false
			if ev.Expire != nil && len(ev.Expire.Keys) == 1 {
				// fn runs only if the flush already dropped the key.
				before := calls.Load()
				_, _ = c.(*memo.Client).Do(context.Background(), ev.Expire.Keys[0], time.Minute,
					func(context.Context) ([]byte, error) { calls.Add(1); return []byte("refill"), nil })
				missed = calls.Load() > before
			}
			o.mu.Lock()
			o.events = append(o.events, ev)
			if missed {
				o.missed++
			}
			o.mu.Unlock()
		}}, id)
	}
	a, b := cl.clients[0], cl.clients[1]
	clients.Store("memo-a", a)
	clients.Store("memo-b", b)
	for _, c := range cl.clients {
		do(t, c, src, "user:1")
		do(t, c, src, "user:2")
	}
	ctx := context.Background()
	if err := a.Flush(ctx, "user:1"); err != nil {
		t.Fatal(err)
	}
	if err := b.Flush(ctx, "user:2"); err != nil {
		t.Fatal(err)
	}
	cl.sync(t)
	for _, tt := range []struct{ id, key, origin string }{
		{"memo-a", "user:2", "memo-b"},
		{"memo-b", "user:1", "memo-a"},
	} {
		o := obs[tt.id]
		evs := o.list()
		if len(evs) != 1 {
			t.Fatalf("%s observed %d events, want only its peer's flush: %+v", tt.id, len(evs), evs)
		}
		ev := evs[0]
		if ev.Expire == nil || !slices.Equal(ev.Expire.Keys, []string{tt.key}) || ev.Origin() != tt.origin || ev.NS != "users" {
			t.Errorf("%s observed %+v (expire %+v), want the expire of %s from %s in users", tt.id, ev, ev.Expire, tt.key, tt.origin)
		}
		o.mu.Lock()
		if o.missed != 1 {
			t.Errorf("%s: the flushed key was still in memory when Observe ran", tt.id)
		}
		o.mu.Unlock()
	}
}
