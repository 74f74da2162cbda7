package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/cachenode/partition"
	"github.com/cachebus/cachebus/cachenode/wire"
	"github.com/cachebus/cachebus/persistence"
	"github.com/nats-io/nats.go"
)

// ReplayRequest is the payload of <p>.rec.replay (bus.Subjects.RecordReplay),
// which every live cache node receives: each one reads namespace NS back
// from the record log for the partitions it holds, primary and backup
// copies alike, and applies what it reads by the version rule. `cachebus
// replay` sends it; docs/PROTOCOL.md describes it.
type ReplayRequest struct {
	// V is the payload version, 1.
	V int `json:"v"`
	// NS is the long-term namespace to read back.
	NS string `json:"ns"`
	// Partitions, when not empty, limits the replay to these partitions
	// (0 to 1023) among those the node holds.
	Partitions []int `json:"partitions,omitempty"`
	// Origin is who asked, logged by every node.
	Origin string `json:"origin,omitempty"`
}

// ReplayReply is a node's answer to a ReplayRequest, sent once its replay
// is over (or refused, with Code and Error set).
type ReplayReply struct {
	// V is the payload version, 1.
	V int `json:"v"`
	// Node is the answering node's id, NS the namespace asked for.
	Node string `json:"node"`
	NS   string `json:"ns"`
	// Partitions is how many partitions the node read back: those it
	// holds, among those asked for.
	Partitions int `json:"partitions"`
	// Records counts the records and tombstones read from the log.
	Records int64 `json:"records"`
	// Applied counts those stored: newer than the version in memory, or
	// with nothing in memory. Deleted counts the tombstones among them
	// (each one deletes its key). Older counts those left alone because
	// memory held the same version or a newer one; Failed those that
	// could not be stored (too large for the namespace's memory).
	Applied int64 `json:"applied"`
	Deleted int64 `json:"deleted"`
	Older   int64 `json:"older"`
	Failed  int64 `json:"failed"`
	// Expired counts records skipped as expired, Rejected messages of the
	// log skipped as corrupt, foreign or unopenable.
	Expired  int64 `json:"expired"`
	Rejected int64 `json:"rejected"`
	// Bytes of the messages read.
	Bytes int64 `json:"bytes"`
	// Took is how long the replay took, a Go duration ("1.25s").
	Took string `json:"took"`
	// Rate is records read per second.
	Rate float64 `json:"rate"`
	// Code (a record protocol error code: bad_request, unavailable,
	// internal) and Error say why the node refused or did not finish;
	// both are empty on success.
	Code  string `json:"code,omitempty"`
	Error string `json:"error,omitempty"`
}

// Err is the reply's error, nil on success.
func (r *ReplayReply) Err() error {
	if r.Code == "" && r.Error == "" {
		return nil
	}
	code := wire.Code(r.Code)
	if code == "" {
		code = wire.CodeInternal
	}
	return wire.Errorf(code, "%s", r.Error)
}

// CheckReplayRequest returns an error naming what is wrong with req, nil
// when a node would accept it (long-term or not).
func CheckReplayRequest(req *ReplayRequest) error {
	if req.V != 1 {
		return fmt.Errorf("v must be 1, got %d", req.V)
	}
	if err := bus.CheckNamespace(req.NS); err != nil {
		return err
	}
	for _, p := range req.Partitions {
		if p < 0 || p >= partition.Partitions {
			return fmt.Errorf("partition %d out of range 0 to %d", p, partition.Partitions-1)
		}
	}
	if req.Origin != "" && !bus.ValidName(req.Origin) {
		return fmt.Errorf("origin must match [A-Za-z0-9_-]{1,64}, got %q", req.Origin)
	}
	return nil
}

// applyRecord stores a record read back from the record log by the
// version rule: unless what memory holds under its key is as new or
// newer. A tombstone is stored as one, so that a newer delete removes the
// key and an older write arriving late is refused. A record that never
// expires gets the default TTL. It reports whether it stored r.
func (s *Server) applyRecord(r *persistence.Record) (bool, error) {
	e := wire.Entry{NS: r.NS, Key: r.Key, Version: r.Version, Value: r.Value, Deleted: r.Deleted}
	switch {
	case r.Deleted:
		e.Value = nil
		e.Deadline = r.Expires.UnixNano()
		if r.Expires.IsZero() {
			e.Deadline = time.Now().Add(tombstoneTTL).UnixNano()
		}
	case r.Expires.IsZero():
		e.Deadline = time.Now().Add(s.cfg.DefaultTTL).UnixNano()
	default:
		e.Deadline = r.Expires.UnixNano()
	}
	return s.rec.apply(&e)
}

// onReplayRequest answers <p>.rec.replay: the node reads the namespace
// back for the partitions it holds and answers once done. Requests run one
// after another (one subscription delivers them in order).
func (s *Server) onReplayRequest(m *nats.Msg) {
	rep := s.replayOnDemand(m.Data)
	if m.Reply == "" {
		return
	}
	data, err := json.Marshal(rep)
	if err != nil {
		s.log.Error("replay reply not encoded", "err", err)
		return
	}
	if err := m.Respond(data); err != nil {
		s.log.Debug("replay reply not sent", "err", err)
	}
}

// replayOnDemand carries out one encoded ReplayRequest.
func (s *Server) replayOnDemand(data []byte) *ReplayReply {
	rep := &ReplayReply{V: 1, Node: s.cfg.ID}
	refuse := func(code wire.Code, format string, args ...any) *ReplayReply {
		rep.Code, rep.Error = string(code), fmt.Sprintf(format, args...)
		rep.Took = "0s"
		return rep
	}
	var req ReplayRequest
	err := json.Unmarshal(data, &req)
	if err == nil {
		err = CheckReplayRequest(&req)
	}
	if err != nil {
		s.m.rejected.WithLabelValues("replay").Inc()
		s.log.Warn("rejected replay request", "bytes", len(data), "err", err)
		return refuse(wire.CodeBadRequest, "malformed replay request: %v", err)
	}
	rep.NS = req.NS
	switch {
	case s.recLog == nil:
		s.m.rejected.WithLabelValues("replay").Inc()
		s.log.Warn("rejected replay request: no record log here", "ns", req.NS, "origin", req.Origin)
		return refuse(wire.CodeBadRequest, "%s has no record log: no long-term namespace (CACHEBUS_LONG_TERM is empty)", s.cfg.ID)
	case !s.recLog.LongTerm(req.NS):
		s.m.rejected.WithLabelValues("replay").Inc()
		s.log.Warn("rejected replay request: namespace not long-term here", "ns", req.NS, "origin", req.Origin)
		return refuse(wire.CodeBadRequest, "namespace %s is not long-term on %s (CACHEBUS_LONG_TERM)", req.NS, s.cfg.ID)
	case !s.background():
		return refuse(wire.CodeUnavailable, "%s is shutting down", s.cfg.ID)
	}
	defer s.bg.Done()
	parts := s.replayParts(req.Partitions)
	rep.Partitions = len(parts)
	if len(parts) == 0 {
		rep.Took = "0s"
		s.log.Info("replay on demand: no partition to read back here", "ns", req.NS, "asked", len(req.Partitions), "origin", req.Origin)
		return rep
	}
	if err := s.replayNamespace(req.NS, parts, req.Origin, rep); err != nil {
		code := wire.CodeUnavailable
		var we *wire.Error
		if errors.As(err, &we) {
			code = we.Code
		}
		rep.Code, rep.Error = string(code), err.Error()
	}
	return rep
}

// replayParts lists the partitions this node holds, among want when it is
// not empty.
func (s *Server) replayParts(want []int) []int {
	var set [partition.Partitions]bool
	for _, p := range want {
		set[p] = true
	}
	var parts []int
	s.mu.Lock()
	for p := range partition.Partitions {
		if s.holds.Has(p) && (len(want) == 0 || set[p]) {
			parts = append(parts, p)
		}
	}
	s.mu.Unlock()
	return parts
}

// replayNamespace reads ns back from the record log for parts, which the
// node holds, applying each record by the version rule, and fills rep. Its
// progress is the node's replay status (in /v1/status and the heartbeat)
// unless a takeover replay reports its own meanwhile. (The node holds
// partitions only once its reconcile loop runs, which Start begins after
// it has set s.hb: so s.hb is set here.)
func (s *Server) replayNamespace(ns string, parts []int, origin string, rep *ReplayReply) error {
	ctx, cancel := s.untilStop()
	defer cancel()
	start := time.Now()
	since := start.UTC().Format(time.RFC3339)
	var mine *ReplayStatus
	show := func(st *ReplayStatus) {
		s.mu.Lock()
		if s.replaying == nil || s.replaying == mine {
			s.replaying, mine = st, st
		}
		s.mu.Unlock()
	}
	show(&ReplayStatus{NS: ns, Partitions: len(parts), Since: since})
	s.hb.Announce()
	defer func() {
		s.mu.Lock()
		if s.replaying == mine {
			s.replaying = nil
		}
		s.mu.Unlock()
		s.hb.Announce()
	}()
	s.log.Info("replaying long-term records on demand", "ns", ns, "partitions", len(parts), "origin", origin)
	st, err := s.recLog.Replay(ctx, ns, parts, func(r persistence.Record) error {
		if !s.held(r.Partition) {
			return nil // dropped meanwhile: its records went with it
		}
		stored, err := s.applyRecord(&r)
		switch {
		case err != nil:
			rep.Failed++
			s.log.Warn("replayed record not stored", "ns", r.NS, "key", r.Key, "err", err)
		case !stored:
			rep.Older++
		case r.Deleted:
			rep.Applied++
			rep.Deleted++
		default:
			rep.Applied++
		}
		return nil
	}, s.replayProgress("replaying long-term records on demand", ns, len(parts), since, show))
	took := time.Since(start)
	rep.Records, rep.Expired, rep.Rejected, rep.Bytes = st.Records, st.Expired, st.Rejected, st.Bytes
	rep.Took = took.Round(time.Millisecond).String()
	rep.Rate = math.Round(float64(st.Records) / max(took.Seconds(), 1e-9))
	if err != nil {
		if ctx.Err() != nil {
			err = wire.Errorf(wire.CodeUnavailable, "%s is shutting down", s.cfg.ID)
		}
		s.log.Error("replay on demand not finished", "ns", ns, "partitions", len(parts), "records", st.Records, "err", err)
		return fmt.Errorf("replay %s on %s: %w", ns, s.cfg.ID, err)
	}
	if st.Rejected > 0 {
		s.log.Warn("bad messages skipped in the record log", "ns", ns, "rejected", st.Rejected)
	}
	s.log.Info("replayed long-term records on demand", "ns", ns, "partitions", len(parts), "records", st.Records,
		"applied", rep.Applied, "deleted", rep.Deleted, "older", rep.Older, "failed", rep.Failed, "bytes", st.Bytes,
		"took", took.Round(time.Millisecond), "rate", int64(rep.Rate), "origin", origin)
	return nil
}

// replayProgress is the progress callback of a replay of ns over parts
// partitions begun at since: it shows each step through show (the node's
// replay status) and logs one every 2 seconds with msg.
func (s *Server) replayProgress(msg, ns string, parts int, since string, show func(*ReplayStatus)) func(persistence.ReplayProgress) {
	lastLog := time.Now()
	return func(pr persistence.ReplayProgress) {
		show(&ReplayStatus{NS: ns, Partitions: parts, Records: pr.Records, Bytes: pr.Bytes,
			Percent: pr.Percent, Rate: pr.Rate, Since: since})
		if time.Since(lastLog) < 2*time.Second {
			return
		}
		lastLog = time.Now()
		s.log.Info(msg, "ns", ns, "partitions", parts, "records", pr.Records,
			"bytes", pr.Bytes, "rate", int64(pr.Rate), "percent", fmt.Sprintf("%.0f", pr.Percent))
	}
}
