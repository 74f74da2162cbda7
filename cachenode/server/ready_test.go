package server_test

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus/bustest"
	"github.com/cachebus/cachebus/cachenode"
	"github.com/cachebus/cachebus/cachenode/partition"
	"github.com/cachebus/cachebus/cachenode/server"
)

// TestReadyAloneInABaselineOfTwo starts one node of a two-node baseline.
// Until it has listened for the failure timeout it cannot know whether its
// peer holds the partitions, so it is not ready and says it waits for
// them; then it takes every partition empty and is ready alone. When the
// peer comes, it copies its share and both are ready.
func TestReadyAloneInABaselineOfTwo(t *testing.T) {
	const failure = 1500 * time.Millisecond
	cl := newClusterWith(t, func(c *server.Config) { c.FailureTimeout = failure })
	started := time.Now()
	n1 := cl.start("n1@east", []string{"n1@east", "n2@east"})
	if err := n1.Ready(); err == nil || !strings.Contains(err.Error(), "copying 1024 of its partitions") {
		if time.Since(started) < failure {
			t.Fatalf("ready at start, its peer unheard of: %v", err)
		}
	}
	bustest.WaitFor(t, 5*time.Second, "n1 seeing itself", func() bool { return len(n1.Status().Nodes) == 1 })
	if st := n1.Status(); time.Since(started) < failure && (st.Held != 0 || st.Primary != 0 || st.Uncovered != partition.Partitions) {
		t.Fatalf("status before the failure timeout: %+v", st)
	}
	bustest.WaitFor(t, 10*time.Second, "n1 ready alone", func() bool { return n1.Ready() == nil })
	if d := time.Since(started); d < failure {
		t.Fatalf("ready %s after start, before the failure timeout %s", d, failure)
	}
	st := n1.Status()
	want := server.Status{ID: "n1", DC: "east", BaselineVersion: 1, AssignmentVersion: 1, InBaseline: true,
		Owned: partition.Partitions, Primary: partition.Partitions, Held: partition.Partitions, Nodes: []string{"n1"}}
	st.Uptime = ""
	if !statusEqual(st, want) {
		t.Fatalf("status alone:\n got %+v\nwant %+v", st, want)
	}
	client := cl.client()
	ctx := context.Background()
	for _, k := range numberedKeys("alone-", 50) {
		if _, err := client.Put(ctx, "sessions", k, []byte(k), time.Minute); err != nil {
			t.Fatal(err)
		}
	}

	n2 := cl.start("n2@east", nil)
	cl.waitSettled()
	s1, s2 := n1.Status(), n2.Status()
	if s1.Primary+s2.Primary != partition.Partitions || s1.Owned != partition.Partitions || s2.Held != partition.Partitions ||
		s1.Primary == 0 || s2.Primary == 0 || !slices.Equal(s2.Nodes, []string{"n1", "n2"}) || s1.Uncovered != 0 || s2.Moving != 0 {
		t.Fatalf("statuses of two:\n%+v\n%+v", s1, s2)
	}
	for _, k := range numberedKeys("alone-", 50) {
		if v, ok := replyValue(t, localGet(t, n2, "sessions", k)); !ok || v != k {
			t.Fatalf("n2's copy of %s: %q found=%v", k, v, ok)
		}
	}
	if s2.Records != 50 || s1.Records != 50 {
		t.Fatalf("records: n1 %d, n2 %d, want 50 each", s1.Records, s2.Records)
	}
	cl.stop("n2")
	if err := n2.Ready(); err == nil || !strings.Contains(err.Error(), "shutting down") {
		t.Fatalf("ready after shutdown: %v", err)
	}
}

func statusEqual(a, b server.Status) bool {
	return a.ID == b.ID && a.DC == b.DC && a.BaselineVersion == b.BaselineVersion && a.AssignmentVersion == b.AssignmentVersion &&
		a.InBaseline == b.InBaseline && a.Owned == b.Owned && a.Primary == b.Primary && a.Held == b.Held &&
		a.Syncing == b.Syncing && a.Uncovered == b.Uncovered && a.Moving == b.Moving && slices.Equal(a.Nodes, b.Nodes) &&
		a.Records == b.Records
}

// TestNotReadyWithoutBackups runs two nodes with no backups and crashes
// one: its partitions have no live holder, so the survivor is not ready
// and says how many partitions lack one, and their keys fail with
// ErrNoOwner rather than a timeout. The baseline does not change; when the
// node returns (its data lost: there was no backup) it serves them again.
func TestNotReadyWithoutBackups(t *testing.T) {
	cl := newClusterWith(t, func(c *server.Config) { c.Backups = 0 }, "n1", "n2")
	cl.waitSettled()
	a := cl.assignment()
	lost := a.Shares()["n2"].Primary
	if a.Backups != 0 || lost == 0 {
		t.Fatalf("assignment: %d backups, n2 owns %d", a.Backups, lost)
	}
	var k1, k2 string // keys of n1's and n2's partitions
	for i := 0; k1 == "" || k2 == ""; i++ {
		k := "key-" + strconv.Itoa(i)
		switch a.Primary(partition.PartitionOf(k)) {
		case "n1":
			k1 = k
		case "n2":
			k2 = k
		}
	}
	client := cl.client()
	ctx := context.Background()
	for _, k := range []string{k1, k2} {
		if _, err := client.Put(ctx, "sessions", k, []byte("v"), time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	cl.crash("n2")
	n1 := cl.nodes["n1"]
	bustest.WaitFor(t, 5*time.Second, "n1 not ready", func() bool { return n1.Ready() != nil })
	err := n1.Ready()
	if want := "partitions have no live node holding their data"; !strings.Contains(err.Error(), want) ||
		!strings.HasPrefix(err.Error(), strconv.Itoa(lost)+" ") {
		t.Fatalf("not ready: %q, want %d %s", err, lost, want)
	}
	if st := n1.Status(); st.Uncovered != lost || st.Primary != partition.Partitions-lost || st.AssignmentVersion != a.Version {
		t.Fatalf("status: %+v", st)
	}
	if _, err := client.Get(ctx, "sessions", k2); !errors.Is(err, cachenode.ErrNoOwner) {
		t.Fatalf("get of a key no node holds: %v, want ErrNoOwner", err)
	}
	if _, err := client.Put(ctx, "sessions", k2, []byte("w"), time.Minute); !errors.Is(err, cachenode.ErrNoOwner) {
		t.Fatalf("put of a key no node holds: %v, want ErrNoOwner", err)
	}
	if r, err := client.Get(ctx, "sessions", k1); err != nil || string(r.Value) != "v" {
		t.Fatalf("get of a key n1 holds: %q %v", r.Value, err)
	}

	cl.start("n2", nil)
	cl.waitSettled()
	if _, err := client.Get(ctx, "sessions", k2); !errors.Is(err, cachenode.ErrNotFound) {
		t.Fatalf("get of a key lost with n2: %v, want ErrNotFound", err)
	}
	if _, err := client.Put(ctx, "sessions", k2, []byte("w"), time.Minute); err != nil {
		t.Fatal(err)
	}
	if v := cl.assignment().Version; v != a.Version {
		t.Fatalf("assignment version %d, was %d", v, a.Version)
	}
}
