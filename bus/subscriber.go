package bus

import (
	"context"
	"fmt"
	"hash/maphash"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// Paths an event can reach a subscriber by.
const (
	ViaCore = "core"
	ViaLog  = "log"
)

// Event is one decoded event handed to a Handler.
type Event struct {
	Kind     string // KindExpire, KindSeed, KindFallback or KindDrain
	Subject  string
	NS       string // expire and seed
	Role, ID string // drain
	Expire   *Expire
	Seed     *Seed
	Fallback *Fallback
	Drain    *Drain
	// Seq is the event's sequence in the log, or 0 when core delivered it
	// before the log did.
	Seq uint64
	// Via is the path that delivered the event first.
	Via string
}

// Origin is the id of the member that sent the event, if it said.
func (e Event) Origin() string {
	switch {
	case e.Expire != nil:
		return e.Expire.Origin
	case e.Seed != nil:
		return e.Seed.Origin
	case e.Fallback != nil:
		return e.Fallback.Origin
	case e.Drain != nil:
		return e.Drain.Origin
	}
	return ""
}

// Handler applies events. The subscriber calls it from one goroutine at a
// time, in the order events are delivered.
type Handler interface {
	// Apply applies one event.
	Apply(Event)
	// Flush drops everything of the given namespaces (all when nil): the
	// events that would have said what to drop are gone from the log.
	Flush(namespaces []string)
}

// HandlerFuncs adapts two functions to a Handler; either may be nil.
type HandlerFuncs struct {
	ApplyFunc func(Event)
	FlushFunc func(namespaces []string)
}

// Apply calls ApplyFunc.
func (h HandlerFuncs) Apply(e Event) {
	if h.ApplyFunc != nil {
		h.ApplyFunc(e)
	}
}

// Flush calls FlushFunc.
func (h HandlerFuncs) Flush(ns []string) {
	if h.FlushFunc != nil {
		h.FlushFunc(ns)
	}
}

// SubscriberOptions configures a Subscriber.
type SubscriberOptions struct {
	// Name appears in logs.
	Name string
	// Self is this member's origin id: its own events, coming back from the
	// bus, are not handed to the handler a second time.
	Self string
	// Namespaces limits expires and seeds to these namespaces; nil takes
	// all. It is also what a gap flushes.
	Namespaces []string
	// ResumeAfter is the last sequence applied before, to resume from; 0
	// starts at the end of the log, which suits a member with an empty cache.
	ResumeAfter uint64
	// PairWindow is how long one copy of an event waits for the other before
	// it is forgotten. Default one minute.
	PairWindow time.Duration
	// CoreBuffer is how many messages may wait for the handler before NATS
	// drops them (the log then fills in). Default 65536.
	CoreBuffer int
	// CheckInterval is how often an idle subscriber asks the log whether it
	// missed its tail. Default 5s.
	CheckInterval time.Duration
}

// Subscriber applies every event of the bus exactly once, in order, with
// nothing lost across a disconnect.
//
// It takes each event by two core subscriptions on one connection: the
// event subjects themselves, applied the moment they arrive, and the
// event log's republication (<prefix>.log.<subject>), which the stream sends
// once an event is stored, with its sequence. The republished copy
// confirms the first or applies what core did not deliver; a sequence
// that skips ahead, a reconnect or a quiet tail sends the subscriber to
// read the missing range from the stream before it goes on. No JetStream
// consumer runs while the subscriber keeps up.
type Subscriber struct {
	c      *Conn
	h      Handler
	opts   SubscriberOptions
	stream string
	filter map[string]bool
	logPre string // prefix of republished subjects: "<p>.log."

	in       chan *nats.Msg
	subs     []*nats.Subscription
	check    chan struct{} // asks the loop to compare with the log's tail
	removeL  func()
	done     chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup

	// catching is set when core deliveries can no longer be trusted to be
	// complete (disconnect, slow consumer) and cleared once the loop has read
	// the log to its tail: until then core copies wait in held, so nothing
	// is applied ahead of an older event still to be read.
	catching atomic.Bool
	held     []*nats.Msg // core copies received while catching, in order; loop only

	mu      sync.Mutex
	lastSeq uint64 // last log sequence processed
	pairs   pairing
	// advanced is closed when lastSeq moves, and made again only when a
	// WaitSeq needs one: most sequences have no one waiting.
	advanced chan struct{}
	metrics  subMetrics // counters resolved once, guarded by mu
	sawLog   bool       // a republished copy arrived since the last check
}

// Subscribe starts a subscriber on the event log named by the Subjects of
// c. The stream must exist with its republication (persistence.EnsureEvents
// and OpenEvents create it so).
func Subscribe(ctx context.Context, c *Conn, h Handler, opts SubscriberOptions) (*Subscriber, error) {
	if opts.PairWindow <= 0 {
		opts.PairWindow = time.Minute
	}
	if opts.CoreBuffer <= 0 {
		opts.CoreBuffer = 1 << 16
	}
	if opts.CheckInterval <= 0 {
		opts.CheckInterval = 5 * time.Second
	}
	s := &Subscriber{
		c: c, h: h, opts: opts,
		stream: c.Subjects.EventStream(),
		logPre: c.Subjects.LogPrefix(),
		in:     make(chan *nats.Msg, opts.CoreBuffer),
		check:  make(chan struct{}, 1),
		done:   make(chan struct{}),
		pairs:  newPairing(opts.PairWindow),
	}
	if opts.Namespaces != nil {
		s.filter = map[string]bool{}
		for _, ns := range opts.Namespaces {
			if err := CheckNamespace(ns); err != nil {
				return nil, err
			}
			s.filter[ns] = true
		}
	}
	info, err := s.streamInfo(ctx)
	if err != nil {
		return nil, err
	}
	if rp := info.Config.RePublish; rp == nil || rp.Destination != c.Subjects.LogRepublish() || rp.HeadersOnly {
		return nil, fmt.Errorf("bus: event log %s does not republish to %s: update it with persistence.EnsureEvents (any cachebus daemon does at start)",
			s.stream, c.Subjects.LogRepublish())
	}
	start := opts.ResumeAfter
	if start == 0 {
		start = info.State.LastSeq
	}
	if start > info.State.LastSeq {
		// The log was recreated: its sequences started over.
		s.gap(info.State.LastSeq+1, start+1)
		start = info.State.LastSeq
	}
	s.lastSeq = start
	// Subscribe before reading the log up to its tail, so that nothing
	// published meanwhile is missed by both; the loop drops what it read.
	for _, subj := range append(c.Subjects.Events(), c.Subjects.LogRepublish()) {
		sub, err := c.NC.ChanSubscribe(subj, s.in)
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("bus: subscribe %s: %w", subj, err)
		}
		// The channel bounds the backlog; let NATS count drops against it.
		_ = sub.SetPendingLimits(opts.CoreBuffer, -1)
		s.subs = append(s.subs, sub)
	}
	fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := c.NC.FlushWithContext(fctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("bus: subscribe: %w", err)
	}
	s.removeL = c.OnEvent(s.onConnEvent)
	if start < info.State.LastSeq {
		s.catching.Store(true)
		s.requestCheck()
	}
	s.wg.Add(1)
	go s.loop()
	return s, nil
}

func (s *Subscriber) streamInfo(ctx context.Context) (*jetstream.StreamInfo, error) {
	st, err := s.c.JS.Stream(ctx, s.stream)
	if err != nil {
		return nil, fmt.Errorf("bus: event log %s: %w", s.stream, err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("bus: event log %s info: %w", s.stream, err)
	}
	return info, nil
}

// LastSeq is the last event-log sequence this subscriber has processed.
func (s *Subscriber) LastSeq() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastSeq
}

// CatchingUp reports whether the subscriber is reading the log after a
// disconnect (core deliveries are ignored meanwhile).
func (s *Subscriber) CatchingUp() bool { return s.catching.Load() }

// WaitSeq blocks until the subscriber has processed sequence seq of the
// log, or ctx ends.
func (s *Subscriber) WaitSeq(ctx context.Context, seq uint64) error {
	for {
		s.mu.Lock()
		if s.advanced == nil {
			s.advanced = make(chan struct{})
		}
		last, ch := s.lastSeq, s.advanced
		s.mu.Unlock()
		if last >= seq {
			return nil
		}
		select {
		case <-ch:
		case <-s.done:
			return ErrClosed
		case <-ctx.Done():
			return fmt.Errorf("bus: waiting for sequence %d (at %d): %w", seq, last, ctx.Err())
		}
	}
}

// Sync waits until the subscriber has processed every event the log held
// when Sync was called.
func (s *Subscriber) Sync(ctx context.Context) error {
	info, err := s.streamInfo(ctx)
	if err != nil {
		return fmt.Errorf("bus: sync: %w", err)
	}
	return s.WaitSeq(ctx, info.State.LastSeq)
}

// Close stops the subscriptions and waits for the handler's last call to
// return.
func (s *Subscriber) Close() {
	s.stopOnce.Do(func() {
		if s.removeL != nil {
			s.removeL()
		}
		for _, sub := range s.subs {
			_ = sub.Unsubscribe()
		}
		close(s.done)
		s.wg.Wait()
	})
}

func (s *Subscriber) requestCheck() {
	select {
	case s.check <- struct{}{}:
	default:
	}
}

// loop handles every delivery in arrival order, and the checks against
// the log's tail, one at a time.
func (s *Subscriber) loop() {
	defer s.wg.Done()
	tick := time.NewTicker(s.opts.CheckInterval)
	defer tick.Stop()
	for {
		select {
		case <-s.done:
			return
		case m := <-s.in:
			if strings.HasPrefix(m.Subject, s.logPre) {
				s.onLog(m)
			} else {
				s.onCore(m)
			}
		case <-s.check:
			s.catchUp()
		case <-tick.C:
			s.mu.Lock()
			idle := !s.sawLog
			s.sawLog = false
			s.mu.Unlock()
			if idle || s.catching.Load() {
				s.catchUp()
			}
		}
	}
}

func (s *Subscriber) onCore(m *nats.Msg) {
	if s.catching.Load() {
		// Applied, or dropped as a copy, once the log has been read up to
		// where it stood when catching up began.
		if len(s.held) < s.opts.CoreBuffer {
			s.held = append(s.held, m)
		}
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	key := s.pairs.key(m.Subject, m.Header.Get(MsgIDHeader), m.Data)
	if !s.pairs.arrive(key, true, true) {
		s.metrics.duplicate(s.c.Metrics, ViaCore).Inc()
		return
	}
	s.dispatch(m.Subject, m.Data, m.Header.Get(OriginHeader), 0, ViaCore)
}

// onLog handles a republished copy: the stored event with its sequence.
func (s *Subscriber) onLog(m *nats.Msg) {
	seq, err := strconv.ParseUint(m.Header.Get(jetstream.SequenceHeader), 10, 64)
	subject := m.Header.Get(jetstream.SubjectHeader)
	if err != nil || subject == "" {
		s.c.Log.Warn("republished event without sequence or subject", "sub", s.opts.Name, "subject", m.Subject)
		return
	}
	s.mu.Lock()
	s.sawLog = true
	last := s.lastSeq
	s.mu.Unlock()
	if seq <= last {
		return // read from the stream already
	}
	if seq > last+1 {
		// Copies in between were dropped on the way: read them first.
		if !s.readRange(last+1, seq-1) {
			s.requestCheck() // the stream did not answer; try again soon
		}
	}
	s.logCopy(subject, m.Header, m.Data, seq)
}

// logCopy processes the log's copy of event seq.
func (s *Subscriber) logCopy(subject string, h nats.Header, data []byte, seq uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if seq <= s.lastSeq {
		return
	}
	if seq > s.lastSeq+1 {
		s.gap(s.lastSeq+1, seq)
	}
	if s.pairs.arrive(s.pairs.key(subject, h.Get(MsgIDHeader), data), false, true) {
		s.dispatch(subject, data, h.Get(OriginHeader), seq, ViaLog)
	} else {
		s.metrics.duplicate(s.c.Metrics, ViaLog).Inc()
	}
	s.advance(seq)
}

// catchUp reads the log from the last sequence processed to its tail and
// then trusts core deliveries again. A range the log no longer holds is
// flushed.
func (s *Subscriber) catchUp() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	info, err := s.streamInfo(ctx)
	if err != nil {
		s.c.Log.Warn("event log position", "sub", s.opts.Name, "err", err)
		return // the ticker tries again
	}
	s.mu.Lock()
	last := s.lastSeq
	if info.State.FirstSeq > last+1 && info.State.LastSeq > last {
		s.gap(last+1, info.State.FirstSeq)
		s.advance(info.State.FirstSeq - 1)
		last = s.lastSeq
	}
	s.mu.Unlock()
	if info.State.LastSeq > last && !s.readRange(last+1, info.State.LastSeq) {
		return
	}
	if !s.catching.Load() {
		return
	}
	// Every event up to where the log stood is applied. The core copies
	// held meanwhile are of those events (dropped as copies) or of later
	// ones whose log copies are still on their way: apply those now, in the
	// order they came, before anything that arrives after them.
	s.catching.Store(false)
	held := s.held
	s.held = nil
	for _, m := range held {
		s.onCore(m)
	}
	s.c.Log.Info("event log caught up", "sub", s.opts.Name, "seq", s.LastSeq(), "held", len(held))
}

// readRange reads events from..to from the stream with an ordered
// consumer and processes them in order. It reports whether it got there.
func (s *Subscriber) readRange(from, to uint64) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cons, err := s.c.JS.OrderedConsumer(ctx, s.stream, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:   from,
	})
	if err != nil {
		s.c.Log.Warn("event log read", "sub", s.opts.Name, "from_seq", from, "err", err)
		return false
	}
	for s.LastSeq() < to {
		batch, err := cons.Fetch(int(min(to-s.LastSeq(), 1000)), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			s.c.Log.Warn("event log read", "sub", s.opts.Name, "from_seq", from, "err", err)
			return false
		}
		n := 0
		for m := range batch.Messages() {
			n++
			meta, err := m.Metadata()
			if err != nil {
				continue
			}
			s.logCopy(m.Subject(), m.Headers(), m.Data(), meta.Sequence.Stream)
		}
		if err := batch.Error(); err != nil && n == 0 {
			s.c.Log.Warn("event log read", "sub", s.opts.Name, "from_seq", from, "err", err)
			return false
		}
		if n == 0 {
			// The range ends in events removed from the log.
			s.mu.Lock()
			if s.lastSeq < to {
				s.gap(s.lastSeq+1, to+1)
				s.advance(to)
			}
			s.mu.Unlock()
		}
	}
	return true
}

// gap handles events from..to-1 missing from the log: it cannot know what
// they were, so it flushes everything the subscriber holds.
func (s *Subscriber) gap(from, to uint64) {
	s.c.Metrics.Gaps.Inc()
	s.c.Metrics.Flushes.Inc()
	s.c.Log.Warn("events missing from the log, flushing", "sub", s.opts.Name,
		"from_seq", from, "to_seq", to-1, "namespaces", s.opts.Namespaces)
	s.h.Flush(s.opts.Namespaces)
}

func (s *Subscriber) advance(seq uint64) {
	s.lastSeq = seq
	if s.advanced != nil {
		close(s.advanced)
		s.advanced = nil
	}
}

// dispatch decodes one message and hands it to the handler, or logs and
// counts why it was rejected. Called with s.mu held. What the handler
// would not be given (its own events, other namespaces) is not decoded.
func (s *Subscriber) dispatch(subject string, data []byte, origin string, seq uint64, via string) {
	if s.opts.Self != "" && origin == s.opts.Self {
		return // applied locally when it was sent
	}
	t, err := s.c.Subjects.Parse(subject)
	if err == nil && s.filter != nil && t.NS != "" && !s.filter[t.NS] {
		return
	}
	var ev Event
	if err == nil {
		ev, err = decodeTarget(t, subject, data)
	}
	if err != nil {
		s.c.Metrics.Rejected.WithLabelValues(kindOf(s.c.Subjects, subject), Reason(err)).Inc()
		s.c.Log.Warn("rejected message", "sub", s.opts.Name, "subject", subject, "seq", seq, "via", via,
			"bytes", len(data), "err", err)
		return
	}
	ev.Seq, ev.Via = seq, via
	if s.opts.Self != "" && ev.Origin() == s.opts.Self {
		return // sent by this member without the origin header
	}
	s.h.Apply(ev)
	s.metrics.applied(s.c.Metrics, ev.Kind, via).Inc()
	logApplied(s.c, s.opts.Name, ev)
}

// subMetrics holds the labelled counters a subscriber touches on every
// event, looked up once: WithLabelValues hashes its labels on each call.
type subMetrics struct {
	dupCore, dupLog prometheus.Counter
	byKindVia       map[[2]string]prometheus.Counter
}

func (m *subMetrics) duplicate(all *Metrics, via string) prometheus.Counter {
	c := &m.dupCore
	if via == ViaLog {
		c = &m.dupLog
	}
	if *c == nil {
		*c = all.Duplicates.WithLabelValues(via)
	}
	return *c
}

func (m *subMetrics) applied(all *Metrics, kind, via string) prometheus.Counter {
	k := [2]string{kind, via}
	c, ok := m.byKindVia[k]
	if !ok {
		if m.byKindVia == nil {
			m.byKindVia = map[[2]string]prometheus.Counter{}
		}
		c = all.Applied.WithLabelValues(kind, via)
		m.byKindVia[k] = c
	}
	return c
}

func logApplied(c *Conn, sub string, ev Event) {
	// Building the attributes costs more than applying an expire: skip it
	// when the logger would drop the record anyway.
	if !c.Log.Enabled(context.Background(), slog.LevelInfo) {
		return
	}
	switch {
	case ev.Expire != nil:
		e := ev.Expire
		c.Log.Info("applied expire", "sub", sub, "ns", ev.NS, "origin", e.Origin, "keys", e.Keys,
			"prefixes", e.Prefixes, "tags", e.Tags, "all", e.All, "seq", ev.Seq, "via", ev.Via)
	case ev.Seed != nil:
		c.Log.Info("applied seed", "sub", sub, "ns", ev.NS, "origin", ev.Seed.Origin, "key", ev.Seed.Key,
			"ttl", ev.Seed.TTL, "seq", ev.Seq, "via", ev.Via)
	case ev.Fallback != nil:
		f := ev.Fallback
		c.Log.Info("applied fallback", "sub", sub, "on", f.On, "scope", f.Scope, "reason", f.Reason,
			"until", optTime(f.Until), "origin", f.Origin, "seq", ev.Seq, "via", ev.Via)
	case ev.Drain != nil:
		c.Log.Info("applied drain", "sub", sub, "role", ev.Role, "id", ev.ID, "on", ev.Drain.On,
			"deadline", optTime(ev.Drain.Deadline), "origin", ev.Drain.Origin, "seq", ev.Seq, "via", ev.Via)
	}
}

// kindOf names the kind of an event subject for metric labels, even when
// the rest of the subject is invalid.
func kindOf(subjects Subjects, subject string) string {
	rest, _ := strings.CutPrefix(subject, subjects.Prefix+".")
	kind, _, _ := strings.Cut(rest, ".")
	switch kind {
	case KindExpire, KindSeed, KindFallback, KindDrain, KindHeartbeat:
		return kind
	}
	return "unknown"
}

// DecodeEvent decodes a message of an event subject into an Event.
func DecodeEvent(subjects Subjects, subject string, data []byte) (Event, error) {
	t, err := subjects.Parse(subject)
	if err != nil {
		return Event{}, err
	}
	return decodeTarget(t, subject, data)
}

// decodeTarget decodes the payload of an event whose subject is parsed.
func decodeTarget(t Target, subject string, data []byte) (Event, error) {
	ev := Event{Kind: t.Kind, Subject: subject, NS: t.NS, Role: t.Role, ID: t.ID}
	switch t.Kind {
	case KindExpire:
		e, err := DecodeExpire(data)
		if err != nil {
			return Event{}, err
		}
		ev.Expire = &e
	case KindSeed:
		sd, err := DecodeSeed(data)
		if err != nil {
			return Event{}, err
		}
		ev.Seed = &sd
	case KindFallback:
		f, err := DecodeFallback(data)
		if err != nil {
			return Event{}, err
		}
		ev.Fallback = &f
	case KindDrain:
		d, err := DecodeDrain(data)
		if err != nil {
			return Event{}, err
		}
		ev.Drain = &d
	default:
		return Event{}, fieldErr("subject", "%q carries no event", subject)
	}
	return ev, nil
}

func (s *Subscriber) onConnEvent(ev ConnEvent) {
	switch ev {
	case Disconnected, SlowConsumer:
		if !s.catching.Swap(true) {
			s.c.Log.Info("event log catching up", "sub", s.opts.Name, "seq", s.LastSeq())
		}
		if ev == SlowConsumer {
			s.requestCheck()
		}
	case Reconnected:
		s.requestCheck()
	}
}

// pairing matches the core copy and the log copy of each event, so that
// whichever arrives first is applied and the others are dropped.
//
// An event with a message id (every guaranteed publish has one) is applied
// on its first copy and every later copy with that id is dropped: a
// publisher that retries sends the same id again, and each attempt reaches
// core subscribers. A core publish without an id is keyed by a hash of
// subject and payload, and a count per key lets identical payloads
// published twice each be applied once: counts above zero are core copies
// waiting for their log copy, below zero the reverse.
//
// Keys are forgotten after between half and all of the window, in two
// generations that rotate, so memory follows the event rate.
type pairing struct {
	seed      maphash.Seed
	window    time.Duration
	cur, prev map[uint64]int32
	ids, pids map[uint64]struct{}
	rotated   time.Time
}

func newPairing(window time.Duration) pairing {
	return pairing{seed: maphash.MakeSeed(), window: window,
		cur: map[uint64]int32{}, prev: map[uint64]int32{},
		ids: map[uint64]struct{}{}, pids: map[uint64]struct{}{}, rotated: time.Now()}
}

// pairKey identifies an event: by message id when byID, else by content.
type pairKey struct {
	hash uint64
	byID bool
}

func (p *pairing) key(subject, msgID string, data []byte) pairKey {
	var h maphash.Hash
	h.SetSeed(p.seed)
	if msgID != "" {
		h.WriteString(msgID)
		return pairKey{h.Sum64(), true}
	}
	h.WriteString(subject)
	h.WriteByte(0)
	h.Write(data)
	return pairKey{h.Sum64(), false}
}

// arrive records one copy and reports whether it is the first of its
// event. With record false a first content-keyed copy is not remembered:
// no second will come.
func (p *pairing) arrive(k pairKey, core, record bool) bool {
	if now := time.Now(); now.Sub(p.rotated) > p.window/2 {
		p.prev, p.cur = p.cur, make(map[uint64]int32, len(p.cur))
		p.pids, p.ids = p.ids, make(map[uint64]struct{}, len(p.ids))
		p.rotated = now
	}
	if k.byID {
		if _, seen := p.ids[k.hash]; seen {
			return false
		}
		if _, seen := p.pids[k.hash]; seen {
			return false
		}
		p.ids[k.hash] = struct{}{}
		return true
	}
	m := p.cur
	n, ok := p.cur[k.hash]
	if !ok {
		if n, ok = p.prev[k.hash]; ok {
			m = p.prev
		}
	}
	step := int32(1)
	if !core {
		step = -1
	}
	first := n == 0 || (n > 0) == core
	if first && !record {
		return true
	}
	n += step
	if n == 0 {
		delete(m, k.hash)
	} else {
		m[k.hash] = n
	}
	return first
}
