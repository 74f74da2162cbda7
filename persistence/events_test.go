package persistence_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/bus/bustest"
	"github.com/cachebus/cachebus/persistence"
	"github.com/nats-io/nats.go/jetstream"
)

func TestEventStreamConfig(t *testing.T) {
	s, err := bus.NewSubjects("acme.cb")
	if err != nil {
		t.Fatal(err)
	}
	sc := persistence.EventStreamConfig(s, persistence.EventLogConfig{MaxAge: time.Hour, MaxBytes: 1 << 20})
	if sc.Name != "CACHEBUS_EVENTS_acme_cb" {
		t.Errorf("name %q", sc.Name)
	}
	want := "acme.cb.expire.* acme.cb.seed.* acme.cb.fallback acme.cb.drain.*.*"
	if got := strings.Join(sc.Subjects, " "); got != want {
		t.Errorf("subjects %q, want %q", got, want)
	}
	if sc.Replicas != 1 {
		t.Errorf("replicas %d, want 1 when unset", sc.Replicas)
	}
	if sc.MaxAge != time.Hour || sc.MaxBytes != 1<<20 || sc.MaxMsgSize != bus.MaxPayload {
		t.Errorf("limits age %s bytes %d msg %d", sc.MaxAge, sc.MaxBytes, sc.MaxMsgSize)
	}
	if sc.Storage != jetstream.FileStorage || sc.Retention != jetstream.LimitsPolicy || sc.Discard != jetstream.DiscardOld {
		t.Errorf("storage %v retention %v discard %v", sc.Storage, sc.Retention, sc.Discard)
	}
	if sc.Duplicates <= 0 {
		t.Errorf("no duplicate window: publish retries would be stored twice")
	}
	if r := persistence.EventStreamConfig(s, persistence.EventLogConfig{Replicas: 3}).Replicas; r != 3 {
		t.Errorf("replicas %d, want 3", r)
	}
}

func streamInfo(t *testing.T, c *bus.Conn) *jetstream.StreamInfo {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := c.JS.Stream(ctx, c.Subjects.EventStream())
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// TestEnsureEventsIdempotent runs EnsureEvents again with the same limits,
// then with new ones, and checks the log keeps its events and takes the
// new limits.
func TestEnsureEventsIdempotent(t *testing.T) {
	forEachTarget(t, func(t *testing.T, tg *bustest.Target) {
		c := bustest.Connect(t, tg.URL)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		cfg := persistence.EventLogConfig{MaxAge: time.Hour, MaxBytes: 64 << 20, Replicas: 1}
		if _, err := persistence.EnsureEvents(ctx, c, cfg); err != nil {
			t.Fatal(err)
		}
		pub, err := bus.NewPublisher(c, "tester")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := pub.Expire(ctx, "users", bus.Expire{Keys: []string{"k"}}); err != nil {
			t.Fatal(err)
		}
		for range 2 {
			st, err := persistence.EnsureEvents(ctx, c, cfg)
			if err != nil {
				t.Fatalf("second EnsureEvents with the same limits: %v", err)
			}
			if st.CachedInfo().Config.Name != c.Subjects.EventStream() {
				t.Fatalf("returned stream %q", st.CachedInfo().Config.Name)
			}
		}
		info := streamInfo(t, c)
		if info.State.Msgs != 1 || info.Config.MaxAge != time.Hour || info.Config.MaxBytes != 64<<20 {
			t.Fatalf("after re-ensure: %d msgs, age %s, bytes %d", info.State.Msgs, info.Config.MaxAge, info.Config.MaxBytes)
		}

		cfg.MaxAge, cfg.MaxBytes = 2*time.Hour, 128<<20
		if _, err := persistence.EnsureEvents(ctx, c, cfg); err != nil {
			t.Fatalf("EnsureEvents with new limits: %v", err)
		}
		info = streamInfo(t, c)
		if info.Config.MaxAge != 2*time.Hour || info.Config.MaxBytes != 128<<20 {
			t.Fatalf("limits not updated: age %s, bytes %d", info.Config.MaxAge, info.Config.MaxBytes)
		}
		if info.State.Msgs != 1 {
			t.Fatalf("update lost events: %d msgs, want 1", info.State.Msgs)
		}
		if info.Config.Replicas != 1 {
			t.Fatalf("replicas %d, want 1", info.Config.Replicas)
		}
	})
}

// TestEnsureEventsReplicas checks that the replicas of the configuration
// reach the stream, and that replicas a single server cannot give fail at
// once with the server's reason instead of being retried until the
// caller's deadline, as if the server were only electing a leader.
func TestEnsureEventsReplicas(t *testing.T) {
	forEachTarget(t, func(t *testing.T, tg *bustest.Target) {
		c := bustest.Connect(t, tg.URL)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		for _, r := range []int{0, 1} {
			if _, err := persistence.EnsureEvents(ctx, c, persistence.EventLogConfig{MaxAge: time.Hour, Replicas: r}); err != nil {
				t.Fatalf("replicas %d: %v", r, err)
			}
			if got := streamInfo(t, c).Config.Replicas; got != 1 {
				t.Fatalf("replicas %d configured, stream has %d, want 1", r, got)
			}
		}
		// A log that does not exist yet, under another prefix.
		r3, err := bus.Connect(ctx, bus.ConnConfig{URL: tg.URL, Prefix: "r3"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(r3.NC.Close)
		start := time.Now()
		_, err = persistence.EnsureEvents(ctx, r3, persistence.EventLogConfig{MaxAge: time.Hour, Replicas: 3})
		if err == nil {
			t.Fatal("replicas 3 on a single server accepted")
		}
		if errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 5*time.Second {
			t.Fatalf("replicas 3 on a single server retried for %s until the deadline: %v", time.Since(start), err)
		}
		if !strings.Contains(err.Error(), "replicas") {
			t.Fatalf("error %q does not say replicas is the problem", err)
		}
	})
}

// TestEnsureEventsPrefix checks that two hierarchies on one NATS get a log
// each, capturing only their own subjects.
func TestEnsureEventsPrefix(t *testing.T) {
	tg := bustest.Embedded(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	def := bustest.Connect(t, tg.URL)
	bustest.EnsureEvents(t, def, persistence.EventLogConfig{})
	other, err := bus.Connect(ctx, bus.ConnConfig{URL: tg.URL, Prefix: "acme.cb"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(other.NC.Close)
	bustest.EnsureEvents(t, other, persistence.EventLogConfig{})
	pub, err := bus.NewPublisher(other, "tester")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pub.Expire(ctx, "users", bus.Expire{All: true}); err != nil {
		t.Fatal(err)
	}
	if n := streamInfo(t, other).State.Msgs; n != 1 {
		t.Fatalf("acme.cb log holds %d, want 1", n)
	}
	if n := streamInfo(t, def).State.Msgs; n != 0 {
		t.Fatalf("default log holds %d events of another prefix, want 0", n)
	}
}
