package server

import (
	"context"
	"errors"
	"slices"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/cachenode/partition"
	"github.com/cachebus/cachebus/persistence"
)

// drainer is what a node remembers of its own drain.
type drainer struct {
	// on is set while the cluster state says the node drains.
	on bool
	// left is the node's baseline entry when the drain took it out, to be
	// put back should the drain be cancelled.
	left *partition.Member
	// marked is set once the drain is recorded as finished.
	marked bool
	// stuck is set when the node cannot leave the baseline (it is the
	// last member), so that it says so once.
	stuck bool
}

// followDrain acts on the node's own drain (`cachebus drain node <id>`),
// from the reconcile loop. A draining node announces state "draining" and
// takes itself out of the baseline, which gives its partitions new owners
// (the fewest moves rendezvous hashing allows); it keeps serving each of
// them until their new owners hold its data, which they copy at the
// migrate rate of the node they copy from. Once it holds nothing, it
// records the drain as finished. A cancelled drain puts it back in the
// baseline, where its partitions come back to it.
func (s *Server) followDrain(ctx context.Context) {
	if s.tracker.Table().Assignment.Version == 0 {
		return
	}
	ds, on := s.follower.Current().Draining("node", s.cfg.ID)
	d := &s.drain
	switch {
	case on && !d.on:
		d.on, d.marked, d.stuck = true, ds.Drained, false
		s.hb.SetState(bus.StateDraining)
		s.log.Info("draining: leaving the baseline, partitions move to their new owners", "origin", ds.Origin)
	case !on && d.on:
		d.on = false
		s.hb.SetState(bus.StateUp)
		s.rejoin(ctx)
		return
	case !on:
		return
	}
	base := s.tracker.Baseline()
	if m, member := base.Member(s.cfg.ID); member {
		s.leave(ctx, m, len(base.Members))
		return
	}
	if d.marked || !s.holdsNothing() {
		return
	}
	if err := s.state.MarkDrained(ctx, "node", s.cfg.ID); err != nil {
		s.log.Warn("drained, but not recorded yet", "err", err)
		return
	}
	d.marked = true
	s.log.Info("drained: every partition is held by its new owners; the node is out of the baseline")
}

// leave takes the node out of the baseline for its drain.
func (s *Server) leave(ctx context.Context, m partition.Member, members int) {
	d := &s.drain
	if members <= 1 {
		if !d.stuck {
			d.stuck = true
			s.log.Error("cannot drain the baseline's last member: its partitions would have no owner; add a node first")
		}
		return
	}
	ch, err := s.nodes.Update(ctx, persistence.Remove(s.cfg.ID))
	if errors.Is(err, persistence.ErrMemberMissing) {
		return
	}
	if err != nil {
		s.log.Warn("drain: leaving the baseline failed, will retry", "err", err)
		return
	}
	d.left = &m
	prim, sets := ch.Moved()
	s.log.Info("drain: left the baseline", "baseline", ch.Baseline.Version, "primaries_moved", prim, "replica_sets_changed", sets)
}

// rejoin puts the node back in the baseline after a cancelled drain, when
// the drain took it out.
func (s *Server) rejoin(ctx context.Context) {
	d := &s.drain
	m := d.left
	if m == nil {
		// Drained by an earlier run of this node: it comes back as its
		// configuration describes it.
		m = &partition.Member{ID: s.cfg.ID, DC: s.cfg.DC, Weight: s.cfg.Weight}
	}
	ch, err := s.nodes.Update(ctx, persistence.Add(*m))
	if err != nil && !errors.Is(err, persistence.ErrMemberExists) {
		// Still draining as far as the baseline goes: try again on the
		// next round.
		d.on = true
		s.log.Warn("drain cancelled, but rejoining the baseline failed, will retry", "err", err)
		return
	}
	d.left = nil
	if err != nil {
		s.log.Info("drain cancelled")
		return
	}
	s.log.Info("drain cancelled: back in the baseline", "baseline", ch.Baseline.Version)
}

// holdsNothing reports whether the node owns, holds and copies no
// partition.
func (s *Server) holdsNothing() bool {
	a := s.tracker.Table().Assignment
	for p := range partition.Partitions {
		if slices.Contains(a.Owners[p], s.cfg.ID) {
			return false
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.holds.Count() == 0 && s.syncing.Count() == 0
}
