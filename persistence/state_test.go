package persistence_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/bus/bustest"
	"github.com/cachebus/cachebus/persistence"
)

// forEachTarget runs fn against the embedded server and against Debian's
// nats-server binary.
func forEachTarget(t *testing.T, fn func(t *testing.T, tg *bustest.Target)) {
	for _, name := range []string{"embedded", "external"} {
		t.Run(name, func(t *testing.T) {
			fn(t, bustest.Targets(t)[name](t))
		})
	}
}

// cluster is what an operator's side of the state needs: a connection
// with the event log, the state bucket and a publisher.
type cluster struct {
	url   string
	conn  *bus.Conn
	state *persistence.State
	pub   *bus.Publisher
}

func newCluster(t *testing.T, tg *bustest.Target) *cluster {
	t.Helper()
	c := bustest.Connect(t, tg.URL)
	bustest.EnsureEvents(t, c, persistence.EventLogConfig{})
	st := openState(t, c)
	pub, err := bus.NewPublisher(c, "operator")
	if err != nil {
		t.Fatal(err)
	}
	return &cluster{url: tg.URL, conn: c, state: st, pub: pub}
}

func openState(t *testing.T, c *bus.Conn) *persistence.State {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := persistence.OpenState(ctx, c, persistence.StateConfig{})
	if err != nil {
		t.Fatalf("open state: %v", err)
	}
	return st
}

// lateMember connects afresh, as a member starting now would, and follows
// the cluster state.
func (cl *cluster) lateMember(t *testing.T, onChange ...func(persistence.ClusterState)) *persistence.Follower {
	t.Helper()
	st := openState(t, bustest.Connect(t, cl.url))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	f, err := st.Follow(ctx, onChange...)
	if err != nil {
		t.Fatalf("follow: %v", err)
	}
	t.Cleanup(f.Stop)
	return f
}

func ctx10(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestFallbackBeforeReady turns fallback on, then starts a member: the
// state it has when Follow returns, before it could report ready, already
// says fallback.
func TestFallbackBeforeReady(t *testing.T) {
	forEachTarget(t, func(t *testing.T, tg *bustest.Target) {
		cl := newCluster(t, tg)
		ctx := ctx10(t)
		fresh := cl.lateMember(t)
		if cs := fresh.Current(); cs.FallbackActive("users", time.Now()) || len(cs.Fallbacks) != 0 || len(cs.Drains) != 0 {
			t.Fatalf("empty cluster state reads %+v", cs)
		}
		seq, err := cl.state.SetFallback(ctx, cl.pub, bus.Fallback{On: true, Reason: "db down"})
		if err != nil {
			t.Fatal(err)
		}
		if seq == 0 {
			t.Fatal("fallback not in the event log (sequence 0)")
		}

		f := cl.lateMember(t)
		cs := f.Current() // the very first read: no waiting
		if !cs.FallbackActive("users", time.Now()) || !cs.FallbackActive("", time.Now()) {
			t.Fatalf("member started after fallback on reads %+v, want fallback on", cs.Fallbacks)
		}
		got := cs.Fallbacks["*"]
		if got.Scope != "*" || got.Reason != "db down" || got.Origin != "operator" || got.TS.IsZero() {
			t.Fatalf("fallback record %+v", got)
		}
		loaded, err := cl.state.Load(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !loaded.FallbackActive("orders", time.Now()) {
			t.Fatalf("Load reads %+v, want fallback on", loaded.Fallbacks)
		}
	})
}

// TestFallbackUntilAndScope checks expiry by Until and the scoping of a
// fallback to one namespace or to all ("*").
func TestFallbackUntilAndScope(t *testing.T) {
	forEachTarget(t, func(t *testing.T, tg *bustest.Target) {
		cl := newCluster(t, tg)
		ctx := ctx10(t)
		if _, err := cl.state.SetFallback(ctx, cl.pub, bus.Fallback{On: true, Scope: "*", Until: time.Now().Add(-time.Minute)}); err != nil {
			t.Fatal(err)
		}
		cs := cl.lateMember(t).Current()
		if f, ok := cs.Fallbacks["*"]; !ok || !f.On {
			t.Fatalf("expired fallback not recorded: %+v", cs.Fallbacks)
		}
		if cs.FallbackActive("users", time.Now()) {
			t.Fatal("fallback whose until has passed is active")
		}

		if _, err := cl.state.SetFallback(ctx, cl.pub, bus.Fallback{On: true, Scope: "users", Until: time.Now().Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
		cs = cl.lateMember(t).Current()
		now := time.Now()
		if !cs.FallbackActive("users", now) || cs.FallbackActive("orders", now) || cs.FallbackActive("", now) {
			t.Fatalf("scope users: users %v orders %v all %v, want true false false",
				cs.FallbackActive("users", now), cs.FallbackActive("orders", now), cs.FallbackActive("", now))
		}
		if cs.FallbackActive("users", now.Add(2*time.Hour)) {
			t.Fatal("scoped fallback active after its until")
		}

		if _, err := cl.state.SetFallback(ctx, cl.pub, bus.Fallback{On: true}); err != nil {
			t.Fatal(err)
		}
		cs = cl.lateMember(t).Current()
		if !cs.FallbackActive("orders", time.Now()) {
			t.Fatal(`fallback "*" does not cover orders`)
		}
		if _, err := cl.state.SetFallback(ctx, cl.pub, bus.Fallback{On: false, Scope: "*"}); err != nil {
			t.Fatal(err)
		}
		cs = cl.lateMember(t).Current()
		if cs.FallbackActive("orders", time.Now()) || !cs.FallbackActive("users", time.Now()) {
			t.Fatalf(`after "*" off: orders %v users %v, want false true`,
				cs.FallbackActive("orders", time.Now()), cs.FallbackActive("users", time.Now()))
		}

		var ve *bus.ValidationError
		if _, err := cl.state.SetFallback(ctx, cl.pub, bus.Fallback{On: true, Scope: "bad scope"}); !errors.As(err, &ve) || ve.Field != "scope" {
			t.Fatalf("bad scope: %v, want a rejection of scope", err)
		}
	})
}

// TestDrainState records drains and their end, as `cachebus drain --wait`
// and a late member read them.
func TestDrainState(t *testing.T) {
	forEachTarget(t, func(t *testing.T, tg *bustest.Target) {
		cl := newCluster(t, tg)
		ctx := ctx10(t)
		deadline := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
		if _, err := cl.state.SetDrain(ctx, cl.pub, bus.RoleNode, "n1", bus.Drain{On: true, Deadline: deadline}); err != nil {
			t.Fatal(err)
		}
		f := cl.lateMember(t)
		d, ok := f.Current().Draining(bus.RoleNode, "n1")
		if !ok || d.Role != bus.RoleNode || d.ID != "n1" || !d.Deadline.Equal(deadline) || d.Origin != "operator" || d.Since.IsZero() || d.Drained {
			t.Fatalf("late member reads drain %+v (on %v)", d, ok)
		}
		if _, ok := f.Current().Draining(bus.RoleNode, "n2"); ok {
			t.Fatal("n2 draining, never asked to")
		}
		if _, ok := f.Current().Draining(bus.RoleApp, "n1"); ok {
			t.Fatal("app/n1 draining: drains must be per role")
		}

		if err := cl.state.MarkDrained(ctx, bus.RoleNode, "n1"); err != nil {
			t.Fatal(err)
		}
		bustest.WaitFor(t, 5*time.Second, "follower sees n1 drained", func() bool {
			d, _ := f.Current().Draining(bus.RoleNode, "n1")
			return d.Drained && !d.DrainedAt.IsZero()
		})
		if err := cl.state.MarkDrained(ctx, bus.RoleNode, "n1"); err != nil {
			t.Fatalf("marking a drained member again: %v", err)
		}
		if err := cl.state.MarkDrained(ctx, bus.RoleNode, "never"); err == nil {
			t.Fatal("MarkDrained of a member never drained succeeded")
		}

		if _, err := cl.state.SetDrain(ctx, cl.pub, bus.RoleGateway, "g1", bus.Drain{On: true}); err != nil {
			t.Fatal(err)
		}
		bustest.WaitFor(t, 5*time.Second, "two active drains", func() bool { return len(f.Current().ActiveDrains()) == 2 })
		if act := f.Current().ActiveDrains(); act[0].Role != bus.RoleGateway || act[1].Role != bus.RoleNode {
			t.Fatalf("active drains not sorted: %+v", act)
		}

		if _, err := cl.state.SetDrain(ctx, cl.pub, bus.RoleNode, "n1", bus.Drain{On: false}); err != nil {
			t.Fatal(err)
		}
		bustest.WaitFor(t, 5*time.Second, "n1 drain cancelled", func() bool {
			_, on := f.Current().Draining(bus.RoleNode, "n1")
			return !on
		})
		if act := f.Current().ActiveDrains(); len(act) != 1 || act[0].ID != "g1" {
			t.Fatalf("active drains %+v, want g1 only", act)
		}
		if err := cl.state.MarkDrained(ctx, bus.RoleNode, "n1"); err != nil {
			t.Fatalf("MarkDrained of a cancelled drain: %v", err)
		}

		var ve *bus.ValidationError
		if _, err := cl.state.SetDrain(ctx, cl.pub, "db", "x", bus.Drain{On: true}); !errors.As(err, &ve) || ve.Field != "role" {
			t.Fatalf("drain of role db: %v, want a rejection of role", err)
		}
	})
}

// TestFollowerUpdates checks that a follower's state and its callbacks
// follow every change, and stop after Stop.
func TestFollowerUpdates(t *testing.T) {
	forEachTarget(t, func(t *testing.T, tg *bustest.Target) {
		cl := newCluster(t, tg)
		ctx := ctx10(t)
		var mu sync.Mutex
		var seen []persistence.ClusterState
		f := cl.lateMember(t, func(cs persistence.ClusterState) {
			mu.Lock()
			defer mu.Unlock()
			seen = append(seen, cs)
		})
		calls := func() int {
			mu.Lock()
			defer mu.Unlock()
			return len(seen)
		}
		before := f.Current()

		if _, err := cl.state.SetFallback(ctx, cl.pub, bus.Fallback{On: true, Scope: "users"}); err != nil {
			t.Fatal(err)
		}
		bustest.WaitFor(t, 5*time.Second, "follower sees fallback on", func() bool {
			return f.Current().FallbackActive("users", time.Now())
		})
		if _, err := cl.state.SetDrain(ctx, cl.pub, bus.RoleApp, "a1", bus.Drain{On: true}); err != nil {
			t.Fatal(err)
		}
		bustest.WaitFor(t, 5*time.Second, "follower sees a1 draining", func() bool {
			_, on := f.Current().Draining(bus.RoleApp, "a1")
			return on
		})
		bustest.WaitFor(t, 5*time.Second, "two change callbacks", func() bool { return calls() >= 2 })
		mu.Lock()
		last := seen[len(seen)-1]
		mu.Unlock()
		if _, on := last.Draining(bus.RoleApp, "a1"); !on || !last.FallbackActive("users", time.Now()) {
			t.Fatalf("last callback state %+v, want fallback and drain", last)
		}
		if len(before.Fallbacks) != 0 || len(before.Drains) != 0 {
			t.Fatalf("a state returned earlier changed under its reader: %+v", before)
		}

		f.Stop()
		n := calls()
		if _, err := cl.state.SetFallback(ctx, cl.pub, bus.Fallback{On: false, Scope: "users"}); err != nil {
			t.Fatal(err)
		}
		// A second follower seeing the change bounds the wait for the first.
		g := cl.lateMember(t)
		if g.Current().FallbackActive("users", time.Now()) {
			t.Fatal("new follower missed fallback off")
		}
		if calls() != n || !f.Current().FallbackActive("users", time.Now()) {
			t.Fatal("stopped follower still follows")
		}
	})
}
