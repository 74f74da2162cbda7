package server_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/bus/bustest"
	"github.com/cachebus/cachebus/cachenode"
	"github.com/cachebus/cachebus/cachenode/partition"
	"github.com/cachebus/cachebus/cachenode/server"
	"github.com/cachebus/cachebus/persistence"
)

// TestLongTermRecordsSurviveRestart: a lone node killed and started again
// comes back with every acknowledged write of a long-term namespace,
// read back from the record log before it says ready; deleted and
// expired records stay gone, and a namespace that is not long-term starts
// empty, as before.
func TestLongTermRecordsSurviveRestart(t *testing.T) {
	for _, tc := range []struct {
		name      string
		key       string
		snapshots bool // the node keeps snapshots, and the restart reads them
	}{
		{"plain", "", false},
		{"sealed", "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=", false},
		{"snapshots", "", true},
		{"sealed snapshots", "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cl := newClusterWith(t, func(c *server.Config) {
				c.LongTerm = []string{"sessions"}
				c.Key = tc.key
				c.TombstoneTTL = time.Minute
				if tc.snapshots {
					c.SnapshotEvery = 100 * time.Millisecond
				}
			}, "n1")
			cl.waitReady()
			client := cl.client()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			const n = 500
			for i := range n {
				if _, err := client.Put(ctx, "sessions", fmt.Sprintf("s%d", i), []byte(fmt.Sprintf("value %d", i)), time.Hour); err != nil {
					t.Fatalf("put s%d: %v", i, err)
				}
			}
			// Rewritten, deleted, short-lived, and not long-term.
			if _, err := client.Put(ctx, "sessions", "s1", []byte("rewritten"), time.Hour); err != nil {
				t.Fatal(err)
			}
			for i := 0; i < n; i += 10 {
				if err := client.Delete(ctx, "sessions", fmt.Sprintf("s%d", i)); err != nil {
					t.Fatalf("delete s%d: %v", i, err)
				}
			}
			if _, err := client.Put(ctx, "sessions", "short", []byte("x"), time.Second); err != nil {
				t.Fatal(err)
			}
			if _, err := client.Put(ctx, "cache", "c1", []byte("x"), time.Hour); err != nil {
				t.Fatal(err)
			}

			if tc.snapshots {
				// Every partition's snapshot holds the writes above, and
				// one more write is in the log's tail only, most likely.
				waitSnapshots(t, cl.conns["n1"], tc.key)
				if _, err := client.Put(ctx, "sessions", "late", []byte("tail"), time.Hour); err != nil {
					t.Fatal(err)
				}
			}
			cl.crash("n1")
			restarted := cl.start("n1", []string{"n1"})
			cl.waitReady()
			if st := restarted.Status(); st.Replay != nil || st.Records < n-n/10 {
				t.Fatalf("status once ready: replay %+v, %d records; want no replay under way and at least %d records", st.Replay, st.Records, n-n/10)
			}
			for i := range n {
				key := fmt.Sprintf("s%d", i)
				rec, err := client.Get(ctx, "sessions", key)
				switch {
				case i%10 == 0:
					if !errors.Is(err, cachenode.ErrNotFound) {
						t.Fatalf("deleted %s after restart: %v %q, want not found", key, err, rec.Value)
					}
				case i == 1:
					if err != nil || string(rec.Value) != "rewritten" {
						t.Fatalf("rewritten %s after restart: %v %q", key, err, rec.Value)
					}
				default:
					if err != nil || string(rec.Value) != fmt.Sprintf("value %d", i) {
						t.Fatalf("%s after restart: %v %q", key, err, rec.Value)
					}
				}
			}
			// Its one-second TTL ends, whether the server or the reader
			// drops it.
			bustest.WaitFor(t, 5*time.Second, "the short-lived record to expire", func() bool {
				_, err := client.Get(ctx, "sessions", "short")
				return errors.Is(err, cachenode.ErrNotFound)
			})
			if rec, err := client.Get(ctx, "sessions", "late"); tc.snapshots && (err != nil || string(rec.Value) != "tail") {
				t.Fatalf("record written after the snapshots, after restart: %v %q", err, rec.Value)
			}
			if _, err := client.Get(ctx, "cache", "c1"); !errors.Is(err, cachenode.ErrNotFound) {
				t.Fatalf("record of a namespace that is not long-term after restart: %v, want not found", err)
			}
		})
	}
}

// waitSnapshots waits until a replay of "sessions" reads every partition
// from a snapshot: the node has built them all.
func waitSnapshots(t *testing.T, c *bus.Conn, key string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l, err := persistence.BindRecordLog(ctx, c, persistence.RecordLogConfig{LongTerm: []string{"sessions"},
		TombstoneTTL: time.Minute, Key: key})
	if err != nil {
		t.Fatal(err)
	}
	var last persistence.ReplayStats
	bustest.WaitFor(t, 20*time.Second, "every partition's snapshot to hold every write", func() bool {
		st, err := l.Replay(ctx, "sessions", partition.All(), func(persistence.Record) error { return nil }, nil)
		last = st
		return err == nil && st.Snapshots == partition.Partitions
	})
	t.Logf("snapshot replay: %+v", last)
}
