package server

import (
	"time"

	"github.com/cachebus/cachebus/cachenode/partition"
)

// compactLoop keeps the record log's snapshots of the long-term
// namespaces up to date for the partitions this node serves first, every
// SnapshotEvery: a node restarting, or taking partitions over, then reads
// them at memory speed rather than one message per record
// (persistence/snapshot.go). Each partition has one serving node, so one
// compactor; while a failover or a rebalance gives it two for a moment,
// the snapshot they leave is refused by replays, never wrong.
func (s *Server) compactLoop(every time.Duration) {
	defer s.bg.Done()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
		}
		s.compact()
	}
}

// compact brings the snapshots of the partitions this node serves first up
// to date, one long-term namespace after the other.
func (s *Server) compact() {
	if s.isolated.Load() {
		return // JetStream's majority is out of reach: nothing could be written
	}
	tab := s.tracker.Table()
	var parts []int
	for p := range partition.Partitions {
		if s.held(p) && tab.Primary(p) == s.cfg.ID {
			parts = append(parts, p)
		}
	}
	if len(parts) == 0 {
		return
	}
	ctx, cancel := s.untilStop()
	defer cancel()
	for _, ns := range s.recLog.Namespaces() {
		cs, err := s.recLog.Compact(ctx, ns, parts)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			s.log.Warn("record snapshots not brought up to date; replays read more of the log until they are", "ns", ns, "partitions", len(parts), "err", err)
		case cs.Built+cs.Folded+cs.Dropped > 0:
			s.log.Info("record snapshots written", "ns", ns, "partitions", cs.Partitions, "built", cs.Built, "folded", cs.Folded,
				"checked", cs.Checked, "dropped", cs.Dropped, "records", cs.Records, "tail", cs.Tail, "bytes", cs.Bytes,
				"took", cs.Elapsed.Round(time.Millisecond))
		default:
			s.log.Debug("record snapshots checked", "ns", ns, "partitions", cs.Partitions, "took", cs.Elapsed.Round(time.Millisecond))
		}
	}
}
