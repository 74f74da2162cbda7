package server

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/cachenode"
	"github.com/cachebus/cachebus/cachenode/partition"
	"github.com/cachebus/cachebus/cachenode/topology"
	"github.com/cachebus/cachebus/cachenode/wire"
	"github.com/cachebus/cachebus/persistence"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
)

// Options are what a Server works with besides its Config.
type Options struct {
	// Conn is the node's NATS connection. Required; the caller closes it
	// after Shutdown.
	Conn *bus.Conn
	// Registerer receives the node's metrics, labelled node=<id>.
	Registerer prometheus.Registerer
	// Log defaults to the connection's.
	Log *slog.Logger
	// Version is announced in the heartbeat.
	Version string
}

// Server is a running cache node.
type Server struct {
	cfg     Config
	c       *bus.Conn
	log     *slog.Logger
	m       *metrics
	lim     wire.Limits
	rec     records
	writer  uint64 // this node's tie-breaker between equal versions
	started time.Time

	nodes    *persistence.Nodes
	tracker  *topology.Tracker
	follower *persistence.Follower
	events   *bus.Subscriber
	hb       *bus.Heartbeater
	// recLog keeps the long-term namespaces' writes; nil without any.
	recLog *persistence.RecordLog
	// persist orders the writes of a long-term key: the log keeps the
	// last message of a key, so a key's writes reach it one at a time.
	persist [256]sync.Mutex
	// gate refuses long-term writes at once while the record log is
	// known to be unreachable (loggate.go).
	gate logGate

	reqSubs  []*nats.Subscription // direct and any-node
	peerSubs []*nats.Subscription // replication and handover
	workMu   sync.RWMutex
	work     chan *nats.Msg
	workOpen bool
	workers  sync.WaitGroup

	replMu sync.Mutex
	repls  map[string]*replicator // by target node

	mu      sync.Mutex
	holds   topology.Holds // partitions whose data this node holds
	suspect topology.Holds // held before a disconnect, not announced since

	// isolated is set while the node is cut off from the NATS majority
	// (isolation.go); iso is the reconcile goroutine's record of it.
	isolated atomic.Bool
	iso      isolation
	syncing  topology.Holds // partitions being copied from a peer
	// replaying is the progress of a replay from the record log, while
	// one runs.
	replaying *ReplayStatus

	// state is the cluster state bucket, where the node records its
	// drain finished; drain is its own drain, kept by the reconcile loop.
	state *persistence.State
	drain drainer
	// mig paces the records this node sends to peers taking partitions.
	mig *migrator

	// settleFrom is when the node started or last reconnected: after a
	// failure timeout from then it has heard every live peer.
	settleFrom atomic.Int64
	// selfLive is whether the node's own table last showed it live;
	// selfLost latches its fall from live to dead until suspectAll, for
	// reconcile, which may be blocked on the bus while the node is stalled
	// and would not see the gap in its own heartbeats once they flow
	// again. A node cut off (isolated) suspects all when it comes back,
	// which clears the latch too.
	selfLive, selfLost atomic.Bool
	stopConn           func()

	kick chan struct{}
	done chan struct{}
	// bg counts the background work stop waits for; bgMu orders its
	// additions from peers' requests before stop's wait.
	bg       sync.WaitGroup
	bgMu     sync.Mutex
	shutdown atomic.Bool
}

// Start brings a cache node up: it sets the first baseline when there is
// none, follows the assignment, the heartbeats and the event log, answers
// record requests and copies the partitions it owns from their holders.
// It returns once the node is serving; Ready says when it holds its data.
func Start(ctx context.Context, cfg Config, opts Options) (*Server, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	if opts.Conn == nil {
		return nil, errors.New("server: no NATS connection")
	}
	s := &Server{cfg: cfg, c: opts.Conn, log: opts.Log, lim: cfg.limits(), started: time.Now(),
		writer: writerID(cfg.ID), repls: map[string]*replicator{}, kick: make(chan struct{}, 1), done: make(chan struct{})}
	if s.log == nil {
		s.log = s.c.Log
	}
	s.log = s.log.With("node", cfg.ID)
	s.settleFrom.Store(s.started.UnixNano())
	var err error
	if s.m, err = newMetrics(opts.Registerer, cfg.ID); err != nil {
		return nil, err
	}
	s.mig = newMigrator(cfg.MigrateRate, cfg.HandoverBatchBytes, cfg.MaxKey+cfg.MaxValue+envelopeLen+cachenode.Overhead)
	s.rec.store = cachenode.NewStore(cachenode.StoreConfig{MaxMB: cfg.MaxMB, MaxTTL: cfg.MaxTTL,
		DefaultTTL: cfg.DefaultTTL, StaleGrace: cfg.StaleGrace, Shards: storeShards, Log: s.log})
	ok := false
	defer func() {
		if !ok {
			s.stop(context.Background())
		}
	}()
	if err := s.openBus(ctx); err != nil {
		return nil, err
	}
	if len(cfg.LongTerm) > 0 {
		reg := opts.Registerer
		if reg != nil {
			reg = prometheus.WrapRegistererWith(prometheus.Labels{"node": cfg.ID}, reg)
		}
		if s.recLog, err = persistence.OpenRecordLog(ctx, s.c, cfg.RecordLogConfig,
			persistence.WithRecordMetrics(persistence.NewRecordMetrics(reg))); err != nil {
			return nil, fmt.Errorf("server: %w", err)
		}
		if !s.recLog.Sealed() {
			s.log.Warn("long-term records are stored in JetStream unencrypted: set CACHEBUS_RECORD_KEY (32 bytes, base64) if they hold session tokens",
				"namespaces", cfg.LongTerm, "stream", s.recLog.Stream())
		}
	}
	// The node hears its peers from now on, not from when it started:
	// opening the buckets may take longer than a failure timeout.
	s.settleFrom.Store(time.Now().UnixNano())
	if err := s.subscribe(); err != nil {
		return nil, err
	}
	hb := bus.Heartbeat{ID: cfg.ID, Role: "node", DC: cfg.DC, Version: opts.Version}
	if s.hb, err = bus.StartHeartbeat(s.c, hb, cfg.Interval, s.status); err != nil {
		return nil, fmt.Errorf("server: heartbeat: %w", err)
	}
	s.stopConn = s.c.OnEvent(s.onConnEvent)
	s.bg.Add(1)
	go s.reconcileLoop()
	if s.recLog != nil && s.recLog.SnapshotEvery() > 0 {
		s.bg.Add(1)
		go s.compactLoop(s.recLog.SnapshotEvery())
	}
	ok = true
	s.log.Info("cache node started", "dc", cfg.DC, "workers", cfg.Workers, "failure_timeout", cfg.FailureTimeout)
	return s, nil
}

// openBus opens the buckets and streams the node follows.
func (s *Server) openBus(ctx context.Context) error {
	var err error
	if s.nodes, err = persistence.OpenOrBindNodes(ctx, s.c); err != nil {
		return fmt.Errorf("server: %w", err)
	}
	if err := s.bootstrapBaseline(ctx); err != nil {
		return err
	}
	if _, err := persistence.OpenEvents(ctx, s.c, persistence.EventLogConfig{}); err != nil {
		return fmt.Errorf("server: %w", err)
	}
	if s.state, err = persistence.OpenOrBindState(ctx, s.c); err != nil {
		return fmt.Errorf("server: %w", err)
	}
	if s.follower, err = s.state.Follow(ctx, func(persistence.ClusterState) { s.poke() }); err != nil {
		return fmt.Errorf("server: %w", err)
	}
	if s.events, err = bus.Subscribe(ctx, s.c, eventHandler{s}, bus.SubscriberOptions{Name: "node/" + s.cfg.ID, Self: s.cfg.ID}); err != nil {
		return fmt.Errorf("server: %w", err)
	}
	if s.tracker, err = topology.Track(ctx, s.c, s.nodes, s.cfg.FailureTimeout, func(tab *topology.Table) {
		if live := tab.Live(s.cfg.ID); s.selfLive.Swap(live) && !live {
			s.selfLost.Store(true)
		}
		s.poke()
	}); err != nil {
		return fmt.Errorf("server: %w", err)
	}
	return nil
}

var errBaselineSet = errors.New("baseline exists")

// bootstrapBaseline sets the first baseline when none exists: the
// configured one, or this node alone. A baseline that exists is the
// operator's and is never touched.
func (s *Server) bootstrapBaseline(ctx context.Context) error {
	members, _ := partition.ParseMembers(s.cfg.Baseline) // checked by cfg.check
	if len(members) == 0 {
		members = []partition.Member{{ID: s.cfg.ID, DC: s.cfg.DC, Weight: s.cfg.Weight}}
	}
	ch, err := s.nodes.Update(ctx, func(cur partition.Baseline, _ partition.Assignment) ([]partition.Member, int, bool, error) {
		if cur.Version != 0 {
			return nil, 0, false, errBaselineSet
		}
		return members, s.cfg.Backups, s.cfg.CrossDC, nil
	})
	switch {
	case errors.Is(err, errBaselineSet):
		return nil
	case err != nil:
		return fmt.Errorf("server: first baseline: %w", err)
	}
	s.log.Info("set the first baseline", "version", ch.Baseline.Version, "members", len(ch.Baseline.Members),
		"backups", s.cfg.Backups, "cross_dc", s.cfg.CrossDC)
	return nil
}

// subscribe starts the workers and the node's subscriptions: peers' first,
// so that by the time a heartbeat makes the node live, replicated writes
// reach it.
func (s *Server) subscribe() error {
	sub := func(subj, queue string, cb nats.MsgHandler) (*nats.Subscription, error) {
		var sb *nats.Subscription
		var err error
		if queue == "" {
			sb, err = s.c.NC.Subscribe(subj, cb)
		} else {
			sb, err = s.c.NC.QueueSubscribe(subj, queue, cb)
		}
		if err != nil {
			return nil, fmt.Errorf("server: subscribe %s: %w", subj, err)
		}
		_ = sb.SetPendingLimits(1<<20, 1<<30)
		return sb, nil
	}
	subj := s.c.Subjects
	for _, p := range []struct {
		subj string
		cb   nats.MsgHandler
	}{{subj.RecordReplicate(s.cfg.ID), s.onReplicate}, {subj.RecordSync(s.cfg.ID), s.onSyncRequest},
		{subj.RecordReplay(), s.onReplayRequest}} {
		sb, err := sub(p.subj, "", p.cb)
		if err != nil {
			return err
		}
		s.peerSubs = append(s.peerSubs, sb)
	}
	s.work = make(chan *nats.Msg, 4*s.cfg.Workers)
	s.workOpen = true
	for range s.cfg.Workers {
		s.workers.Add(1)
		go s.worker()
	}
	for _, p := range []struct{ subj, queue string }{{subj.RecordNode(s.cfg.ID), ""}, {subj.RecordAny(), "cachebus-nodes"}} {
		sb, err := sub(p.subj, p.queue, s.enqueue)
		if err != nil {
			return err
		}
		s.reqSubs = append(s.reqSubs, sb)
	}
	return nil
}

func (s *Server) enqueue(m *nats.Msg) {
	s.workMu.RLock()
	defer s.workMu.RUnlock()
	if s.workOpen {
		s.work <- m
	}
}

func (s *Server) worker() {
	defer s.workers.Done()
	buf := make([]byte, 0, 1024)
	for m := range s.work {
		buf = s.handle(m, buf[:0])
		if cap(buf) > 1<<20 {
			buf = make([]byte, 0, 1024)
		}
	}
}

// handle answers one record request, or a frame of them, from NATS.
func (s *Server) handle(m *nats.Msg, buf []byte) []byte {
	s.m.messages.Inc()
	if s.isolated.Load() && m.Subject == s.c.Subjects.RecordAny() {
		return s.refuseAny(m, buf)
	}
	if wire.IsFrame(m.Data) {
		return s.handleFrame(m, buf)
	}
	start := len(buf)
	buf, op := s.answer(m.Data, buf)
	if limit := s.replyLimit(); len(buf)-start > limit {
		rep := wire.ErrorReply(wire.Errorf(wire.CodeTooLarge, "reply of %d bytes exceeds the NATS payload limit of %d; ask for fewer keys", len(buf)-start, limit))
		buf = rep.Append(buf[:start], op)
	}
	s.respond(m, buf)
	return buf
}

// respond sends a reply when the request asked for one.
func (s *Server) respond(m *nats.Msg, reply []byte) {
	if m.Reply == "" {
		return
	}
	if err := m.Respond(reply); err != nil {
		s.log.Debug("record reply not sent", "err", err)
	}
}

// answer appends the reply to one encoded request to buf.
func (s *Server) answer(data, buf []byte) ([]byte, wire.Op) {
	req, err := s.parse(data)
	if err != nil {
		rep := wire.ErrorReply(err)
		return rep.Append(buf, req.Op), req.Op
	}
	return s.reply(&req, buf), req.Op
}

// reply appends the reply to a decoded request to buf.
func (s *Server) reply(req *wire.Request, buf []byte) []byte {
	if req.Op == wire.OpGet {
		// A get waits for nothing here, and a forward bounds itself.
		rep := s.Do(context.Background(), req)
		return rep.Append(buf, req.Op)
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.RequestTimeout+time.Second)
	rep := s.Do(ctx, req)
	cancel()
	return rep.Append(buf, req.Op)
}

// parse decodes a request from NATS, counting and logging what it refuses.
func (s *Server) parse(data []byte) (wire.Request, error) {
	req, err := wire.ParseRequest(data, s.lim)
	if err != nil {
		s.m.rejected.WithLabelValues("request").Inc()
		s.log.Warn("rejected record request", "bytes", len(data), "err", err)
	}
	return req, err
}

// handleFrame answers every request of a frame in one reply. Reads are
// answered at once; the writes of partitions this node serves are stored
// and then replicated together, each backup getting them in one message,
// and waited for once; any other request (a forward, a long-term write)
// is answered on its own goroutine.
func (s *Server) handleFrame(m *nats.Msg, buf []byte) []byte {
	parts, err := wire.ParseFrame(m.Data, false)
	if err != nil {
		s.m.rejected.WithLabelValues("request").Inc()
		s.log.Warn("rejected record frame", "bytes", len(m.Data), "err", err)
		rep := wire.ErrorReply(err)
		s.respond(m, rep.Append(buf, wire.OpGet))
		return buf
	}
	replies := make([][]byte, len(parts))
	var wg sync.WaitGroup
	var writes []*replicaWrite
	var at []int // index in parts of each of writes
	for i, p := range parts {
		req, err := s.parse(p)
		switch {
		case err != nil:
			rep := wire.ErrorReply(err)
			replies[i] = rep.Append(nil, req.Op)
		case req.Op == wire.OpGet:
			replies[i] = s.reply(&req, nil)
		case s.storesHere(&req):
			e := s.writeEntry(&req)
			if err := s.rec.write(&e); err != nil {
				rep := wire.ErrorReply(err)
				s.count(req.Op, rep)
				replies[i] = rep.Append(nil, req.Op)
				continue
			}
			writes = append(writes, &replicaWrite{p: partition.PartitionOf(req.Key), e: &e})
			at = append(at, i)
		default:
			wg.Add(1)
			go func() {
				defer wg.Done()
				replies[i] = s.reply(&req, nil)
			}()
		}
	}
	if len(writes) > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.RequestTimeout+time.Second)
		s.replicate(ctx, writes)
		cancel()
		for j, w := range writes {
			rep := written(w.e)
			if w.err != nil {
				rep = wire.ErrorReply(w.err)
			}
			op := wire.OpPut
			if w.e.Deleted {
				op = wire.OpDelete
			}
			s.count(op, rep)
			replies[at[j]] = rep.Append(nil, op)
		}
	}
	wg.Wait()
	// Replies past the payload limit are sent back to be asked again
	// alone.
	size, limit := 0, s.replyLimit()
	for i, r := range replies {
		if size += len(r) + 16; size > limit {
			rep := wire.ErrorReply(wire.Errorf(wire.CodeFrameFull, "reply does not fit the frame; send the request alone"))
			replies[i] = rep.Append(nil, wire.OpGet)
		}
	}
	buf = wire.AppendFrame(buf, true, replies)
	s.respond(m, buf)
	return buf
}

// storesHere reports whether req is a write this node stores and
// replicates itself, with no forward and no record log: a put or delete of
// a partition it serves, in a namespace that is not long-term, while it is
// not cut off from the cluster.
func (s *Server) storesHere(req *wire.Request) bool {
	if (req.Op != wire.OpPut && req.Op != wire.OpDelete) || req.NS == "" || s.isolated.Load() {
		return false
	}
	if s.recLog != nil && s.recLog.LongTerm(req.NS) {
		return false
	}
	_, local := s.route(req, partition.PartitionOf(req.Key))
	return local
}

// refuseAny answers every request of a message from the any-node subject
// with an error while this node is cut off from the NATS majority. Its
// own subject and its HTTP API go on serving reads of what it holds, to
// the clients that can only reach it; but the any-node subject also
// reaches it from the majority's side the moment the cut heals, before it
// knows it is back, and it must not answer those with what it missed.
func (s *Server) refuseAny(m *nats.Msg, buf []byte) []byte {
	rep := wire.ErrorReply(wire.Errorf(wire.CodeUnavailable,
		"%s is cut off from the NATS majority and answers no request sent to any node; ask again", s.cfg.ID))
	refuse := func(data, buf []byte) []byte {
		req, _ := wire.ParseRequest(data, s.lim)
		s.count(req.Op, rep)
		return rep.Append(buf, req.Op)
	}
	if !wire.IsFrame(m.Data) {
		buf = refuse(m.Data, buf)
		s.respond(m, buf)
		return buf
	}
	parts, err := wire.ParseFrame(m.Data, false)
	if err != nil {
		return s.handleFrame(m, buf) // refuses the malformed frame as ever
	}
	replies := make([][]byte, len(parts))
	for i, p := range parts {
		replies[i] = refuse(p, nil)
	}
	buf = wire.AppendFrame(buf, true, replies)
	s.respond(m, buf)
	return buf
}

// replyLimit is the largest reply NATS carries, with room for headers.
func (s *Server) replyLimit() int { return int(s.c.NC.MaxPayload()) - 1024 }

// status refreshes the heartbeat's fields before each beat.
func (s *Server) status(hb *bus.Heartbeat) {
	s.mu.Lock()
	if s.isolated.Load() {
		hb.Holds = bus.EncodeHolds(topology.Holds{})
	} else {
		hb.Holds = bus.EncodeHolds(s.holds)
	}
	hb.Replay = nil
	if s.replaying != nil {
		hb.Replay = s.replaying.heartbeat()
	}
	s.mu.Unlock()
}

// held reports whether this node holds partition p.
func (s *Server) held(p int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.holds.Has(p)
}

// ID is the node's id.
func (s *Server) ID() string { return s.cfg.ID }

// Table is the node's current view of who serves which partition.
func (s *Server) Table() *topology.Table { return s.tracker.Table() }

// Members is the node's membership tracker (every role).
func (s *Server) Members() *bus.Membership { return s.tracker.Members() }

// Store is the node's local store, for tests and status.
func (s *Server) Store() *cachenode.Store { return s.rec.store }

// Shutdown stops taking requests, finishes those in flight, announces the
// node gone and stops following the bus. The caller closes the NATS
// connection afterwards (with drain).
func (s *Server) Shutdown(ctx context.Context) {
	s.stop(ctx)
}

func (s *Server) stop(ctx context.Context) {
	if !s.shutdown.CompareAndSwap(false, true) {
		return
	}
	// Work a peer's request added before the flag was seen is counted
	// by now; none is added after.
	s.bgMu.Lock()
	//lint:ignore SA2001 the empty critical section is the point
	s.bgMu.Unlock()
	for _, sb := range s.reqSubs {
		_ = sb.Unsubscribe()
	}
	s.workMu.Lock()
	if s.workOpen {
		s.workOpen = false
		close(s.work)
	}
	s.workMu.Unlock()
	s.workers.Wait()
	if s.stopConn != nil {
		s.stopConn()
	}
	close(s.done)
	s.bg.Wait()
	if s.hb != nil {
		if _, ok := ctx.Deadline(); !ok {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
		}
		s.hb.Stop(ctx)
	}
	for _, sb := range s.peerSubs {
		_ = sb.Unsubscribe()
	}
	if s.events != nil {
		s.events.Close()
	}
	if s.tracker != nil {
		s.tracker.Stop()
	}
	if s.follower != nil {
		s.follower.Stop()
	}
	s.rec.store.Close()
	s.log.Info("cache node stopped")
}

// untilStop is a context cancelled when the node stops (or cancel is
// called), for the background work that must end with it.
func (s *Server) untilStop() (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		select {
		case <-s.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// background counts one piece of background work for stop to wait for,
// unless the node is shutting down; the caller calls s.bg.Done when it
// reported true.
func (s *Server) background() bool {
	s.bgMu.Lock()
	defer s.bgMu.Unlock()
	if s.shutdown.Load() {
		return false
	}
	s.bg.Add(1)
	return true
}

// writerID is a node's tie-breaker between equal versions: a hash of its
// id, the same on every node.
func writerID(id string) uint64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(id))
	return h.Sum64()
}

// eventHandler applies the bus's events to the node's records.
type eventHandler struct{ s *Server }

func (h eventHandler) Apply(ev bus.Event) {
	if ev.Expire != nil {
		h.s.rec.store.Apply(ev.NS, *ev.Expire)
	}
}

// Flush is called when the node may have missed events: its records may
// be stale, so it drops them all and copies its partitions again from its
// peers (or starts them empty where none holds them).
func (h eventHandler) Flush(namespaces []string) {
	s := h.s
	s.log.Warn("event log gap: dropping held partitions to copy them again", "namespaces", namespaces)
	s.mu.Lock()
	s.holds = topology.Holds{}
	s.mu.Unlock()
	s.rec.store.FlushAll()
	s.hb.Announce()
	s.poke()
}
