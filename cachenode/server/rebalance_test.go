package server_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus/bustest"
	"github.com/cachebus/cachebus/cachenode"
	"github.com/cachebus/cachebus/cachenode/partition"
	"github.com/cachebus/cachebus/cachenode/server"
)

// TestAssignmentAcrossDCs starts four nodes in two data centers, one of
// double weight, with a cross-DC backup required: the stored assignment
// gives every partition an owner in each DC, the shares follow the
// weights, and a client reading from its own DC finds every partition
// there.
func TestAssignmentAcrossDCs(t *testing.T) {
	members := []string{"a1@east", "a2@east", "b1@west", "b2@west:2"}
	cl := newClusterWith(t, func(c *server.Config) { c.CrossDC = true }, members...)
	cl.waitSettled()

	ctx := context.Background()
	b, err := cl.baseline().Baseline(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wantMembers, _ := partition.ParseMembers(members)
	for i := range wantMembers {
		if wantMembers[i].Weight == 0 {
			wantMembers[i].Weight = 1
		}
	}
	if !slices.Equal(b.Members, wantMembers) {
		t.Fatalf("baseline %+v, want %+v", b.Members, wantMembers)
	}
	a := cl.assignment()
	if !a.CrossDC || a.Backups != 1 || a.BaselineVersion != b.Version {
		t.Fatalf("assignment: cross_dc %v, backups %d, baseline %d (want %d)", a.CrossDC, a.Backups, a.BaselineVersion, b.Version)
	}
	dc := map[string]string{}
	for _, m := range b.Members {
		dc[m.ID] = m.DC
	}
	for p, owners := range a.Owners {
		if len(owners) != 2 || dc[owners[0]] == dc[owners[1]] {
			t.Fatalf("partition %d: owners %v, want a primary and a backup in the other DC", p, owners)
		}
	}
	shares := a.Shares()
	for _, m := range b.Members {
		want := float64(partition.Partitions) * m.Weight / 5
		got := float64(shares[m.ID].Primary)
		if math.Abs(got-want) > 0.25*want {
			t.Errorf("%s (weight %g): %d primaries, want about %.0f", m.ID, m.Weight, shares[m.ID].Primary, want)
		}
		if st := cl.nodes[m.ID].Status(); st.Primary != shares[m.ID].Primary || st.Owned != shares[m.ID].Primary+shares[m.ID].Backup {
			t.Errorf("%s status: primary %d, owned %d; assignment: %+v", m.ID, st.Primary, st.Owned, shares[m.ID])
		}
	}
	t.Logf("shares: %v", shares)

	// A client in the west reads from a west node holding the partition.
	west := cl.clientWith(cachenode.ClientOptions{DC: "west"})
	writer := cl.client()
	keys := numberedKeys("dc-", 100)
	for _, k := range keys {
		if _, err := writer.Put(ctx, "sessions", k, []byte("v-"+k), time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	bustest.WaitFor(t, 5*time.Second, "the west client's view of every node", func() bool {
		return len(west.Table().Nodes) == 4
	})
	tab := west.Table()
	for p := range partition.Partitions {
		if id := tab.InDC(p, "west"); id == "" || dc[id] != "west" {
			t.Fatalf("partition %d: no west holder in the client's view (%v)", p, tab.Holders(p))
		}
	}
	for _, k := range keys {
		r, err := west.Get(ctx, "sessions", k, cachenode.FromDC())
		if err != nil || string(r.Value) != "v-"+k {
			t.Fatalf("get %s from the west: %q %v", k, r.Value, err)
		}
	}
	rs, err := west.GetMulti(ctx, "sessions", keys, cachenode.FromDC())
	if err != nil || len(rs) != len(keys) {
		t.Fatalf("multi-get from the west: %d of %d, %v", len(rs), len(keys), err)
	}
}

// TestBaselineJoinAndLeave grows the baseline from three nodes to four and
// back while a writer keeps writing. The join moves no more than about a
// quarter of the primaries and only into the new node, the leave moves
// only the leaver's; no record and no acknowledged write is lost.
func TestBaselineJoinAndLeave(t *testing.T) {
	cl := newCluster(t, "n1", "n2", "n3")
	cl.waitSettled()
	ctx := context.Background()
	client := cl.client()
	before := numberedKeys("rec-", 300)
	for _, k := range before {
		if _, err := client.Put(ctx, "sessions", k, []byte("v-"+k), time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	checkBefore := func(what string, clients ...*cachenode.Client) {
		t.Helper()
		for _, c := range clients {
			rs, err := c.GetMulti(ctx, "sessions", before)
			if err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			for _, k := range before {
				if string(rs[k].Value) != "v-"+k {
					t.Fatalf("%s: %s = %q", what, k, rs[k].Value)
				}
			}
		}
		for _, k := range before {
			p := partition.PartitionOf(k)
			for _, id := range cl.holders(p) {
				if v, ok := replyValue(t, localGet(t, cl.nodes[id], "sessions", k)); !ok || v != "v-"+k {
					t.Fatalf("%s: %s's copy of %s: %q found=%v", what, id, k, v, ok)
				}
			}
		}
	}

	// A fourth node outside the baseline owns and serves nothing.
	n4 := cl.start("n4", nil)
	bustest.WaitFor(t, 10*time.Second, "n4 ready outside the baseline, seeing every node", func() bool {
		return n4.Ready() == nil && len(n4.Table().Nodes) == 4
	})
	if st := n4.Status(); st.InBaseline || st.Owned != 0 || st.Primary != 0 || st.Held != 0 || len(st.Nodes) != 4 {
		t.Fatalf("n4 outside the baseline: %+v", st)
	}

	hot := numberedKeys("hot-", 8)
	preload(t, client, "hot", hot)
	w := startWrites(cl.client(), "hot", hot, 4)
	w.waitAcked(t, 50, "writes before the join")

	// 3 → 4.
	join, err := cl.baseline().AddMember(ctx, partition.Member{ID: "n4"})
	if err != nil {
		t.Fatal(err)
	}
	moved, sets := join.Moved()
	t.Logf("join: %d primaries and %d replica sets moved, %.0f is a quarter", moved, sets, float64(partition.Partitions)/4)
	if moved == 0 || float64(moved) > 1.1*partition.Partitions/4 {
		t.Errorf("join moved %d primaries, want at most %.1f", moved, 1.1*partition.Partitions/4)
	}
	for p := range partition.Partitions {
		prev, next := join.Previous.Owners[p], join.Assignment.Owners[p]
		if !slices.Contains(next, "n4") && !slices.Equal(prev, next) {
			t.Fatalf("partition %d moved from %v to %v without the new node", p, prev, next)
		}
		if next[0] != prev[0] && next[0] != "n4" {
			t.Fatalf("partition %d: primary moved from %s to %s", p, prev[0], next[0])
		}
	}
	bustest.WaitFor(t, 20*time.Second, "n4 serving its partitions", func() bool { return n4.Status().Primary > 0 })
	cl.waitSettled()
	if st, share := n4.Status(), join.Assignment.Shares()["n4"]; st.Primary != share.Primary || st.Held != share.Primary+share.Backup || !st.InBaseline {
		t.Fatalf("n4 after the join: %+v, assignment share %+v", st, share)
	}
	w.waitAcked(t, 50, "writes after the join")
	checkBefore("after the join", client, cl.client())

	// 4 → 3.
	leave, err := cl.baseline().RemoveMember(ctx, "n4")
	if err != nil {
		t.Fatal(err)
	}
	moved, sets = leave.Moved()
	mine := leave.Previous.Shares()["n4"]
	t.Logf("leave: %d primaries and %d replica sets moved; n4 had %+v", moved, sets, mine)
	if moved != mine.Primary || sets != mine.Primary+mine.Backup {
		t.Errorf("leave moved %d primaries and %d replica sets, want n4's %d and %d", moved, sets, mine.Primary, mine.Primary+mine.Backup)
	}
	for p := range partition.Partitions {
		prev, next := leave.Previous.Owners[p], leave.Assignment.Owners[p]
		if !slices.Contains(prev, "n4") && !slices.Equal(prev, next) {
			t.Fatalf("partition %d moved from %v to %v though n4 did not own it", p, prev, next)
		}
	}
	bustest.WaitFor(t, 20*time.Second, "n4 handing all its partitions over", func() bool {
		st := n4.Status()
		return st.Held == 0 && st.Owned == 0 && st.Primary == 0
	})
	cl.waitSettled()
	w.waitAcked(t, 50, "writes after the leave")
	cl.stop("n4")
	cl.waitSettled()
	w.waitAcked(t, 50, "writes after n4 stopped")
	final := w.finish(t)
	checkBefore("after n4 stopped", client, cl.client())
	checkFinal(t, cl, "hot", final, client)
}

// TestCrashUnderLoad crashes a node while writers and readers run: reads
// keep being served (by the backups, within the failure timeout), no
// acknowledged write is lost, the baseline and assignment stay as they
// are, and the node comes back, copies the writes it missed and serves its
// partitions again.
func TestCrashUnderLoad(t *testing.T) {
	// A failure timeout of twice the harness's: on a test machine busy
	// enough to stall every node for the harness's 600 ms, n2 could return
	// while its partitions' other holder is taken for dead, and take them
	// empty: a double fault, not this test's (see
	// TestStalledHolderWhileOwnerRestarts).
	const failure = 2 * testFailure
	cl := newClusterWith(t, func(c *server.Config) { c.FailureTimeout = failure }, "n1", "n2", "n3")
	cl.waitSettled()
	ctx := context.Background()
	version := cl.assignment().Version

	keys := numberedKeys("load-", 24)
	opts := cachenode.ClientOptions{FailureTimeout: failure}
	client := cl.clientWith(opts)
	preload(t, client, "load", keys)
	w := startWrites(cl.clientWith(opts), "load", keys, 4)
	r := startReads(cl.clientWith(opts), w, 3)
	w.waitAcked(t, 100, "writes before the crash")

	cl.crash("n2")
	crashed := time.Now()
	w.waitAcked(t, 100, "writes after the crash")
	bustest.WaitFor(t, 10*time.Second, "n2 declared dead", func() bool {
		return !cl.nodes["n1"].Table().Live("n2") && !cl.nodes["n3"].Table().Live("n2")
	})
	t.Logf("n2 declared dead %s after the crash", time.Since(crashed).Round(time.Millisecond))

	// Writes n2 misses: keys it owns, written only while it is down.
	a := cl.assignment()
	var missed []string
	for i := 0; len(missed) < 20; i++ {
		k := fmt.Sprintf("missed-%d", i)
		if slices.Contains(a.Owners[partition.PartitionOf(k)], "n2") {
			missed = append(missed, k)
		}
	}
	for _, k := range missed {
		if _, err := client.Put(ctx, "load", k, []byte("while n2 was down"), time.Minute); err != nil {
			t.Fatalf("put %s while n2 is down: %v", k, err)
		}
	}
	w.waitAcked(t, 100, "writes with n2 dead")
	for _, id := range []string{"n1", "n3"} {
		st := cl.nodes[id].Status()
		if st.AssignmentVersion != version || st.Uncovered != 0 {
			t.Fatalf("%s with n2 down: %+v (assignment version was %d)", id, st, version)
		}
		if err := cl.nodes[id].Ready(); err != nil {
			t.Fatalf("%s with n2 down: %v", id, err)
		}
	}

	// n2 returns and takes its partitions back.
	n2 := cl.start("n2", nil)
	bustest.WaitFor(t, 20*time.Second, "n2 serving again", func() bool { return n2.Status().Primary > 0 && n2.Ready() == nil })
	for _, k := range missed {
		rep := localGet(t, n2, "load", k)
		if v, ok := replyValue(t, rep); !ok || v != "while n2 was down" {
			t.Fatalf("n2's copy of %s, written while it was down: %q found=%v", k, v, ok)
		}
	}
	cl.waitSettled()
	w.waitAcked(t, 100, "writes after n2 returned")
	final := w.finish(t)
	longest := r.finish(t)
	// A read in flight to n2 when it crashed is lost: the reader gives it
	// up after its own timeout and retries, and the retries must succeed
	// within the failure timeout.
	if longest > failure+readAttempt {
		t.Errorf("reads failed for %s in a row, longer than the failure timeout %s and one read's %s", longest, failure, readAttempt)
	}
	if v := cl.assignment().Version; v != version {
		t.Fatalf("assignment version %d after the crash, was %d: a crash must not rebalance", v, version)
	}
	checkFinal(t, cl, "load", final, client)
	for _, k := range keys {
		p := partition.PartitionOf(k)
		hs := cl.holders(p)
		if len(hs) != 2 {
			t.Fatalf("partition %d held by %v", p, hs)
		}
		for _, id := range hs {
			rep := localGet(t, cl.nodes[id], "load", k)
			if v, ok := replyValue(t, rep); !ok || v != fmt.Sprint(final[k]) {
				t.Errorf("%s's copy of %s: %q, last acknowledged %d", id, k, v, final[k])
			}
		}
	}
	if st := n2.Status(); st.Primary != a.Shares()["n2"].Primary {
		t.Errorf("n2 serves %d partitions, owns %d as primary", st.Primary, a.Shares()["n2"].Primary)
	}
}

// TestStalledHolderWhileOwnerRestarts: n2 restarts while n3, the other
// owner of some of its partitions, stalls (its connection held, not
// closed) for longer than the failure timeout. n2 hears no live holder of
// those partitions and takes them empty. When n3 resumes, the two must not
// both serve their own copy: n3, which missed a failure timeout of its own
// heartbeats, suspects what it holds and copies it again, so every holder
// agrees with what is served. (The records written before are lost: both
// owners were out at once, and the one that came back first had nothing.)
func TestStalledHolderWhileOwnerRestarts(t *testing.T) {
	cl := newClusterWith(t, nil)
	base := []string{"n1", "n2", "n3"}
	proxy := newPauseProxy(t, cl.url)
	cl.start("n1", base)
	cl.start("n2", base)
	cl.startAt("n3", base, proxy.URL())
	cl.waitSettled()
	a := cl.assignment()
	var keys []string // keys of partitions n2 serves with n3 as backup
	for i := 0; len(keys) < 10 && i < 10000; i++ {
		k := fmt.Sprintf("shared-%d", i)
		if o := a.Owners[partition.PartitionOf(k)]; o[0] == "n2" && o[1] == "n3" {
			keys = append(keys, k)
		}
	}
	client := cl.client()
	ctx := context.Background()
	for _, k := range keys {
		if _, err := client.Put(ctx, "sessions", k, []byte("v"), time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	cl.crash("n2")
	bustest.WaitFor(t, 5*time.Second, "n2 declared dead", func() bool { return !cl.nodes["n1"].Table().Live("n2") })
	proxy.paused.Store(true)
	bustest.WaitFor(t, 5*time.Second, "n3 declared dead while stalled", func() bool { return !cl.nodes["n1"].Table().Live("n3") })
	n2 := cl.start("n2", nil)
	bustest.WaitFor(t, 10*time.Second, "n2 ready", func() bool { return n2.Ready() == nil })
	proxy.paused.Store(false)
	cl.waitSettled()
	lost := 0
	for _, k := range keys {
		p := partition.PartitionOf(k)
		r, err := client.Get(ctx, "sessions", k)
		served, found := string(r.Value), err == nil
		if err != nil && !errors.Is(err, cachenode.ErrNotFound) {
			t.Fatalf("%s: %v", k, err)
		}
		if !found {
			lost++
		}
		for _, id := range cl.holders(p) {
			if v, ok := replyValue(t, localGet(t, cl.nodes[id], "sessions", k)); ok != found || v != served {
				t.Errorf("%s (partition %d): %s's copy %q found=%v, served %q found=%v", k, p, id, v, ok, served, found)
			}
		}
	}
	t.Logf("%d of %d records of the partitions both owners left at once lost", lost, len(keys))
	// The partitions take writes again, on both holders.
	for _, k := range keys {
		if _, err := client.Put(ctx, "sessions", k, []byte("w"), time.Minute); err != nil {
			t.Fatal(err)
		}
		for _, id := range cl.holders(partition.PartitionOf(k)) {
			if v, ok := replyValue(t, localGet(t, cl.nodes[id], "sessions", k)); !ok || v != "w" {
				t.Fatalf("%s's copy of %s after a write: %q found=%v", id, k, v, ok)
			}
		}
	}
}

// TestQuickRestartUnderLoad restarts a crashed node before its peers
// declare it dead, so that they still take its last heartbeat (holding its
// partitions) for the new one's for a moment: no acknowledged write is
// lost and the node ends up with its partitions' data. (Meanwhile a
// request may bounce between the new node, which forwards to the backup,
// and the backup, which forwards to the node it still sees holding the
// partition, until the hop limit ends it with no_owner: a failed read the
// outage bound allows.)
func TestQuickRestartUnderLoad(t *testing.T) {
	cl := newCluster(t, "n1", "n2", "n3")
	cl.waitSettled()
	version := cl.assignment().Version
	keys := numberedKeys("quick-", 24)
	client := cl.client()
	preload(t, client, "quick", keys)
	w := startWrites(cl.client(), "quick", keys, 4)
	r := startReads(cl.client(), w, 2)
	w.waitAcked(t, 100, "writes before the crash")
	cl.crash("n2")
	n2 := cl.start("n2", nil)
	if cl.nodes["n1"].Table().Live("n2") {
		t.Log("n2 restarted before n1 declared it dead")
	}
	bustest.WaitFor(t, 20*time.Second, "n2 serving again", func() bool { return n2.Status().Primary > 0 && n2.Ready() == nil })
	cl.waitSettled()
	w.waitAcked(t, 100, "writes after the restart")
	final := w.finish(t)
	if longest := r.finish(t); longest > testFailure+readAttempt {
		t.Errorf("reads failed for %s in a row", longest)
	}
	checkFinal(t, cl, "quick", final, client)
	for _, k := range keys {
		for _, id := range cl.holders(partition.PartitionOf(k)) {
			if v, ok := replyValue(t, localGet(t, cl.nodes[id], "quick", k)); !ok || v != fmt.Sprint(final[k]) {
				t.Errorf("%s's copy of %s: %q, last acknowledged %d", id, k, v, final[k])
			}
		}
	}
	if v := cl.assignment().Version; v != version {
		t.Fatalf("assignment version %d, was %d", v, version)
	}
}

// TestSlowStartHearsPeersFirst restarts a node whose first requests to
// NATS stall for longer than the failure timeout. It must still listen to
// its peers' heartbeats for a failure timeout before it concludes that no
// live node holds its partitions: otherwise it takes them empty and, as
// their first owner, serves the empty copy.
func TestSlowStartHearsPeersFirst(t *testing.T) {
	// Beats far apart, so that a node deciding as soon as its buckets are
	// open has not heard them all.
	const interval, failure = 400 * time.Millisecond, 1200 * time.Millisecond
	cl := newClusterWith(t, func(c *server.Config) { c.Interval, c.FailureTimeout = interval, failure })
	base := []string{"n1", "n2", "n3"}
	for _, id := range base {
		cl.start(id, base)
	}
	cl.waitSettled()
	client := cl.client()
	ctx := context.Background()
	keys := numberedKeys("slow-", 100)
	for _, k := range keys {
		if _, err := client.Put(ctx, "sessions", k, []byte("v-"+k), time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	cl.crash("n2")
	bustest.WaitFor(t, 5*time.Second, "n2 declared dead", func() bool { return !cl.nodes["n1"].Table().Live("n2") })

	proxy := newPauseProxy(t, cl.url)
	c := bustest.Connect(t, proxy.URL())
	proxy.paused.Store(true)
	resume := time.AfterFunc(failure*3/2, func() { proxy.paused.Store(false) })
	defer resume.Stop()
	sctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	cfg := cl.config("n2", nil)
	cfg.Interval, cfg.FailureTimeout = interval, failure
	n2, err := server.Start(sctx, cfg, server.Options{Conn: c})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n2.Shutdown(context.Background()) })
	cl.nodes["n2"], cl.conns["n2"] = n2, c
	cl.waitSettled()
	for _, k := range keys {
		if r, err := client.Get(ctx, "sessions", k); err != nil || string(r.Value) != "v-"+k {
			t.Fatalf("%s after n2's slow start: %q %v", k, r.Value, err)
		}
		for _, id := range cl.holders(partition.PartitionOf(k)) {
			if v, ok := replyValue(t, localGet(t, cl.nodes[id], "sessions", k)); !ok || v != "v-"+k {
				t.Fatalf("%s's copy of %s: %q found=%v", id, k, v, ok)
			}
		}
	}
}

// TestBothOwnersCutOffAtOnce: n2 and n3, the two owners of some
// partitions, lose their NATS connection at the same moment, as when the
// NATS server both are connected to dies, and come back. Each suspects
// what it holds and tries to copy it from the other, which no longer
// announces it: the copies fail, and neither may have thrown its data
// away for them. Every record written before is still served, and every
// holder agrees with what is served. (The fault suite found the loss:
// before the fix, the copy cleared the partition first and the failed
// copy left it empty.)
func TestBothOwnersCutOffAtOnce(t *testing.T) {
	cl := newClusterWith(t, nil)
	base := []string{"n1", "n2", "n3"}
	proxy := bustest.NewProxy(t, strings.TrimPrefix(cl.url, "nats://"))
	cl.start("n1", base)
	cl.startAt("n2", base, proxy.URL())
	cl.startAt("n3", base, proxy.URL())
	cl.waitSettled()
	a := cl.assignment()
	var keys []string // keys of partitions n2 and n3 own
	for i := 0; len(keys) < 200 && i < 100000; i++ {
		k := fmt.Sprintf("both-%d", i)
		if o := a.Owners[partition.PartitionOf(k)]; !slices.Contains(o, "n1") {
			keys = append(keys, k)
		}
	}
	client := cl.client()
	ctx := context.Background()
	for _, k := range keys {
		if _, err := client.Put(ctx, "plain", k, []byte("v-"+k), time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	proxy.Cut()
	bustest.WaitFor(t, 5*time.Second, "n2 and n3 cut off, suspecting what they held", func() bool {
		for _, id := range []string{"n2", "n3"} {
			if cl.conns[id].NC.IsConnected() || cl.nodes[id].Status().Held != 0 {
				return false
			}
		}
		return true
	})
	proxy.Restore()
	// Each suspects what it held once back, and holds it again (copied,
	// or kept where no live node held it) only after that: the views of
	// before the cut would satisfy waitSettled at once.
	bustest.WaitFor(t, 10*time.Second, "n2 and n3 back, holding every partition they own", func() bool {
		for _, id := range []string{"n2", "n3"} {
			st := cl.nodes[id].Status()
			if !cl.conns[id].NC.IsConnected() || st.Held != st.Owned || st.Syncing > 0 {
				return false
			}
		}
		return true
	})
	cl.waitSettled()
	for _, k := range keys {
		p := partition.PartitionOf(k)
		r, err := client.Get(ctx, "plain", k)
		if err != nil {
			t.Errorf("%s (partition %d, owners %v): %v", k, p, a.Owners[p], err)
			continue
		}
		if string(r.Value) != "v-"+k {
			t.Errorf("%s: served %q", k, r.Value)
		}
		for _, id := range cl.holders(p) {
			if v, ok := replyValue(t, localGet(t, cl.nodes[id], "plain", k)); !ok || v != "v-"+k {
				t.Errorf("%s (partition %d): %s's copy %q found=%v", k, p, id, v, ok)
			}
		}
	}
}

// TestLastNodeStandingServes: two of three nodes crash while JetStream
// keeps its quorum. The one left sees a minority of its baseline, but it
// is not cut off from the NATS majority: it must not isolate itself; it
// serves every partition it owns, and takes writes to them. (Those only
// the two dead nodes owned have no owner left until the baseline changes.)
func TestLastNodeStandingServes(t *testing.T) {
	cl := newCluster(t, "n1", "n2", "n3")
	cl.waitSettled()
	client := cl.client()
	ctx := context.Background()
	a := cl.assignment()
	var keys []string // keys of partitions n1 owns
	for i := 0; len(keys) < 50; i++ {
		if k := fmt.Sprintf("left-%d", i); slices.Contains(a.Owners[partition.PartitionOf(k)], "n1") {
			keys = append(keys, k)
		}
	}
	preload(t, client, "plain", keys)
	cl.crash("n2")
	cl.crash("n3")
	n1 := cl.nodes["n1"]
	bustest.WaitFor(t, 10*time.Second, "n1 alone, serving every partition it owns", func() bool {
		st := n1.Status()
		return len(st.Nodes) == 1 && st.Primary == st.Owned && st.Held == st.Owned
	})
	// Writes go on being taken for three of the isolation's probe periods
	// (500 ms): the probe that would isolate it runs meanwhile.
	n := 0
	for end := time.Now().Add(1500 * time.Millisecond); time.Now().Before(end); n++ {
		k := keys[n%len(keys)]
		if _, err := client.Put(ctx, "plain", k, []byte("after"), time.Minute); err != nil {
			t.Fatalf("put %s with n1 alone, %d writes in: %v", k, n, err)
		}
	}
	if st := n1.Status(); st.Isolated {
		t.Fatalf("n1 isolated itself with JetStream's quorum intact: %+v", st)
	}
}
