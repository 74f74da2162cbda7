package persistence

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// EventLogConfig sets the limits of the event log. Its envconfig tags are
// read under CACHEBUS_.
type EventLogConfig struct {
	MaxAge   time.Duration `envconfig:"EVENTS_MAX_AGE" default:"24h" desc:"how long the event log keeps an event; a member away longer flushes when it returns"`
	MaxBytes int64         `envconfig:"EVENTS_MAX_BYTES" default:"1073741824" desc:"size limit of the event log in bytes; the oldest events go first"`
	Replicas int           `envconfig:"EVENTS_REPLICAS" default:"1" desc:"JetStream replicas of the event log (3 on a three-node NATS cluster)"`
	Storage  string        `envconfig:"EVENTS_STORAGE" default:"file" desc:"where the event log is kept: file, or memory (faster; lost only if every NATS node restarts at once, and members then flush)"`
}

// EventStreamConfig is the JetStream configuration of the event log.
func EventStreamConfig(s bus.Subjects, cfg EventLogConfig) jetstream.StreamConfig {
	if cfg.Replicas <= 0 {
		cfg.Replicas = 1
	}
	storage := jetstream.FileStorage
	if cfg.Storage == "memory" {
		storage = jetstream.MemoryStorage
	}
	return jetstream.StreamConfig{
		Name:        s.EventStream(),
		Description: "cachebus event log: expire, seed, fallback and drain",
		Subjects:    s.Events(),
		Storage:     storage,
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardOld,
		MaxAge:      cfg.MaxAge,
		MaxBytes:    cfg.MaxBytes,
		MaxMsgSize:  bus.MaxPayload,
		Replicas:    cfg.Replicas,
		Duplicates:  2 * time.Minute,
		AllowDirect: true,
		// Subscribers follow the log by its republication: one core delivery
		// per event with its sequence, no consumer per subscriber.
		RePublish: &jetstream.RePublish{Source: ">", Destination: s.LogRepublish()},
	}
}

// EnsureEvents creates the event log, or updates its limits when it exists.
// It retries while JetStream is not yet available (a cluster electing its
// meta leader) until ctx ends.
func EnsureEvents(ctx context.Context, c *bus.Conn, cfg EventLogConfig) (jetstream.Stream, error) {
	if cfg.Storage != "" && cfg.Storage != "file" && cfg.Storage != "memory" {
		return nil, fmt.Errorf("persistence: CACHEBUS_EVENTS_STORAGE: want file or memory, got %q", cfg.Storage)
	}
	sc := EventStreamConfig(c.Subjects, cfg)
	return ensure(ctx, c, "event log "+sc.Name, func(ctx context.Context) (jetstream.Stream, error) {
		return c.JS.CreateOrUpdateStream(ctx, sc)
	})
}

// EnsureKeyValue creates or updates the KV bucket cfg describes, retrying
// while JetStream is not ready yet (a cluster still forming its routes or
// electing its meta leader), until ctx ends. what names it in errors.
func EnsureKeyValue(ctx context.Context, c *bus.Conn, what string, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	return ensure(ctx, c, what, func(ctx context.Context) (jetstream.KeyValue, error) {
		return c.JS.CreateOrUpdateKeyValue(ctx, cfg)
	})
}

// ensure retries create until it succeeds, fails for good, or ctx ends.
func ensure[T any](ctx context.Context, c *bus.Conn, what string, create func(context.Context) (T, error)) (T, error) {
	var zero T
	// Short attempts first: when every node of a new cluster creates the
	// same replicated stream at once, first requests tend to go unanswered
	// and the second, a moment later, succeeds.
	timeout := time.Second
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, timeout)
		timeout = min(timeout*2, 5*time.Second)
		v, err := create(actx)
		cancel()
		if err == nil {
			return v, nil
		}
		if !transient(err) {
			return zero, fmt.Errorf("persistence: %s: %w", what, err)
		}
		if attempt == 1 {
			c.Log.Info("jetstream not ready, retrying", "what", what, "err", err)
		}
		select {
		case <-ctx.Done():
			return zero, fmt.Errorf("persistence: %s: %w (last error: %v)", what, ctx.Err(), err)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// Error codes of JetStream answers with status 500 that no retry can fix:
// the configuration asks for what the servers cannot give.
const (
	errCodeReplicasNotSupported jetstream.ErrorCode = 10074 // replicas > 1 without a cluster
	errCodeStreamInvalidConfig  jetstream.ErrorCode = 10052
)

// errCodeNoSuitablePeers answers a replicated create while the cluster's
// servers do not all know each other yet (status 400): it passes once the
// routes are up, which on a loaded machine can take longer than the first
// attempts.
const errCodeNoSuitablePeers jetstream.ErrorCode = 10005

func transient(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		switch apiErr.ErrorCode {
		case errCodeReplicasNotSupported, errCodeStreamInvalidConfig:
			return false
		case errCodeNoSuitablePeers:
			return true
		}
		return apiErr.Code == 503 || apiErr.Code == 500
	}
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrJetStreamNotEnabled)
}

// OpenEvents returns the event log, creating it with cfg only when it does
// not exist: a library client (memo) must not change the limits or
// replicas that the cluster's daemons set.
func OpenEvents(ctx context.Context, c *bus.Conn, cfg EventLogConfig) (jetstream.Stream, error) {
	// Retried like a creation: right after a NATS server is lost the
	// lookup times out until JetStream has elected new leaders.
	st, err := ensure(ctx, c, "event log "+c.Subjects.EventStream(), func(ctx context.Context) (jetstream.Stream, error) {
		return c.JS.Stream(ctx, c.Subjects.EventStream())
	})
	if err == nil {
		return st, nil
	}
	if !errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, err
	}
	if cfg.MaxAge == 0 {
		cfg.MaxAge = 24 * time.Hour
	}
	if cfg.MaxBytes == 0 {
		cfg.MaxBytes = 1 << 30
	}
	sc := EventStreamConfig(c.Subjects, cfg)
	return ensure(ctx, c, "event log "+sc.Name, func(ctx context.Context) (jetstream.Stream, error) {
		st, err := c.JS.CreateStream(ctx, sc)
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			return c.JS.Stream(ctx, sc.Name) // created meanwhile by another member
		}
		return st, err
	})
}
