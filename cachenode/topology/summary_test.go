package topology_test

import (
	"slices"
	"testing"

	"github.com/cachebus/cachebus/cachenode/partition"
	"github.com/cachebus/cachebus/cachenode/topology"
)

// summaryNode is a live node holding the partitions hold says it does.
func summaryNode(id string, a *partition.Assignment, hold func(p int, owners []string) bool) *topology.Node {
	n := &topology.Node{ID: id}
	for p := range partition.Partitions {
		n.Holds.Set(p, hold(p, a.Owners[p]))
	}
	return n
}

func TestTableSummary(t *testing.T) {
	b := partition.Baseline{Version: 4, Members: []partition.Member{{ID: "n1"}, {ID: "n2"}, {ID: "n3"}}}
	a, err := partition.Assign(b, 1, false)
	if err != nil {
		t.Fatal(err)
	}
	a.Version = 7
	shares := a.Shares()
	owns := func(id string) func(int, []string) bool {
		return func(_ int, owners []string) bool { return slices.Contains(owners, id) }
	}
	all := func(int, []string) bool { return true }
	none := func(int, []string) bool { return false }
	bothDown := 0 // partitions owned by n2 and n3 only
	for _, owners := range a.Owners {
		if !slices.Contains(owners, "n1") {
			bothDown++
		}
	}

	tests := []struct {
		name          string
		nodes         map[string]func(int, []string) bool
		wantUncovered int
		wantMoving    int
		wantReady     bool
		check         func(t *testing.T, s topology.Summary)
	}{
		{"all up", map[string]func(int, []string) bool{"n1": owns("n1"), "n2": owns("n2"), "n3": owns("n3")}, 0, 0, true,
			func(t *testing.T, s topology.Summary) {
				for _, n := range s.Nodes {
					if !n.Live || n.Missing != 0 || n.Serving != n.Primary || n.Held != n.Primary+n.Backup {
						t.Errorf("node %+v", n)
					}
				}
			}},
		{"one down, backups serve", map[string]func(int, []string) bool{"n1": owns("n1"), "n2": owns("n2")}, 0, 0, true,
			func(t *testing.T, s topology.Summary) {
				n3 := s.Nodes[2]
				if n3.ID != "n3" || n3.Live || !n3.InBaseline || n3.Serving != 0 || n3.Missing != n3.Primary+n3.Backup {
					t.Errorf("n3 %+v", n3)
				}
				if s.Nodes[0].Serving+s.Nodes[1].Serving != partition.Partitions {
					t.Errorf("n1 and n2 serve %d partitions", s.Nodes[0].Serving+s.Nodes[1].Serving)
				}
			}},
		{"two down", map[string]func(int, []string) bool{"n1": owns("n1")}, bothDown, 0, false, nil},
		{"copying", map[string]func(int, []string) bool{"n1": owns("n1"), "n2": owns("n2"), "n3": none}, 0, 0, true,
			func(t *testing.T, s topology.Summary) {
				if n3 := s.Nodes[2]; !n3.Live || n3.Held != 0 || n3.Missing != n3.Primary+n3.Backup {
					t.Errorf("n3 %+v", n3)
				}
			}},
		{"a leaver still serving", map[string]func(int, []string) bool{"n1": owns("n1"), "old": all}, 0, bothDown, false,
			func(t *testing.T, s topology.Summary) {
				old := s.Nodes[3]
				if old.ID != "old" || old.InBaseline || !old.Live || old.Serving != bothDown || old.Primary+old.Backup != 0 {
					t.Errorf("old %+v", old)
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nodes := map[string]*topology.Node{}
			for id, hold := range tt.nodes {
				nodes[id] = summaryNode(id, &a, hold)
			}
			s := topology.Build(&a, nodes).Summary(b)
			if s.BaselineVersion != 4 || s.AssignmentVersion != 7 || s.Backups != 1 {
				t.Errorf("versions %d/%d, backups %d", s.BaselineVersion, s.AssignmentVersion, s.Backups)
			}
			if s.Uncovered != tt.wantUncovered || s.Moving != tt.wantMoving || s.Ready != tt.wantReady {
				t.Fatalf("uncovered %d moving %d ready %v, want %d %d %v", s.Uncovered, s.Moving, s.Ready,
					tt.wantUncovered, tt.wantMoving, tt.wantReady)
			}
			for _, n := range s.Nodes[:3] {
				if sh := shares[n.ID]; n.Primary != sh.Primary || n.Backup != sh.Backup || !n.InBaseline {
					t.Errorf("node %s: %d primary %d backup, want %+v", n.ID, n.Primary, n.Backup, sh)
				}
			}
			if tt.check != nil {
				tt.check(t, s)
			}
		})
	}
}

func TestTableSummaryNoBaseline(t *testing.T) {
	s := topology.Build(&partition.Assignment{}, map[string]*topology.Node{"n1": {ID: "n1"}}).Summary(partition.Baseline{})
	if s.Ready || s.Uncovered != partition.Partitions || len(s.Nodes) != 1 || s.Nodes[0].InBaseline || !s.Nodes[0].Live {
		t.Fatalf("summary %+v", s)
	}
}
