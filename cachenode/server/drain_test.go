package server_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/bus/bustest"
	"github.com/cachebus/cachebus/cachenode"
	"github.com/cachebus/cachebus/cachenode/server"
	"github.com/cachebus/cachebus/persistence"
)

// TestDrainNode drains one of three nodes holding a few thousand records
// while readers go through every key: no read misses a record, the move
// keeps to the migrate rate of the nodes sending, the node ends drained
// and out of the baseline, and cancelling the drain brings it back.
func TestDrainNode(t *testing.T) {
	const (
		records = 6000
		rate    = 3000 // records/s each node may send
	)
	// A failure timeout longer than the package's: under the race
	// detector on a loaded machine a heartbeat late by 600ms would make a
	// holder look dead, and a read fail for that, not for the drain.
	const failure = 2 * time.Second
	cl := newClusterWith(t, func(c *server.Config) {
		c.MigrateRate = server.MigrateRate{Records: rate}
		c.FailureTimeout = failure
	}, "n1", "n2", "n3")
	newClient := func() *cachenode.Client { return cl.clientWith(cachenode.ClientOptions{FailureTimeout: failure}) }
	cl.waitSettled()
	ctx := context.Background()
	client := newClient()
	keys := numberedKeys("drain-", records)
	var put sync.WaitGroup
	failed := make(chan error, 8)
	for w := range 8 {
		put.Add(1)
		go func() {
			defer put.Done()
			for i := w; i < len(keys); i += 8 {
				if _, err := client.Put(ctx, "sessions", keys[i], []byte("v-"+keys[i]), time.Hour); err != nil {
					failed <- err
					return
				}
			}
		}()
	}
	put.Wait()
	close(failed)
	if err := <-failed; err != nil {
		t.Fatal(err)
	}
	held := cl.nodes["n3"].Status().Records
	t.Logf("n3 holds %d of %d records (%d copies in all)", held, records, cl.records())

	// Readers go through every key until told to stop; a miss is a
	// record that exists read as absent.
	stop := make(chan struct{})
	var reads, misses atomic.Int64
	var firstMiss atomic.Value
	var wg sync.WaitGroup
	for r := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rc := newClient()
			for i := r; ; i = (i + 4) % len(keys) {
				select {
				case <-stop:
					return
				default:
				}
				rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				v, err := rc.Get(rctx, "sessions", keys[i])
				cancel()
				reads.Add(1)
				if err != nil || string(v.Value) != "v-"+keys[i] {
					misses.Add(1)
					firstMiss.CompareAndSwap(nil, fmt.Sprintf("%s: %q %v", keys[i], v.Value, err))
				}
			}
		}()
	}

	state := openState(t, cl)
	pub, err := bus.NewPublisher(cl.conn(), "test")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := state.SetDrain(ctx, pub, "node", "n3", bus.Drain{On: true}); err != nil {
		t.Fatal(err)
	}
	bustest.WaitFor(t, 30*time.Second, "n3 drained", func() bool {
		cs, err := state.Load(ctx)
		return err == nil && cs.Drains["node/n3"].Drained
	})
	took := time.Since(start)
	st := cl.nodes["n3"].Status()
	if st.InBaseline || st.Owned != 0 || st.Held != 0 {
		t.Fatalf("n3 drained: %+v", st)
	}
	b, err := cl.baseline().Baseline(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, in := b.Member("n3"); in {
		t.Fatalf("n3 still in the baseline: %+v", b.Members)
	}
	cl.waitSettled()
	close(stop)
	wg.Wait()
	t.Logf("drain took %s; %d reads during it, %d misses", took.Round(time.Millisecond), reads.Load(), misses.Load())
	if misses.Load() > 0 {
		t.Fatalf("%d reads missed a record that exists, first: %v", misses.Load(), firstMiss.Load())
	}
	// Every record moved is sent at the rate of its sender: the move
	// cannot have been faster than the busiest sender's share allows.
	sent := map[string]float64{}
	for id, s := range cl.nodes {
		sent[id] = s.HandedOut()
	}
	t.Logf("records sent per node: %v (rate %d/s)", sent, rate)
	for id, n := range sent {
		// One burst (a tenth of a second's worth) goes at once.
		if floor := time.Duration((n - rate/10) / rate * float64(time.Second)); took < floor {
			t.Errorf("%s sent %.0f records in %s: faster than %d/s", id, n, took, rate)
		}
	}
	for _, k := range keys {
		v, err := client.Get(ctx, "sessions", k)
		if err != nil || string(v.Value) != "v-"+k {
			t.Fatalf("after the drain: %s = %q, %v", k, v.Value, err)
		}
	}

	// Cancelled: n3 rejoins and serves its partitions again.
	if _, err := state.SetDrain(ctx, pub, "node", "n3", bus.Drain{On: false}); err != nil {
		t.Fatal(err)
	}
	bustest.WaitFor(t, 30*time.Second, "n3 back in the baseline, serving", func() bool {
		st := cl.nodes["n3"].Status()
		return st.InBaseline && st.Primary > 0 && st.Held == st.Owned
	})
	cl.waitSettled()
	for _, k := range keys {
		v, err := client.Get(ctx, "sessions", k)
		if err != nil || string(v.Value) != "v-"+k {
			t.Fatalf("after the drain was cancelled: %s = %q, %v", k, v.Value, err)
		}
	}
}

// TestDrainLastMember: the baseline's only member refuses to leave it,
// keeps serving, and is not reported drained.
func TestDrainLastMember(t *testing.T) {
	cl := newCluster(t, "solo")
	cl.waitSettled()
	ctx := context.Background()
	client := cl.client()
	if _, err := client.Put(ctx, "sessions", "k", []byte("v"), time.Hour); err != nil {
		t.Fatal(err)
	}
	state := openState(t, cl)
	pub, err := bus.NewPublisher(cl.conn(), "test")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := state.SetDrain(ctx, pub, "node", "solo", bus.Drain{On: true}); err != nil {
		t.Fatal(err)
	}
	bustest.WaitFor(t, 10*time.Second, "solo heartbeating draining", func() bool {
		m, ok := cl.nodes["solo"].Members().Get("node", "solo")
		return ok && m.State == bus.StateDraining
	})
	// The round that announced the drain tried to leave the baseline.
	if st := cl.nodes["solo"].Status(); !st.InBaseline || st.Held != st.Owned {
		t.Fatalf("solo after its drain: %+v", st)
	}
	if v, err := client.Get(ctx, "sessions", "k"); err != nil || string(v.Value) != "v" {
		t.Fatalf("solo after its drain: k = %q, %v", v.Value, err)
	}
	cs, err := state.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if cs.Drains["node/solo"].Drained {
		t.Fatal("the last member reported drained")
	}
}

// openState opens the cluster state bucket on the test's connection.
func openState(t *testing.T, cl *cluster) *persistence.State {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := persistence.OpenOrBindState(ctx, cl.conn())
	if err != nil {
		t.Fatal(err)
	}
	return st
}
