//go:build unix

package e2e

import (
	"context"
	"fmt"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus/bustest"
	"github.com/cachebus/cachebus/cachenode/partition"
	"github.com/cachebus/cachebus/e2e/harness"
)

// TestLongTermSurvivesSIGKILL writes long-term records through a lone
// `cachebus node` process, deletes every tenth, SIGKILLs the node and
// starts it again: before it says ready it has read the records back from
// JetStream, and it serves every acknowledged record with its value and
// none of the deleted ones. It reads them back from the record log alone,
// and from the snapshots the node keeps beside it, with writes and deletes
// made after the last snapshot in the log's tail.
func TestLongTermSurvivesSIGKILL(t *testing.T) {
	for _, tc := range []struct {
		name  string
		every string // CACHEBUS_RECORDS_SNAPSHOT_EVERY
	}{
		{"log", "0"},
		{"snapshots", "500ms"},
	} {
		t.Run(tc.name, func(t *testing.T) { longTermSurvivesSIGKILL(t, tc.every != "0", tc.every) })
	}
}

func longTermSurvivesSIGKILL(t *testing.T, snapshots bool, every string) {
	const sealKey = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
	nats := harn.StartNATS(t)
	node := harn.StartCacheNodesWith(t, nats.URL, map[string]string{
		"CACHEBUS_LONG_TERM":              harness.RecordsNS,
		"CACHEBUS_RECORD_KEY":             sealKey,
		"CACHEBUS_RECORDS_SNAPSHOT_EVERY": every,
	}, "lt1")[0]
	node.WaitReady(t, 30*time.Second)
	cl := harness.NodeClient(t, nats.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	key := func(i int) string { return fmt.Sprintf("session:%06d", i) }
	value := func(i int) string { return fmt.Sprintf("token-%d-%x", i, i*7919) }
	rewritten := func(i int) string { return fmt.Sprintf("rewritten-%d", i) }
	start := time.Now()
	harness.Parallel(ctx, t, longTermRecords, func(i int) error {
		if i%10 == 0 {
			if _, err := cl.Put(ctx, harness.RecordsNS, key(i), []byte("doomed"), time.Hour); err != nil {
				return err
			}
			return cl.Delete(ctx, harness.RecordsNS, key(i))
		}
		_, err := cl.Put(ctx, harness.RecordsNS, key(i), []byte(value(i)), time.Hour)
		return err
	})
	took := time.Since(start)
	t.Logf("%d long-term records written and acknowledged in %s (%.0f/s)", longTermRecords, took.Round(time.Millisecond),
		float64(longTermRecords)/took.Seconds())
	// With snapshots: once every partition has one, one record in a
	// hundred is deleted and one rewritten, so that the restart reads
	// snapshots that may not hold them yet and the log's tail over them.
	deleted := func(i int) bool { return i%10 == 0 || snapshots && i%100 == 5 }
	if snapshots {
		admin := harness.Connect(t, nats.URL)
		bustest.WaitFor(t, time.Minute, "the node to keep a snapshot of every partition", func() bool {
			return harness.RecordLogSnapshots(ctx, t, admin, sealKey) == partition.Partitions
		})
		harness.Parallel(ctx, t, longTermRecords/100, func(j int) error {
			if err := cl.Delete(ctx, harness.RecordsNS, key(j*100+5)); err != nil {
				return err
			}
			_, err := cl.Put(ctx, harness.RecordsNS, key(j*100+7), []byte(rewritten(j*100+7)), time.Hour)
			return err
		})
	}
	want := func(i int) string {
		if snapshots && i%100 == 7 {
			return rewritten(i)
		}
		return value(i)
	}

	node.P.Signal(syscall.SIGKILL)
	node.P.Wait(10 * time.Second)
	restart := time.Now()
	node.Start(t)
	node.WaitReady(t, 2*time.Minute)
	t.Logf("restarted node ready in %s", time.Since(restart).Round(time.Millisecond))

	const batch = 500
	for from := 0; from < longTermRecords; from += batch {
		keys := make([]string, 0, batch)
		for i := from; i < min(from+batch, longTermRecords); i++ {
			keys = append(keys, key(i))
		}
		got, err := cl.GetMulti(ctx, harness.RecordsNS, keys)
		if err != nil {
			t.Fatalf("get %s…: %v", keys[0], err)
		}
		for i := from; i < min(from+batch, longTermRecords); i++ {
			rec, found := got[key(i)]
			switch {
			case deleted(i) && found:
				t.Fatalf("%s was deleted before the kill, and is back: %q", key(i), rec.Value)
			case !deleted(i) && (!found || string(rec.Value) != want(i)):
				t.Fatalf("%s after the kill: found %v, %q; want %q", key(i), found, rec.Value, want(i))
			}
		}
	}
}

// TestLongTermSurvivesNATSNodeLoss writes unique long-term records through
// a cache node on a three-node NATS cluster (record log on three
// replicas) while one NATS server is SIGKILLed; then the cache node is
// SIGKILLed too and started again. It must read every acknowledged record
// back from the two servers left: no acknowledged write is lost. Writes
// refused while JetStream elects new leaders (the node refuses long-term
// writes at once while the log has no quorum) are tried again, as an
// application would, and every one must end acknowledged.
func TestLongTermSurvivesNATSNodeLoss(t *testing.T) {
	c := harn.StartCluster(t, 3)
	for _, n := range c.Nodes {
		n.WaitReady(t, 60*time.Second)
	}
	node := harn.StartCacheNodesWith(t, c.URLs(), map[string]string{
		"CACHEBUS_LONG_TERM":        harness.RecordsNS,
		"CACHEBUS_RECORDS_REPLICAS": "3",
	}, "lt1")[0]
	node.WaitReady(t, 60*time.Second)
	cl := harness.NodeClient(t, c.URLs())
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	const total = 4000
	key := func(i int) string { return fmt.Sprintf("acked:%05d", i) }
	var (
		mu     sync.Mutex
		acked  []int
		failed int
		// lastFail is when a write last failed, recovered when a write
		// was acknowledged again after the first failure.
		lastFail, recovered time.Time
	)
	killAt := total / 4
	var wg sync.WaitGroup
	next := make(chan int)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				// As an application would, a refused write is tried again
				// (while JetStream elects new leaders the node refuses
				// long-term writes at once) until it is acknowledged or
				// the retries give up.
				for try := 0; try < 200; try++ {
					wctx, wcancel := context.WithTimeout(ctx, 2*time.Second)
					_, err := cl.Put(wctx, harness.RecordsNS, key(i), []byte(fmt.Sprint("v", i)), time.Hour)
					wcancel()
					mu.Lock()
					if err == nil {
						acked = append(acked, i)
						if !lastFail.IsZero() && recovered.IsZero() {
							recovered = time.Now()
						}
					} else {
						failed++
						lastFail = time.Now()
					}
					mu.Unlock()
					if err == nil || ctx.Err() != nil {
						break
					}
					time.Sleep(100 * time.Millisecond) // a client's back-off, not a wait for a condition
				}
			}
		}()
	}
	victim := c.Nodes[0]
	var killed time.Time
	for i := range total {
		if i == killAt {
			victim.P.Signal(syscall.SIGKILL)
			killed = time.Now()
		}
		next <- i
	}
	close(next)
	wg.Wait()
	victim.P.Wait(10 * time.Second)
	t.Logf("%d writes: %d acknowledged, %d attempts refused or failed, NATS server %s killed after %d were sent; writes accepted again %s after the kill",
		total, len(acked), failed, victim.Name, killAt, sinceOrNever(recovered, killed))
	if len(acked) < total {
		t.Fatalf("only %d of %d writes acknowledged, retries included, with two of three NATS servers up", len(acked), total)
	}

	node.P.Signal(syscall.SIGKILL)
	node.P.Wait(10 * time.Second)
	node.Start(t)
	node.WaitReady(t, 2*time.Minute)
	lost := 0
	for _, i := range acked {
		rec, err := cl.Get(ctx, harness.RecordsNS, key(i))
		if err != nil || string(rec.Value) != fmt.Sprint("v", i) {
			if lost < 5 {
				t.Errorf("acknowledged %s after the NATS server and the node were killed: %v %q", key(i), err, rec.Value)
			}
			lost++
		}
	}
	if lost > 0 {
		t.Fatalf("%d of %d acknowledged long-term writes lost", lost, len(acked))
	}
}

// sinceOrNever is t-from, or "never" when t is zero.
func sinceOrNever(t, from time.Time) string {
	if t.IsZero() {
		return "never (no write failed)"
	}
	return t.Sub(from).Round(time.Millisecond).String()
}
