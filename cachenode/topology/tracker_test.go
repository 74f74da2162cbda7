package topology

import (
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/cachenode/partition"
)

// TestReturningNodeNotBelieved: a node declared dead that comes back as
// the same process is live at once, but what its heartbeats say it holds
// is not believed for a failure timeout (they may be old ones, delivered
// late when a partition heals); a restarted node (another start time) is
// believed at once, and so is the returned one after the timeout.
func TestReturningNodeNotBelieved(t *testing.T) {
	const timeout = 50 * time.Millisecond
	var a partition.Assignment
	a.Version = 1
	for p := range a.Owners {
		a.Owners[p] = []string{"n1", "n2"}
	}
	tr := &Tracker{assign: &a, nodes: map[string]*Node{}, lost: map[string]time.Time{},
		returned: map[string]time.Time{}, timeout: timeout}
	var all Holds
	for p := range partition.Partitions {
		all.Set(p, true)
	}
	started := time.Now().UTC().Truncate(time.Second)
	beat := func(id string, started time.Time) {
		tr.beat(bus.Member{Heartbeat: bus.Heartbeat{ID: id, Role: "node", State: bus.StateUp, Started: started,
			Holds: bus.EncodeHolds(all)}})
	}
	tests := []struct {
		name     string
		started  time.Time
		reason   string
		believed bool
	}{
		{"back as the same process", started, "dead", false},
		{"restarted", started.Add(time.Second), "dead", true},
		{"left gone, back", started, "gone", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			beat("n1", started)
			if got := tr.Table().Primary(0); got != "n1" {
				t.Fatalf("primary %q before, want n1", got)
			}
			tr.leave(bus.Member{Heartbeat: bus.Heartbeat{ID: "n1", Role: "node", Started: started}}, tt.reason)
			beat("n1", tt.started)
			tab := tr.Table()
			if !tab.Live("n1") {
				t.Fatal("n1 not live after its heartbeat")
			}
			if got := tab.Primary(0) == "n1"; got != tt.believed {
				t.Fatalf("holdings believed = %v, want %v", got, tt.believed)
			}
			if tab.OwnerReturning(0) == tt.believed {
				t.Fatalf("OwnerReturning = %v", tab.OwnerReturning(0))
			}
			if tt.believed {
				return
			}
			time.Sleep(timeout) // the quarantine's length, not a wait for a condition
			beat("n1", tt.started)
			if tab := tr.Table(); tab.Primary(0) != "n1" || tab.OwnerReturning(0) {
				t.Fatalf("after the timeout: primary %q, returning %v", tab.Primary(0), tab.OwnerReturning(0))
			}
		})
	}
}
