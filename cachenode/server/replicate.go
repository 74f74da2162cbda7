package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/cachenode/wire"
	"github.com/nats-io/nats.go"
)

// replicaWrite is a write of partition p, already stored here, to be
// replicated; err is what failed, if anything.
type replicaWrite struct {
	p   int
	e   *wire.Entry
	err error
}

// replicate sends writes to every other node that must hold them (see
// topology.Table.Targets) and waits for each to acknowledge, setting the
// err of a write that failed. The writes reach each target's replicator
// together, so they travel in one message. A target with no subscriber is
// gone (crashed, not yet declared dead) and is skipped: it copies the
// partition again when it returns. Any other failure fails the write.
func (s *Server) replicate(ctx context.Context, writes []*replicaWrite) {
	tab := s.tracker.Table()
	var tbuf [4]string
	byTarget := map[string][]*replWrite{}
	g := &replGroup{}
	for _, w := range writes {
		targets := tab.Targets(w.p, s.cfg.ID, tbuf[:0])
		if len(targets) == 0 {
			continue
		}
		rw := &replWrite{entry: wire.AppendEntry(make([]byte, 0, wire.EntrySize(w.e)), w.e), write: w, group: g}
		for _, id := range targets {
			byTarget[id] = append(byTarget[id], rw)
			g.waiting++
		}
	}
	if g.waiting == 0 {
		return
	}
	g.acks = make(chan replAck, g.waiting)
	for id, ws := range byTarget {
		s.replicator(id).enqueue(ws)
	}
	stall := time.NewTimer(replStall)
	defer stall.Stop()
	for g.waiting > 0 {
		select {
		case a := <-g.acks:
			g.waiting--
			if a.err != nil {
				a.w.write.err = errors.Join(a.w.write.err, a.err)
			}
		case <-stall.C:
			// A batch is stuck on a target (one that has just crashed
			// never answers): these writes must not wait behind it.
			for id := range byTarget {
				s.replicator(id).nudge()
			}
			stall.Reset(replStall)
		case <-ctx.Done():
			err := wire.Errorf(wire.CodeUnavailable, "stored on %s, replication not confirmed: %v", s.cfg.ID, ctx.Err())
			for _, w := range writes {
				if w.err == nil {
					w.err = err
				}
			}
			return
		}
	}
}

// replWrite is one encoded write waiting for a target's acknowledgement.
type replWrite struct {
	entry []byte
	write *replicaWrite
	group *replGroup
}

// replGroup gathers the acknowledgements of the writes replicate sent
// together: one per write and target.
type replGroup struct {
	waiting int
	acks    chan replAck
}

type replAck struct {
	w   *replWrite
	err error
}

// replicator sends writes to one target. Writes that arrive while a batch
// is on its way wait and go together in the next one, so under load a
// backup gets one message for many writes instead of one each, and alone
// a write waits for nothing. A batch out for longer than replStall no
// longer holds back the writes behind it: another sender takes them, so a
// batch lost with a crashed target delays only its own writes, and the
// next ones find the target gone at once. Copies that overtake each other
// are harmless: a backup keeps the newest version of each key.
type replicator struct {
	s       *Server
	id      string
	mu      sync.Mutex
	pending []*replWrite
	senders int       // goroutines running run
	last    time.Time // when a sender last took a batch or was started
}

// replStall is how long a batch may be out before the writes queued
// behind it get a sender of their own.
const replStall = 50 * time.Millisecond

// maxReplBatch bounds the bytes of one replication message, well under
// NATS's default 1 MiB payload limit.
const maxReplBatch = 512 << 10

func (s *Server) replicator(id string) *replicator {
	s.replMu.Lock()
	defer s.replMu.Unlock()
	r := s.repls[id]
	if r == nil {
		r = &replicator{s: s, id: id}
		s.repls[id] = r
	}
	return r
}

func (r *replicator) enqueue(ws []*replWrite) {
	r.mu.Lock()
	r.pending = append(r.pending, ws...)
	r.startIf(r.senders == 0 || time.Since(r.last) > replStall)
}

// nudge starts another sender when writes are pending and no batch has
// been taken for replStall: every sender is stuck on one.
func (r *replicator) nudge() {
	r.mu.Lock()
	r.startIf(len(r.pending) > 0 && time.Since(r.last) > replStall)
}

// startIf starts a sender when start is set; it is called with r.mu held
// and releases it.
func (r *replicator) startIf(start bool) {
	if start {
		r.senders++
		r.last = time.Now()
	}
	r.mu.Unlock()
	if start {
		go r.run()
	}
}

func (r *replicator) run() {
	buf := make([]byte, 0, 4096)
	for {
		r.mu.Lock()
		n, size := 0, 2
		for n < len(r.pending) && (n == 0 || size+len(r.pending[n].entry) <= maxReplBatch) {
			size += len(r.pending[n].entry)
			n++
		}
		if n == 0 {
			r.senders--
			r.mu.Unlock()
			return
		}
		batch := r.pending[:n:n]
		r.pending = r.pending[n:]
		r.last = time.Now()
		r.mu.Unlock()
		buf = wire.NewBatch(buf, 0)
		for _, w := range batch {
			buf = append(buf, w.entry...)
		}
		ctx, cancel := context.WithTimeout(context.Background(), r.s.cfg.RequestTimeout)
		err := r.s.replicateTo(ctx, r.id, buf, len(batch))
		cancel()
		for _, w := range batch {
			w.group.acks <- replAck{w: w, err: err}
		}
	}
}

var okReply = []byte("OK")

func (s *Server) replicateTo(ctx context.Context, id string, batch []byte, writes int) error {
	msg, err := s.c.NC.RequestWithContext(ctx, s.c.Subjects.RecordReplicate(id), batch)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		s.m.replication.WithLabelValues("gone").Add(float64(writes))
		return nil
	case err != nil:
		s.m.replication.WithLabelValues("failed").Add(float64(writes))
		return wire.Errorf(wire.CodeUnavailable, "stored on %s but not replicated to %s: %v", s.cfg.ID, id, err)
	case !bytes.Equal(msg.Data, okReply):
		s.m.replication.WithLabelValues("failed").Add(float64(writes))
		return wire.Errorf(wire.CodeUnavailable, "stored on %s but %s refused the copy: %s", s.cfg.ID, id, clip(msg.Data))
	}
	s.m.replication.WithLabelValues("ok").Add(float64(writes))
	s.m.replBatches.Inc()
	return nil
}

// onReplicate applies a primary's writes. Each entry is stored unless a
// newer version of its key is already here, so copies reordered on the
// way still end in the same state as the primary.
func (s *Server) onReplicate(m *nats.Msg) {
	_, err := wire.ParseBatch(m.Data, s.applyEntry)
	if err != nil {
		s.m.rejected.WithLabelValues("batch").Inc()
		s.log.Warn("rejected replicated writes", "subject", m.Subject, "bytes", len(m.Data), "err", err)
		if errors.Is(err, wire.ErrBadBatch) {
			err = wire.Errorf(wire.CodeBadRequest, "%v", err) // the sender's fault, not this node's
		}
		rep := wire.ErrorReply(err)
		_ = m.Respond(rep.Append(nil, wire.OpPut))
		return
	}
	_ = m.Respond(okReply)
}

func (s *Server) applyEntry(e *wire.Entry) error {
	if err := bus.CheckNamespace(e.NS); err != nil {
		return wire.Errorf(wire.CodeBadRequest, "entry %q: bad namespace", clip([]byte(e.NS)))
	}
	// The writer checked the key against its limits; a backup configured
	// with smaller ones must still keep the copy.
	if err := wire.CheckKey(e.Key, wire.Limits{MaxKey: 0xffff}); err != nil {
		return err
	}
	if _, err := s.rec.apply(e); err != nil {
		return fmt.Errorf("entry %s/%s: %w", e.NS, e.Key, err)
	}
	return nil
}

func clip(b []byte) string {
	if len(b) > 200 {
		return string(b[:200]) + "…"
	}
	return string(b)
}
