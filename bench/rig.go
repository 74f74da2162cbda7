package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/cachenode/memo"
	"github.com/cachebus/cachebus/persistence"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"github.com/prometheus/client_golang/prometheus"
)

// rig is the servers, connections and subscribers of one run.
type rig struct {
	cfg    FanoutConfig
	log    *slog.Logger
	srv    *bus.Server
	url    string
	server string

	pub         *bus.Conn
	js          jetstream.JetStream
	coreSubject string
	busSubject  string
	subs        []*benchSub

	// Memo mode: the client that flushes, on its own connection.
	flusherConn *bus.Conn
	flusher     *memo.Client

	corePub, busPub, memoPub published
}

// benchSub is one subscriber: a connection carrying a plain core
// subscription (the core path) and a bus.Subscriber (the bus path), or in
// memo mode a memo.Client (the memo path).
type benchSub struct {
	conn            *bus.Conn
	raw             *nats.Subscription
	sub             *bus.Subscriber
	client          *memo.Client
	reg             *prometheus.Registry // the memo client's metrics
	core, bus, memo recorder
}

// rec is what s recorded on path.
func (s *benchSub) rec(path string) *recorder {
	switch path {
	case PathCore:
		return &s.core
	case PathMemo:
		return &s.memo
	}
	return &s.bus
}

// sent is what was published on path.
func (r *rig) sent(path string) *published {
	switch path {
	case PathCore:
		return &r.corePub
	case PathMemo:
		return &r.memoPub
	}
	return &r.busPub
}

// otherPath is the path measured beside core.
func (r *rig) otherPath() string {
	if r.cfg.Memo {
		return PathMemo
	}
	return PathBus
}

func newRig(ctx context.Context, cfg FanoutConfig) (_ *rig, err error) {
	r := &rig{cfg: cfg, log: cfg.Log}
	defer func() {
		if err != nil {
			r.close()
		}
	}()
	if cfg.URL == "" {
		r.srv, err = bus.StartServer(bus.ServerConfig{Host: "127.0.0.1", Port: -1}, nil)
		if err != nil {
			return nil, err
		}
		r.url, r.server = r.srv.ClientURL(), ServerEmbedded
	} else {
		r.url, r.server = cfg.URL, "external "+bus.RedactURL(cfg.URL)
	}
	// The bus logs every applied expire at info; a bench would measure
	// its log writer. Warnings (slow consumers, gaps) still show.
	busLog := bus.AtLeast(cfg.Log, slog.LevelWarn)
	metrics := bus.NewMetrics(nil)
	connect := func(name string) (*bus.Conn, error) {
		return bus.Connect(ctx, bus.ConnConfig{URL: r.url, Prefix: cfg.Prefix, Name: name},
			bus.WithLogger(busLog), bus.WithMetrics(metrics))
	}
	if r.pub, err = connect("bench-publisher"); err != nil {
		return nil, err
	}
	if _, err = persistence.EnsureEvents(ctx, r.pub, persistence.EventLogConfig{
		MaxAge: 15 * time.Minute, MaxBytes: 1 << 30, Replicas: 1, Storage: cfg.Storage,
	}); err != nil {
		return nil, err
	}
	r.coreSubject = cfg.Prefix + ".benchcore" // captured by no stream
	r.busSubject = r.pub.Subjects.Expire("bench")
	r.js, err = jetstream.New(r.pub.NC,
		jetstream.WithPublishAsyncMaxPending(cfg.Window),
		jetstream.WithPublishAsyncAckHandler(func(_ jetstream.JetStream, m *nats.Msg, ack *jetstream.PubAck) {
			r.busPub.logSeq(ack.Sequence)
			if kind, seq, _, ok := ParseKey(payloadKey(m.Data)); ok && kind == kindMeasured {
				r.busPub.add(seq)
			}
		}),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, m *nats.Msg, err error) {
			r.busPub.failed.Add(1)
			r.log.Warn("bench publish not acknowledged", "err", err)
		}))
	if err != nil {
		return nil, fmt.Errorf("bench: jetstream: %w", err)
	}
	for i := range cfg.Subscribers {
		s := &benchSub{}
		if s.conn, err = connect(fmt.Sprintf("bench-sub-%d", i)); err != nil {
			return nil, err
		}
		r.subs = append(r.subs, s)
		s.raw, err = s.conn.NC.Subscribe(r.coreSubject, func(m *nats.Msg) {
			e, err := bus.DecodeExpire(m.Data)
			if err == nil {
				s.core.apply(e.Keys, bus.ViaCore)
			}
		})
		if err != nil {
			return nil, fmt.Errorf("bench: subscribe: %w", err)
		}
		// The same backlog bound as the bus subscriber's core path.
		_ = s.raw.SetPendingLimits(1<<16, -1)
		if cfg.Memo {
			err = r.startReceiver(ctx, s, i)
		} else {
			s.sub, err = bus.Subscribe(ctx, s.conn, &s.bus, bus.SubscriberOptions{Name: fmt.Sprintf("bench-%d", i)})
		}
		if err != nil {
			return nil, err
		}
		if err = s.conn.NC.Flush(); err != nil {
			return nil, fmt.Errorf("bench: flush: %w", err)
		}
	}
	if cfg.Memo {
		if r.flusherConn, err = connect("bench-memo-flusher"); err != nil {
			return nil, err
		}
		r.flusher, err = memo.New(ctx, r.flusherConn, memo.Options{Namespace: memoNamespace, ID: "bench-memo-flusher"})
		if err != nil {
			return nil, err
		}
	}
	r.log.Info("bench ready", "server", r.server, "url", bus.RedactURL(r.url), "subscribers", cfg.Subscribers, "memo", cfg.Memo)
	return r, nil
}

func (r *rig) close() {
	if r.flusher != nil {
		_ = r.flusher.Close()
	}
	if r.flusherConn != nil {
		r.flusherConn.NC.SetDisconnectErrHandler(nil)
		r.flusherConn.NC.Close()
	}
	for _, s := range r.subs {
		if s.sub != nil {
			s.sub.Close()
		}
		if s.client != nil {
			_ = s.client.Close()
		}
		if s.raw != nil {
			_ = s.raw.Unsubscribe()
		}
		s.conn.NC.SetDisconnectErrHandler(nil) // closing is not news
		s.conn.NC.Close()
	}
	if r.pub != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := r.pub.JS.DeleteStream(ctx, r.pub.Subjects.EventStream()); err != nil {
			r.log.Warn("bench event log not deleted", "stream", r.pub.Subjects.EventStream(), "err", err)
		}
		if r.cfg.Memo {
			// The memo clients made the cluster state bucket.
			if err := r.pub.JS.DeleteKeyValue(ctx, r.pub.Subjects.StateBucket()); err != nil && !errors.Is(err, jetstream.ErrBucketNotFound) {
				r.log.Warn("bench state bucket not deleted", "bucket", r.pub.Subjects.StateBucket(), "err", err)
			}
		}
		cancel()
		r.pub.NC.SetDisconnectErrHandler(nil)
		r.pub.NC.Close()
	}
	if r.srv != nil {
		r.srv.Shutdown()
	}
}

// publishAsync sends one expire into the event log, as bus.Publisher
// does but without waiting for the acknowledgement.
func (r *rig) publishAsync(data []byte) error {
	m := &nats.Msg{Subject: r.busSubject, Data: data, Header: nats.Header{}}
	m.Header.Set(bus.MsgIDHeader, nuid.Next())
	_, err := r.js.PublishMsgAsync(m, jetstream.WithStallWait(r.cfg.Drain))
	return err
}

// settle waits, at most Drain, until every subscriber has applied what
// was published on path.
func (r *rig) settle(ctx context.Context, path string, kind byte) error {
	dctx, cancel := context.WithTimeout(ctx, r.cfg.Drain)
	defer cancel()
	pubConn := r.pub
	if path == PathMemo {
		pubConn = r.flusherConn
	}
	if err := pubConn.NC.FlushWithContext(dctx); err != nil {
		return r.drainErr(ctx, "flush", err)
	}
	if path == PathBus {
		select {
		case <-r.js.PublishAsyncComplete():
		case <-dctx.Done():
			return r.drainErr(ctx, "acknowledgements", dctx.Err())
		}
		last := r.busPub.maxSeq.Load()
		for i, s := range r.subs {
			if err := s.sub.WaitSeq(dctx, last); err != nil {
				return r.drainErr(ctx, fmt.Sprintf("subscriber %d log position", i), err)
			}
		}
	}
	if path == PathMemo {
		// Every Flush has returned: the log holds them all.
		for i, s := range r.subs {
			if err := s.client.Sync(dctx); err != nil {
				return r.drainErr(ctx, fmt.Sprintf("memo client %d log position", i), err)
			}
		}
	}
	if kind != kindMeasured {
		return nil
	}
	want := r.sent(path).n.Load()
	for wait := 100 * time.Microsecond; ; wait = min(2*wait, 5*time.Millisecond) {
		done := true
		for _, s := range r.subs {
			if s.rec(path).n.Load() < want {
				done = false
				break
			}
		}
		if done {
			return nil
		}
		select {
		case <-dctx.Done():
			return r.drainErr(ctx, path+" deliveries", dctx.Err())
		case <-time.After(wait):
		}
	}
}

// drainErr lets a run go on, and count what is missing, when the last
// deliveries of a phase do not arrive; only the caller's end stops it.
func (r *rig) drainErr(ctx context.Context, what string, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	r.log.Warn("bench phase did not drain in time", "waiting_for", what, "after", r.cfg.Drain, "err", err)
	return nil
}
