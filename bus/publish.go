package bus

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
)

// OriginHeader carries the sender's origin id beside the payload, so a
// subscriber can skip its own events without decoding them.
const OriginHeader = "Cachebus-Origin"

// MsgIDHeader is the header that carries a publish's unique id. The event
// log deduplicates retries by it, and subscribers pair the core and log
// copies of one event by it.
const MsgIDHeader = jetstream.MsgIDHeader

// Publisher publishes events through the guaranteed path: a JetStream
// publish, retried until the event log acknowledges it.
type Publisher struct {
	c      *Conn
	origin string
	// AttemptTimeout bounds one publish attempt; the context bounds them all.
	AttemptTimeout time.Duration
}

// NewPublisher returns a publisher that stamps origin on every event it
// sends (when the event has none).
func NewPublisher(c *Conn, origin string) (*Publisher, error) {
	if err := checkOrigin(origin); err != nil {
		return nil, err
	}
	return &Publisher{c: c, origin: origin, AttemptTimeout: 2 * time.Second}, nil
}

// Origin is the id stamped on events that name none.
func (p *Publisher) Origin() string { return p.origin }

// Expire publishes an expire for namespace ns and returns its sequence in
// the event log.
func (p *Publisher) Expire(ctx context.Context, ns string, e Expire) (uint64, error) {
	if err := CheckNamespace(ns); err != nil {
		return 0, err
	}
	p.stamp(&e.Origin, &e.TS)
	data, err := e.Encode()
	if err != nil {
		return 0, err
	}
	seq, err := p.Publish(ctx, p.c.Subjects.Expire(ns), data)
	if err != nil {
		return 0, err
	}
	p.c.Log.Info("sent expire", "ns", ns, "origin", e.Origin, "keys", e.Keys, "prefixes", e.Prefixes,
		"tags", e.Tags, "all", e.All, "seq", seq)
	return seq, nil
}

// Seed publishes a seed for namespace ns and returns its sequence.
func (p *Publisher) Seed(ctx context.Context, ns string, s Seed) (uint64, error) {
	if err := CheckNamespace(ns); err != nil {
		return 0, err
	}
	p.stamp(&s.Origin, &s.TS)
	data, err := s.Encode()
	if err != nil {
		return 0, err
	}
	seq, err := p.Publish(ctx, p.c.Subjects.Seed(ns), data)
	if err != nil {
		return 0, err
	}
	p.c.Log.Info("sent seed", "ns", ns, "origin", s.Origin, "key", s.Key, "bytes", len(s.Value), "ttl", s.TTL, "seq", seq)
	return seq, nil
}

// Fallback publishes a fallback command and returns its sequence. It does
// not record the state: persistence.State.SetFallback does both.
func (p *Publisher) Fallback(ctx context.Context, f Fallback) (uint64, error) {
	p.stamp(&f.Origin, &f.TS)
	data, err := f.Encode()
	if err != nil {
		return 0, err
	}
	seq, err := p.Publish(ctx, p.c.Subjects.Fallback(), data)
	if err != nil {
		return 0, err
	}
	p.c.Log.Info("sent fallback", "on", f.On, "scope", f.Scope, "reason", f.Reason, "until", optTime(f.Until),
		"origin", f.Origin, "seq", seq)
	return seq, nil
}

// Drain publishes a drain of member role/id and returns its sequence. It
// does not record the state: persistence.State.SetDrain does both.
func (p *Publisher) Drain(ctx context.Context, role, id string, d Drain) (uint64, error) {
	if err := CheckMember(role, id); err != nil {
		return 0, err
	}
	p.stamp(&d.Origin, &d.TS)
	data, err := d.Encode()
	if err != nil {
		return 0, err
	}
	seq, err := p.Publish(ctx, p.c.Subjects.Drain(role, id), data)
	if err != nil {
		return 0, err
	}
	p.c.Log.Info("sent drain", "role", role, "id", id, "on", d.On, "deadline", optTime(d.Deadline),
		"origin", d.Origin, "seq", seq)
	return seq, nil
}

func (p *Publisher) stamp(origin *string, ts *time.Time) {
	if *origin == "" {
		*origin = p.origin
	}
	if ts.IsZero() {
		*ts = time.Now().UTC()
	}
}

// Publish sends an encoded payload on subject with a fresh message id and
// retries, with the same id, until the event log acknowledges it or ctx
// ends. The log drops the copies of a retry, so the event is stored once.
func (p *Publisher) Publish(ctx context.Context, subject string, data []byte) (uint64, error) {
	msg := nats.NewMsg(subject)
	msg.Data = data
	msg.Header.Set(MsgIDHeader, nuid.Next())
	if p.origin != "" {
		msg.Header.Set(OriginHeader, p.origin)
	}
	kind := subject
	if t, err := p.c.Subjects.Parse(subject); err == nil {
		kind = t.Kind
	}
	backoff := 20 * time.Millisecond
	for attempt := 1; ; attempt++ {
		start := time.Now()
		actx, cancel := context.WithTimeout(ctx, p.AttemptTimeout)
		ack, err := p.c.JS.PublishMsg(actx, msg)
		cancel()
		if err == nil {
			p.c.Metrics.Published.WithLabelValues(kind).Inc()
			return ack.Sequence, nil
		}
		if isPermanent(err) {
			return 0, fmt.Errorf("bus: publish %s: %w", subject, err)
		}
		if p.c.deniedSince(subject, start) {
			// The server dropped it and said so on the side: no retry
			// will be acknowledged.
			return 0, fmt.Errorf("bus: publish %s: %w: this connection's user may not publish to it", subject, nats.ErrPermissionViolation)
		}
		p.c.Metrics.PublishRetries.Inc()
		if attempt == 1 || attempt%10 == 0 {
			p.c.Log.Warn("publish not acknowledged, retrying", "subject", subject, "attempt", attempt, "err", err)
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("bus: publish %s after %d attempts: %w (last error: %v)", subject, attempt, ErrNotAcked, err)
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, time.Second)
	}
}

// isPermanent tells errors a retry cannot fix from the transient ones
// (no responders while a stream leader is elected, timeouts, reconnects).
func isPermanent(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		// 503 (no leader, no responders) is transient; other API errors, such
		// as a subject no stream captures, are not.
		return apiErr.Code != 503
	}
	return errors.Is(err, nats.ErrConnectionClosed) || errors.Is(err, nats.ErrBadSubject) ||
		errors.Is(err, nats.ErrMaxPayload) || errors.Is(err, nats.ErrPermissionViolation)
}

// optTime renders an optional time for logs: empty when unset.
func optTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.Format(time.RFC3339)
}
