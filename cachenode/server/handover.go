package server

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"slices"
	"sync/atomic"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/cachenode/partition"
	"github.com/cachebus/cachebus/cachenode/topology"
	"github.com/cachebus/cachebus/cachenode/wire"
	"github.com/cachebus/cachebus/persistence"
	"github.com/nats-io/nats.go"
)

// poke asks the reconcile loop to look at the table again.
func (s *Server) poke() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// reconcileLoop brings what this node holds in line with the assignment,
// whenever the table changes and every quarter second.
func (s *Server) reconcileLoop() {
	defer s.bg.Done()
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-s.kick:
		case <-t.C:
		}
		s.reconcile()
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.RequestTimeout)
		s.followDrain(ctx)
		cancel()
	}
}

// reconcile compares the partitions this node owns with those it holds:
//   - an owned partition it does not hold is copied from the node serving
//     it; when no live node holds it (a new cluster, or every holder lost)
//     and the node has been up for a failure timeout, so that it has heard
//     every live peer, the node takes it empty;
//   - a partition it holds but no longer owns is dropped once every live
//     owner holds it.
func (s *Server) reconcile() {
	tab := s.tracker.Table()
	a := tab.Assignment
	if a.Version == 0 {
		return
	}
	if s.checkIsolation(tab) {
		return // no handover from a node cut off from the majority
	}
	settled := time.Since(time.Unix(0, s.settleFrom.Load())) >= s.cfg.FailureTimeout
	if s.selfLost.Load() || settled && !tab.Live(s.cfg.ID) {
		// Its own heartbeats have not come back for a failure timeout: the
		// node was cut off or stalled, its peers took it for dead and
		// stopped replicating to it.
		s.suspectAll("own heartbeats not seen for a failure timeout")
		s.settleFrom.Store(time.Now().UnixNano())
		return
	}
	from := map[string][]int{}
	var drop, empty topology.Holds
	var dropped, taken, restored int
	var replay []int
	s.mu.Lock()
	for p := range partition.Partitions {
		owner := slices.Contains(a.Owners[p], s.cfg.ID)
		held, syncing, suspect := s.holds.Has(p), s.syncing.Has(p), s.suspect.Has(p)
		prim := tab.Primary(p)
		switch {
		case syncing:
		case prim == "" && tab.OwnerReturning(p):
			// An owner back from being taken for dead may hold it: nothing
			// is taken empty, replayed or kept until what it holds is
			// believed again.
		case !held && suspect && prim == "" && settled:
			// Nobody kept it while this node was cut off: what this node
			// has is the best there is.
			s.holds.Set(p, true)
			s.suspect.Set(p, false)
			restored++
		case owner && !held:
			switch {
			case prim != "" && prim != s.cfg.ID:
				// A suspect partition stays suspect until the copy
				// succeeds: should it fail, what this node kept may be
				// the best there is.
				src := copySource(tab, p, s.cfg.ID)
				from[src] = append(from[src], p)
			case prim == "" && settled && s.recLog != nil:
				// Its long-term records are in the record log: read
				// them back before serving it.
				s.syncing.Set(p, true)
				replay = append(replay, p)
			case prim == "" && settled:
				s.holds.Set(p, true)
				empty.Set(p, true)
				taken++
			}
		case !owner && !held && suspect && prim != "" && prim != s.cfg.ID:
			s.suspect.Set(p, false)
			drop.Set(p, true)
		case !owner && held && ownersHold(tab, p):
			drop.Set(p, true)
			s.holds.Set(p, false)
			dropped++
		}
	}
	for _, parts := range from {
		for _, p := range parts {
			s.syncing.Set(p, true)
		}
	}
	s.updateGauges(a)
	s.mu.Unlock()
	if taken > 0 {
		// Leftovers of a copy that failed are no base to build on.
		s.clear(&empty)
		s.log.Info("took partitions no live node held, empty", "partitions", taken, "assignment", a.Version)
	}
	if restored > 0 {
		s.log.Warn("kept partitions held before a disconnect: no live node holds them", "partitions", restored)
	}
	if drop.Count() > 0 {
		n := s.clear(&drop)
		if dropped > 0 {
			s.log.Info("dropped partitions now held by their owners", "partitions", dropped, "records", n)
		}
	}
	if taken > 0 || dropped > 0 || restored > 0 {
		s.hb.Announce()
	}
	for src, parts := range from {
		s.bg.Add(1)
		go s.syncFrom(src, parts)
	}
	if len(replay) > 0 {
		s.bg.Add(1)
		go s.replayFromLog(replay)
	}
}

// suspectAll stops announcing every partition held: writes made while the
// node could not hear may be missing from them.
func (s *Server) suspectAll(why string) {
	// Whatever gap in its own heartbeats the node saw is covered now.
	s.selfLost.Store(false)
	s.mu.Lock()
	n := s.holds.Count()
	for i := range s.holds {
		s.suspect[i] |= s.holds[i]
	}
	s.holds = topology.Holds{}
	s.mu.Unlock()
	if n > 0 {
		s.log.Warn(why+": partitions held are suspect until copied again", "partitions", n)
		s.hb.Announce()
	}
}

// onConnEvent handles the node's own connection: while it is cut off,
// writes replicated to it are lost (primaries skip a backup with no
// subscriber), so on a disconnect it stops announcing what it holds and,
// once back, copies its partitions again from whoever kept serving them.
// Where nobody did (every node was cut off, say by a NATS restart), it
// keeps its own data after a failure timeout.
func (s *Server) onConnEvent(ev bus.ConnEvent) {
	switch ev {
	case bus.Disconnected:
		s.suspectAll("disconnected from NATS")
	case bus.Reconnected:
		s.settleFrom.Store(time.Now().UnixNano())
		s.hb.Announce()
		s.poke()
	}
}

// copySource is the node an owner of p that does not hold it copies it
// from: a holder that no longer owns it (a node draining or leaving the
// baseline) when there is one, so that the copies load the node on its way
// out rather than those serving; else the node serving p.
func copySource(tab *topology.Table, p int, self string) string {
	hs := tab.Holders(p)
	for i := len(hs) - 1; i >= 0; i-- {
		if id := hs[i]; id != self && !slices.Contains(tab.Assignment.Owners[p], id) {
			return id
		}
	}
	return tab.Primary(p)
}

// ownersHold reports whether p has a live owner and every live owner
// holds it.
func ownersHold(tab *topology.Table, p int) bool {
	live := 0
	for _, id := range tab.Assignment.Owners[p] {
		n := tab.Nodes[id]
		if n == nil {
			continue
		}
		if !n.Holds.Has(p) {
			return false
		}
		live++
	}
	return live > 0
}

// updateGauges is called with s.mu held.
func (s *Server) updateGauges(a *partition.Assignment) {
	owned := 0
	for p := range partition.Partitions {
		if slices.Contains(a.Owners[p], s.cfg.ID) {
			owned++
		}
	}
	s.m.partitions.WithLabelValues("owned").Set(float64(owned))
	s.m.partitions.WithLabelValues("held").Set(float64(s.holds.Count()))
	s.m.partitions.WithLabelValues("syncing").Set(float64(s.syncing.Count()))
}

// clear deletes every record of the partitions in set and returns how
// many it deleted.
func (s *Server) clear(set *topology.Holds) int {
	n := 0
	for _, ns := range s.rec.store.Namespaces() {
		var keys []string
		s.rec.store.Range(ns, func(key string, _ []byte, _ int64) bool {
			if set.Has(partition.PartitionOf(key)) {
				keys = append(keys, key)
			}
			return true
		})
		for _, k := range keys {
			s.rec.store.Delete(ns, k)
		}
		n += len(keys)
	}
	return n
}

// suspectEntries copies the records of the suspect partitions among
// parts.
func (s *Server) suspectEntries(parts []int) []wire.Entry {
	var set topology.Holds
	s.mu.Lock()
	for _, p := range parts {
		if s.suspect.Has(p) {
			set.Set(p, true)
		}
	}
	s.mu.Unlock()
	if set.Count() == 0 {
		return nil
	}
	var out []wire.Entry
	for _, ns := range s.rec.store.Namespaces() {
		s.rec.store.Range(ns, func(key string, v []byte, deadline int64) bool {
			if set.Has(partition.PartitionOf(key)) {
				if e, ok := entryOf(ns, key, v, deadline); ok {
					e.Value = bytes.Clone(e.Value)
					out = append(out, e)
				}
			}
			return true
		})
	}
	return out
}

// syncRequest asks a holder for partitions' data; the holder streams it to
// Inbox as entry batches, each acknowledged, the last one flagged.
type syncRequest struct {
	V          int    `json:"v"`
	Node       string `json:"node"`
	Partitions []int  `json:"partitions"`
	Inbox      string `json:"inbox"`
}

// syncFrom copies partitions parts from node src. Writes to them made
// meanwhile reach this node by replication, because it owns them; the
// copy never overwrites a newer version. On success the node holds them.
func (s *Server) syncFrom(src string, parts []int) {
	defer s.bg.Done()
	start := time.Now()
	var set topology.Holds
	for _, p := range parts {
		set.Set(p, true)
	}
	ok := false
	var kept []wire.Entry
	defer func() {
		if !ok && len(kept) > 0 {
			// By the version rule: what the copy or replication brought
			// meanwhile is newer.
			for i := range kept {
				_, _ = s.rec.apply(&kept[i])
			}
			s.log.Info("partition copy failed: kept what was held before the disconnect", "from", src, "records", len(kept))
		}
		s.endTaking(parts, ok)
		s.poke()
	}()
	// What is here from an earlier ownership may be older than deletes
	// made since; the copy brings back what is current. What the node
	// kept across a disconnect (suspect) is put back should the copy fail:
	// the holder it copies from may have lost the partition meanwhile, and
	// then this is all there is.
	kept = s.suspectEntries(parts)
	s.clear(&set)

	var records, last atomic.Int64
	last.Store(time.Now().UnixNano())
	done := make(chan error, 1)
	finish := func(err error) {
		select {
		case done <- err:
		default:
		}
	}
	inbox := s.c.NC.NewInbox()
	sub, err := s.c.NC.Subscribe(inbox, func(m *nats.Msg) {
		last.Store(time.Now().UnixNano())
		flags, err := wire.ParseBatch(m.Data, func(e *wire.Entry) error {
			if !set.Has(partition.PartitionOf(e.Key)) {
				return nil // not asked for; the holder's business
			}
			records.Add(1)
			return s.applyEntry(e)
		})
		if err != nil {
			s.m.rejected.WithLabelValues("batch").Inc()
			rep := wire.ErrorReply(err)
			_ = m.Respond(rep.Append(nil, wire.OpPut))
			finish(fmt.Errorf("batch from %s: %w", src, err))
			return
		}
		_ = m.Respond(okReply)
		if flags&wire.FlagLast != 0 {
			finish(nil)
		}
	})
	if err != nil {
		s.log.Warn("partition copy not started", "from", src, "err", err)
		return
	}
	defer func() { _ = sub.Unsubscribe() }()
	_ = sub.SetPendingLimits(-1, -1)
	req, _ := json.Marshal(syncRequest{V: 1, Node: s.cfg.ID, Partitions: parts, Inbox: inbox})
	msg, err := s.c.NC.Request(s.c.Subjects.RecordSync(src), req, s.cfg.RequestTimeout)
	if err == nil && !bytes.Equal(msg.Data, okReply) {
		err = fmt.Errorf("%s", clip(msg.Data))
	}
	if err != nil {
		s.m.handover.WithLabelValues("refused").Inc()
		s.log.Info("partition copy refused, will retry", "from", src, "partitions", len(parts), "err", err)
		return
	}
	idle := time.NewTicker(s.cfg.RequestTimeout)
	defer idle.Stop()
	for {
		select {
		case err := <-done:
			if err != nil {
				s.m.handover.WithLabelValues("failed").Inc()
				s.log.Warn("partition copy failed, will retry", "from", src, "partitions", len(parts), "err", err)
				return
			}
			ok = true
			s.m.handover.WithLabelValues("ok").Inc()
			s.m.handedIn.Add(float64(records.Load()))
			s.log.Info("partitions copied", "from", src, "partitions", len(parts), "records", records.Load(),
				"took", time.Since(start).Round(time.Millisecond))
			return
		case <-idle.C:
			if time.Since(time.Unix(0, last.Load())) > 5*s.cfg.RequestTimeout {
				s.m.handover.WithLabelValues("stalled").Inc()
				s.log.Warn("partition copy stalled, will retry", "from", src, "partitions", len(parts))
				return
			}
		case <-s.done:
			return
		}
	}
}

// onSyncRequest answers a peer that takes partitions over: when this node
// holds them and already sees the peer live (so its own writes to them
// reach the peer from now on), it streams their records.
func (s *Server) onSyncRequest(m *nats.Msg) {
	var req syncRequest
	refuse := func(code wire.Code, format string, args ...any) {
		rep := wire.ErrorReply(wire.Errorf(code, format, args...))
		_ = m.Respond(rep.Append(nil, wire.OpGet))
	}
	if err := json.Unmarshal(m.Data, &req); err != nil || req.V != 1 || !bus.ValidName(req.Node) || req.Inbox == "" || len(req.Partitions) == 0 {
		s.m.rejected.WithLabelValues("sync").Inc()
		s.log.Warn("rejected partition copy request", "bytes", len(m.Data), "err", err)
		refuse(wire.CodeBadRequest, "malformed partition copy request")
		return
	}
	var set topology.Holds
	s.mu.Lock()
	for _, p := range req.Partitions {
		if p < 0 || p >= partition.Partitions {
			s.mu.Unlock()
			refuse(wire.CodeBadRequest, "partition %d out of range 0 to %d", p, partition.Partitions-1)
			return
		}
		if !s.holds.Has(p) {
			s.mu.Unlock()
			refuse(wire.CodeNoOwner, "%s does not hold partition %d", s.cfg.ID, p)
			return
		}
		set.Set(p, true)
	}
	s.mu.Unlock()
	if !s.tracker.Table().Live(req.Node) {
		refuse(wire.CodeUnavailable, "%s has not seen %s live yet", s.cfg.ID, req.Node)
		return
	}
	if !s.background() {
		refuse(wire.CodeUnavailable, "%s is shutting down", s.cfg.ID)
		return
	}
	_ = m.Respond(okReply)
	go s.stream(req.Node, req.Inbox, &set, len(req.Partitions))
}

// stream sends the records of the partitions in set to inbox, in
// acknowledged batches.
func (s *Server) stream(node, inbox string, set *topology.Holds, parts int) {
	defer s.bg.Done()
	start := time.Now()
	ctx, cancel := s.untilStop()
	defer cancel()
	buf := wire.NewBatch(make([]byte, 0, s.cfg.HandoverBatchBytes+1024), 0)
	n, inBatch := 0, 0
	var err error
	send := func(flags byte) bool {
		// The pace is kept before a batch goes, so that what a peer
		// receives never runs ahead of the migrate rate.
		if err = s.mig.wait(ctx, inBatch, len(buf)); err != nil {
			return false
		}
		buf[1] = flags
		var msg *nats.Msg
		msg, err = s.c.NC.Request(inbox, buf, s.cfg.RequestTimeout)
		if err == nil && !bytes.Equal(msg.Data, okReply) {
			err = fmt.Errorf("%s", clip(msg.Data))
		}
		if err == nil {
			s.m.handedOut.Add(float64(inBatch))
		}
		buf, inBatch = wire.NewBatch(buf, 0), 0
		return err == nil
	}
	for _, ns := range s.rec.store.Namespaces() {
		s.rec.store.Range(ns, func(key string, v []byte, deadline int64) bool {
			if !set.Has(partition.PartitionOf(key)) {
				return true
			}
			e, ok := entryOf(ns, key, v, deadline)
			if !ok {
				return true
			}
			if inBatch > 0 && s.mig.exceeds(inBatch+1, len(buf)+wire.EntrySize(&e)) && !send(0) {
				return false
			}
			buf = wire.AppendEntry(buf, &e)
			n++
			inBatch++
			return true
		})
		select {
		case <-s.done:
			err = fmt.Errorf("shutting down")
		default:
		}
		if err != nil {
			break
		}
	}
	if err == nil {
		send(wire.FlagLast)
	}
	if err != nil {
		s.log.Warn("partition copy to peer failed", "to", node, "partitions", parts, "err", err)
		return
	}
	s.log.Info("partitions copied to peer", "to", node, "partitions", parts, "records", n,
		"took", time.Since(start).Round(time.Millisecond))
}

// endTaking ends the copy or replay of partitions parts: they are no
// longer syncing and, when ok, held, which the heartbeat says at once.
func (s *Server) endTaking(parts []int, ok bool) {
	s.mu.Lock()
	for _, p := range parts {
		s.syncing.Set(p, false)
		if ok {
			s.holds.Set(p, true)
			s.suspect.Set(p, false)
		}
	}
	s.mu.Unlock()
	if ok {
		s.hb.Announce()
	}
}

// replayReaders is how many readers a replay at takeover uses: one per
// CPU, 4 at most. Records are applied by key under striped locks into a
// sharded store, so the readers' callbacks run side by side.
func replayReaders() int { return min(runtime.GOMAXPROCS(0), 4) }

// replayFromLog takes partitions parts, which no live node holds, with
// the long-term records the record log keeps of them: the node serves
// them only once every long-term namespace is read back. Writes made
// meanwhile reach it by replication; the replay never overwrites a newer
// version. On failure it holds nothing of them, and the next
// reconciliation tries again.
func (s *Server) replayFromLog(parts []int) {
	defer s.bg.Done()
	var set topology.Holds
	for _, p := range parts {
		set.Set(p, true)
	}
	ok := false
	defer func() {
		s.endTaking(parts, ok)
		if !ok {
			// Try again once the failure is a reconciliation away.
			go func() {
				select {
				case <-time.After(time.Second):
					s.poke()
				case <-s.done:
				}
			}()
		}
	}()
	// Leftovers of an earlier ownership may be older than deletes since.
	s.clear(&set)
	ctx, cancel := s.untilStop()
	defer cancel()
	start := time.Now()
	since := start.UTC().Format(time.RFC3339)
	var records, bytes int64
	show := func(st *ReplayStatus) {
		s.mu.Lock()
		s.replaying = st
		s.mu.Unlock()
	}
	defer show(nil)
	for _, ns := range s.cfg.LongTerm {
		show(&ReplayStatus{NS: ns, Partitions: len(parts), Since: since})
		st, err := s.recLog.Replay(ctx, ns, parts, func(r persistence.Record) error {
			if r.Deleted {
				return nil // a node taking a partition empty has nothing to delete
			}
			if _, err := s.applyRecord(&r); err != nil {
				s.log.Warn("replayed record not stored", "ns", r.NS, "key", r.Key, "err", err)
			}
			return nil
		}, s.replayProgress("replaying long-term records", ns, len(parts), since, show), persistence.ReplayReaders(replayReaders()))
		if err != nil {
			if ctx.Err() == nil {
				s.log.Error("long-term records not replayed: the partitions wait", "ns", ns, "partitions", len(parts), "err", err)
			}
			return
		}
		records += st.Records
		bytes += st.Bytes
		if st.Rejected > 0 {
			s.log.Warn("bad messages skipped in the record log", "ns", ns, "rejected", st.Rejected)
		}
	}
	ok = true
	took := time.Since(start)
	s.log.Info("took partitions no live node held, with their long-term records", "partitions", len(parts),
		"records", records, "bytes", bytes, "took", took.Round(time.Millisecond),
		"rate", int64(float64(records)/max(took.Seconds(), 1e-9)))
}
