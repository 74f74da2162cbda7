package memo

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/cachenode"
	"github.com/cachebus/cachebus/persistence"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"
)

// Options configure a Client. The zero value works.
type Options struct {
	// Namespace is the cache namespace the client memoizes into; peers
	// share it. Default "memo".
	Namespace string
	// ID is this client's origin id on the bus. Default memo-<host>-<pid>.
	ID string
	// MaxMB bounds the memory of the namespace, in MiB. Default 64.
	MaxMB int
	// MaxTTL caps the TTL of every entry. Default 1h.
	MaxTTL time.Duration
	// StaleGrace is how long an entry is kept past its TTL to be served
	// during fallback or when fn fails. Default 0: no stale copies.
	StaleGrace time.Duration
	// Codec encodes typed values for Value and SeedValue. Default JSON.
	Codec Codec
	// Registerer receives the client's metrics; nil keeps them unregistered.
	Registerer prometheus.Registerer
	// Log receives what the client does; nil uses the connection's logger.
	Log *slog.Logger
	// Observe, when set, is called after an event from a peer is applied
	// to this client's memory (for logs, metrics and benchmarks): an
	// expire, or a seed the store accepted. The client's own events are
	// not observed. It runs on the bus's delivery goroutine, keep it short.
	Observe func(bus.Event)
}

// Client is a memoization cache coherent with its peers.
type Client struct {
	conn     *bus.Conn
	ns       string
	id       string
	codec    Codec
	log      *slog.Logger
	store    *cachenode.Store
	pub      *bus.Publisher
	sub      *bus.Subscriber
	follower *persistence.Follower
	group    singleflight.Group
	m        *metrics
	observe  func(bus.Event)
}

// New starts a client on conn: it subscribes to the namespace's events
// and reads the cluster's fallback state before it returns.
func New(ctx context.Context, conn *bus.Conn, opts Options) (*Client, error) {
	if opts.Namespace == "" {
		opts.Namespace = "memo"
	}
	if err := bus.CheckNamespace(opts.Namespace); err != nil {
		return nil, fmt.Errorf("memo: %w", err)
	}
	if opts.ID == "" {
		host, _ := os.Hostname()
		opts.ID = bus.SanitizeName(fmt.Sprintf("memo-%s-%d", host, os.Getpid()), "memo")
	}
	if opts.Codec == nil {
		opts.Codec = JSON{}
	}
	if opts.Log == nil {
		opts.Log = conn.Log
	}
	c := &Client{conn: conn, ns: opts.Namespace, id: opts.ID, codec: opts.Codec, observe: opts.Observe,
		log: opts.Log.With("ns", opts.Namespace, "memo", opts.ID)}
	c.store = cachenode.NewStore(cachenode.StoreConfig{MaxMB: opts.MaxMB, MaxTTL: opts.MaxTTL,
		StaleGrace: opts.StaleGrace, Log: c.log})
	var err error
	if c.m, err = newMetrics(opts.Registerer, c.ns, c.store); err != nil {
		c.store.Close()
		return nil, err
	}
	if c.pub, err = bus.NewPublisher(conn, c.id); err != nil {
		c.store.Close()
		return nil, fmt.Errorf("memo: %w", err)
	}
	if _, err := persistence.OpenEvents(ctx, conn, persistence.EventLogConfig{}); err != nil {
		c.store.Close()
		return nil, fmt.Errorf("memo: %w", err)
	}
	state, err := persistence.OpenOrBindState(ctx, conn)
	if err != nil {
		c.store.Close()
		return nil, fmt.Errorf("memo: %w", err)
	}
	if c.follower, err = state.Follow(ctx); err != nil {
		c.store.Close()
		return nil, fmt.Errorf("memo: %w", err)
	}
	c.sub, err = bus.Subscribe(ctx, conn, handler{c}, bus.SubscriberOptions{
		Name: "memo/" + c.ns, Self: c.id, Namespaces: []string{c.ns}})
	if err != nil {
		c.follower.Stop()
		c.store.Close()
		return nil, fmt.Errorf("memo: %w", err)
	}
	return c, nil
}

// Namespace is the namespace the client memoizes into.
func (c *Client) Namespace() string { return c.ns }

// ID is the client's origin id.
func (c *Client) ID() string { return c.id }

// Close stops following the bus and releases the memory.
func (c *Client) Close() error {
	c.sub.Close()
	c.follower.Stop()
	c.store.Close()
	return nil
}

// DoOption adjusts one Do call.
type DoOption func(*doOptions)

type doOptions struct{ tags []string }

// Tags tags the entry Do stores, so FlushTag drops it (surrogate keys).
func Tags(tags ...string) DoOption {
	return func(o *doOptions) { o.tags = append(o.tags, tags...) }
}

// Do returns the value of key: from memory when it holds a fresh copy,
// else from fn, whose result is kept for ttl. Concurrent misses on one key
// call fn once. During fallback a stale copy is served without calling fn;
// when fn fails and a stale copy exists, the copy is served and the error
// counted.
func (c *Client) Do(ctx context.Context, key string, ttl time.Duration, fn func(context.Context) ([]byte, error), opts ...DoOption) ([]byte, error) {
	v, state := c.store.Get(c.ns, key)
	if state == cachenode.Hit {
		c.m.hits.Inc()
		return v, nil
	}
	if state == cachenode.Stale && c.Fallback() {
		c.m.stale.Inc()
		return v, nil
	}
	c.m.misses.Inc()
	res, err, _ := c.group.Do(key, func() (any, error) {
		// A caller that waited for the flight before may find it filled.
		if v, st := c.store.Get(c.ns, key); st == cachenode.Hit {
			return v, nil
		}
		// Taken before fn reads the source: a flush that comes while fn
		// runs may be for a change fn did not see, so its value is
		// returned but not kept.
		mark, err := c.store.Mark(c.ns)
		if err != nil {
			return nil, fmt.Errorf("memo: %w", err)
		}
		val, err := fn(ctx)
		if err != nil {
			return nil, err
		}
		var o doOptions
		for _, opt := range opts {
			opt(&o)
		}
		kept, err := c.store.SetIfUnexpired(c.ns, key, val, ttl, mark, o.tags...)
		switch {
		case err != nil:
			c.log.Warn("memo: value not kept", "key", key, "err", err)
		case !kept:
			c.m.superseded.Inc()
		}
		return val, nil
	})
	if err != nil {
		c.m.fnErrors.Inc()
		if state == cachenode.Stale {
			c.m.staleOnError.Inc()
			return v, nil
		}
		return nil, err
	}
	return res.([]byte), nil
}

// Value is Do for a typed result, encoded with the client's codec.
func Value[T any](ctx context.Context, c *Client, key string, ttl time.Duration, fn func(context.Context) (T, error), opts ...DoOption) (T, error) {
	var zero T
	data, err := c.Do(ctx, key, ttl, func(ctx context.Context) ([]byte, error) {
		v, err := fn(ctx)
		if err != nil {
			return nil, err
		}
		return c.codec.Marshal(v)
	}, opts...)
	if err != nil {
		return zero, err
	}
	var out T
	if err := c.codec.Unmarshal(data, &out); err != nil {
		return zero, fmt.Errorf("memo: decode %s: %w", key, err)
	}
	return out, nil
}

// Flush drops keys here at once and on every peer.
func (c *Client) Flush(ctx context.Context, keys ...string) error {
	if len(keys) == 0 {
		return nil
	}
	return c.expire(ctx, "key", bus.Expire{Keys: keys})
}

// FlushPrefix drops every key starting with one of prefixes, everywhere.
func (c *Client) FlushPrefix(ctx context.Context, prefixes ...string) error {
	if len(prefixes) == 0 {
		return nil
	}
	return c.expire(ctx, "prefix", bus.Expire{Prefixes: prefixes})
}

// FlushTag drops every entry tagged with one of tags, everywhere.
func (c *Client) FlushTag(ctx context.Context, tags ...string) error {
	if len(tags) == 0 {
		return nil
	}
	return c.expire(ctx, "tag", bus.Expire{Tags: tags})
}

// FlushAll drops the whole namespace, everywhere.
func (c *Client) FlushAll(ctx context.Context) error {
	return c.expire(ctx, "all", bus.Expire{All: true})
}

// expire applies e here, then publishes it and waits for the log's
// acknowledgement, so that when it returns every peer will apply it.
func (c *Client) expire(ctx context.Context, kind string, e bus.Expire) error {
	if err := e.Validate(); err != nil {
		return fmt.Errorf("memo: %w", err)
	}
	c.store.Apply(c.ns, e)
	if _, err := c.pub.Expire(ctx, c.ns, e); err != nil {
		return fmt.Errorf("memo: flush not sent to peers: %w", err)
	}
	c.m.flushesSent.WithLabelValues(kind).Inc()
	return nil
}

// Seed sets key to value here and on every peer, for ttl.
func (c *Client) Seed(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	s := bus.Seed{Key: key, Value: value, TTL: ttl}
	if err := s.Validate(); err != nil {
		return fmt.Errorf("memo: %w", err)
	}
	if err := c.store.Set(c.ns, key, value, ttl); err != nil {
		return fmt.Errorf("memo: seed %s: %w", key, err)
	}
	if _, err := c.pub.Seed(ctx, c.ns, s); err != nil {
		return fmt.Errorf("memo: seed not sent to peers: %w", err)
	}
	c.m.seedsSent.Inc()
	return nil
}

// SeedValue is Seed for a typed value, encoded with the client's codec.
func SeedValue[T any](ctx context.Context, c *Client, key string, v T, ttl time.Duration) error {
	data, err := c.codec.Marshal(v)
	if err != nil {
		return fmt.Errorf("memo: encode %s: %w", key, err)
	}
	return c.Seed(ctx, key, data, ttl)
}

// handler applies the peers' events to the client's store.
type handler struct{ c *Client }

func (h handler) Apply(ev bus.Event) {
	c := h.c
	switch {
	case ev.Expire != nil:
		c.store.Apply(ev.NS, *ev.Expire)
		c.m.flushesApplied.WithLabelValues(originLabel(ev.Expire.Origin)).Inc()
	case ev.Seed != nil:
		// Deleted first, as an expire would be, so that a value being read
		// from the source meanwhile does not replace the seed's.
		c.store.Delete(ev.NS, ev.Seed.Key)
		if err := c.store.Set(ev.NS, ev.Seed.Key, ev.Seed.Value, ev.Seed.TTL); err != nil {
			c.log.Warn("memo: seed not applied", "key", ev.Seed.Key, "origin", ev.Seed.Origin, "err", err)
			return
		}
		c.m.seedsApplied.WithLabelValues(originLabel(ev.Seed.Origin)).Inc()
	default:
		return
	}
	if c.observe != nil {
		c.observe(ev)
	}
}

func (h handler) Flush(namespaces []string) {
	h.c.m.gapFlushes.Inc()
	h.c.store.Flush(h.c.ns)
}

func originLabel(o string) string {
	if o == "" {
		return "unknown"
	}
	return o
}

// Sync waits until the client has applied every event the log held when
// Sync was called: after a peer's Flush returns, Sync on this client makes
// its next Do see the flush.
func (c *Client) Sync(ctx context.Context) error {
	if err := c.sub.Sync(ctx); err != nil {
		return fmt.Errorf("memo: %w", err)
	}
	return nil
}

// Fallback reports whether the cluster's fallback is on for the client's
// namespace now: Do then serves stale copies instead of calling fn.
func (c *Client) Fallback() bool {
	return c.follower.Current().FallbackActive(c.ns, time.Now())
}
