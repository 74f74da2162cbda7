package persistence_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/bus/bustest"
	"github.com/cachebus/cachebus/cachenode/partition"
	"github.com/cachebus/cachebus/persistence"
	"github.com/nats-io/nats.go/jetstream"
)

func openNodes(t *testing.T, c *bus.Conn) *persistence.Nodes {
	t.Helper()
	n, err := persistence.OpenNodes(ctx10(t), c, persistence.NodesConfig{})
	if err != nil {
		t.Fatalf("open nodes: %v", err)
	}
	return n
}

func nodeMembers(ids ...string) []partition.Member {
	out := make([]partition.Member, len(ids))
	for i, id := range ids {
		out[i] = partition.Member{ID: id}
	}
	return out
}

func memberIDs(b partition.Baseline) []string {
	ids := make([]string, len(b.Members))
	for i, m := range b.Members {
		ids[i] = m.ID
	}
	return ids
}

// checkStored reads the baseline and assignment back and checks that they
// are the given version, that the assignment is the one computed from the
// baseline, and returns both.
func checkStored(t *testing.T, n *persistence.Nodes, version uint64, ids ...string) (partition.Baseline, partition.Assignment) {
	t.Helper()
	ctx := ctx10(t)
	b, err := n.Baseline(ctx)
	if err != nil {
		t.Fatal(err)
	}
	a, err := n.Assignment(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if b.Version != version || !slices.Equal(memberIDs(b), ids) {
		t.Fatalf("baseline version %d members %v, want %d %v", b.Version, memberIDs(b), version, ids)
	}
	if a.BaselineVersion != b.Version {
		t.Fatalf("assignment of baseline %d, baseline is %d", a.BaselineVersion, b.Version)
	}
	want, err := partition.Assign(b, a.Backups, a.CrossDC)
	if err != nil {
		t.Fatal(err)
	}
	for p := range partition.Partitions {
		if !slices.Equal(a.Owners[p], want.Owners[p]) {
			t.Fatalf("stored partition %d owners %v, Assign gives %v", p, a.Owners[p], want.Owners[p])
		}
	}
	return b, a
}

// TestNodesSetAddRemove walks a baseline through set, add and remove and
// checks versions, the stored assignment and what each change moved.
func TestNodesSetAddRemove(t *testing.T) {
	forEachTarget(t, func(t *testing.T, tg *bustest.Target) {
		c := bustest.Connect(t, tg.URL)
		ctx := ctx10(t)
		if _, err := persistence.BindNodes(ctx, c); !errors.Is(err, jetstream.ErrBucketNotFound) {
			t.Fatalf("bind before any daemon: %v, want bucket not found", err)
		}
		n, err := persistence.OpenOrBindNodes(ctx, c)
		if err != nil {
			t.Fatal(err)
		}
		if n.Bucket() != "CACHEBUS_NODES" {
			t.Fatalf("bucket %s", n.Bucket())
		}
		b, err := n.Baseline(ctx)
		if err != nil || b.Version != 0 || len(b.Members) != 0 {
			t.Fatalf("fresh baseline %+v, %v", b, err)
		}
		if a, err := n.Assignment(ctx); err != nil || a.Version != 0 || a.Primary(0) != "" {
			t.Fatalf("fresh assignment version %d, %v", a.Version, err)
		}

		ch, err := n.SetBaseline(ctx, []partition.Member{{ID: "n1", DC: "dc1"}, {ID: "n2", DC: "dc1"}, {ID: "n3", DC: "dc2", Weight: 2}}, 1, true)
		if err != nil {
			t.Fatal(err)
		}
		if ch.Baseline.Version != 1 || ch.Assignment.Version != 1 || ch.Superseded {
			t.Fatalf("set: baseline %d assignment %d superseded %v", ch.Baseline.Version, ch.Assignment.Version, ch.Superseded)
		}
		if p, s := ch.Moved(); p != partition.Partitions || s != partition.Partitions {
			t.Fatalf("first baseline moved %d, %d; want every partition", p, s)
		}
		b, a := checkStored(t, n, 1, "n1", "n2", "n3")
		if b.Members[0].Weight != 1 || b.Members[2].Weight != 2 || b.Members[2].DC != "dc2" {
			t.Fatalf("stored members %+v: default weight not written, or DC lost", b.Members)
		}
		if a.Version != 1 || a.Backups != 1 || !a.CrossDC {
			t.Fatalf("assignment %d backups %d cross-dc %v", a.Version, a.Backups, a.CrossDC)
		}

		// add keeps the backup settings of the assignment in force.
		ch, err = n.AddMember(ctx, partition.Member{ID: "n4", DC: "dc2"})
		if err != nil {
			t.Fatal(err)
		}
		prim, sets := ch.Moved()
		t.Logf("add n4: %d primaries, %d replica sets moved", prim, sets)
		if ch.Baseline.Version != 2 || ch.Assignment.Version != 2 || prim == 0 || prim > 1024*11/40 {
			t.Fatalf("add: version %d/%d, %d primaries moved", ch.Baseline.Version, ch.Assignment.Version, prim)
		}
		_, a = checkStored(t, n, 2, "n1", "n2", "n3", "n4")
		if a.Backups != 1 || !a.CrossDC {
			t.Fatalf("add changed the settings: backups %d cross-dc %v", a.Backups, a.CrossDC)
		}
		n4 := a.Shares()["n4"]

		if _, err := n.AddMember(ctx, partition.Member{ID: "n4"}); !errors.Is(err, persistence.ErrMemberExists) {
			t.Fatalf("adding n4 twice: %v", err)
		}
		if _, err := n.RemoveMember(ctx, "n9"); !errors.Is(err, persistence.ErrMemberMissing) {
			t.Fatalf("removing a stranger: %v", err)
		}
		if _, err := n.SetBaseline(ctx, nodeMembers("n1", "n1"), 1, false); !errors.Is(err, partition.ErrDuplicateMember) {
			t.Fatalf("duplicate: %v", err)
		}
		if _, err := n.SetBaseline(ctx, nodeMembers("n1"), -1, false); !errors.Is(err, partition.ErrBadBackups) {
			t.Fatalf("negative backups: %v", err)
		}
		checkStored(t, n, 2, "n1", "n2", "n3", "n4") // nothing written by the failures

		ch, err = n.RemoveMember(ctx, "n4")
		if err != nil {
			t.Fatal(err)
		}
		prim, sets = ch.Moved()
		t.Logf("remove n4: %d primaries, %d replica sets moved; n4 had %d and %d", prim, sets, n4.Primary, n4.Primary+n4.Backup)
		if prim != n4.Primary {
			t.Fatalf("remove n4 moved %d primaries, n4 had %d", prim, n4.Primary)
		}
		checkStored(t, n, 3, "n1", "n2", "n3")

		// set with new settings.
		ch, err = n.SetBaseline(ctx, nodeMembers("a", "b"), 0, false)
		if err != nil {
			t.Fatal(err)
		}
		_, a = checkStored(t, n, 4, "a", "b")
		if a.Version != 4 || a.Backups != 0 || a.CrossDC || len(a.Owners[7]) != 1 {
			t.Fatalf("set: assignment %d backups %d cross-dc %v owners %v", a.Version, a.Backups, a.CrossDC, a.Owners[7])
		}
	})
}

// TestNodesKeysDeletedByHand deletes both keys, as `nats kv del` would:
// the next change writes them again and versions go on increasing.
func TestNodesKeysDeletedByHand(t *testing.T) {
	forEachTarget(t, func(t *testing.T, tg *bustest.Target) {
		c := bustest.Connect(t, tg.URL)
		n := openNodes(t, c)
		ctx := ctx10(t)
		for _, ids := range [][]string{{"n1"}, {"n1", "n2"}} {
			if _, err := n.SetBaseline(ctx, nodeMembers(ids...), 1, false); err != nil {
				t.Fatal(err)
			}
		}
		kv, err := c.JS.KeyValue(ctx, "CACHEBUS_NODES")
		if err != nil {
			t.Fatal(err)
		}
		if err := kv.Delete(ctx, "baseline"); err != nil {
			t.Fatal(err)
		}
		if b, err := n.Baseline(ctx); err != nil || b.Version != 0 {
			t.Fatalf("deleted baseline reads %+v, %v", b, err)
		}
		ch, err := n.AddMember(ctx, partition.Member{ID: "n3"})
		if err != nil {
			t.Fatal(err)
		}
		if ch.Baseline.Version != 3 || ch.Superseded {
			t.Fatalf("after a deleted baseline: version %d superseded %v, want 3 written", ch.Baseline.Version, ch.Superseded)
		}
		checkStored(t, n, 3, "n3")

		if err := kv.Delete(ctx, "assignment"); err != nil {
			t.Fatal(err)
		}
		if _, err := n.AddMember(ctx, partition.Member{ID: "n4"}); err != nil {
			t.Fatal(err)
		}
		checkStored(t, n, 4, "n3", "n4")
	})
}

// TestNodesConcurrentWriters makes two operators change the baseline at
// once: both changes are applied, neither is lost. The first writer reads,
// then waits until the second has written, so its compare-and-set fails
// and it must read again.
func TestNodesConcurrentWriters(t *testing.T) {
	forEachTarget(t, func(t *testing.T, tg *bustest.Target) {
		first := openNodes(t, bustest.Connect(t, tg.URL))
		second := openNodes(t, bustest.Connect(t, tg.URL))
		ctx := ctx10(t)
		if _, err := first.SetBaseline(ctx, nodeMembers("n1", "n2"), 1, false); err != nil {
			t.Fatal(err)
		}

		read := make(chan struct{})
		written := make(chan struct{})
		calls := 0
		var firstCh persistence.Change
		var firstErr error
		var wg sync.WaitGroup
		wg.Go(func() {
			firstCh, firstErr = first.Update(ctx, func(cur partition.Baseline, a partition.Assignment) ([]partition.Member, int, bool, error) {
				calls++
				if calls == 1 {
					close(read)
					<-written
				}
				return append(slices.Clone(cur.Members), partition.Member{ID: "from-first"}), a.Backups, a.CrossDC, nil
			})
		})
		<-read
		ch, err := second.AddMember(ctx, partition.Member{ID: "from-second"})
		close(written)
		wg.Wait()
		if err != nil || firstErr != nil {
			t.Fatalf("second: %v; first: %v", err, firstErr)
		}
		if calls != 2 {
			t.Fatalf("first writer's edit ran %d times, want 2 (one conflict)", calls)
		}
		if ch.Baseline.Version != 2 || firstCh.Baseline.Version != 3 {
			t.Fatalf("versions: second wrote %d, first %d; want 2 and 3", ch.Baseline.Version, firstCh.Baseline.Version)
		}
		checkStored(t, first, 3, "n1", "n2", "from-second", "from-first")

		// Many writers at once, on two connections: every member arrives.
		var want []string
		errs := make(chan error, 20)
		for i := range 20 {
			n := []*persistence.Nodes{first, second}[i%2]
			id := fmt.Sprintf("w%02d", i)
			want = append(want, id)
			wg.Go(func() {
				_, err := n.AddMember(ctx, partition.Member{ID: id})
				errs <- err
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		b, a := checkStored(t, second, 23, memberIDsOf(t, second)...)
		for _, id := range want {
			if _, ok := b.Member(id); !ok {
				t.Errorf("member %s lost", id)
			}
		}
		// A writer whose assignment a newer one superseded writes none, so
		// the assignment may count fewer versions than the baseline.
		if len(b.Members) != 24 || a.Version > 23 || a.Version < 4 {
			t.Fatalf("%d members, assignment version %d; want 24 and 4..23", len(b.Members), a.Version)
		}
		t.Logf("20 concurrent adds: baseline version 23, assignment version %d", a.Version)
	})
}

func memberIDsOf(t *testing.T, n *persistence.Nodes) []string {
	t.Helper()
	b, err := n.Baseline(ctx10(t))
	if err != nil {
		t.Fatal(err)
	}
	return memberIDs(b)
}

// watchLog records what a watcher was called with.
type watchLog struct {
	mu    sync.Mutex
	calls []partition.Assignment
	bases []partition.Baseline
}

func (w *watchLog) fn(b partition.Baseline, a partition.Assignment) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.bases = append(w.bases, b)
	w.calls = append(w.calls, a)
}

func (w *watchLog) last() (partition.Baseline, partition.Assignment, int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.calls) == 0 {
		return partition.Baseline{}, partition.Assignment{}, 0
	}
	return w.bases[len(w.bases)-1], w.calls[len(w.calls)-1], len(w.calls)
}

// TestNodesWatch follows the baseline from a second connection: the
// current values first, then every change with its matching assignment,
// versions increasing, nothing after Stop.
func TestNodesWatch(t *testing.T) {
	forEachTarget(t, func(t *testing.T, tg *bustest.Target) {
		op := openNodes(t, bustest.Connect(t, tg.URL))
		node := openNodes(t, bustest.Connect(t, tg.URL))
		ctx := ctx10(t)

		empty := &watchLog{}
		w0, err := node.Watch(ctx, empty.fn)
		if err != nil {
			t.Fatal(err)
		}
		if b, a, n := empty.last(); n != 1 || b.Version != 0 || a.Version != 0 {
			t.Fatalf("watch of an empty bucket: %d calls, versions %d/%d", n, b.Version, a.Version)
		}
		w0.Stop()

		if _, err := op.SetBaseline(ctx, nodeMembers("n1", "n2", "n3"), 1, false); err != nil {
			t.Fatal(err)
		}
		log := &watchLog{}
		wctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		w, err := node.Watch(wctx, log.fn)
		if err != nil {
			t.Fatal(err)
		}
		if b, a, n := log.last(); n != 1 || b.Version != 1 || a.BaselineVersion != 1 || a.Primary(0) == "" {
			t.Fatalf("first call: %d calls, baseline %d, assignment of %d", n, b.Version, a.BaselineVersion)
		}

		if _, err := op.AddMember(ctx, partition.Member{ID: "n4"}); err != nil {
			t.Fatal(err)
		}
		if _, err := op.RemoveMember(ctx, "n1"); err != nil {
			t.Fatal(err)
		}
		bustest.WaitFor(t, 10*time.Second, "watcher sees version 3", func() bool {
			b, _, _ := log.last()
			return b.Version == 3
		})
		b, a, _ := log.last()
		if !slices.Equal(memberIDs(b), []string{"n2", "n3", "n4"}) || a.Shares()["n1"].Primary != 0 {
			t.Fatalf("watched baseline %v, n1 still owns %+v", memberIDs(b), a.Shares()["n1"])
		}
		log.mu.Lock()
		for i := range log.calls {
			if log.calls[i].BaselineVersion != log.bases[i].Version {
				t.Errorf("call %d: baseline %d with the assignment of %d", i, log.bases[i].Version, log.calls[i].BaselineVersion)
			}
			if i > 0 && (log.bases[i].Version <= log.bases[i-1].Version || log.calls[i].Version <= log.calls[i-1].Version) {
				t.Errorf("call %d: versions %d/%d after %d/%d", i, log.bases[i].Version, log.calls[i].Version,
					log.bases[i-1].Version, log.calls[i-1].Version)
			}
		}
		log.mu.Unlock()

		// Ending the context ends the watch; nothing is delivered after.
		cancel()
		select {
		case <-w.Done():
		case <-time.After(10 * time.Second):
			t.Fatal("watch still running after its context ended")
		}
		w.Stop()
		_, _, before := log.last()
		if _, err := op.AddMember(ctx, partition.Member{ID: "n5"}); err != nil {
			t.Fatal(err)
		}
		// A fresh watcher sees the change: the old one had its chance.
		again := &watchLog{}
		w2, err := node.Watch(ctx, again.fn)
		if err != nil {
			t.Fatal(err)
		}
		defer w2.Stop()
		if b, _, _ := again.last(); b.Version != 4 {
			t.Fatalf("new watcher starts at version %d, want 4", b.Version)
		}
		if _, _, after := log.last(); after != before {
			t.Fatalf("stopped watcher called %d more times", after-before)
		}
	})
}

// TestNodesBucketPrefix checks that another prefix gets its own bucket.
func TestNodesBucketPrefix(t *testing.T) {
	tg := bustest.Embedded(t)
	ctx := ctx10(t)
	c, err := bus.Connect(ctx, bus.ConnConfig{URL: tg.URL, Prefix: "acme.cache-bus"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.NC.Close)
	n := openNodes(t, c)
	if n.Bucket() != "CACHEBUS_NODES_acme_cache-bus" {
		t.Fatalf("bucket %s", n.Bucket())
	}
	if _, err := n.SetBaseline(ctx, nodeMembers("n1"), 0, false); err != nil {
		t.Fatal(err)
	}
	if _, err := c.JS.KeyValue(ctx, "CACHEBUS_NODES_acme_cache-bus"); err != nil {
		t.Fatal(err)
	}
}
