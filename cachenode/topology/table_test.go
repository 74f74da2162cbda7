package topology_test

import (
	"context"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/bus/bustest"
	"github.com/cachebus/cachebus/cachenode/partition"
	"github.com/cachebus/cachebus/cachenode/topology"
	"github.com/cachebus/cachebus/persistence"
)

func TestHolds(t *testing.T) {
	var h topology.Holds
	if h.Count() != 0 {
		t.Fatalf("empty: %d", h.Count())
	}
	for _, p := range []int{0, 7, 8, 511, 1023} {
		h.Set(p, true)
		h.Set(p, true) // idempotent
	}
	if h.Count() != 5 {
		t.Fatalf("count %d, want 5", h.Count())
	}
	for p := range partition.Partitions {
		want := p == 0 || p == 7 || p == 8 || p == 511 || p == 1023
		if h.Has(p) != want {
			t.Fatalf("Has(%d) = %v", p, h.Has(p))
		}
	}
	h.Set(7, false)
	h.Set(6, false) // clearing a clear bit
	if h.Has(7) || h.Count() != 4 {
		t.Fatalf("after clearing 7: has %v, count %d", h.Has(7), h.Count())
	}
	// The bitmap is the heartbeat's: partition p is bit p%8 of byte p/8.
	if h[0] != 1 || h[1] != 1 || h[127] != 0x80 {
		t.Fatalf("layout: % x … % x", h[:2], h[127])
	}
	var all topology.Holds
	for p := range partition.Partitions {
		all.Set(p, true)
	}
	if all.Count() != partition.Partitions {
		t.Fatalf("all: %d", all.Count())
	}
}

func holding(ps ...int) topology.Holds {
	var h topology.Holds
	for _, p := range ps {
		h.Set(p, true)
	}
	return h
}

// TestTableBuild derives tables from synthetic assignments and holdings and
// checks who serves each partition, in what order, who a write reaches,
// coverage and the choice of a holder in a data center.
func TestTableBuild(t *testing.T) {
	var a partition.Assignment
	a.Version = 3
	a.Owners[0] = []string{"a", "b"} // both live and holding
	a.Owners[1] = []string{"a", "b"} // primary live, still copying
	a.Owners[2] = []string{"a", "d"} // primary holds, backup down
	a.Owners[3] = []string{"d", "b"} // primary down: its backup serves
	a.Owners[4] = []string{"a", "b"} // a handover: only former owners c and e hold it
	a.Owners[5] = []string{"a", "b"} // nobody holds it
	a.Owners[6] = []string{"b", "a"} // owners hold it, and so does c, its former owner
	// 7 to 1023: no owners (an empty baseline), nobody holds them.
	nodes := map[string]*topology.Node{
		"a": {ID: "a", DC: "east", Holds: holding(0, 2, 6)},
		"b": {ID: "b", DC: "west", Holds: holding(0, 1, 3, 6)},
		"c": {ID: "c", DC: "west", Holds: holding(4, 6)},
		"e": {ID: "e", DC: "east", Holds: holding(4)},
	}
	tab := topology.Build(&a, nodes)
	if tab.Assignment != &a || len(tab.Nodes) != 4 {
		t.Fatalf("table keeps its inputs: %v %d", tab.Assignment == &a, len(tab.Nodes))
	}
	// The two non-owners of partition 4 are ordered by rendezvous score.
	extra := []string{"c", "e"}
	if partition.Score("e", 1, 4) > partition.Score("c", 1, 4) {
		extra = []string{"e", "c"}
	}
	for _, tc := range []struct {
		p       int
		primary string
		holders []string
		// targets of a write served by the primary
		targets []string
		east    string
		west    string
	}{
		{0, "a", []string{"a", "b"}, []string{"b"}, "a", "b"},
		{1, "b", []string{"b"}, []string{"a"}, "", "b"},
		{2, "a", []string{"a"}, nil, "a", ""},
		{3, "b", []string{"b"}, nil, "", "b"},
		{4, extra[0], extra, append([]string{"a", "b"}, extra[1]), "e", "c"},
		{5, "", nil, []string{"a", "b"}, "", ""},
		{6, "b", []string{"b", "a", "c"}, []string{"a", "c"}, "a", "b"},
		{7, "", nil, nil, "", ""},
		{1023, "", nil, nil, "", ""},
	} {
		if got := tab.Primary(tc.p); got != tc.primary {
			t.Errorf("partition %d: primary %q, want %q", tc.p, got, tc.primary)
		}
		if got := tab.Holders(tc.p); !slices.Equal(got, tc.holders) {
			t.Errorf("partition %d: holders %v, want %v", tc.p, got, tc.holders)
		}
		if got := tab.Targets(tc.p, tc.primary, nil); !slices.Equal(got, tc.targets) {
			t.Errorf("partition %d: targets from %q %v, want %v", tc.p, tc.primary, got, tc.targets)
		}
		if got := tab.InDC(tc.p, "east"); got != tc.east {
			t.Errorf("partition %d: east holder %q, want %q", tc.p, got, tc.east)
		}
		if got := tab.InDC(tc.p, "west"); got != tc.west {
			t.Errorf("partition %d: west holder %q, want %q", tc.p, got, tc.west)
		}
	}
	// Targets appends to dst and never names self.
	if got := tab.Targets(0, "b", []string{"x"}); !slices.Equal(got, []string{"x", "a"}) {
		t.Errorf("targets appended to dst from b: %v", got)
	}
	if got := tab.Targets(6, "c", nil); !slices.Equal(got, []string{"b", "a"}) {
		t.Errorf("targets of partition 6 from its former owner c: %v", got)
	}
	// Uncovered: 5 and 7…1023; moving: 4 (served by a non-owner).
	un, mv := tab.Coverage()
	if un != 1+(partition.Partitions-7) || mv != 1 {
		t.Errorf("coverage: %d uncovered, %d moving; want %d and 1", un, mv, 1+partition.Partitions-7)
	}
	for _, id := range []string{"a", "b", "c", "e"} {
		if !tab.Live(id) {
			t.Errorf("%s not live", id)
		}
	}
	if tab.Live("d") || tab.Live("") {
		t.Error("a node without a heartbeat is live")
	}
	if got := tab.InDC(0, "north"); got != "" {
		t.Errorf("holder in an unknown DC: %q", got)
	}
}

// TestTableFromAssign builds the table of a real assignment with every
// owner holding its partitions: every partition is served by its
// assignment's primary and no partition is uncovered or moving.
func TestTableFromAssign(t *testing.T) {
	b := partition.Baseline{Version: 1, Members: []partition.Member{{ID: "n1"}, {ID: "n2"}, {ID: "n3", Weight: 2}}}
	a, err := partition.Assign(b, 1, false)
	if err != nil {
		t.Fatal(err)
	}
	nodes := map[string]*topology.Node{}
	for _, m := range b.Members {
		nodes[m.ID] = &topology.Node{ID: m.ID}
	}
	for p, owners := range a.Owners {
		for _, id := range owners {
			nodes[id].Holds.Set(p, true)
		}
	}
	tab := topology.Build(&a, nodes)
	for p := range partition.Partitions {
		if tab.Primary(p) != a.Primary(p) || !slices.Equal(tab.Holders(p), a.Owners[p]) {
			t.Fatalf("partition %d: primary %s holders %v, assignment %v", p, tab.Primary(p), tab.Holders(p), a.Owners[p])
		}
	}
	if un, mv := tab.Coverage(); un != 0 || mv != 0 {
		t.Fatalf("coverage: %d uncovered, %d moving", un, mv)
	}
	// n3 down: its partitions are served by their backups, none uncovered.
	delete(nodes, "n3")
	tab = topology.Build(&a, nodes)
	for p := range partition.Partitions {
		if a.Primary(p) == "n3" && tab.Primary(p) != a.Owners[p][1] {
			t.Fatalf("partition %d: served by %q with n3 down, want its backup %s", p, tab.Primary(p), a.Owners[p][1])
		}
	}
	if un, mv := tab.Coverage(); un != 0 || mv != 0 {
		t.Fatalf("coverage with n3 down: %d uncovered, %d moving", un, mv)
	}
}

// TestTracker follows a baseline change and cache nodes' heartbeats on a
// real NATS server: the table shows the assignment and the holds each node
// announces, ignores other roles, and drops a node when it says it is gone
// or falls silent for the failure timeout.
func TestTracker(t *testing.T) {
	tg := bustest.Embedded(t)
	c := bustest.Connect(t, tg.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	nodes, err := persistence.OpenOrBindNodes(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	var changes atomic.Int64
	const failure = 400 * time.Millisecond
	tr, err := topology.Track(ctx, c, nodes, failure, func(*topology.Table) { changes.Add(1) })
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Stop()
	if tab := tr.Table(); tab.Assignment.Version != 0 || len(tab.Nodes) != 0 || tab.Primary(0) != "" {
		t.Fatalf("before any baseline: %+v", tab)
	}
	ch, err := nodes.SetBaseline(ctx, []partition.Member{{ID: "a"}, {ID: "b"}}, 1, false)
	if err != nil {
		t.Fatal(err)
	}
	bustest.WaitFor(t, 5*time.Second, "the assignment", func() bool {
		return tr.Table().Assignment.Version == ch.Assignment.Version && tr.Baseline().Version == ch.Baseline.Version
	})

	beat := func(id, role string, holds topology.Holds) *bus.Heartbeater {
		t.Helper()
		hc := bustest.Connect(t, tg.URL)
		h, err := bus.StartHeartbeat(hc, bus.Heartbeat{ID: id, Role: role, DC: "east", Holds: bus.EncodeHolds(holds)}, 50*time.Millisecond, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { h.Stop(context.Background()) })
		return h
	}
	var all topology.Holds
	for p := range partition.Partitions {
		all.Set(p, true)
	}
	ha := beat("a", "node", all)
	hb := beat("b", "node", holding(1, 2, 3))
	beat("c", "gateway", all) // not a cache node
	bustest.WaitFor(t, 5*time.Second, "both nodes in the table", func() bool {
		tab := tr.Table()
		return tab.Live("a") && tab.Live("b")
	})
	tab := tr.Table()
	if tab.Live("c") || len(tab.Nodes) != 2 || tab.Nodes["a"].DC != "east" {
		t.Fatalf("nodes: %v", tab.Nodes)
	}
	for p := range partition.Partitions {
		want := []string{"a"}
		if p >= 1 && p <= 3 {
			want = ch.Assignment.Owners[p]
		}
		if got := tab.Holders(p); !slices.Equal(got, want) {
			t.Fatalf("partition %d: holders %v, want %v", p, got, want)
		}
	}
	if changes.Load() == 0 {
		t.Fatal("onChange never called")
	}
	// A node that leaves says so: gone at once.
	hb.Stop(ctx)
	bustest.WaitFor(t, failure/2, "b gone", func() bool { return !tr.Table().Live("b") })
	// One that crashes falls silent: gone after the failure timeout.
	ha.Stop(ctx) // announces gone too; check the silent path with a new beat
	silent := bustest.Connect(t, tg.URL)
	h, err := bus.StartHeartbeat(silent, bus.Heartbeat{ID: "d", Role: "node"}, 50*time.Millisecond, nil)
	if err != nil {
		t.Fatal(err)
	}
	bustest.WaitFor(t, 5*time.Second, "d live", func() bool { return tr.Table().Live("d") })
	silent.NC.Close()
	stopped := time.Now()
	bustest.WaitFor(t, 5*time.Second, "d declared dead", func() bool { return !tr.Table().Live("d") })
	if d := time.Since(stopped); d < failure/2 {
		t.Fatalf("d declared dead %s after it fell silent, before the failure timeout %s", d, failure)
	}
	h.Stop(ctx)
}
