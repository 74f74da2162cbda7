//go:build unix

package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus/bustest"
	"github.com/cachebus/cachebus/cachenode"
	"github.com/cachebus/cachebus/cachenode/partition"
	"github.com/cachebus/cachebus/cachenode/wire"
	"github.com/cachebus/cachebus/e2e/harness"
	"github.com/cachebus/cachebus/persistence"
)

// Settings of the load the cache nodes of the tests serve. The nodes'
// own settings are the harness's: harness.NodeHeartbeat and the like.
const (
	// outageMargin is what a read or write outage may last beyond the
	// failure timeout: the client's own view of the heartbeats, a request
	// lost with the killed node (opTimeout), scheduling under -race on a
	// small machine.
	outageMargin = time.Second
	// opTimeout is the deadline of each request of the load, as an
	// application would give a cache call: shorter than the failure
	// timeout, so that a request lost with the killed node costs that
	// much, not the client's default timeout.
	opTimeout = 500 * time.Millisecond
	// nodeTestTimeout bounds TestNodesSurviveKill; it takes about 10s.
	nodeTestTimeout = 60 * time.Second

	// loadKeys, loadWriters and loadReaders shape the load; each writer
	// and each reader has its own share of the keys, which it goes
	// through in turn at most once per loadPace.
	loadKeys    = 200
	loadWriters = 4
	loadReaders = 8
	loadPace    = 2 * time.Millisecond
)

// TestNodesSurviveKill runs a NATS server and three `cachebus node`
// processes with a baseline of all three and one backup, and puts a steady
// load of writes and reads on 200 keys with the Go client while it
// SIGKILLs one node and later restarts it. It requires that reads and
// writes are served again within the failure timeout (plus a margin), that
// no read returns a value older than one already acknowledged, that the
// assignment never changes (a dead baseline member rebalances nothing),
// that the node comes back and serves its partitions again, and that in the
// end every key holds its last acknowledged value, read through the client
// and through each node's HTTP API. Before the load, a record round trip
// over HTTP through the node that owns neither copy proves forwarding;
// after it, a SIGTERM'd node exits 0 and its "gone" heartbeat removes it
// from the client's table at once.
func TestNodesSurviveKill(t *testing.T) {
	began := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), nodeTestTimeout)
	defer cancel()
	deadline, _ := ctx.Deadline()
	// within bounds each wait by what is left of the test's time.
	within := func(d time.Duration) time.Duration { return max(0, min(d, time.Until(deadline))) }

	nats := harn.StartNATS(t)
	nodes := harn.StartCacheNodes(t, nats.URL, "n1", "n2", "n3")
	for _, n := range nodes {
		n.WaitReady(t, within(20*time.Second))
	}
	t.Logf("NATS and three nodes ready in %s", time.Since(began).Round(time.Millisecond))

	conn := harness.Connect(t, nats.URL)
	cl, err := cachenode.NewClient(ctx, conn, cachenode.ClientOptions{FailureTimeout: harness.NodeFailureTimeout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	bustest.WaitFor(t, within(10*time.Second), "the client to see every partition served by one of the three nodes", func() bool {
		tab := cl.Table()
		return tab.Assignment.Version != 0 && len(tab.Nodes) == 3 && servedBy(tab.Primary, "") == 0
	})
	nodesBucket, err := persistence.BindNodes(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	assignment := func() partition.Assignment {
		t.Helper()
		a, err := nodesBucket.Assignment(ctx)
		if err != nil {
			t.Fatalf("read the assignment: %v", err)
		}
		return a
	}
	a0 := assignment()
	if a0.Version == 0 || a0.Backups != 1 {
		t.Fatalf("assignment version %d with %d backups, want one from the first baseline with 1 backup", a0.Version, a0.Backups)
	}
	for p, owners := range a0.Owners {
		if len(owners) != 2 || owners[0] == owners[1] {
			t.Fatalf("partition %d owned by %v, want a primary and a backup", p, owners)
		}
	}

	checkForwarding(ctx, t, cl, nodes)

	n2 := nodes[1]
	load := startNodeLoad(ctx, t, cl)
	load.waitRound(t, "before the kill", time.Now(), within(10*time.Second))

	// SIGKILL of n2 under load: its partitions are served by their backups.
	killed := time.Now()
	n2.P.Kill()
	bustest.WaitFor(t, within(harness.NodeFailureTimeout+5*time.Second), "the client to drop the killed n2 from its table", func() bool {
		return !cl.Table().Live("n2")
	})
	dead := time.Now()
	t.Logf("SIGKILL of n2 under load; the client dropped it %s later", dead.Sub(killed).Round(time.Millisecond))
	load.waitRound(t, "after n2 was declared dead", dead, within(10*time.Second))
	t.Logf("every key read and written again %s after the kill", time.Since(killed).Round(time.Millisecond))
	if a := assignment(); a.Version != a0.Version || a.BaselineVersion != a0.BaselineVersion {
		t.Errorf("assignment went from version %d (baseline %d) to %d (baseline %d) with n2 down: a dead member must not rebalance",
			a0.Version, a0.BaselineVersion, a.Version, a.BaselineVersion)
	}
	if un, _ := cl.Table().Coverage(); un != 0 {
		t.Errorf("%d partitions have no live holder with n2 down; its backups should serve them", un)
	}

	// n2 comes back empty, copies its partitions from their backups and
	// serves them again.
	restarted := time.Now()
	n2.Start(t)
	n2.WaitReady(t, within(20*time.Second))
	bustest.WaitFor(t, within(10*time.Second), "n2 to serve partitions again in the client's table", func() bool {
		return servedBy(cl.Table().Primary, "n2") > 0
	})
	back := time.Now()
	st := n2.Status(t)
	t.Logf("n2 restarted, ready and primary of %d partitions in the client's table %s later; its status: owns %d, holds %d, primary of %d, %d records",
		servedBy(cl.Table().Primary, "n2"), back.Sub(restarted).Round(time.Millisecond), st.Owned, st.Held, st.Primary, st.Records)
	if st.Primary == 0 || st.Held != st.Owned || st.AssignmentVersion != a0.Version {
		t.Errorf("n2 after its restart: status %+v, want primary > 0, every owned partition held, assignment %d", st, a0.Version)
	}
	load.waitRound(t, "after n2 came back", back, within(10*time.Second))
	stats := load.stop()

	t.Logf("load of %s on %d keys: writes %d acknowledged, %d failed; reads %d ok, %d failed (%d not found, %d older than acknowledged)",
		stats.took.Round(time.Millisecond), loadKeys, stats.writes.ok, stats.writes.failed,
		stats.reads.ok, stats.reads.failed, stats.reads.notFound, stats.reads.stale)
	t.Logf("writes: %s; reads: %s", stats.writes.rate(stats.took), stats.reads.rate(stats.took))
	t.Logf("read outage: %s (longest stretch of failing reads of one key: %s)", stats.reads.longest.Round(time.Millisecond), stats.reads.describe(killed))
	t.Logf("write outage: %s (longest stretch of failing writes of one key: %s)", stats.writes.longest.Round(time.Millisecond), stats.writes.describe(killed))
	for _, s := range []struct {
		what string
		st   *opStats
	}{{"read", &stats.reads}, {"write", &stats.writes}} {
		if s.st.longest > harness.NodeFailureTimeout+outageMargin {
			t.Errorf("%s outage %s, want at most the failure timeout %s + %s; errors: %s",
				s.what, s.st.longest.Round(time.Millisecond), harness.NodeFailureTimeout, outageMargin, s.st.errorSummary())
		} else if s.st.failed > 0 {
			t.Logf("%s errors: %s", s.what, s.st.errorSummary())
		}
		// Only requests in flight at the kill may fail, or those caught
		// behind them for a moment: none begun before, none begun well
		// after.
		from, to := killed.Add(-opTimeout), killed.Add(harness.NodeFailureTimeout/2)
		if s.st.failed > 0 && (s.st.firstFail.Before(from) || s.st.lastFail.After(to)) {
			t.Errorf("%ss failed from %+.3fs to %+.3fs after the kill; only those begun within %s before it and %s after it may: %s",
				s.what, s.st.firstFail.Sub(killed).Seconds(), s.st.lastFail.Sub(killed).Seconds(), opTimeout, harness.NodeFailureTimeout/2, s.st.errorSummary())
		}
	}
	if stats.reads.stale > 0 || stats.reads.phantom > 0 {
		t.Errorf("%d reads returned a value older than one acknowledged before they began, %d a value never written: %s",
			stats.reads.stale, stats.reads.phantom, strings.Join(stats.reads.badReads, "; "))
	}
	if a := assignment(); a.Version != a0.Version {
		t.Errorf("assignment went from version %d to %d across the kill and restart of n2: nothing may rebalance", a0.Version, a.Version)
	}

	// No acknowledged write lost: every key holds its last acknowledged
	// value, or a later one whose write failed but may have been stored,
	// the same through the client and through every node.
	final := checkFinal(ctx, t, cl, load)
	checkThroughNodes(t, nodes, final)

	// A clean stop: n3 exits 0 and its "gone" heartbeat removes it from
	// the client's table at once, not a failure timeout later; its
	// partitions are served by their backups.
	n3 := nodes[2]
	took := n3.P.Terminate(10 * time.Second)
	exited := time.Now()
	// Half the failure timeout: the "gone" heartbeat, not the silence.
	bustest.WaitFor(t, within(harness.NodeFailureTimeout/2), "the client and n1 to drop n3 at once after its SIGTERM", func() bool {
		return !cl.Table().Live("n3") && !slices.Contains(nodes[0].Status(t).Nodes, "n3")
	})
	t.Logf("n3 exited 0 %s after SIGTERM; the client and n1 dropped it %s after its exit",
		took.Round(time.Millisecond), time.Since(exited).Round(time.Millisecond))
	if err := readAll(ctx, cl, final); err != nil {
		t.Errorf("with n3 stopped: %v", err)
	}
	for _, n := range nodes[:2] {
		took := n.P.Terminate(10 * time.Second)
		t.Logf("%s exited 0 %s after SIGTERM", n.ID, took.Round(time.Millisecond))
	}
	t.Logf("test took %s", time.Since(began).Round(time.Millisecond))
}

// servedBy counts the partitions whose serving node, by primary, is id.
func servedBy(primary func(int) string, id string) int {
	n := 0
	for p := range partition.Partitions {
		if primary(p) == id {
			n++
		}
	}
	return n
}

// checkForwarding writes, reads and deletes a record over HTTP through the
// node that owns neither copy of the record's partition, which forwards
// each call to the partition's primary; every node and the client must
// then agree on the record. Without the admin token the write is refused
// and nothing is stored.
func checkForwarding(ctx context.Context, t *testing.T, cl *cachenode.Client, nodes []*harness.CacheNode) {
	t.Helper()
	const key, value = "forwarded:1", "a value written through a node that does not own it"
	owners := cl.Table().Assignment.Owners[partition.PartitionOf(key)]
	var via *harness.CacheNode
	for _, n := range nodes {
		if !slices.Contains(owners, n.ID) {
			via = n
		}
	}
	if via == nil {
		t.Fatalf("partition of %s owned by %v: no node owns neither copy", key, owners)
	}
	get := func() (cachenode.Record, error) {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		return cl.Get(ctx, harness.RecordsNS, key)
	}

	if code, _, body := via.Record(http.MethodPut, key, value, ""); code != http.StatusUnauthorized {
		t.Errorf("PUT %s through %s without the token = %d %s, want 401", key, via.ID, code, body)
	}
	if _, err := get(); !errors.Is(err, cachenode.ErrNotFound) {
		t.Errorf("after a refused PUT, client Get %s = %v, want ErrNotFound", key, err)
	}

	code, version, body := via.Record(http.MethodPut, key, value, harness.NodeAdminToken)
	if code != http.StatusNoContent || version == "" {
		t.Fatalf("PUT %s through %s (owners %v) = %d, version %q, %s; want 204 with a version", key, via.ID, owners, code, version, body)
	}
	for _, n := range nodes {
		if code, v, body := n.Record(http.MethodGet, key, "", harness.NodeAdminToken); code != http.StatusOK || body != value || v != version {
			t.Errorf("GET %s through %s = %d, version %q, %q; want 200, version %s, %q", key, n.ID, code, v, body, version, value)
		}
	}
	rec, err := get()
	if err != nil || string(rec.Value) != value || strconv.FormatUint(rec.Version, 10) != version {
		t.Errorf("client Get %s = %q version %d, %v; want %q version %s", key, rec.Value, rec.Version, err, value, version)
	}

	if code, _, body := via.Record(http.MethodDelete, key, "", harness.NodeAdminToken); code != http.StatusNoContent {
		t.Errorf("DELETE %s through %s = %d %s, want 204", key, via.ID, code, body)
	}
	for _, n := range nodes {
		if code, _, body := n.Record(http.MethodGet, key, "", harness.NodeAdminToken); code != http.StatusNotFound {
			t.Errorf("GET %s through %s after DELETE = %d %s, want 404", key, n.ID, code, body)
		}
	}
	if _, err := get(); !errors.Is(err, cachenode.ErrNotFound) {
		t.Errorf("client Get %s after DELETE = %v, want ErrNotFound", key, err)
	}
	// The calls were forwarded, not served by a copy of its own.
	code, metrics := harness.HTTPGet("http://" + via.HTTPAddr + "/metrics")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics of %s = %d", via.ID, code)
	}
	for _, op := range []wire.Op{wire.OpPut, wire.OpGet, wire.OpDelete} {
		re := regexp.MustCompile(`(?m)^cachebus_node_forwarded_total\{[^}]*op="` + op.String() + `"[^}]*\} (\d+)$`)
		if m := re.FindStringSubmatch(metrics); m == nil || m[1] == "0" {
			t.Errorf("%s's /metrics shows no %s forwarded (cachebus_node_forwarded_total): %v", via.ID, op, m)
		}
	}
	t.Logf("HTTP PUT, GET and DELETE of %s through %s, forwarded to its owners %v", key, via.ID, owners)
}

// nodeLoad is the test's steady load: writers put increasing values to
// their share of the keys and remember, per key, the last value they tried
// and the last one acknowledged; readers get their share of the keys and
// check each value against those.
type nodeLoad struct {
	cl   *cachenode.Client
	keys []string
	// Per key: the last value tried and the last acknowledged (Put
	// returned nil), and when the last successful read and write began
	// (Unix nanoseconds).
	tried, acked        []atomic.Uint64
	lastRead, lastWrite []atomic.Int64
	readers, writers    []*opStats
	cancel              context.CancelFunc
	wg                  sync.WaitGroup
	stopped             bool
	readStats, wrStats  opStats
	started, ended      time.Time
}

// startNodeLoad writes a first value to every key, then starts the writers
// and readers. The test's cleanup stops them.
func startNodeLoad(ctx context.Context, t *testing.T, cl *cachenode.Client) *nodeLoad {
	t.Helper()
	l := &nodeLoad{cl: cl, keys: prefixedKeys("session", 0, loadKeys)}
	l.tried, l.acked = make([]atomic.Uint64, loadKeys), make([]atomic.Uint64, loadKeys)
	l.lastRead, l.lastWrite = make([]atomic.Int64, loadKeys), make([]atomic.Int64, loadKeys)
	for i, k := range l.keys {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := cl.Put(pctx, harness.RecordsNS, k, []byte("1"), 0)
		cancel()
		if err != nil {
			t.Fatalf("first put of %s: %v", k, err)
		}
		l.tried[i].Store(1)
		l.acked[i].Store(1)
	}
	ctx, l.cancel = context.WithCancel(ctx)
	l.started = time.Now()
	for w := range loadWriters {
		st := newOpStats()
		l.writers = append(l.writers, st)
		l.wg.Go(func() { l.write(ctx, w, st) })
	}
	for r := range loadReaders {
		st := newOpStats()
		l.readers = append(l.readers, st)
		l.wg.Go(func() { l.read(ctx, r, st) })
	}
	t.Cleanup(func() { l.stop() })
	return l
}

// share calls op for each key of share i of n, in turn, at most once per
// loadPace, until ctx ends. An operation that fails is tried again on the
// same key, as an application would, before the next key: a key's outage
// is measured from its first failure to its first success.
func (l *nodeLoad) share(ctx context.Context, i, n int, op func(k int) bool) {
	tick := time.NewTicker(loadPace)
	defer tick.Stop()
	for {
		for k := i; k < len(l.keys); k += n {
			for ok := false; !ok; {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				ok = op(k)
			}
		}
	}
}

func (l *nodeLoad) write(ctx context.Context, w int, st *opStats) {
	l.share(ctx, w, loadWriters, func(k int) bool {
		v := l.tried[k].Load() + 1
		l.tried[k].Store(v)
		start := time.Now()
		octx, cancel := context.WithTimeout(ctx, opTimeout)
		_, err := l.cl.Put(octx, harness.RecordsNS, l.keys[k], []byte(strconv.FormatUint(v, 10)), 0)
		cancel()
		if ctx.Err() != nil {
			return true // stopping: the write may or may not be stored
		}
		if err == nil {
			l.acked[k].Store(v)
			l.lastWrite[k].Store(start.UnixNano())
		}
		st.result(l.keys[k], start, err)
		return err == nil
	})
}

func (l *nodeLoad) read(ctx context.Context, r int, st *opStats) {
	l.share(ctx, r, loadReaders, func(k int) bool {
		before := l.acked[k].Load()
		start := time.Now()
		octx, cancel := context.WithTimeout(ctx, opTimeout)
		rec, err := l.cl.Get(octx, harness.RecordsNS, l.keys[k])
		cancel()
		if ctx.Err() != nil {
			return true
		}
		if err == nil {
			l.lastRead[k].Store(start.UnixNano())
			v, perr := strconv.ParseUint(string(rec.Value), 10, 64)
			switch {
			case perr != nil || v > l.tried[k].Load():
				st.phantom++
				st.badRead(fmt.Sprintf("%s = %q at %s, never written", l.keys[k], rec.Value, start.Format("15:04:05.000")))
			case v < before:
				st.stale++
				st.badRead(fmt.Sprintf("%s = %d at %s, after %d was acknowledged", l.keys[k], v, start.Format("15:04:05.000"), before))
			}
		}
		st.result(l.keys[k], start, err)
		return err == nil
	})
}

// waitRound waits until every key has been read and written successfully
// by operations begun after since.
func (l *nodeLoad) waitRound(t *testing.T, what string, since time.Time, timeout time.Duration) {
	t.Helper()
	missing := ""
	defer func() {
		if t.Failed() && missing != "" {
			t.Logf("not yet served %s: %s", what, missing)
		}
	}()
	bustest.WaitFor(t, timeout, "every key read and written "+what, func() bool {
		for k := range l.keys {
			if l.lastRead[k].Load() < since.UnixNano() {
				missing = "a read of " + l.keys[k]
				return false
			}
			if l.lastWrite[k].Load() < since.UnixNano() {
				missing = "a write of " + l.keys[k]
				return false
			}
		}
		return true
	})
}

// loadStats are the merged figures of a load's readers and writers.
type loadStats struct {
	reads, writes opStats
	took          time.Duration
}

// stop stops the load, waits for its goroutines and merges their figures.
func (l *nodeLoad) stop() loadStats {
	if !l.stopped {
		l.stopped = true
		l.cancel()
		l.wg.Wait()
		l.ended = time.Now()
		for _, st := range l.readers {
			st.end(l.ended)
			l.readStats.merge(st)
		}
		for _, st := range l.writers {
			st.end(l.ended)
			l.wrStats.merge(st)
		}
	}
	return loadStats{reads: l.readStats, writes: l.wrStats, took: l.ended.Sub(l.started)}
}

// opStats are one reader's or writer's figures: counts, errors by kind,
// and the longest stretch during which the operations on one key failed,
// from the start of the first failing one to the start of the next that
// succeeded (or the end of the load).
type opStats struct {
	ok, failed, notFound int
	stale, phantom       int
	badReads             []string

	failingSince map[string]time.Time // by key
	longest      time.Duration
	longestKey   string
	longestFrom  time.Time
	unresolved   bool
	firstFail    time.Time
	lastFail     time.Time

	errs    map[string]int
	samples map[string]string

	total, slowest time.Duration // time spent in operations, longest one
}

func newOpStats() *opStats {
	return &opStats{failingSince: map[string]time.Time{}, errs: map[string]int{}, samples: map[string]string{}}
}

func (s *opStats) result(key string, start time.Time, err error) {
	took := time.Since(start)
	s.total += took
	s.slowest = max(s.slowest, took)
	if err == nil {
		s.ok++
		if since, ok := s.failingSince[key]; ok {
			delete(s.failingSince, key)
			s.stretch(key, since, start.Sub(since), false)
		}
		return
	}
	s.failed++
	if errors.Is(err, cachenode.ErrNotFound) {
		s.notFound++
	}
	if _, ok := s.failingSince[key]; !ok {
		s.failingSince[key] = start
	}
	if s.firstFail.IsZero() {
		s.firstFail = start
	}
	s.lastFail = start
	kind := errKind(err)
	s.errs[kind]++
	if _, ok := s.samples[kind]; !ok {
		s.samples[kind] = err.Error()
	}
}

func (s *opStats) stretch(key string, from time.Time, d time.Duration, unresolved bool) {
	if d > s.longest {
		s.longest, s.longestKey, s.longestFrom, s.unresolved = d, key, from, unresolved
	}
}

func (s *opStats) badRead(msg string) {
	if len(s.badReads) < 5 {
		s.badReads = append(s.badReads, msg)
	}
}

// end closes the stretches still failing when the load stopped.
func (s *opStats) end(at time.Time) {
	for key, since := range s.failingSince {
		s.stretch(key, since, at.Sub(since), true)
	}
}

func (s *opStats) merge(o *opStats) {
	s.ok += o.ok
	s.failed += o.failed
	s.notFound += o.notFound
	s.stale += o.stale
	s.total += o.total
	s.slowest = max(s.slowest, o.slowest)
	s.phantom += o.phantom
	for _, b := range o.badReads {
		s.badRead(b)
	}
	if o.longest > s.longest {
		s.longest, s.longestKey, s.longestFrom, s.unresolved = o.longest, o.longestKey, o.longestFrom, o.unresolved
	}
	if !o.firstFail.IsZero() && (s.firstFail.IsZero() || o.firstFail.Before(s.firstFail)) {
		s.firstFail = o.firstFail
	}
	if o.lastFail.After(s.lastFail) {
		s.lastFail = o.lastFail
	}
	if s.errs == nil {
		s.errs, s.samples = map[string]int{}, map[string]string{}
	}
	for k, n := range o.errs {
		s.errs[k] += n
		if _, ok := s.samples[k]; !ok {
			s.samples[k] = o.samples[k]
		}
	}
}

// describe says where the longest stretch was, relative to the kill.
func (s *opStats) describe(killed time.Time) string {
	if s.longest == 0 {
		return "none failed"
	}
	out := fmt.Sprintf("%s from %+.3fs after the kill", s.longestKey, s.longestFrom.Sub(killed).Seconds())
	if s.unresolved {
		out += ", still failing when the load stopped"
	}
	return out + fmt.Sprintf("; failures between %+.3fs and %+.3fs", s.firstFail.Sub(killed).Seconds(), s.lastFail.Sub(killed).Seconds())
}

// rate gives the operations per second over d, their mean and longest
// time, and how often each key had one.
func (s *opStats) rate(d time.Duration) string {
	n := s.ok + s.failed
	if n == 0 || d <= 0 {
		return "none"
	}
	return fmt.Sprintf("%.0f/s, mean %s, slowest %s, each key every %s", float64(n)/d.Seconds(),
		(s.total / time.Duration(n)).Round(time.Microsecond), s.slowest.Round(time.Millisecond),
		(d * loadKeys / time.Duration(n)).Round(time.Millisecond))
}

func (s *opStats) errorSummary() string {
	var parts []string
	for k, n := range s.errs {
		parts = append(parts, fmt.Sprintf("%d× %s (e.g. %s)", n, k, s.samples[k]))
	}
	slices.Sort(parts)
	return strings.Join(parts, "; ")
}

// errKind names the class of a client error for the figures.
func errKind(err error) string {
	for _, e := range []error{cachenode.ErrNotFound, cachenode.ErrNoOwner, cachenode.ErrUnavailable,
		cachenode.ErrBadRequest, cachenode.ErrTooLarge, context.DeadlineExceeded} {
		if errors.Is(err, e) {
			return e.Error()
		}
	}
	return "other"
}

// finalRecord is what a key holds after the load, read through the client.
type finalRecord struct {
	key     string
	value   string
	version uint64
}

// checkFinal reads every key through the client after the load and
// requires its last acknowledged value, or a later one whose write was not
// acknowledged (it may have been stored before its answer was lost).
func checkFinal(ctx context.Context, t *testing.T, cl *cachenode.Client, l *nodeLoad) []finalRecord {
	t.Helper()
	out := make([]finalRecord, len(l.keys))
	exact, later, lost := 0, 0, 0
	for i, k := range l.keys {
		gctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		rec, err := cl.Get(gctx, harness.RecordsNS, k)
		cancel()
		if err != nil {
			t.Errorf("after the load, Get %s: %v (last acknowledged %d)", k, err, l.acked[i].Load())
			lost++
			continue
		}
		out[i] = finalRecord{key: k, value: string(rec.Value), version: rec.Version}
		acked, tried := l.acked[i].Load(), l.tried[i].Load()
		v, err := strconv.ParseUint(string(rec.Value), 10, 64)
		switch {
		case err != nil || v > tried:
			t.Errorf("after the load, %s = %q: never written (last tried %d)", k, rec.Value, tried)
		case v < acked:
			lost++
			if lost <= 5 {
				t.Errorf("after the load, %s = %d, but %d was acknowledged: an acknowledged write was lost", k, v, acked)
			}
		case v == acked:
			exact++
		default:
			later++
		}
	}
	if lost > 5 {
		t.Errorf("%d keys lost acknowledged writes in all", lost)
	}
	t.Logf("after the load: %d keys hold their last acknowledged value, %d a later value whose write failed, %d lost one",
		exact, later, lost)
	return out
}

// checkThroughNodes reads every key over HTTP through each node, which
// serves it or forwards it to the node that does, and requires the value
// and version the client read.
func checkThroughNodes(t *testing.T, nodes []*harness.CacheNode, final []finalRecord) {
	t.Helper()
	for _, n := range nodes {
		bad := 0
		for _, f := range final {
			if f.key == "" {
				continue
			}
			code, v, body := n.Record(http.MethodGet, f.key, "", harness.NodeAdminToken)
			if code == http.StatusOK && body == f.value && v == strconv.FormatUint(f.version, 10) {
				continue
			}
			bad++
			if bad <= 3 {
				t.Errorf("GET %s through %s = %d, version %q, %q; the client read version %d, %q",
					f.key, n.ID, code, v, body, f.version, f.value)
			}
		}
		if bad > 3 {
			t.Errorf("%s disagrees with the client on %d keys in all", n.ID, bad)
		}
	}
	t.Logf("%d keys read through each of %d nodes over HTTP agree with the client", len(final), len(nodes))
}

// readAll reads every key of final through the client and requires the
// value read after the load.
func readAll(ctx context.Context, cl *cachenode.Client, final []finalRecord) error {
	for _, f := range final {
		if f.key == "" {
			continue
		}
		gctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		rec, err := cl.Get(gctx, harness.RecordsNS, f.key)
		cancel()
		if err != nil {
			return fmt.Errorf("Get %s: %w", f.key, err)
		}
		if string(rec.Value) != f.value {
			return fmt.Errorf("Get %s = %q, want %q", f.key, rec.Value, f.value)
		}
	}
	return nil
}
