package topology

import (
	"slices"

	"github.com/cachebus/cachebus/cachenode/partition"
)

// Summary is the cache tier at a glance, as `cachebus status` shows it.
type Summary struct {
	BaselineVersion   uint64 `json:"baseline_version"`
	AssignmentVersion uint64 `json:"assignment_version"`
	Backups           int    `json:"backups"`
	CrossDC           bool   `json:"cross_dc"`
	// Nodes are the baseline's members, live or not, then live nodes
	// outside it.
	Nodes []NodeSummary `json:"nodes"`
	// Uncovered partitions have no live node holding them; moving ones
	// are served by a node that is not among their owners.
	Uncovered int `json:"uncovered"`
	Moving    int `json:"moving"`
	// Ready is set when every partition is served by a live owner
	// holding its data: a baseline exists, nothing is uncovered or moving.
	Ready bool `json:"ready"`
}

// NodeSummary is one cache node's part of the tier.
type NodeSummary struct {
	ID         string `json:"id"`
	DC         string `json:"dc,omitempty"`
	InBaseline bool   `json:"in_baseline"`
	Live       bool   `json:"live"`
	Draining   bool   `json:"draining,omitempty"`
	// Primary and Backup count the partitions the assignment gives the
	// node in each role.
	Primary int `json:"primary"`
	Backup  int `json:"backup"`
	// Serving counts the partitions it serves now; Held those whose data
	// it holds; Missing those it owns but does not hold yet (being copied,
	// or all of them while it is down).
	Serving int `json:"serving"`
	Held    int `json:"held"`
	Missing int `json:"missing"`
}

// Summary sums t up for the baseline b the assignment comes from.
func (t *Table) Summary(b partition.Baseline) Summary {
	a := t.Assignment
	s := Summary{BaselineVersion: b.Version, AssignmentVersion: a.Version, Backups: a.Backups, CrossDC: a.CrossDC}
	index := map[string]int{}
	add := func(id, dc string, inBaseline bool) {
		index[id] = len(s.Nodes)
		s.Nodes = append(s.Nodes, NodeSummary{ID: id, DC: dc, InBaseline: inBaseline})
	}
	for _, m := range b.Members {
		add(m.ID, m.DC, true)
	}
	live := make([]string, 0, len(t.Nodes))
	for id := range t.Nodes {
		live = append(live, id)
	}
	slices.Sort(live)
	for _, id := range live {
		n := t.Nodes[id]
		if _, ok := index[id]; !ok {
			add(id, n.DC, false)
		}
		ns := &s.Nodes[index[id]]
		ns.Live, ns.Draining, ns.Held = true, n.Draining, n.Holds.Count()
		if n.DC != "" {
			ns.DC = n.DC
		}
	}
	for p := range partition.Partitions {
		for i, id := range a.Owners[p] {
			j, ok := index[id]
			if !ok {
				// An owner outside the baseline: the assignment is of an
				// older baseline than b (a change half-way).
				add(id, "", false)
				j = len(s.Nodes) - 1
			}
			ns := &s.Nodes[j]
			if i == 0 {
				ns.Primary++
			} else {
				ns.Backup++
			}
			if n := t.Nodes[id]; n == nil || !n.Holds.Has(p) {
				ns.Missing++
			}
		}
		if prim := t.Primary(p); prim != "" {
			s.Nodes[index[prim]].Serving++
		}
	}
	s.Uncovered, s.Moving = t.Coverage()
	s.Ready = a.Version != 0 && s.Uncovered == 0 && s.Moving == 0
	return s
}
