package topology

import (
	"slices"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/cachenode/partition"
)

// Holds is a bitmap of partitions, as a node's heartbeat announces it.
type Holds [bus.HoldsLen]byte

// Has reports whether partition p is set.
func (h *Holds) Has(p int) bool { return h[p>>3]&(1<<(p&7)) != 0 }

// Set sets or clears partition p.
func (h *Holds) Set(p int, on bool) {
	if on {
		h[p>>3] |= 1 << (p & 7)
	} else {
		h[p>>3] &^= 1 << (p & 7)
	}
}

// Count is how many partitions are set.
func (h *Holds) Count() int {
	n := 0
	for _, b := range h {
		for ; b != 0; b &= b - 1 {
			n++
		}
	}
	return n
}

// Node is a live cache node as its heartbeat describes it.
type Node struct {
	ID    string
	DC    string
	Holds Holds
	// Draining is set while the node reports state "draining".
	Draining bool
}

// Table is one immutable view of the cache tier: the assignment, the live
// nodes and, per partition, the nodes that hold it in the order they serve
// it. Every node and client derives the same table from the same
// assignment and heartbeats.
type Table struct {
	// Assignment is the assignment in force.
	Assignment *partition.Assignment
	// Nodes are the live cache nodes by id.
	Nodes map[string]*Node
	// Returning are live nodes back from being declared dead as the same
	// process, whose holdings are not believed yet (Tracker.beat).
	Returning map[string]bool
	// holders lists, per partition, the live nodes holding it: its owners
	// in assignment order first, then other nodes (a previous owner still
	// serving during a handover) by rendezvous score.
	holders [partition.Partitions][]string
}

// Build derives a table from an assignment and the live nodes.
func Build(a *partition.Assignment, nodes map[string]*Node) *Table {
	t := &Table{Assignment: a, Nodes: nodes}
	var extra []string
	for p := range partition.Partitions {
		var hs []string
		for _, id := range a.Owners[p] {
			if n := nodes[id]; n != nil && n.Holds.Has(p) {
				hs = append(hs, id)
			}
		}
		extra = extra[:0]
		for id, n := range nodes {
			if n.Holds.Has(p) && !slices.Contains(a.Owners[p], id) {
				extra = append(extra, id)
			}
		}
		if len(extra) > 1 {
			slices.SortFunc(extra, func(x, y string) int {
				sx, sy := partition.Score(x, 1, p), partition.Score(y, 1, p)
				switch {
				case sx > sy:
					return -1
				case sx < sy:
					return 1
				}
				return 0
			})
		}
		t.holders[p] = append(hs, extra...)
	}
	return t
}

// Primary is the node that serves partition p: its first owner that is
// live and holds it, or else a live non-owner still holding it; "" when no
// live node holds it.
func (t *Table) Primary(p int) string {
	if hs := t.holders[p]; len(hs) > 0 {
		return hs[0]
	}
	return ""
}

// Holders lists the live nodes holding p, in serving order. The slice is
// shared: do not change it.
func (t *Table) Holders(p int) []string { return t.holders[p] }

// InDC returns a live node of data center dc holding p, preferring the
// serving order, or "".
func (t *Table) InDC(p int, dc string) string {
	for _, id := range t.holders[p] {
		if t.Nodes[id].DC == dc {
			return id
		}
	}
	return ""
}

// Targets appends to dst the nodes other than self that a write of
// partition p must reach: its live owners, holding it yet or not (a node
// taking a partition over receives its writes while it copies the rest),
// and the live non-owners still holding it.
func (t *Table) Targets(p int, self string, dst []string) []string {
	for _, id := range t.Assignment.Owners[p] {
		if id != self && t.Nodes[id] != nil {
			dst = append(dst, id)
		}
	}
	for _, id := range t.holders[p] {
		if id != self && !slices.Contains(dst, id) {
			dst = append(dst, id)
		}
	}
	return dst
}

// OwnerReturning reports whether an owner of p is a returning node: it
// may hold p although the table says nobody does.
func (t *Table) OwnerReturning(p int) bool {
	for _, id := range t.Assignment.Owners[p] {
		if t.Returning[id] {
			return true
		}
	}
	return false
}

// Live reports whether node id is live.
func (t *Table) Live(id string) bool { return t.Nodes[id] != nil }

// Coverage counts partitions by how they are served: uncovered have no
// live holder at all, moving are served by a node that is not among their
// owners (a handover in progress, or every owner down).
func (t *Table) Coverage() (uncovered, moving int) {
	for p := range partition.Partitions {
		switch prim := t.Primary(p); {
		case prim == "":
			uncovered++
		case !slices.Contains(t.Assignment.Owners[p], prim):
			moving++
		}
	}
	return uncovered, moving
}
