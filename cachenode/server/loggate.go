package server

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cachebus/cachebus/cachenode"
	"github.com/cachebus/cachebus/cachenode/wire"
	"github.com/cachebus/cachebus/persistence"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// logFailed answers a long-term write the record log did not acknowledge.
// A failure that says JetStream is unreachable or has no quorum closes the
// gate; one that leaves unknown whether the log took the write (a
// timeout) also marks the write in doubt, to be undone in the log before
// the gate opens again.
func (s *Server) logFailed(g *logGate, p int, e *wire.Entry, err error) error {
	unreachable, doubt := logUnreachable(err)
	if !unreachable {
		return wire.Errorf(wire.CodeUnavailable, "long-term write refused: the record log did not take it on %s: %v", s.cfg.ID, err)
	}
	g.trip(s, err, logDoubt{ns: e.NS, key: e.Key, p: p, version: e.Version}, doubt)
	s.m.ltRefused.Inc()
	if doubt {
		return wire.Errorf(wire.CodeUnavailable, "long-term write refused: the record log (JetStream) is unreachable or has no quorum from %s: %v "+
			"(nothing was stored; should JetStream have kept it after all, it is undone once the log is reachable again)", s.cfg.ID, err)
	}
	return wire.Errorf(wire.CodeUnavailable, "long-term write refused: the record log (JetStream) is unreachable or has no quorum from %s: %v", s.cfg.ID, err)
}

// logUnreachable reports whether err, from a write to the record log, says
// JetStream cannot take writes now (unreachable says so), and whether the
// log may have taken the write all the same (doubt): after a timeout or a
// lost connection it may be stored, or stored later, unacknowledged.
func logUnreachable(err error) (unreachable, doubt bool) {
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout),
		errors.Is(err, jetstream.ErrAsyncPublishTimeout),
		errors.Is(err, nats.ErrConnectionClosed), errors.Is(err, nats.ErrConnectionReconnecting),
		errors.Is(err, nats.ErrDisconnected), errors.Is(err, jetstream.ErrConnectionClosed):
		return true, true
	case errors.Is(err, jetstream.ErrNoStreamResponse), errors.Is(err, nats.ErrNoResponders),
		errors.Is(err, jetstream.ErrJetStreamNotEnabled), errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount):
		return true, false
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		switch apiErr.ErrorCode {
		case jsErrClusterNotAvail, jsErrClusterNotLeader, jsErrStreamOffline, jsErrStreamOfflineReason,
			jetstream.JSErrCodeJetStreamNotEnabled, jetstream.JSErrCodeJetStreamNotEnabledForAccount:
			return true, false
		}
	}
	return false, false
}

// JetStream API error codes that mean the stream cannot take writes now
// (nats-server's errors.json; nats.go names only some codes).
const (
	jsErrClusterNotAvail     jetstream.ErrorCode = 10008 // JetStream system temporarily unavailable
	jsErrClusterNotLeader    jetstream.ErrorCode = 10009 // JetStream cluster can not handle request
	jsErrStreamOffline       jetstream.ErrorCode = 10118 // stream is offline
	jsErrStreamOfflineReason jetstream.ErrorCode = 10194 // stream is offline: <reason>
)

// How the gate finds out that the record log is reachable again.
const (
	// logProbeEvery is how often a closed gate asks JetStream about the
	// record log's stream.
	logProbeEvery = 500 * time.Millisecond
	// logProbeTimeout bounds one probe.
	logProbeTimeout = time.Second
	// logPeerSilence is how long the stream's leader may have heard
	// nothing from a replica for it to count towards a quorum: raft
	// heartbeats every second, so a live replica is heard at least that
	// often.
	logPeerSilence = 2 * time.Second
	// logSettleTries bounds the attempts to settle one write in doubt in
	// one probe: each fails only when the key's message changed meanwhile.
	logSettleTries = 5
)

// logGate refuses long-term writes at once while the record log is known
// to be unreachable. A write whose failure says JetStream is unreachable
// or has no quorum (a timeout, no responders, no cluster leader) closes
// it; while closed, every long-term write is refused without being sent,
// and a probe asks JetStream every logProbeEvery whether the stream has a
// leader that hears a quorum of its replicas. Before the gate opens again
// the writes in doubt (timed out: JetStream may have kept them) are
// settled in the log so that none of them comes back in a replay. The
// closing and the opening are logged once each, not every refusal.
type logGate struct {
	closed atomic.Bool // read without the lock on every long-term write

	mu      sync.Mutex
	since   time.Time
	cause   error // why the log is unreachable: the first failure, then the last probe's
	refused int64 // writes refused while closed, for the log line at opening
	probing bool  // a probe goroutine runs
	doubts  map[doubtKey]logDoubt
}

// doubtKey names a key with a write in doubt.
type doubtKey struct{ ns, key string }

// logDoubt is a write of a long-term key that timed out: the log may have
// taken it. version is the version it was written with.
type logDoubt struct {
	ns, key string
	p       int
	version uint64
}

// refusal returns the error that refuses a long-term write while the gate
// is closed, counting it, or nil when it is open.
func (g *logGate) refusal(s *Server) error {
	if !g.closed.Load() {
		return nil
	}
	g.mu.Lock()
	if !g.closed.Load() {
		g.mu.Unlock()
		return nil
	}
	g.refused++
	cause, since := g.cause, g.since
	g.mu.Unlock()
	s.m.ltRefused.Inc()
	return wire.Errorf(wire.CodeUnavailable, "long-term write refused: the record log (JetStream) is unreachable or has no quorum from %s: %v (refusing since %s)",
		s.cfg.ID, cause, since.UTC().Format(time.RFC3339))
}

// trip closes the gate after a write failed with err, the write d being in
// doubt when doubt is set, and starts the probe.
func (g *logGate) trip(s *Server, err error, d logDoubt, doubt bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if doubt {
		if g.doubts == nil {
			g.doubts = map[doubtKey]logDoubt{}
		}
		g.doubts[doubtKey{d.ns, d.key}] = d
	}
	g.refused++
	if !g.closed.Load() {
		g.closed.Store(true)
		g.since, g.cause = time.Now(), err
		s.log.Warn("record log unreachable: refusing long-term writes until JetStream answers with a quorum again; reads and other namespaces go on",
			"stream", s.recLog.Stream(), "err", err)
	}
	if !g.probing {
		g.probing = true
		go g.probe(s)
	}
}

// probe runs while the gate is closed: it asks JetStream about the record
// log every logProbeEvery, settles the writes in doubt once it answers
// with a quorum, and then opens the gate. It ends with the server.
func (g *logGate) probe(s *Server) {
	tick := time.NewTicker(logProbeEvery)
	defer tick.Stop()
	for {
		select {
		case <-s.done:
			g.mu.Lock()
			g.probing = false
			g.mu.Unlock()
			return
		case <-tick.C:
		}
		err := s.logReachable(g)
		g.mu.Lock()
		if err == nil && len(g.doubts) == 0 {
			down, refused := time.Since(g.since), g.refused
			g.closed.Store(false)
			g.probing, g.refused, g.cause = false, 0, nil
			g.mu.Unlock()
			s.log.Info("record log reachable again: long-term writes accepted", "stream", s.recLog.Stream(),
				"unreachable_for", down.Round(time.Millisecond), "refused", refused)
			return
		}
		if err != nil {
			g.cause = err
		}
		g.mu.Unlock()
		if err != nil {
			s.log.Debug("record log still unreachable", "stream", s.recLog.Stream(), "err", err)
		}
	}
}

// logReachable probes the record log and, when it has a quorum, settles
// the writes in doubt; nil means the gate may open (unless more writes
// fell in doubt meanwhile).
func (s *Server) logReachable(g *logGate) error {
	ctx, cancel := context.WithTimeout(context.Background(), logProbeTimeout)
	st, err := s.c.JS.Stream(ctx, s.recLog.Stream())
	cancel()
	if err != nil {
		return fmt.Errorf("record log %s: %w", s.recLog.Stream(), err)
	}
	if err := streamQuorum(st.CachedInfo()); err != nil {
		return fmt.Errorf("record log %s: %w", s.recLog.Stream(), err)
	}
	g.mu.Lock()
	doubts := make([]logDoubt, 0, len(g.doubts))
	for _, d := range g.doubts {
		doubts = append(doubts, d)
	}
	g.mu.Unlock()
	for _, d := range doubts {
		if err := s.settle(d); err != nil {
			return fmt.Errorf("record log %s: settling the write of %s/%s in doubt: %w", s.recLog.Stream(), d.ns, d.key, err)
		}
		g.mu.Lock()
		if g.doubts[doubtKey{d.ns, d.key}] == d {
			delete(g.doubts, doubtKey{d.ns, d.key})
		}
		g.mu.Unlock()
	}
	if len(doubts) > 0 {
		s.log.Info("record log: writes refused while it was unreachable settled", "stream", s.recLog.Stream(), "keys", len(doubts))
	}
	return nil
}

// streamQuorum checks that the stream of info has a leader that has heard a
// quorum of its replicas (itself included) within logPeerSilence: a
// leader cut off from the others answers for a while before it steps
// down, but cannot commit a write.
func streamQuorum(info *jetstream.StreamInfo) error {
	ci := info.Cluster
	if ci == nil {
		return nil // one server, no raft
	}
	if ci.Leader == "" {
		return errors.New("no stream leader")
	}
	replicas := max(info.Config.Replicas, 1)
	heard := 1
	for _, r := range ci.Replicas {
		if !r.Offline && r.Active <= logPeerSilence {
			heard++
		}
	}
	if need := replicas/2 + 1; heard < need {
		return fmt.Errorf("leader %s hears %d of %d replicas, %d needed", ci.Leader, heard, replicas, need)
	}
	return nil
}

// settle makes sure that the write d, refused while it was in doubt, is
// not what the record log keeps of its key, and cannot become it later:
// it reads the key's last message and writes after it, on the condition
// that it is still the last, either that same record again (the refused
// write is not there) or what this node holds of the key (the refused
// write is there: this node's record, which the write never replaced, or
// a tombstone when it holds none). A copy of the refused write still in
// flight in JetStream is thus either seen here or ordered before this
// write.
func (s *Server) settle(d logDoubt) error {
	mu := &s.persist[stripe(d.ns, d.key)]
	mu.Lock()
	defer mu.Unlock()
	var err error
	for range logSettleTries {
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.RequestTimeout)
		err = s.settleOnce(ctx, d)
		cancel()
		if !errors.Is(err, persistence.ErrRecordChanged) {
			return err
		}
	}
	return err
}

// settleOnce is one attempt of settle.
func (s *Server) settleOnce(ctx context.Context, d logDoubt) error {
	have, found, err := s.recLog.Last(ctx, d.ns, d.p, d.key)
	switch {
	case found && err != nil:
		// Not a record this node can read: not the refused write, and
		// not this node's to replace.
		s.log.Warn("record log: the last message of a key with a write in doubt is no record; left as it is",
			"ns", d.ns, "key", d.key, "seq", have.Seq, "err", err)
		return nil
	case err != nil:
		return err
	}
	want := have
	if !found || have.Version == d.version {
		if found {
			s.log.Info("record log: a long-term write refused while it was unreachable had been kept after all; undoing it",
				"ns", d.ns, "key", d.key, "version", d.version, "seq", have.Seq)
		}
		if held, ok := s.heldEntry(d.ns, d.key); ok {
			want = logRecord(d.p, &held)
		} else {
			want = persistence.Record{NS: d.ns, Partition: d.p, Key: d.key, Deleted: true,
				Version: s.rec.reserve(d.ns, d.key)}
		}
	}
	_, err = s.recLog.WriteIfLast(ctx, want, have.Seq)
	return err
}

// heldEntry is what this node stores of ns/key, tombstones and stale
// records included.
func (s *Server) heldEntry(ns, key string) (wire.Entry, bool) {
	v, deadline, l := s.rec.store.GetUntil(ns, key)
	if l == cachenode.Miss {
		return wire.Entry{}, false
	}
	return entryOf(ns, key, v, deadline)
}
