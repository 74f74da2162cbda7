//go:build unix

package fault

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus/bustest"
	"github.com/cachebus/cachebus/cachenode"
	"github.com/cachebus/cachebus/e2e/harness"
)

// harn starts the processes of the tests that run real ones, from the
// binaries TestMain builds; nil under -short.
var harn *harness.Harness

func init() {
	buildBinaries = func() (func(), error) {
		dir, err := os.MkdirTemp("", "cachebus-fault-")
		if err != nil {
			return nil, err
		}
		bins, err := harness.Build(dir, raceEnabled)
		if err != nil {
			_ = os.RemoveAll(dir)
			return nil, err
		}
		harn = harness.New(bins)
		return func() { _ = os.RemoveAll(dir) }, nil
	}
}

// Settings of TestRecordsUnderFaults.
const (
	recordsPlainNS   = "plain"                // the in-memory namespace, beside harness.RecordsNS
	recordsTimeout   = 90 * time.Second       // the whole test, from the first process started
	recordsOpTimeout = 2 * time.Second        // one read or one write attempt
	recordsBackoff   = 100 * time.Millisecond // between two attempts of a refused write
	recordsServeMax  = harness.NodeFailureTimeout + 5*time.Second
	// recordsElection is NATS's longest raft election timeout (the
	// nats-server's maxElectionTimeoutDefault): the followers of a stream
	// whose leader was SIGKILLed wait up to that long without a heartbeat
	// before electing another, and the long-term namespace refuses writes
	// meanwhile.
	recordsElection = 9 * time.Second
	// recordsWaitMax bounds the test's waits for service after a fault,
	// well above the bounds the figures are held to, so that a slow
	// recovery is measured and reported rather than cut short.
	recordsWaitMax = 30 * time.Second
	recordsWriters = 4 // per namespace
	recordsReaders = 4
)

// TestRecordsUnderFaults is item 2 of issue 9: writes with
// acknowledgements, to a plain namespace and to a long-term one on R3,
// while a cache node and then a NATS server are SIGKILLed and restarted.
// No acknowledged write may be lost, through the faults and through a
// SIGKILL of every cache node afterwards for the long-term namespace; the
// cache tier must serve reads and writes again within the failure timeout
// plus 5s of each kill.
func TestRecordsUnderFaults(t *testing.T) {
	if harn == nil {
		t.Skip("skipped under -short: runs a NATS cluster and cache nodes as processes")
	}
	began := time.Now()
	ctx, within := budget(t, recordsTimeout)

	c := harn.StartCluster(t, 3)
	for _, n := range c.Nodes {
		n.WaitReady(t, within(60*time.Second))
	}
	nodes := harn.StartCacheNodesWith(t, c.URLs(), map[string]string{
		"CACHEBUS_LONG_TERM":        harness.RecordsNS,
		"CACHEBUS_RECORDS_REPLICAS": "3",
	}, "c1", "c2", "c3")
	for _, n := range nodes {
		n.WaitReady(t, within(60*time.Second))
	}
	conn := harness.Connect(t, c.URLs())
	cl, err := cachenode.NewClient(ctx, conn, cachenode.ClientOptions{FailureTimeout: harness.NodeFailureTimeout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	allServed := func() bool { return harness.ServesAll(cl, nodes) }
	bustest.WaitFor(t, within(20*time.Second), "the client to see the three cache nodes serve every partition", allServed)
	t.Logf("NATS cluster, three cache nodes and the client ready in %s", time.Since(began).Round(time.Millisecond))

	load := startRecordsLoad(t, cl)
	defer load.stop()
	namespaces := []string{recordsPlainNS, harness.RecordsNS}
	// servedSince waits until a write and a read of each namespace begun
	// at or after from have succeeded.
	servedSince := func(what string, from time.Time, timeout time.Duration) {
		t.Helper()
		var missing []string
		defer func() {
			if t.Failed() && len(missing) > 0 {
				t.Logf("no success since %s of: %s; last errors: %s", from.Format("15:04:05.000"), strings.Join(missing, ", "), load.lastErrors())
			}
		}()
		bustest.WaitFor(t, within(timeout), what, func() bool {
			missing = missing[:0]
			for _, ns := range namespaces {
				for _, op := range []string{"write", "read"} {
					if !load.okSince(op, ns, from) {
						missing = append(missing, op+" "+ns)
					}
				}
			}
			return len(missing) == 0
		})
	}
	servedSince("reads and writes of both namespaces before the faults", began, 10*time.Second)
	// moreAcked waits until recordsPhaseWrites more writes of each
	// namespace have been acknowledged: the load runs a while in each
	// state before the next fault.
	moreAcked := func(what string) {
		t.Helper()
		want := map[string]int{}
		for _, ns := range namespaces {
			want[ns] = load.ackedCount(ns) + recordsPhaseWrites
		}
		bustest.WaitFor(t, within(recordsWaitMax), fmt.Sprintf("%d more acknowledged writes of each namespace %s", recordsPhaseWrites, what), func() bool {
			for _, ns := range namespaces {
				if load.ackedCount(ns) < want[ns] {
					return false
				}
			}
			return true
		})
	}
	moreAcked("before the faults")

	// Fault 1: SIGKILL of a cache node, whose partitions its backups
	// serve; then it is started again and takes them back.
	victim := nodes[1]
	kill1 := time.Now()
	victim.P.Signal(syscall.SIGKILL)
	victim.P.Wait(10 * time.Second)
	bustest.WaitFor(t, within(harness.NodeFailureTimeout+5*time.Second), "the client to drop the killed "+victim.ID, func() bool {
		return !cl.Table().Live(victim.ID)
	})
	dropped := time.Now()
	servedSince("reads and writes begun after "+victim.ID+" was dropped to succeed", dropped, recordsWaitMax)
	t.Logf("SIGKILL of cache node %s; dropped by the client %s later, served again %s after the kill",
		victim.ID, dropped.Sub(kill1).Round(time.Millisecond), time.Since(kill1).Round(time.Millisecond))
	restart1 := time.Now()
	victim.Start(t)
	victim.WaitReady(t, within(30*time.Second))
	bustest.WaitFor(t, within(10*time.Second), "the client to see "+victim.ID+" serve its partitions again", allServed)
	t.Logf("%s restarted, ready and serving its partitions %s later", victim.ID, time.Since(restart1).Round(time.Millisecond))
	servedSince("reads and writes after "+victim.ID+" came back", time.Now(), recordsWaitMax)
	moreAcked("after " + victim.ID + " came back")

	// Fault 2: SIGKILL of the NATS server that leads the record log, the
	// stream of the long-term namespace (every process and the client have
	// the three URLs, so none depends on it alone); then it is started
	// again.
	recStream, err := conn.JS.Stream(ctx, conn.Subjects.BucketName("CACHEBUS_RECORDS"))
	if err != nil {
		t.Fatalf("the record log: %v", err)
	}
	ci := harness.ClusterInfo(t, recStream)
	natsVictim := c.Node(ci.Leader)
	t.Logf("record log before the NATS fault: %s; the test's client is on %s", harness.Describe(ci), conn.NC.ConnectedServerName())
	kill2 := time.Now()
	natsVictim.P.Signal(syscall.SIGKILL)
	natsVictim.P.Wait(10 * time.Second)
	servedSince("reads and writes begun after NATS server "+natsVictim.Name+" was killed to succeed", kill2, recordsWaitMax)
	t.Logf("SIGKILL of NATS server %s; served again %s after the kill", natsVictim.Name, time.Since(kill2).Round(time.Millisecond))
	restart2 := time.Now()
	c.Start(natsVictim)
	natsVictim.WaitReady(t, within(30*time.Second))
	t.Logf("NATS server %s restarted and ready %s later", natsVictim.Name, time.Since(restart2).Round(time.Millisecond))
	servedSince("reads and writes after "+natsVictim.Name+" came back", time.Now(), recordsWaitMax)
	moreAcked("after " + natsVictim.Name + " came back")
	end := time.Now()
	st := load.stop()
	if ctx.Err() != nil {
		t.Fatalf("the test ran out of its %s", recordsTimeout)
	}

	for _, ns := range namespaces {
		Figure(t, "writes acknowledged, "+ns, len(st.acked[ns]), fmt.Sprintf("attempts refused or failed: %d", st.writeFailed[ns]))
	}
	Figure(t, "reads", st.reads, fmt.Sprintf("of acknowledged keys, %d writers and %d readers", 2*recordsWriters, recordsReaders))
	Figure(t, "reads failed", st.readFailed, "returned an error (timeout, node unavailable); not retried")
	Check(t, "reads of an acknowledged key not found or wrong", st.readMissed, "= 0", st.readMissed == 0)
	if st.readMissed > 0 {
		t.Logf("reads that missed an acknowledged write: %s", strings.Join(st.missedSamples, "; "))
	}
	phases := []struct {
		what     string
		from, to time.Time
	}{
		{"cache node " + victim.ID, kill1, kill2},
		{"NATS server " + natsVictim.Name + " (record log leader)", kill2, end},
	}
	for i, ph := range phases {
		for _, ns := range namespaces {
			for _, op := range []string{"write", "read"} {
				gap := load.longestGap(op, ns, ph.from, ph.to)
				bound, target := recordsServeMax, "≤ failure timeout + 5s = "+recordsServeMax.String()
				if i == 1 && op == "write" && ns == harness.RecordsNS {
					// A write of the long-term namespace needs the record
					// log's leader, which its followers replace only after
					// a raft election timeout.
					bound = recordsServeMax + recordsElection
					target = "≤ NATS election timeout 9s + failure timeout + 5s = " + bound.String()
				}
				Check(t, fmt.Sprintf("time to serve again: longest without a successful %s of %s after SIGKILL of %s and its restart", op, ns, ph.what),
					gap, target, gap <= bound)
			}
		}
	}

	// Every acknowledged write is there, with its value.
	for _, ns := range namespaces {
		lost := checkAcked(ctx, t, cl, ns, st.acked[ns], within(20*time.Second))
		Check(t, "acknowledged writes lost, "+ns, lost, "= 0", lost == 0)
	}

	// The long-term namespace survives the loss of every cache node: its
	// records are read back from the record log on start.
	killAll := time.Now()
	for _, n := range nodes {
		n.P.Signal(syscall.SIGKILL)
	}
	for _, n := range nodes {
		n.P.Wait(10 * time.Second)
		n.Start(t)
	}
	for _, n := range nodes {
		n.WaitReady(t, within(60*time.Second))
	}
	bustest.WaitFor(t, within(20*time.Second), "the client to see the restarted cache nodes serve every partition", allServed)
	Figure(t, "every cache node SIGKILLed and started: serving again after", time.Since(killAll), "ready, the long-term records replayed from the log")
	lost := checkAcked(ctx, t, cl, harness.RecordsNS, st.acked[harness.RecordsNS], within(20*time.Second))
	Check(t, "acknowledged writes lost, "+harness.RecordsNS+", after every cache node restarted", lost, "= 0", lost == 0)
	took := time.Since(began)
	Check(t, "duration", took, "≤ "+recordsTimeout.String(), took <= recordsTimeout)
}

// checkAcked reads every key of acked back through the client, in
// batches, and returns how many are missing or hold another value. A batch
// whose read fails is tried again for at most timeout.
func checkAcked(ctx context.Context, t *testing.T, cl *cachenode.Client, ns string, acked map[string]string, timeout time.Duration) int {
	t.Helper()
	keys := make([]string, 0, len(acked))
	for k := range acked {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	lost := 0
	for b := range slices.Chunk(keys, 500) {
		var got map[string]cachenode.Record
		var err error
		bustest.WaitFor(t, timeout, fmt.Sprintf("a read of %d acknowledged keys of %s", len(b), ns), func() bool {
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			got, err = cl.GetMulti(rctx, ns, b)
			return err == nil
		})
		for _, k := range b {
			if rec, ok := got[k]; !ok || string(rec.Value) != acked[k] {
				if lost < 5 {
					t.Errorf("acknowledged %s/%s = %q: found %v, value %q", ns, k, acked[k], ok, rec.Value)
				}
				lost++
			}
		}
	}
	return lost
}

// recordsLoad is the writers and readers of TestRecordsUnderFaults.
type recordsLoad struct {
	cl       *cachenode.Client
	done     chan struct{}
	wg       sync.WaitGroup
	stopOnce sync.Once
	stats    recordsStats

	mu    sync.Mutex
	keys  map[string][]string              // ns → acknowledged keys, for the readers
	acked map[string]map[string]string     // ns → key → value
	oks   map[string]map[string][]okSpan   // op → ns → successes
	fails map[string]map[string]int        // "write" → ns → failed attempts
	errs  map[string]error                 // "op ns" → the last error
	reads struct{ ok, failed, missed int } //
	miss  []string
	next  map[string]*atomic.Int64
}

// okSpan is one successful operation: when it began and when it ended.
type okSpan struct{ begun, ended time.Time }

// recordsStats is what the load did.
type recordsStats struct {
	acked         map[string]map[string]string
	writeFailed   map[string]int
	reads         int
	readFailed    int
	readMissed    int
	missedSamples []string
}

func startRecordsLoad(t *testing.T, cl *cachenode.Client) *recordsLoad {
	l := &recordsLoad{
		cl:    cl,
		done:  make(chan struct{}),
		keys:  map[string][]string{},
		acked: map[string]map[string]string{},
		oks:   map[string]map[string][]okSpan{"write": {}, "read": {}},
		fails: map[string]map[string]int{"write": {}},
		next:  map[string]*atomic.Int64{},
		errs:  map[string]error{},
	}
	for _, ns := range []string{recordsPlainNS, harness.RecordsNS} {
		l.acked[ns] = map[string]string{}
		l.next[ns] = &atomic.Int64{}
	}
	for _, ns := range []string{recordsPlainNS, harness.RecordsNS} {
		for w := range recordsWriters {
			l.wg.Add(1)
			go l.writer(ns, w)
		}
	}
	for r := range recordsReaders {
		l.wg.Add(1)
		go l.reader(uint64(r))
	}
	return l
}

func (l *recordsLoad) stopped() bool {
	select {
	case <-l.done:
		return true
	default:
		return false
	}
}

// pause waits d, or less when the load stops.
func (l *recordsLoad) pause(d time.Duration) {
	select {
	case <-l.done:
	case <-time.After(d):
	}
}

// writer writes new keys of ns, each until acknowledged (or the load
// stops), as an application would: a refused write is tried again after a
// back-off, with the same value.
func (l *recordsLoad) writer(ns string, w int) {
	defer l.wg.Done()
	for !l.stopped() {
		i := l.next[ns].Add(1)
		if i > recordsMaxKeys {
			return // the load's bound on keys; the test reports its figures
		}
		key := fmt.Sprintf("k%06d", i)
		value := fmt.Sprintf("%s/%s/w%d/%x", ns, key, w, rand.Uint64())
		for !l.stopped() {
			begun := time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), recordsOpTimeout)
			_, err := l.cl.Put(ctx, ns, key, []byte(value), time.Hour)
			cancel()
			l.mu.Lock()
			if err == nil {
				l.acked[ns][key] = value
				l.keys[ns] = append(l.keys[ns], key)
				l.oks["write"][ns] = append(l.oks["write"][ns], okSpan{begun, time.Now()})
			} else {
				l.fails["write"][ns]++
				l.errs["write "+ns] = fmt.Errorf("%s: %w", begun.Format("15:04:05.000"), err)
			}
			l.mu.Unlock()
			if err == nil {
				break
			}
			l.pause(recordsBackoff)
		}
		l.pause(recordsWritePace)
	}
}

// reader reads acknowledged keys of both namespaces, at random, and checks
// their values.
func (l *recordsLoad) reader(seed uint64) {
	defer l.wg.Done()
	rnd := rand.New(rand.NewPCG(seed, 9))
	namespaces := []string{recordsPlainNS, harness.RecordsNS}
	for !l.stopped() {
		ns := namespaces[rnd.IntN(2)]
		l.mu.Lock()
		keys := l.keys[ns]
		var key, want string
		if len(keys) > 0 {
			key = keys[rnd.IntN(len(keys))]
			want = l.acked[ns][key]
		}
		l.mu.Unlock()
		if key == "" {
			l.pause(10 * time.Millisecond)
			continue
		}
		begun := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), recordsOpTimeout)
		rec, err := l.cl.Get(ctx, ns, key)
		cancel()
		l.mu.Lock()
		switch {
		case err == nil && string(rec.Value) == want:
			l.reads.ok++
			l.oks["read"][ns] = append(l.oks["read"][ns], okSpan{begun, time.Now()})
		case err == nil || errors.Is(err, cachenode.ErrNotFound):
			l.reads.missed++
			if len(l.miss) < 10 {
				l.miss = append(l.miss, fmt.Sprintf("%s %s/%s: %q, %v (want %q)", begun.Format("15:04:05.000"), ns, key, rec.Value, err, want))
			}
		default:
			l.reads.failed++
			l.errs["read "+ns] = fmt.Errorf("%s: %w", begun.Format("15:04:05.000"), err)
		}
		l.mu.Unlock()
	}
}

// ackedCount is how many writes of ns have been acknowledged.
func (l *recordsLoad) ackedCount(ns string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.keys[ns])
}

// lastErrors sums up the last error of each op and namespace.
func (l *recordsLoad) lastErrors() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var parts []string
	for k, err := range l.errs {
		parts = append(parts, k+": "+err.Error())
	}
	slices.Sort(parts)
	return strings.Join(parts, "; ")
}

// okSince reports whether an op of ns begun at or after from has
// succeeded.
func (l *recordsLoad) okSince(op, ns string, from time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range slices.Backward(l.oks[op][ns]) {
		if !s.begun.Before(from) {
			return true
		}
	}
	return false
}

// longestGap is the longest time from from to to without a success of op
// on ns: between from and the first success ended after it, between two
// successes, and between the last one and to.
func (l *recordsLoad) longestGap(op, ns string, from, to time.Time) time.Duration {
	l.mu.Lock()
	ends := make([]time.Time, 0, len(l.oks[op][ns]))
	for _, s := range l.oks[op][ns] {
		if s.ended.After(from) && !s.ended.After(to) {
			ends = append(ends, s.ended)
		}
	}
	l.mu.Unlock()
	slices.SortFunc(ends, func(a, b time.Time) int { return a.Compare(b) })
	prev, longest := from, time.Duration(0)
	for _, e := range append(ends, to) {
		longest = max(longest, e.Sub(prev))
		prev = e
	}
	return longest
}

// stop stops the load, waits for it and returns what it did.
func (l *recordsLoad) stop() recordsStats {
	l.stopOnce.Do(func() {
		close(l.done)
		l.wg.Wait()
		l.mu.Lock()
		defer l.mu.Unlock()
		l.stats = recordsStats{
			acked:         l.acked,
			writeFailed:   l.fails["write"],
			reads:         l.reads.ok + l.reads.failed + l.reads.missed,
			readFailed:    l.reads.failed,
			readMissed:    l.reads.missed,
			missedSamples: l.miss,
		}
	})
	return l.stats
}
