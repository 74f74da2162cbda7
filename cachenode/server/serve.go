package server

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/cachebus/cachebus/cachenode/partition"
	"github.com/cachebus/cachebus/cachenode/wire"
	"github.com/cachebus/cachebus/persistence"
	"github.com/nats-io/nats.go"
)

// Do answers a record request: here when this node serves the key's
// partition, else by forwarding it to the node that does. HTTP requests
// and NATS requests both come through it.
func (s *Server) Do(ctx context.Context, req *wire.Request) wire.Reply {
	if req.NS == "" {
		return wire.ErrorReply(wire.Errorf(wire.CodeBadRequest, "namespace missing"))
	}
	var rep wire.Reply
	if req.Op == wire.OpMGet {
		rep = s.mget(ctx, req)
	} else {
		rep = s.one(ctx, req)
	}
	s.count(req.Op, rep)
	return rep
}

// count counts a request served with rep.
func (s *Server) count(op wire.Op, rep wire.Reply) {
	if (rep.Status == wire.StatusOK || rep.Status == wire.StatusNotFound) && op >= wire.OpGet && op <= wire.OpMGet {
		// The counters of every request that succeeds are looked up
		// once, not hashed by label on each request.
		s.m.served[op][rep.Status].Inc()
		return
	}
	s.m.requests.WithLabelValues(op.String(), result(rep)).Inc()
}

func result(r wire.Reply) string {
	switch r.Status {
	case wire.StatusOK:
		return "ok"
	case wire.StatusNotFound:
		return "not_found"
	}
	return string(r.Err.Code)
}

// route says where a request for partition p goes: "" with local set to
// serve it here, a node id to forward to, or neither when no live node
// holds p.
func (s *Server) route(req *wire.Request, p int) (to string, local bool) {
	held := s.held(p)
	if held && req.Replica {
		return "", true
	}
	prim := s.tracker.Table().Primary(p)
	switch {
	case prim == s.cfg.ID, prim == "", req.Hops >= wire.MaxHops:
		// The table may lag this node's own holdings by a heartbeat; what
		// this node holds it serves.
		return "", held
	}
	return prim, false
}

func (s *Server) one(ctx context.Context, req *wire.Request) wire.Reply {
	p := partition.PartitionOf(req.Key)
	to, local := s.route(req, p)
	if local {
		return s.local(ctx, req, p)
	}
	if to == "" {
		return noOwner(p)
	}
	rep, err := s.forward(ctx, to, req)
	if err == nil {
		return rep
	}
	if errors.Is(err, nats.ErrNoResponders) {
		// The serving node is gone but not yet declared dead: a holder
		// that is still here serves instead, this node first.
		if s.held(p) {
			return s.local(ctx, req, p)
		}
		for _, id := range s.tracker.Table().Holders(p) {
			if id == to || id == s.cfg.ID {
				continue
			}
			if rep, err = s.forward(ctx, id, req); err == nil {
				return rep
			}
		}
		return noOwner(p)
	}
	return wire.ErrorReply(wire.Errorf(wire.CodeUnavailable, "forward to %s: %v", to, err))
}

func noOwner(p int) wire.Reply {
	return wire.ErrorReply(wire.Errorf(wire.CodeNoOwner, "no live node holds partition %d", p))
}

// forward sends req to node id and returns its reply.
func (s *Server) forward(ctx context.Context, id string, req *wire.Request) (wire.Reply, error) {
	fwd := *req
	fwd.Hops++
	ctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	s.m.forwarded.WithLabelValues(req.Op.String()).Inc()
	msg, err := s.c.NC.RequestWithContext(ctx, s.c.Subjects.RecordNode(id), fwd.Append(nil))
	if err != nil {
		return wire.Reply{}, err
	}
	return wire.ParseReply(msg.Data, req.Op)
}

// local serves a request for partition p from this node's records.
func (s *Server) local(ctx context.Context, req *wire.Request, p int) wire.Reply {
	switch req.Op {
	case wire.OpGet:
		it := s.get(req.NS, req.Key)
		if !it.Found {
			return wire.Reply{Status: wire.StatusNotFound}
		}
		return wire.Reply{Status: wire.StatusOK, Item: it}
	case wire.OpPut, wire.OpDelete:
		if s.isolated.Load() {
			return wire.ErrorReply(s.isolatedRefusal())
		}
		e := s.writeEntry(req)
		if s.recLog != nil && s.recLog.LongTerm(e.NS) {
			if err := s.writeLongTerm(ctx, p, &e); err != nil {
				return wire.ErrorReply(err)
			}
		} else {
			if err := s.rec.write(&e); err != nil {
				return wire.ErrorReply(err)
			}
			w := replicaWrite{p: p, e: &e}
			s.replicate(ctx, []*replicaWrite{&w})
			if w.err != nil {
				return wire.ErrorReply(w.err)
			}
		}
		return written(&e)
	}
	return wire.ErrorReply(wire.Errorf(wire.CodeBadRequest, "unknown operation %s", req.Op))
}

// writeEntry is the entry a put or delete req makes on this node now;
// its version is set when it is stored.
func (s *Server) writeEntry(req *wire.Request) wire.Entry {
	e := wire.Entry{NS: req.NS, Key: req.Key, Writer: s.writer, Value: req.Value}
	now := time.Now()
	if req.Op == wire.OpDelete {
		e.Deleted, e.Value, e.Deadline = true, nil, now.Add(tombstoneTTL).UnixNano()
	} else {
		ttl := req.TTL
		if ttl <= 0 {
			ttl = s.cfg.DefaultTTL
		}
		e.Deadline = now.Add(min(ttl, s.cfg.MaxTTL)).UnixNano()
	}
	return e
}

// written is the reply to a write whose entry e is stored and replicated.
func written(e *wire.Entry) wire.Reply {
	return wire.Reply{Status: wire.StatusOK, Item: wire.Item{Found: true, Version: e.Version,
		Expires: e.Deadline / int64(time.Millisecond)}}
}

// get reads a record, stale ones included while fallback is on for ns.
func (s *Server) get(ns, key string) wire.Item {
	it := s.rec.get(ns, key, true)
	if it.Stale && !s.follower.Current().FallbackActive(ns, time.Now()) {
		return wire.Item{}
	}
	return it
}

// mget serves the keys this node holds and forwards the others, grouped
// by serving node, in parallel.
func (s *Server) mget(ctx context.Context, req *wire.Request) wire.Reply {
	items := make([]wire.Item, len(req.Keys))
	groups := map[string][]int{} // node → indexes into req.Keys
	for i, k := range req.Keys {
		p := partition.PartitionOf(k)
		to, local := s.route(req, p)
		switch {
		case local:
			items[i] = s.get(req.NS, k)
		case to == "":
			return noOwner(p)
		default:
			groups[to] = append(groups[to], i)
		}
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failed error
	for to, idx := range groups {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sub := wire.Request{Op: wire.OpMGet, NS: req.NS, Replica: req.Replica, Hops: req.Hops, Keys: make([]string, len(idx))}
			for j, i := range idx {
				sub.Keys[j] = req.Keys[i]
			}
			rep, err := s.forward(ctx, to, &sub)
			if err == nil && rep.Status == wire.StatusError {
				err = rep.Err
			} else if err == nil && len(rep.Items) != len(idx) {
				err = wire.Errorf(wire.CodeInternal, "%s answered %d items for %d keys", to, len(rep.Items), len(idx))
			}
			if err != nil {
				// The serving node failed; what this node holds it serves.
				for _, i := range idx {
					if p := partition.PartitionOf(req.Keys[i]); s.held(p) {
						items[i] = s.get(req.NS, req.Keys[i])
					} else {
						mu.Lock()
						failed = err
						mu.Unlock()
					}
				}
				return
			}
			for j, i := range idx {
				items[i] = rep.Items[j]
			}
		}()
	}
	wg.Wait()
	if failed != nil {
		var we *wire.Error
		if errors.As(failed, &we) {
			return wire.ErrorReply(we)
		}
		return wire.ErrorReply(wire.Errorf(wire.CodeUnavailable, "mget: %v", failed))
	}
	return wire.Reply{Status: wire.StatusOK, Items: items}
}

// writeLongTerm writes e, a write of a long-term namespace, to the record
// log first and, once JetStream has acknowledged it, stores it here and
// replicates it to the partition's backups: what a node holds of a
// long-term namespace is always in the log, so an acknowledged write
// outlives every node, and a write the log did not take changes nothing
// anywhere. The key's writes go to the log one at a time, in version
// order, since the log keeps a key's last.
//
// While the log is known to be unreachable (this node's NATS server cut
// off from the JetStream majority, say) the write is refused at once,
// without waiting for a timeout: see logGate.
func (s *Server) writeLongTerm(ctx context.Context, p int, e *wire.Entry) error {
	g := &s.gate
	if err := g.refusal(s); err != nil {
		return err
	}
	mu := &s.persist[stripe(e.NS, e.Key)]
	mu.Lock()
	defer mu.Unlock()
	// Asked again: the write may have waited here behind one of the same
	// stripe that found the log unreachable.
	if err := g.refusal(s); err != nil {
		return err
	}
	e.Version = s.rec.reserve(e.NS, e.Key)
	// The caller giving up does not cut the write short: whether the log
	// took it must be known here. It waits at most the request timeout;
	// a timeout leaves the write in doubt (see logFailed).
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.RequestTimeout)
	_, err := s.recLog.Write(lctx, logRecord(p, e))
	cancel()
	if err != nil {
		return s.logFailed(g, p, e, err)
	}
	if _, err := s.rec.apply(e); err != nil {
		return wire.Errorf(wire.CodeInternal, "long-term write %s/%s kept in the record log but not stored on %s: %v", e.NS, e.Key, s.cfg.ID, err)
	}
	w := replicaWrite{p: p, e: e}
	s.replicate(ctx, []*replicaWrite{&w})
	return w.err
}

// logRecord is the record-log form of e, a write of partition p.
func logRecord(p int, e *wire.Entry) persistence.Record {
	r := persistence.Record{NS: e.NS, Partition: p, Key: e.Key, Version: e.Version, Deleted: e.Deleted}
	if !e.Deleted {
		r.Value, r.Expires = e.Value, time.Unix(0, e.Deadline)
	}
	return r
}
