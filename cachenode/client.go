package cachenode

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/cachenode/partition"
	"github.com/cachebus/cachebus/cachenode/topology"
	"github.com/cachebus/cachebus/cachenode/wire"
	"github.com/cachebus/cachebus/persistence"
	"github.com/nats-io/nats.go"
)

// Errors of the Client, compared with errors.Is; the returned error adds
// the node's message.
var (
	// ErrNotFound: no record under the key (never written, deleted or
	// expired).
	ErrNotFound = errors.New("cachenode: record not found")
	// ErrNoOwner: no live cache node holds the key's partition, or none
	// answers at all.
	ErrNoOwner = errors.New("cachenode: no cache node serves the key")
	// ErrBadRequest: the namespace, key or request breaks the protocol's
	// rules.
	ErrBadRequest = errors.New("cachenode: bad record request")
	// ErrTooLarge: the key, value or key count is over the limits.
	ErrTooLarge = errors.New("cachenode: record request too large")
	// ErrUnavailable: the write could not reach the partition's backups,
	// or a node failed; the request may be retried.
	ErrUnavailable = errors.New("cachenode: cache tier unavailable")
)

// ClientOptions configure a Client.
type ClientOptions struct {
	// DC is the caller's data center, for reads with FromDC.
	DC string
	// Timeout bounds a request whose context has no deadline. Default 5s:
	// above a node's forward and replication timeouts (2s each by
	// default), so the client sees a node's error rather than its own.
	Timeout time.Duration
	// FailureTimeout is the cluster's CACHEBUS_FAILURE_TIMEOUT: how long a
	// silent node is still taken as live. Default 5s.
	FailureTimeout time.Duration
	// Limits are checked before a request is sent; zero means
	// wire.DefaultLimits, which nodes also default to.
	Limits wire.Limits
}

// Record is a record as read or written.
type Record struct {
	Value []byte
	// Version orders the writes of a key: the higher is the later.
	Version uint64
	// Expires is when the record expires.
	Expires time.Time
	// Stale is set when fallback is on and the record is past its TTL.
	Stale bool
}

// Client reads and writes records of the cache tier over the bus
// connection it is given, with no pool of its own: it follows the
// assignment and the nodes' heartbeats and sends each request straight to
// the node serving the key's partition, or, while it knows of none, to the
// subject any node answers and forwards.
type Client struct {
	c       *bus.Conn
	opts    ClientOptions
	tracker *topology.Tracker
	pipes   sync.Map // subject → *pipe
	replies replies
	// readAttempt bounds a read's first try at the node it addresses.
	readAttempt time.Duration
	// stall is pipeStall; tests that hold a message lengthen it.
	stall time.Duration
}

// NewClient starts following the cache tier.
func NewClient(ctx context.Context, c *bus.Conn, opts ClientOptions) (*Client, error) {
	if opts.Timeout <= 0 {
		opts.Timeout = 5 * time.Second
	}
	if opts.Limits == (wire.Limits{}) {
		opts.Limits = wire.DefaultLimits
	}
	nodes, err := persistence.OpenOrBindNodes(ctx, c)
	if err != nil {
		return nil, fmt.Errorf("cachenode: client: %w", err)
	}
	t, err := topology.Track(ctx, c, nodes, opts.FailureTimeout, nil)
	if err != nil {
		return nil, fmt.Errorf("cachenode: client: %w", err)
	}
	ft := opts.FailureTimeout
	if ft <= 0 {
		ft = 5 * time.Second
	}
	cl := &Client{c: c, opts: opts, tracker: t, readAttempt: ft / 2, stall: pipeStall}
	if err := cl.listen(); err != nil {
		t.Stop()
		return nil, err
	}
	return cl, nil
}

// Close stops following the cache tier and ends the requests in flight
// with ErrUnavailable; the connection stays open.
func (cl *Client) Close() {
	cl.closeReplies()
	cl.tracker.Stop()
}

// Table is the client's current view of who serves which partition.
func (cl *Client) Table() *topology.Table { return cl.tracker.Table() }

// ReadOption changes how a read is served.
type ReadOption func(*wire.Request)

// FromDC lets a backup in the client's data center (ClientOptions.DC)
// answer the read: faster across data centers, possibly a write behind.
func FromDC() ReadOption { return func(r *wire.Request) { r.Replica = true } }

// Get reads ns/key; ErrNotFound when there is no such record.
func (cl *Client) Get(ctx context.Context, ns, key string, opts ...ReadOption) (Record, error) {
	req := wire.Request{Op: wire.OpGet, NS: ns, Key: key}
	for _, o := range opts {
		o(&req)
	}
	rep, err := cl.do(ctx, &req, cl.target(key, req.Replica))
	if err != nil {
		return Record{}, err
	}
	return record(rep.Item), nil
}

// Put writes ns/key with ttl (the node's default when zero). It returns
// once the partition's primary and its live backups hold the write.
func (cl *Client) Put(ctx context.Context, ns, key string, value []byte, ttl time.Duration) (Record, error) {
	req := wire.Request{Op: wire.OpPut, NS: ns, Key: key, Value: value, TTL: ttl}
	rep, err := cl.do(ctx, &req, cl.target(key, false))
	if err != nil {
		return Record{}, err
	}
	r := record(rep.Item)
	r.Value = value
	return r, nil
}

// Delete removes ns/key, on the primary and its backups. Deleting a key
// that does not exist is not an error.
func (cl *Client) Delete(ctx context.Context, ns, key string) error {
	req := wire.Request{Op: wire.OpDelete, NS: ns, Key: key}
	_, err := cl.do(ctx, &req, cl.target(key, false))
	return err
}

// GetMulti reads several keys of ns, asking each serving node once for all
// its keys, in parallel. Keys with no record are absent from the result.
func (cl *Client) GetMulti(ctx context.Context, ns string, keys []string, opts ...ReadOption) (map[string]Record, error) {
	var proto wire.Request
	for _, o := range opts {
		o(&proto)
	}
	if len(keys) > cl.opts.Limits.MaxKeys {
		return nil, fmt.Errorf("%w: %d keys, limit %d", ErrTooLarge, len(keys), cl.opts.Limits.MaxKeys)
	}
	groups := map[string][]string{}
	for _, k := range keys {
		t := cl.target(k, proto.Replica)
		groups[t] = append(groups[t], k)
	}
	out := make(map[string]Record, len(keys))
	var mu sync.Mutex
	var wg sync.WaitGroup
	var errs []error
	for target, ks := range groups {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req := wire.Request{Op: wire.OpMGet, NS: ns, Keys: ks, Replica: proto.Replica}
			rep, err := cl.do(ctx, &req, target)
			mu.Lock()
			defer mu.Unlock()
			if err == nil && len(rep.Items) != len(ks) {
				err = fmt.Errorf("%w: %d items for %d keys", ErrUnavailable, len(rep.Items), len(ks))
			}
			if err != nil {
				errs = append(errs, err)
				return
			}
			for i, it := range rep.Items {
				if it.Found {
					out[ks[i]] = record(it)
				}
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return out, err
	}
	return out, nil
}

func record(it wire.Item) Record {
	return Record{Value: it.Value, Version: it.Version, Expires: time.UnixMilli(it.Expires), Stale: it.Stale}
}

// target is the subject a request for key goes to.
func (cl *Client) target(key string, replica bool) string {
	tab := cl.tracker.Table()
	p := partition.PartitionOf(key)
	id := tab.Primary(p)
	if replica && cl.opts.DC != "" {
		if local := tab.InDC(p, cl.opts.DC); local != "" {
			id = local
		}
	}
	if id == "" {
		return cl.c.Subjects.RecordAny()
	}
	return cl.c.Subjects.RecordNode(id)
}

// do checks req, sends it to subject and decodes the reply. A node that
// is gone (no subscriber) is retried through the any-node subject.
func (cl *Client) do(ctx context.Context, req *wire.Request, subject string) (wire.Reply, error) {
	// What the node would refuse is refused here, unsent.
	if err := cl.check(req); err != nil {
		return wire.Reply{}, err
	}
	data := req.Append(make([]byte, 0, 64+len(req.Key)+len(req.Value)))
	anyNode := cl.c.Subjects.RecordAny()
	read := req.Op == wire.OpGet || req.Op == wire.OpMGet
	var attempt time.Duration
	if read && subject != anyNode {
		// A read stuck on a node that just died is asked again of any
		// node, which serves it from a backup: a read waits about half a
		// failure timeout for a crashed node, not a whole request timeout.
		attempt = cl.readAttempt
	}
	repData, err := cl.pipe(subject).call(ctx, data, attempt)
	retry := errors.Is(err, nats.ErrNoResponders) || errors.Is(err, errAttempt)
	if retry && subject != anyNode {
		repData, err = cl.pipe(anyNode).call(ctx, data, 0)
	}
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return wire.Reply{}, fmt.Errorf("%w: no cache node answers %s", ErrNoOwner, anyNode)
	case err != nil:
		return wire.Reply{}, fmt.Errorf("cachenode: %s %s/%s: %w", req.Op, req.NS, req.Key, err)
	}
	rep, err := wire.ParseReply(repData, req.Op)
	if err != nil {
		return wire.Reply{}, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	switch rep.Status {
	case wire.StatusNotFound:
		return rep, fmt.Errorf("%w: %s/%s", ErrNotFound, req.NS, req.Key)
	case wire.StatusError:
		return rep, wrapErr(rep.Err)
	}
	return rep, nil
}

// check refuses what a node would refuse for its limits and rules.
func (cl *Client) check(req *wire.Request) error {
	if err := bus.CheckNamespace(req.NS); err != nil {
		return fmt.Errorf("%w: namespace %q must match [A-Za-z0-9_-]{1,64}", ErrBadRequest, req.NS)
	}
	lim := cl.opts.Limits
	if req.Op == wire.OpMGet {
		if len(req.Keys) == 0 {
			return fmt.Errorf("%w: no keys", ErrBadRequest)
		}
		for _, k := range req.Keys {
			if err := wire.CheckKey(k, lim); err != nil {
				return wrapErr(err)
			}
		}
		return nil
	}
	if err := wire.CheckKey(req.Key, lim); err != nil {
		return wrapErr(err)
	}
	if len(req.Value) > lim.MaxValue {
		return fmt.Errorf("%w: value of %d bytes exceeds the limit of %d", ErrTooLarge, len(req.Value), lim.MaxValue)
	}
	return nil
}

// wrapErr maps a protocol error to the Client's errors.
func wrapErr(err error) error {
	var we *wire.Error
	if !errors.As(err, &we) {
		return err
	}
	sentinel := ErrUnavailable
	switch we.Code {
	case wire.CodeBadRequest:
		sentinel = ErrBadRequest
	case wire.CodeTooLarge:
		sentinel = ErrTooLarge
	case wire.CodeNoOwner:
		sentinel = ErrNoOwner
	}
	return fmt.Errorf("%w: %s", sentinel, we.Message)
}
