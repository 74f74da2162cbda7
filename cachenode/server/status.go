package server

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/cachenode/partition"
)

// Status is what a node reports of itself and of the cache tier as it
// sees it.
type Status struct {
	ID                string `json:"id"`
	DC                string `json:"dc,omitempty"`
	BaselineVersion   uint64 `json:"baseline_version"`
	AssignmentVersion uint64 `json:"assignment_version"`
	InBaseline        bool   `json:"in_baseline"`
	// Partitions of this node: owned by the assignment (as primary and as
	// backup), served as primary now, held, and being copied.
	Owned   int `json:"owned"`
	Primary int `json:"primary"`
	Held    int `json:"held"`
	Syncing int `json:"syncing"`
	// Uncovered counts partitions no live node holds; Moving those served
	// by a node that is not among their owners.
	Uncovered int `json:"uncovered"`
	Moving    int `json:"moving"`
	// Nodes are the live cache nodes.
	Nodes   []string `json:"nodes"`
	Records int      `json:"records"`
	Uptime  string   `json:"uptime"`
	// Replay is the read back of long-term records under way, if any.
	Replay *ReplayStatus `json:"replay,omitempty"`
	// Isolated is set while the node is cut off from the NATS majority: it
	// announces no partition and refuses writes (isolation.go).
	Isolated bool `json:"isolated,omitempty"`
}

// ReplayStatus is the progress of a node reading long-term records back
// from the record log for partitions it takes.
type ReplayStatus struct {
	NS         string  `json:"ns"`
	Partitions int     `json:"partitions"`
	Records    int64   `json:"records"`
	Bytes      int64   `json:"bytes"`
	Percent    float64 `json:"percent"`
	Rate       float64 `json:"rate"`
	Since      string  `json:"since"`
}

// heartbeat is r as the node's heartbeat announces it, each figure
// brought within what receivers accept, so that a heartbeat is never
// refused for its replay.
func (r *ReplayStatus) heartbeat() *bus.HeartbeatReplay {
	if !bus.ValidName(r.NS) {
		return nil
	}
	finite := func(f float64) float64 {
		if math.IsNaN(f) || f < 0 {
			return 0
		}
		return min(f, math.MaxFloat64)
	}
	return &bus.HeartbeatReplay{NS: r.NS, Partitions: min(max(r.Partitions, 0), bus.MaxReplayPartitions),
		Records: max(r.Records, 0), Bytes: max(r.Bytes, 0), Percent: min(finite(r.Percent), 100),
		Rate: math.Round(finite(r.Rate))}
}

// Status reports the node's state.
func (s *Server) Status() Status {
	tab := s.tracker.Table()
	sum := tab.Summary(s.tracker.Baseline())
	st := Status{ID: s.cfg.ID, DC: s.cfg.DC, BaselineVersion: tab.Assignment.BaselineVersion,
		AssignmentVersion: tab.Assignment.Version, Uncovered: sum.Uncovered, Moving: sum.Moving,
		Uptime: time.Since(s.started).Round(time.Second).String(), Isolated: s.isolated.Load()}
	for _, n := range sum.Nodes {
		if n.Live {
			st.Nodes = append(st.Nodes, n.ID)
		}
		if n.ID == s.cfg.ID {
			st.InBaseline, st.Owned, st.Primary = n.InBaseline, n.Primary+n.Backup, n.Serving
		}
	}
	slices.Sort(st.Nodes)
	s.mu.Lock()
	st.Held, st.Syncing = s.holds.Count(), s.syncing.Count()
	if s.replaying != nil {
		r := *s.replaying
		st.Replay = &r
	}
	s.mu.Unlock()
	for _, ns := range s.rec.store.Namespaces() {
		st.Records += s.rec.store.Stats(ns).Entries
	}
	return st
}

// Ready returns nil when the node holds every partition it owns and every
// partition of the tier has a live node holding it; otherwise it says what
// is missing.
func (s *Server) Ready() error {
	if s.shutdown.Load() {
		return errors.New("shutting down")
	}
	tab := s.tracker.Table()
	a := tab.Assignment
	if a.Version == 0 {
		return errors.New("no baseline yet: set one with `cachebus baseline set`")
	}
	if s.isolated.Load() {
		return errors.New("cut off from the NATS majority: announcing no partition, refusing writes")
	}
	missing := 0
	s.mu.Lock()
	for p := range partition.Partitions {
		if slices.Contains(a.Owners[p], s.cfg.ID) && !s.holds.Has(p) {
			missing++
		}
	}
	s.mu.Unlock()
	if missing > 0 {
		return fmt.Errorf("copying %d of its partitions from peers", missing)
	}
	if un, _ := tab.Coverage(); un > 0 {
		return fmt.Errorf("%d partitions have no live node holding their data", un)
	}
	return nil
}
