package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/cachenode/wire"
	"github.com/nats-io/nats.go"
)

// replicate sends a write of partition p, already stored here, to every
// other node that must hold it (see topology.Table.Targets) and waits for
// each to acknowledge. A target with no subscriber is gone (crashed, not
// yet declared dead) and is skipped: it copies the partition again when it
// returns. Any other failure fails the write.
func (s *Server) replicate(ctx context.Context, p int, e *wire.Entry) error {
	var tbuf [4]string
	targets := s.tracker.Table().Targets(p, s.cfg.ID, tbuf[:0])
	if len(targets) == 0 {
		return nil
	}
	batch := wire.AppendEntry(wire.NewBatch(make([]byte, 0, 64+wire.EntrySize(e)), 0), e)
	ctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	if len(targets) == 1 {
		return s.replicateTo(ctx, targets[0], batch)
	}
	var wg sync.WaitGroup
	errs := make([]error, len(targets))
	for i, id := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = s.replicateTo(ctx, id, batch)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

var okReply = []byte("OK")

func (s *Server) replicateTo(ctx context.Context, id string, batch []byte) error {
	msg, err := s.c.NC.RequestWithContext(ctx, s.c.Subjects.RecordReplicate(id), batch)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		s.m.replication.WithLabelValues("gone").Inc()
		return nil
	case err != nil:
		s.m.replication.WithLabelValues("failed").Inc()
		return wire.Errorf(wire.CodeUnavailable, "stored on %s but not replicated to %s: %v", s.cfg.ID, id, err)
	case !bytes.Equal(msg.Data, okReply):
		s.m.replication.WithLabelValues("failed").Inc()
		return wire.Errorf(wire.CodeUnavailable, "stored on %s but %s refused the copy: %s", s.cfg.ID, id, clip(msg.Data))
	}
	s.m.replication.WithLabelValues("ok").Inc()
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
	if err := wire.CheckKey(e.Key, s.lim); err != nil {
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
