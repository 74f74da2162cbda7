package bus_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/bus/bustest"
	"github.com/cachebus/cachebus/persistence"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func forEachTarget(t *testing.T, fn func(t *testing.T, tg *bustest.Target)) {
	for _, name := range []string{"embedded", "external"} {
		t.Run(name, func(t *testing.T) {
			tg := bustest.Targets(t)[name](t)
			fn(t, tg)
		})
	}
}

// TestPublishPathsAppliedOnce publishes through the Go API and as a plain
// core publish (what `nats pub` sends) and checks that each of 5
// subscribers applies each event exactly once.
func TestPublishPathsAppliedOnce(t *testing.T) {
	forEachTarget(t, func(t *testing.T, tg *bustest.Target) {
		pubConn := bustest.Connect(t, tg.URL)
		bustest.EnsureEvents(t, pubConn, persistence.EventLogConfig{})
		var subs []*bus.Subscriber
		var recs []*bustest.Recorder
		for i := range 5 {
			s, r := bustest.Subscribe(t, bustest.Connect(t, tg.URL), bus.SubscriberOptions{Name: fmt.Sprintf("s%d", i)})
			subs, recs = append(subs, s), append(recs, r)
		}
		pub, err := bus.NewPublisher(pubConn, "tester")
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		if _, err := pub.Expire(ctx, "users", bus.Expire{Keys: []string{"api:1"}}); err != nil {
			t.Fatal(err)
		}
		if err := pubConn.NC.Publish("cachebus.expire.users", []byte("core:1\ncore:2\n")); err != nil {
			t.Fatal(err)
		}
		// The same bytes again: a second, distinct event that must apply too.
		if err := pubConn.NC.Publish("cachebus.expire.users", []byte("core:1\ncore:2\n")); err != nil {
			t.Fatal(err)
		}
		if _, err := pub.Seed(ctx, "users", bus.Seed{Key: "api:2", Value: []byte("v"), TTL: time.Minute}); err != nil {
			t.Fatal(err)
		}
		if err := pubConn.NC.Flush(); err != nil {
			t.Fatal(err)
		}
		bustest.WaitFor(t, 10*time.Second, "4 events in the log", func() bool { return bustest.LastSeq(t, pubConn) >= 4 })
		for i, s := range subs {
			bustest.WaitSeq(t, s, 4)
			got := strings.Join(recs[i].Keys(), ",")
			if got != "api:1,core:1,core:1" {
				t.Errorf("subscriber %d applied expires %q, want api:1,core:1,core:1", i, got)
			}
			evs, flushes := recs[i].Snapshot()
			if len(evs) != 4 || evs[3].Seed == nil || evs[3].Seed.Key != "api:2" || string(evs[3].Seed.Value) != "v" {
				t.Errorf("subscriber %d events = %+v, want 3 expires then the seed", i, evs)
			}
			if flushes != 0 {
				t.Errorf("subscriber %d flushed %d times, want 0", i, flushes)
			}
		}
	})
}

// TestDisconnectedSubscriberCatchesUp cuts a subscriber off while 1,000
// expires are published and checks it applies all of them, in order, once
// it is back, without a flush.
func TestDisconnectedSubscriberCatchesUp(t *testing.T) {
	forEachTarget(t, func(t *testing.T, tg *bustest.Target) {
		pubConn := bustest.Connect(t, tg.URL)
		bustest.EnsureEvents(t, pubConn, persistence.EventLogConfig{})
		proxy := bustest.NewProxy(t, strings.TrimPrefix(tg.URL, "nats://"))
		subConn := bustest.Connect(t, proxy.URL())
		s, rec := bustest.Subscribe(t, subConn, bus.SubscriberOptions{Name: "cut"})
		pub, _ := bus.NewPublisher(pubConn, "tester")
		ctx := context.Background()

		if _, err := pub.Expire(ctx, "users", bus.Expire{Keys: []string{"k0"}}); err != nil {
			t.Fatal(err)
		}
		bustest.WaitSeq(t, s, 1)
		proxy.Cut()
		bustest.WaitFor(t, 10*time.Second, "subscriber disconnected", func() bool { return !subConn.NC.IsConnected() })
		want := []string{"k0"}
		for i := 1; i <= 1000; i++ {
			k := fmt.Sprintf("k%d", i)
			want = append(want, k)
			if _, err := pub.Expire(ctx, "users", bus.Expire{Keys: []string{k}}); err != nil {
				t.Fatal(err)
			}
		}
		proxy.Restore()
		bustest.WaitSeq(t, s, 1001)
		if got := rec.Keys(); strings.Join(got, ",") != strings.Join(want, ",") {
			t.Fatalf("applied %d expires, want 1001 in order; first difference near %v", len(got), firstDiff(got, want))
		}
		if _, flushes := rec.Snapshot(); flushes != 0 {
			t.Fatalf("flushed %d times after a plain reconnect, want 0", flushes)
		}
		bustest.WaitFor(t, 10*time.Second, "live again", func() bool { return !s.CatchingUp() })
		// Back live, a core-delivered event applies once.
		if _, err := pub.Expire(ctx, "users", bus.Expire{Keys: []string{"after"}}); err != nil {
			t.Fatal(err)
		}
		bustest.WaitSeq(t, s, 1002)
		if got := rec.Keys(); len(got) != 1002 || got[1001] != "after" {
			t.Fatalf("after reconnect applied %d, last %q", len(got), got[len(got)-1])
		}
	})
}

func firstDiff(got, want []string) string {
	for i := range min(len(got), len(want)) {
		if got[i] != want[i] {
			return fmt.Sprintf("index %d: got %q want %q", i, got[i], want[i])
		}
	}
	return fmt.Sprintf("lengths %d and %d", len(got), len(want))
}

// TestPurgedResumeFlushes checks that a subscriber whose next event was
// removed from the log is told to flush.
func TestPurgedResumeFlushes(t *testing.T) {
	forEachTarget(t, func(t *testing.T, tg *bustest.Target) {
		pubConn := bustest.Connect(t, tg.URL)
		bustest.EnsureEvents(t, pubConn, persistence.EventLogConfig{})
		proxy := bustest.NewProxy(t, strings.TrimPrefix(tg.URL, "nats://"))
		subConn := bustest.Connect(t, proxy.URL())
		s, rec := bustest.Subscribe(t, subConn, bus.SubscriberOptions{Name: "purged", Namespaces: []string{"users"}})
		pub, _ := bus.NewPublisher(pubConn, "tester")
		ctx := context.Background()
		if _, err := pub.Expire(ctx, "users", bus.Expire{Keys: []string{"k0"}}); err != nil {
			t.Fatal(err)
		}
		bustest.WaitSeq(t, s, 1)
		proxy.Cut()
		bustest.WaitFor(t, 10*time.Second, "subscriber disconnected", func() bool { return !subConn.NC.IsConnected() })
		for i := 1; i <= 10; i++ {
			if _, err := pub.Expire(ctx, "users", bus.Expire{Keys: []string{fmt.Sprintf("k%d", i)}}); err != nil {
				t.Fatal(err)
			}
		}
		st, err := pubConn.JS.Stream(ctx, pubConn.Subjects.EventStream())
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Purge(ctx, jetstream.WithPurgeKeep(2)); err != nil {
			t.Fatal(err)
		}
		proxy.Restore()
		bustest.WaitSeq(t, s, 11)
		_, flushes := rec.Snapshot()
		if flushes != 1 {
			t.Fatalf("flushes = %d, want 1", flushes)
		}
		ns := rec.Flushed()[0]
		if len(ns) != 1 || ns[0] != "users" {
			t.Fatalf("flushed namespaces %v, want [users]", ns)
		}
		if got := rec.Keys(); strings.Join(got, ",") != "k0,k9,k10" {
			t.Fatalf("applied %v, want k0 then the two events the log kept", got)
		}
		if n := testutil.ToFloat64(subConn.Metrics.Gaps); n != 1 {
			t.Fatalf("gap metric = %v, want 1", n)
		}
	})
}
