package server_test

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus/bustest"

	"github.com/cachebus/cachebus/cachenode/partition"
	"github.com/cachebus/cachebus/cachenode/wire"
)

// TestFrameWritesReplicateTogether sends a primary one frame of writes,
// reads and a bad request: each gets its own reply in order, the writes
// reach the backup in one replication message, and the backup ends with
// what the frame left.
func TestFrameWritesReplicateTogether(t *testing.T) {
	cl := newCluster(t, "n1", "n2")
	cl.waitSettled()
	n1 := cl.nodes["n1"]
	var keys []string
	for i := 0; len(keys) < 6; i++ {
		k := fmt.Sprintf("key%d", i)
		if n1.Table().Primary(partition.PartitionOf(k)) == "n1" {
			keys = append(keys, k)
		}
	}
	var parts [][]byte
	want := []string{} // reply prefixes, in order
	for _, k := range keys {
		req := wire.Request{Op: wire.OpPut, NS: "ns", Key: k, Value: []byte("v-" + k)}
		parts = append(parts, req.Append(nil))
		want = append(want, "OK ")
	}
	get := wire.Request{Op: wire.OpGet, NS: "ns", Key: keys[0]}
	del := wire.Request{Op: wire.OpDelete, NS: "ns", Key: keys[5]}
	parts = append(parts, get.Append(nil), []byte("bogus ns k"), del.Append(nil))
	want = append(want, "OK ", "ERR bad_request ", "OK ")

	before := n1.ReplBatches()
	rep := cl.raw(cl.conn().Subjects.RecordNode("n1"), wire.AppendFrame(nil, false, parts))
	replies, err := wire.ParseFrame(rep, true)
	if err != nil {
		t.Fatalf("reply %q: %v", clipped(rep), err)
	}
	if len(replies) != len(want) {
		t.Fatalf("%d replies to %d requests", len(replies), len(want))
	}
	for i, r := range replies {
		if !bytes.HasPrefix(r, []byte(want[i])) {
			t.Errorf("reply %d: %q, want %s…", i, clipped(r), want[i])
		}
	}
	if !bytes.HasSuffix(replies[6], []byte("\nv-"+keys[0])) {
		t.Errorf("get after a put in the same frame: %q", clipped(replies[6]))
	}
	if got := n1.ReplBatches() - before; got != 1 {
		t.Errorf("%v replication messages for one frame's writes, want 1", got)
	}
	// The backup answers reads of its copies.
	for i, k := range keys {
		req := wire.Request{Op: wire.OpGet, NS: "ns", Key: k, Replica: true}
		r := cl.raw(cl.conn().Subjects.RecordNode("n2"), req.Append(nil))
		switch {
		case i == 5 && !bytes.Equal(r, []byte("NOT_FOUND")):
			t.Errorf("backup, deleted %s: %q", k, clipped(r))
		case i < 5 && !bytes.HasSuffix(r, []byte("\nv-"+k)):
			t.Errorf("backup, %s: %q", k, clipped(r))
		}
	}
}

// TestIsolatedRefusesAnyNode: a node cut off from the majority refuses
// what comes through the any-node subject, which reaches it from the
// majority's side as soon as a cut heals, and keeps answering its own
// subject from what it holds.
func TestIsolatedRefusesAnyNode(t *testing.T) {
	cl := newCluster(t, "n1") // then a baseline of 3: n1 sees a minority
	cl.waitSettled()
	n1 := cl.nodes["n1"]
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	put := wire.Request{Op: wire.OpPut, NS: "ns", Key: "k", Value: []byte("v1")}
	if rep := cl.raw(cl.conn().Subjects.RecordAny(), put.Append(nil)); !bytes.HasPrefix(rep, []byte("OK ")) {
		t.Fatalf("put: %q", clipped(rep))
	}
	v0 := n1.Table().Assignment.Version
	if _, err := cl.baseline().SetBaseline(ctx, []partition.Member{{ID: "n1"}, {ID: "n2"}, {ID: "n3"}}, 1, false); err != nil {
		t.Fatal(err)
	}
	bustest.WaitFor(t, 10*time.Second, "n1 to see the baseline of 3", func() bool {
		return n1.Table().Assignment.Version > v0
	})
	get := wire.Request{Op: wire.OpGet, NS: "ns", Key: "k"}
	frame := wire.AppendFrame(nil, false, [][]byte{get.Append(nil), put.Append(nil)})
	refused := func(r []byte) bool {
		return bytes.HasPrefix(r, []byte("ERR unavailable n1 is cut off from the NATS majority and answers no request sent to any node"))
	}
	for _, isolated := range []bool{true, false} {
		n1.SetIsolated(isolated)
		anyRep := cl.raw(cl.conn().Subjects.RecordAny(), get.Append(nil))
		if refused(anyRep) != isolated {
			t.Errorf("isolated %v: get through any node: %q", isolated, clipped(anyRep))
		}
		parts, err := wire.ParseFrame(cl.raw(cl.conn().Subjects.RecordAny(), frame), true)
		if err != nil || len(parts) != 2 {
			t.Fatalf("isolated %v: frame through any node: %d replies, %v", isolated, len(parts), err)
		}
		for i, p := range parts {
			if refused(p) != isolated {
				t.Errorf("isolated %v: frame request %d through any node: %q", isolated, i, clipped(p))
			}
		}
		own := cl.raw(cl.conn().Subjects.RecordNode("n1"), get.Append(nil))
		if !bytes.HasSuffix(own, []byte("\nv1")) {
			t.Errorf("isolated %v: get through n1's own subject: %q, want v1", isolated, clipped(own))
		}
	}
}
