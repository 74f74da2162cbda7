//go:build unix

package e2e

import (
	"context"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus/bustest"
	"github.com/cachebus/cachebus/e2e/harness"
)

// TestDrainNodeUnderLoad holds drainRecords records on three `cachebus
// node` processes (one backup each) and drains one with `cachebus drain
// node n3 --wait` while readers go through every key: no read misses a
// record that exists, the records n3 sends keep to its migrate rate, and
// n3 ends drained, out of the baseline, holding nothing.
func TestDrainNodeUnderLoad(t *testing.T) {
	// The rate makes the move last a few seconds, long enough for the
	// readers to cross it many times.
	rate := drainRecords / 4
	nats := harn.StartNATS(t)
	nodes := harn.StartCacheNodesWith(t, nats.URL, map[string]string{
		"CACHEBUS_MIGRATE_RATE": strconv.Itoa(rate),
	}, "n1", "n2", "n3")
	for _, n := range nodes {
		n.WaitReady(t, 30*time.Second)
	}
	n3 := nodes[2]
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cl := harness.NodeClient(t, nats.URL)
	key := func(i int) string { return fmt.Sprintf("drain:%07d", i) }
	value := func(i int) string { return fmt.Sprintf("%-100d", i) } // 100 bytes
	start := time.Now()
	harness.Parallel(ctx, t, drainRecords, func(i int) error {
		_, err := cl.Put(ctx, harness.RecordsNS, key(i), []byte(value(i)), time.Hour)
		return err
	})
	t.Logf("%d records written in %s; n3 holds %d", drainRecords, time.Since(start).Round(time.Millisecond), n3.Status(t).Records)

	// Readers cross every key in multi-gets of 100 until stopped.
	stop := make(chan struct{})
	var reads, misses atomic.Int64
	var firstMiss atomic.Value
	var wg sync.WaitGroup
	const readers, batch = 4, 100
	for r := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rc := harness.NodeClient(t, nats.URL)
			keys := make([]string, 0, batch)
			for from := r * batch; ; from = (from + readers*batch) % drainRecords {
				select {
				case <-stop:
					return
				default:
				}
				keys = keys[:0]
				for i := from; i < min(from+batch, drainRecords); i++ {
					keys = append(keys, key(i))
				}
				rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				got, err := rc.GetMulti(rctx, harness.RecordsNS, keys)
				cancel()
				for j, k := range keys {
					reads.Add(1)
					if rec, ok := got[k]; err != nil || !ok || string(rec.Value) != value(from+j) {
						misses.Add(1)
						firstMiss.CompareAndSwap(nil, fmt.Sprintf("%s: found %v, err %v", k, ok, err))
					}
				}
			}
		}()
	}
	bustest.WaitFor(t, 10*time.Second, "readers under way", func() bool { return reads.Load() > 10*batch })

	sentBefore := handedOut(t, n3)
	began := time.Now()
	code, out := harn.Run(t, 3*time.Minute, map[string]string{"CACHEBUS_NATS_URL": nats.URL, "CACHEBUS_FAILURE_TIMEOUT": harness.NodeFailureTimeout.String()},
		"drain", "node", "n3", "--wait")
	took := time.Since(began)
	close(stop)
	wg.Wait()
	if code != 0 || !regexp.MustCompile(`node/n3 drained after`).MatchString(out) {
		t.Fatalf("cachebus drain node n3 --wait: exit %d\n%s", code, out)
	}
	sent := handedOut(t, n3) - sentBefore
	t.Logf("drain of n3 took %s: it sent %.0f records (%.0f/s, rate %d/s); %d reads during it, %d missed",
		took.Round(time.Millisecond), sent, sent/took.Seconds(), rate, reads.Load(), misses.Load())
	t.Logf("cachebus drain --wait said:\n%s", harness.Tail(out, 12))
	if misses.Load() > 0 {
		t.Errorf("%d reads missed a record that exists; first: %v", misses.Load(), firstMiss.Load())
	}
	if sent == 0 {
		t.Errorf("n3 sent no records: its partitions were not copied from it")
	}
	// One burst (a tenth of a second's worth) may go at once.
	if fastest := time.Duration((sent - float64(rate)/10) / float64(rate) * float64(time.Second)); took < fastest {
		t.Errorf("n3 sent %.0f records in %s: faster than its rate of %d/s", sent, took, rate)
	}
	st := n3.Status(t)
	if st.InBaseline || st.Owned != 0 || st.Held != 0 {
		t.Errorf("n3 after its drain: in baseline %v, owns %d, holds %d", st.InBaseline, st.Owned, st.Held)
	}
	code, out = harn.Run(t, 30*time.Second, map[string]string{"CACHEBUS_NATS_URL": nats.URL}, "baseline", "show")
	if code != 0 || strings.Contains(out, "n3") {
		t.Errorf("cachebus baseline show after the drain: exit %d\n%s", code, out)
	}
	for _, n := range nodes[:2] {
		n.WaitReady(t, 30*time.Second)
	}
}

// handedOut reads cachebus_node_handover_sent_records_total off node n's
// /metrics.
func handedOut(t *testing.T, n *harness.CacheNode) float64 {
	t.Helper()
	code, body := harness.HTTPGet("http://" + n.HTTPAddr + "/metrics")
	if code != http.StatusOK {
		t.Fatalf("%s /metrics: %d %s", n.ID, code, harness.Tail(body, 5))
	}
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, "cachebus_node_handover_sent_records_total") {
			f := strings.Fields(line)
			v, err := strconv.ParseFloat(f[len(f)-1], 64)
			if err != nil {
				t.Fatalf("%s /metrics: %q: %v", n.ID, line, err)
			}
			return v
		}
	}
	t.Fatalf("%s /metrics has no cachebus_node_handover_sent_records_total", n.ID)
	return 0
}
