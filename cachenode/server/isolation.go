package server

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/cachebus/cachebus/cachenode/topology"
	"github.com/cachebus/cachebus/cachenode/wire"
)

// A node cut off from the NATS majority together with its NATS server (a
// network partition) goes on hearing itself and nothing of its peers. To
// them it is dead: the backups of its partitions serve them and take their
// writes. Were it to go on announcing what it holds, then as soon as the
// partition heals it would serve again what it held before the cut, without
// those writes, and its peers would take it for the primary again.
//
// So a node that sees fewer than a majority of its baseline live, and whose
// side of the NATS cluster has no JetStream quorum, is isolated: it
// announces no partition, refuses writes (it could not keep them: the
// majority's copies win at the heal), takes no partition over, and serves
// reads of what it holds. It stays isolated until it sees a majority of its
// baseline again and JetStream answers with a quorum; then it suspects all
// it holds and copies it again from the nodes that served meanwhile, or
// keeps it where none did (reconcile). Nodes that merely outlive their
// peers (JetStream still has its quorum) are not isolated and serve on;
// an isolated node whose NATS side heals while most of its baseline is
// still down stays isolated until they return or the baseline drops them.

// isolationProbeEvery is how often a node that sees a minority of its
// baseline asks JetStream whether its side has a quorum.
const isolationProbeEvery = 500 * time.Millisecond

// isolation is the reconcile goroutine's record of the node's isolation;
// Server.isolated says it to the request paths.
type isolation struct {
	since     time.Time // when the node became isolated
	lastProbe time.Time
	refused   atomic.Int64 // writes refused meanwhile (also by the request paths)
}

// checkIsolation updates the node's isolation from tab and, while the node
// sees a minority of its baseline, from a JetStream probe; it reports
// whether the node is isolated.
func (s *Server) checkIsolation(tab *topology.Table) bool {
	live, members := s.liveMembers(tab)
	majority := live*2 > members
	isolated := s.isolated.Load()
	if majority && !isolated {
		return false
	}
	if time.Since(s.iso.lastProbe) < isolationProbeEvery {
		return isolated
	}
	s.iso.lastProbe = time.Now()
	err := s.quorumProbe()
	switch {
	case !isolated && err != nil:
		s.isolated.Store(true)
		s.m.isolated.Set(1)
		s.iso.since = time.Now()
		s.log.Warn("cut off from the NATS majority: announcing no partition and refusing writes until the cluster heals; reads of what this node holds go on",
			"live", live, "baseline", members, "err", err)
		s.hb.Announce()
		return true
	case isolated && majority && err == nil:
		s.isolated.Store(false)
		s.m.isolated.Set(0)
		s.log.Info("back with the NATS majority: partitions held are copied again from the nodes that served them meanwhile",
			"isolated_for", time.Since(s.iso.since).Round(time.Millisecond), "writes_refused", s.iso.refused.Swap(0))
		s.suspectAll("was cut off from the NATS majority")
		s.settleFrom.Store(time.Now().UnixNano())
		return false
	}
	return isolated
}

// liveMembers counts the baseline's members and those of them live in
// tab.
func (s *Server) liveMembers(tab *topology.Table) (live, members int) {
	b := s.tracker.Baseline()
	for _, m := range b.Members {
		if tab.Live(m.ID) {
			live++
		}
	}
	return live, len(b.Members)
}

// quorumProbe asks JetStream about the nodes bucket: nil when its stream
// has a leader that hears a quorum of its replicas.
func (s *Server) quorumProbe() error {
	ctx, cancel := context.WithTimeout(context.Background(), logProbeTimeout)
	defer cancel()
	info, err := s.nodes.StreamInfo(ctx)
	if err != nil {
		return err
	}
	if err := streamQuorum(info); err != nil {
		return fmt.Errorf("nodes bucket: %w", err)
	}
	return nil
}

// isolatedRefusal is the error of a write refused while the node is
// isolated.
func (s *Server) isolatedRefusal() error {
	s.m.isoRefused.Inc()
	s.iso.refused.Add(1)
	return wire.Errorf(wire.CodeUnavailable, "write refused: %s is cut off from the NATS majority and could not keep it (the nodes that serve its partitions meanwhile hold what is current)", s.cfg.ID)
}
