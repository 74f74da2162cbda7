//go:build unix

package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus/bustest"
	"github.com/cachebus/cachebus/cachenode"
	"github.com/cachebus/cachebus/e2e/harness"
	"github.com/cachebus/cachebus/persistence"
)

// TestSplitAndHeal cuts the NATS server of a cache node off from the
// JetStream majority: of three `cachebus nats` processes (record log on
// three replicas) the two the node is not connected to are stopped with
// SIGSTOP, for longer than a raft leader without a quorum takes to step
// down. Long-term writes must then be refused with a clear error, the
// first after at most the node's request timeout and the later ones at
// once; nothing of a refused write may be read; acknowledged records are
// still read, and a namespace that is not long-term still takes writes.
// After SIGCONT long-term writes are accepted again, every acknowledged
// write is read back with its value, none of the refused ones is, in the
// record log neither, and so after a SIGKILL of the node and its replay
// from the record log. It runs with the record log's leader on the node's
// server, where refused writes wait uncommitted in the leader's raft log
// and are committed after the heal (the node must undo them), and on a
// stopped server.
func TestSplitAndHeal(t *testing.T) {
	for _, tc := range []struct {
		name   string
		leader string
	}{
		{"leader cut off with the node", "n1"},
		{"leader in the majority", "n2"},
	} {
		t.Run(tc.name, func(t *testing.T) { splitAndHeal(t, tc.leader) })
	}
}

// splitHold is how long the split lasts at least: longer than the 10s
// after which a raft leader that hears no quorum steps down.
const splitHold = 12 * time.Second

func splitAndHeal(t *testing.T, leader string) {
	c := harn.StartCluster(t, 3)
	for _, n := range c.Nodes {
		n.WaitReady(t, 60*time.Second)
	}
	home, others := c.Nodes[0], c.Nodes[1:]
	node := harn.StartCacheNodesWith(t, home.URL, map[string]string{
		"CACHEBUS_LONG_TERM":        harness.RecordsNS,
		"CACHEBUS_RECORDS_REPLICAS": "3",
	}, "sh1")[0]
	node.WaitReady(t, 60*time.Second)
	cl := harness.NodeClient(t, home.URL)
	admin := harness.Connect(t, home.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	logName := persistence.RecordStreamConfig(admin.Subjects, persistence.RecordLogConfig{}, true).Name
	ci := harness.LeadStream(ctx, t, admin, logName, leader, 60*time.Second, "n1", "n2", "n3")
	t.Logf("record log before the split: %s", harness.Describe(ci))

	// Acknowledged before the split.
	const before = 300
	ackedKey := func(i int) string { return fmt.Sprintf("acked:%04d", i) }
	value := func(i int) string { return fmt.Sprintf("v%d-%x", i, i*7919) }
	acked := map[string]string{}
	for i := range before {
		if _, err := cl.Put(ctx, harness.RecordsNS, ackedKey(i), []byte(value(i)), time.Hour); err != nil {
			t.Fatalf("put %s before the split: %v", ackedKey(i), err)
		}
		acked[ackedKey(i)] = value(i)
	}

	t.Logf("SIGSTOP of %s and %s: %s, the node's server, is cut off from the JetStream majority", others[0].Name, others[1].Name, home.Name)
	for _, n := range others {
		n.P.Stop()
	}
	thawed := false
	thaw := func() {
		if !thawed {
			thawed = true
			for _, n := range others {
				n.P.Signal(syscall.SIGCONT)
			}
		}
	}
	defer thaw()
	split := time.Now()

	// Refused: new keys, and new values of acknowledged ones. Writes go on
	// until one is refused at once: the node knows the log unreachable.
	var refused []string
	var took []time.Duration
	put := func(key, val string) (time.Duration, error) {
		wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
		defer wcancel()
		start := time.Now()
		_, err := cl.Put(wctx, harness.RecordsNS, key, []byte(val), time.Hour)
		return time.Since(start), err
	}
	pace := time.NewTicker(50 * time.Millisecond)
	defer pace.Stop()
	for i := 0; len(took) < 10 || slices.Min(took[1:]) > 100*time.Millisecond || time.Since(split) < splitHold; i++ {
		if i == 1000 {
			t.Fatalf("1000 long-term writes during the split, none refused at once: %s", spread(took))
		}
		if i > 0 {
			<-pace.C
		}
		key := fmt.Sprintf("refused:%04d", i)
		if i%2 == 1 {
			key = ackedKey(i) // an acknowledged record, overwritten
		}
		d, err := put(key, "refused")
		if err == nil {
			t.Fatalf("long-term write of %s acknowledged %s after the split, with no JetStream quorum", key, time.Since(split).Round(time.Millisecond))
		}
		if !errors.Is(err, cachenode.ErrUnavailable) || !strings.Contains(err.Error(), "long-term write refused: the record log (JetStream) is unreachable or has no quorum from sh1") {
			t.Fatalf("long-term write of %s during the split: %v; want the refusal of an unreachable record log", key, err)
		}
		if i == 0 {
			t.Logf("first refusal: %v", err)
		}
		if d > time.Second && i > 0 {
			t.Logf("refusal %d, %s after the split, took %s", i, time.Since(split).Round(time.Millisecond), d.Round(time.Millisecond))
		}
		refused = append(refused, key)
		took = append(took, d)
	}
	t.Logf("%d long-term writes refused during the split, first after %s, later ones: %s", len(took), took[0].Round(time.Millisecond), spread(took[1:]))

	// Reads of acknowledged records, nothing of the refused writes, and a
	// namespace that is not long-term, during the split.
	checkRecords(ctx, t, cl, acked, refused, "during the split")
	if _, err := put("unrelated", "x"); err == nil {
		t.Fatal("long-term write acknowledged during the split")
	}
	for i := range 20 {
		k := fmt.Sprintf("cache:%d", i)
		if _, err := cl.Put(ctx, "cache", k, []byte("x"), time.Hour); err != nil {
			t.Fatalf("write of namespace cache during the split: %v", err)
		}
		if r, err := cl.Get(ctx, "cache", k); err != nil || string(r.Value) != "x" {
			t.Fatalf("read of namespace cache during the split: %v %q", err, r.Value)
		}
	}
	if n := counter(t, node, "cachebus_node_longterm_refused_total"); n < float64(len(refused)) {
		t.Fatalf("cachebus_node_longterm_refused_total = %v after %d refusals", n, len(refused))
	}
	refused = append(refused, "unrelated")

	t.Logf("SIGCONT of %s and %s after %s", others[0].Name, others[1].Name, time.Since(split).Round(time.Millisecond))
	thaw()
	healed := time.Now()
	bustest.WaitFor(t, 90*time.Second, "long-term writes accepted after the heal", func() bool {
		_, err := put("healed", "yes")
		return err == nil
	})
	acked["healed"] = "yes"
	t.Logf("long-term writes accepted %s after the heal", time.Since(healed).Round(time.Millisecond))
	for i := range 50 {
		k := fmt.Sprintf("after:%04d", i)
		if _, err := put(k, value(i)); err != nil {
			t.Fatalf("put %s after the heal: %v", k, err)
		}
		acked[k] = value(i)
	}
	checkRecords(ctx, t, cl, acked, refused, "after the heal")

	// The record log itself: every acknowledged write, none refused.
	inLog := harness.RecordLogValues(ctx, t, admin)
	for k, v := range acked {
		if inLog[k] != v {
			t.Errorf("record log after the heal: %s = %q, want %q", k, inLog[k], v)
		}
	}
	for k, v := range inLog {
		if acked[k] != v {
			t.Errorf("record log after the heal: %s = %q, never acknowledged", k, v)
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	out := node.P.Output()
	t.Logf("node log: %d \"record log unreachable\", %d \"record log reachable again\", %d refused writes found kept and undone",
		strings.Count(out, "record log unreachable"), strings.Count(out, "record log reachable again"),
		strings.Count(out, "had been kept after all"))

	node.P.Signal(syscall.SIGKILL)
	node.P.Wait(10 * time.Second)
	restart := time.Now()
	node.Start(t)
	node.WaitReady(t, 2*time.Minute)
	t.Logf("node restarted and ready in %s", time.Since(restart).Round(time.Millisecond))
	checkRecords(ctx, t, cl, acked, refused, "after a SIGKILL and a replay")
}

// checkRecords requires every record of acked with its value, and none of
// the keys of refused that acked does not have.
func checkRecords(ctx context.Context, t *testing.T, cl *cachenode.Client, acked map[string]string, refused []string, when string) {
	t.Helper()
	keys := make([]string, 0, len(acked)+len(refused))
	for k := range acked {
		keys = append(keys, k)
	}
	for _, k := range refused {
		if _, ok := acked[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for from := 0; from < len(keys); from += 200 {
		batch := keys[from:min(from+200, len(keys))]
		got, err := cl.GetMulti(ctx, harness.RecordsNS, batch)
		if err != nil {
			t.Fatalf("read %s: %v", when, err)
		}
		for _, k := range batch {
			rec, found := got[k]
			want, ok := acked[k]
			switch {
			case ok && (!found || string(rec.Value) != want):
				t.Fatalf("acknowledged %s %s: found %v %q, want %q", k, when, found, rec.Value, want)
			case !ok && found:
				t.Fatalf("refused %s is there %s: %q", k, when, rec.Value)
			}
		}
	}
}

// counter reads counter name off node n's /metrics, 0 when absent.
func counter(t *testing.T, n *harness.CacheNode, name string) float64 {
	t.Helper()
	code, body := harness.HTTPGet("http://" + n.HTTPAddr + "/metrics")
	if code != http.StatusOK {
		t.Fatalf("%s /metrics: %d %s", n.ID, code, harness.Tail(body, 5))
	}
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, name+" ") || strings.HasPrefix(line, name+"{") {
			f := strings.Fields(line)
			v, err := strconv.ParseFloat(f[len(f)-1], 64)
			if err != nil {
				t.Fatalf("%s /metrics: %q: %v", n.ID, line, err)
			}
			return v
		}
	}
	return 0
}

// spread sums durations up: min, median, max.
func spread(ds []time.Duration) string {
	s := slices.Clone(ds)
	slices.Sort(s)
	r := func(d time.Duration) time.Duration { return d.Round(10 * time.Microsecond) }
	return fmt.Sprintf("min %s, median %s, max %s", r(s[0]), r(s[len(s)/2]), r(s[len(s)-1]))
}
