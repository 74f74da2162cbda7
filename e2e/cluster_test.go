//go:build unix

package e2e

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/bus/bustest"
	"github.com/cachebus/cachebus/e2e/harness"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// publishExpires publishes one expire per key through the guaranteed path
// and returns their sequences in the log. The publisher retries each one
// until the log acknowledges it, within ctx.
func publishExpires(ctx context.Context, t *testing.T, pub *bus.Publisher, keys []string) []uint64 {
	t.Helper()
	seqs, err := publishAll(ctx, pub, keys)
	if err != nil {
		t.Fatal(err)
	}
	return seqs
}

func publishAll(ctx context.Context, pub *bus.Publisher, keys []string) ([]uint64, error) {
	seqs := make([]uint64, 0, len(keys))
	for _, k := range keys {
		seq, err := pub.Expire(ctx, "users", bus.Expire{Keys: []string{k}})
		if err != nil {
			return seqs, fmt.Errorf("%s: publish expire %s: %w", pub.Origin(), k, err)
		}
		if n := len(seqs); n > 0 && seq <= seqs[n-1] {
			return seqs, fmt.Errorf("%s: expire %s acknowledged at seq %d, after seq %d: the log went back", pub.Origin(), k, seq, seqs[n-1])
		}
		seqs = append(seqs, seq)
	}
	return seqs, nil
}

func userKeys(from, to int) []string { return prefixedKeys("user", from, to) }

func prefixedKeys(prefix string, from, to int) []string {
	keys := make([]string, 0, to-from)
	for i := from; i < to; i++ {
		keys = append(keys, fmt.Sprintf("%s:%03d", prefix, i))
	}
	return keys
}

// source is one publisher of a test and what it has sent: expires of keys
// named after it, in order.
type source struct {
	name string
	conn *bus.Conn
	pub  *bus.Publisher
	keys []string
	seqs []uint64
}

func newSource(t *testing.T, name string, conn *bus.Conn) *source {
	t.Helper()
	pub, err := bus.NewPublisher(conn, "e2e-pub-"+name)
	if err != nil {
		t.Fatal(err)
	}
	return &source{name: name, conn: conn, pub: pub}
}

// publishConcurrently has every source publish keys from..to-1, all at
// once, each in order, and waits for every acknowledgement.
func publishConcurrently(ctx context.Context, t *testing.T, from, to int, sources ...*source) {
	t.Helper()
	errs := make([]error, len(sources))
	var wg sync.WaitGroup
	for i, s := range sources {
		keys := prefixedKeys(s.name, from, to)
		wg.Go(func() {
			seqs, err := publishAll(ctx, s.pub, keys)
			s.keys, s.seqs, errs[i] = append(s.keys, keys[:len(seqs)]...), append(s.seqs, seqs...), err
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
}

// lastSeq is the highest sequence acknowledged to any of sources.
func lastSeq(sources ...*source) uint64 {
	var last uint64
	for _, s := range sources {
		if n := len(s.seqs); n > 0 {
			last = max(last, s.seqs[n-1])
		}
	}
	return last
}

// TestClusterSurvivesLosingStreamLeader runs three `cachebus nats`
// processes as one NATS cluster with an event log of 3 replicas and kills
// the node leading the log while two publishers send expires: one
// connected to that node, one to a survivor. It proves that nothing is lost
// or doubled: each publisher's retries land each of its expires in the log
// once; a subscriber connected to the killed node and one connected to a
// survivor both apply all 400 once each, in each publisher's order, with
// no flush; a member that was away resumes across the failover; the log,
// read on the survivors, holds all 400; the killed node rejoins from its
// store; and every node exits 0 on SIGTERM.
func TestClusterSurvivesLosingStreamLeader(t *testing.T) {
	t.Parallel() // with the other cluster test: both mostly wait for timeouts
	start := time.Now()
	cl := harn.StartCluster(t, 3)
	admin := harness.Connect(t, cl.URLs())
	st := cl.EventLog(admin)
	t.Logf("cluster up with the event log at R3 in %s: %s", time.Since(start).Round(time.Millisecond), harness.Describe(harness.ClusterInfo(t, st)))

	// The worst case, deterministically: a publisher and a subscriber are
	// connected to the node that will be killed, another publisher and
	// another subscriber to a node that survives.
	leader := cl.Node(harness.ClusterInfo(t, st).Leader)
	survivor := harness.Without(cl.Nodes, leader)[0]
	subs := []struct {
		what string
		conn *bus.Conn
		sub  *bus.Subscriber
		rec  *recorder
	}{
		{what: "subscriber of the killed node " + leader.Name, conn: cl.ConnectFirst(t, leader)},
		{what: "subscriber of the surviving node " + survivor.Name, conn: cl.ConnectFirst(t, survivor)},
	}
	for i := range subs {
		subs[i].sub, subs[i].rec = subscribe(t, subs[i].conn, bus.SubscriberOptions{Name: subs[i].what})
	}
	a := newSource(t, "a", cl.ConnectFirst(t, leader))
	b := newSource(t, "b", cl.ConnectFirst(t, survivor))
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	publishConcurrently(ctx, t, 0, 100, a, b)
	beforeKill := lastSeq(a, b)
	ci := harness.ClusterInfo(t, st)
	if ci.Leader != leader.Name {
		t.Fatalf("the event log's leader moved from %s to %s with no fault", leader.Name, ci.Leader)
	}
	t.Logf("200 expires stored up to seq %d; SIGKILL of %s, the event log's leader (%s)", beforeKill, leader.Name, harness.Describe(ci))
	killed := time.Now()
	leader.P.Kill()

	publishConcurrently(ctx, t, 100, 200, a, b)
	t.Logf("200 more expires acknowledged %s after the kill (publish retries: %v by %s, %v by %s); log now led by %s",
		time.Since(killed).Round(time.Millisecond),
		testutil.ToFloat64(a.conn.Metrics.PublishRetries), a.pub.Origin(),
		testutil.ToFloat64(b.conn.Metrics.PublishRetries), b.pub.Origin(), harness.ClusterInfo(t, st).Leader)
	seqs := slices.Sorted(slices.Values(append(slices.Clone(a.seqs), b.seqs...)))
	for i := 1; i < len(seqs); i++ {
		if seqs[i] != seqs[i-1]+1 {
			t.Errorf("expires stored at seq %d then %d: the log skipped or doubled one", seqs[i-1], seqs[i])
		}
	}
	last := lastSeq(a, b)

	for _, s := range subs {
		wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
		err := s.sub.WaitSeq(wctx, last)
		wcancel()
		if err != nil {
			t.Errorf("%s did not reach the last expire, seq %d: %v (applied %d)", s.what, last, err, s.rec.count())
			logConsumers(t, st)
			continue
		}
		checkApplied(t, s.what, s.rec, a.keys, b.keys)
	}

	// A member that was away during the failover resumes where it left off.
	late, lateRec := subscribe(t, harness.Connect(t, cl.URLs()), bus.SubscriberOptions{Name: "e2e-late", ResumeAfter: beforeKill})
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	defer wcancel()
	if err := late.WaitSeq(wctx, last); err != nil {
		t.Fatalf("subscriber resuming after seq %d: %v (applied %d)", beforeKill, err, lateRec.count())
	}
	checkApplied(t, "subscriber resumed after the failover", lateRec, a.keys[100:], b.keys[100:])

	// The log itself, read from the start on the surviving nodes only.
	var survivors []string
	for _, n := range harness.Without(cl.Nodes, leader) {
		survivors = append(survivors, n.URL)
	}
	checkLog(ctx, t, harness.Connect(t, strings.Join(survivors, ",")), a.keys, b.keys)

	// The killed node comes back with its store and catches up.
	cl.Start(leader)
	restarted := time.Now()
	var info *jetstream.ClusterInfo
	bustest.WaitFor(t, 60*time.Second, leader.Name+" back as a current replica of the event log", func() bool {
		ictx, icancel := context.WithTimeout(ctx, 2*time.Second)
		defer icancel()
		si, err := st.Info(ictx)
		if err != nil {
			return false
		}
		info = si.Cluster
		return harness.AllCurrent(info, "n1", "n2", "n3")
	})
	t.Logf("%s rejoined and is current %s after its restart: %s", leader.Name, time.Since(restarted).Round(time.Millisecond), harness.Describe(info))
	leader.WaitReady(t, 30*time.Second)

	// A clean stop of every node, the rejoined one last.
	for _, s := range subs {
		s.sub.Close()
	}
	late.Close()
	for _, n := range append(harness.Without(cl.Nodes, leader), leader) {
		took := n.P.Terminate(15 * time.Second)
		t.Logf("%s exited 0 %s after SIGTERM", n.Name, took.Round(time.Millisecond))
	}
}

// logConsumers lists the event log's consumers and where they run, for a
// failure message: a consumer whose info does not come back is assigned to
// a server that is gone.
func logConsumers(t *testing.T, st jetstream.Stream) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for name := range st.ConsumerNames(ctx).Name() {
		cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
		c, err := st.Consumer(cctx, name)
		ccancel()
		if err != nil {
			t.Logf("event log consumer %s: no answer: %v", name, err)
			continue
		}
		ci := c.CachedInfo()
		leader := ""
		if ci.Cluster != nil {
			leader = ci.Cluster.Leader
		}
		t.Logf("event log consumer %s on %s: delivered up to seq %d, %d pending", ci.Name, leader, ci.Delivered.Stream, ci.NumPending)
	}
}

// checkLog reads the whole event log from its first sequence with an
// ordered consumer and requires exactly the expires of want (one list per
// publisher), each stored once, in each publisher's order.
func checkLog(ctx context.Context, t *testing.T, c *bus.Conn, want ...[]string) {
	t.Helper()
	total := 0
	for _, w := range want {
		total += len(w)
	}
	// A server that has just rejoined may answer 503 until its JetStream
	// is current again: read again until one read succeeds.
	var log *recorder
	var ids map[string]int
	var err, lastErr error
	attempts := 0
	defer func() {
		if attempts > 1 {
			t.Logf("read the event log at attempt %d; the last failed with: %v", attempts, lastErr)
		}
	}()
	bustest.WaitFor(t, 30*time.Second, fmt.Sprintf("a read of the %d expires of the event log", total), func() bool {
		attempts++
		// Each read has its own deadline: the caller's context may be
		// near its end after a slow recovery, and a read needs its time.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		log, ids, err = readLog(rctx, c, total)
		if err != nil {
			lastErr = err
		}
		return err == nil
	})
	for id, n := range ids {
		if n > 1 {
			t.Errorf("event log holds message id %s %d times", id, n)
		}
	}
	checkApplied(t, "event log", log, want...)
}

// readLog reads the test's expires (origin e2e-*) from the start of the
// event log until it has total of them or the log ends.
func readLog(ctx context.Context, c *bus.Conn, total int) (*recorder, map[string]int, error) {
	cons, err := c.JS.OrderedConsumer(ctx, c.Subjects.EventStream(), jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("ordered consumer: %w", err)
	}
	log, ids := &recorder{}, map[string]int{}
	for log.count() < total {
		batch, err := cons.Fetch(total-log.count(), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return nil, nil, fmt.Errorf("fetch: %w", err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			ev, err := bus.DecodeEvent(c.Subjects, m.Subject(), m.Data())
			if err != nil {
				return nil, nil, fmt.Errorf("undecodable message on %s: %w", m.Subject(), err)
			}
			if ev.Expire == nil || !strings.HasPrefix(ev.Expire.Origin, "e2e-") {
				continue
			}
			ids[m.Headers().Get(bus.MsgIDHeader)]++
			if meta, err := m.Metadata(); err == nil {
				ev.Seq = meta.Sequence.Stream
			}
			ev.Via = bus.ViaLog
			log.Apply(ev)
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
			return nil, nil, fmt.Errorf("fetch: %w", err)
		}
		if n == 0 {
			return log, ids, nil // the log ends here; checkApplied says what is missing
		}
	}
	return log, ids, nil
}

// TestClusterFrozenStreamLeader freezes the node leading the event log with
// SIGSTOP, as a long pause or a stalled VM would, while a subscriber is
// connected to that very node and a publisher to another. The cluster
// elects a new leader and the publisher carries on; the subscriber notices
// its server is gone, moves to another and catches up from the log. When
// the old leader thaws (SIGCONT) it steps down and catches up in turn, and
// every expire has been applied once, in order, with no flush.
func TestClusterFrozenStreamLeader(t *testing.T) {
	t.Parallel()
	cl := harn.StartCluster(t, 3)
	admin := harness.Connect(t, cl.URLs())
	st := cl.EventLog(admin)
	leader := cl.Node(harness.ClusterInfo(t, st).Leader)
	others := harness.Without(cl.Nodes, leader)

	// The subscriber is connected to the leader; the publisher and the
	// test's own look at the log never use it.
	subConn := cl.ConnectFirst(t, leader)
	sub, rec := subscribe(t, subConn, bus.SubscriberOptions{Name: "e2e-frozen-sub"})
	ctl := harness.Connect(t, others[0].URL+","+others[1].URL)
	pub, err := bus.NewPublisher(ctl, "e2e-pub")
	if err != nil {
		t.Fatal(err)
	}
	// Longer than the sum of the waits below (freeze, move, thaw), which
	// on a loaded machine can pass 90s.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	st, err = ctl.JS.Stream(ctx, ctl.Subjects.EventStream())
	if err != nil {
		t.Fatal(err)
	}

	before := userKeys(0, 100)
	seqs := publishExpires(ctx, t, pub, before)
	if err := sub.WaitSeq(ctx, seqs[len(seqs)-1]); err != nil {
		t.Fatalf("subscriber before the freeze: %v", err)
	}

	t.Logf("SIGSTOP of %s, the event log's leader and the subscriber's server", leader.Name)
	frozen := time.Now()
	leader.P.Stop()
	thawed := false
	defer func() {
		if !thawed {
			leader.P.Signal(syscall.SIGCONT)
		}
	}()
	after := userKeys(100, 200)
	seqs = append(seqs, publishExpires(ctx, t, pub, after)...)
	t.Logf("100 more expires acknowledged %s after the freeze; log now led by %s",
		time.Since(frozen).Round(time.Millisecond), harness.ClusterInfo(t, st).Leader)

	want := append(append([]string(nil), before...), after...)
	wctx, wcancel := context.WithTimeout(ctx, 45*time.Second)
	defer wcancel()
	if err := sub.WaitSeq(wctx, seqs[len(seqs)-1]); err != nil {
		logConsumers(t, st)
		t.Fatalf("subscriber did not catch up while its server was frozen: %v (applied %d)", err, rec.count())
	}
	t.Logf("subscriber moved to %s and caught up %s after the freeze",
		subConn.NC.ConnectedServerName(), time.Since(frozen).Round(time.Millisecond))
	checkApplied(t, "subscriber of the frozen server", rec, want)

	leader.P.Signal(syscall.SIGCONT)
	thawed = true
	var last *jetstream.ClusterInfo
	bustest.WaitFor(t, 60*time.Second, leader.Name+" thawed and current again", func() bool {
		ictx, icancel := context.WithTimeout(ctx, 2*time.Second)
		defer icancel()
		info, err := st.Info(ictx)
		if err != nil {
			return false
		}
		last = info.Cluster
		return harness.AllCurrent(last, "n1", "n2", "n3") && info.State.LastSeq == seqs[len(seqs)-1]
	})
	t.Logf("after SIGCONT: %s", harness.Describe(last))
	checkLog(ctx, t, ctl, want)
}
