package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/persistence"
	"github.com/nats-io/nats.go/jetstream"
)

// ClientConfig is how a command (expire, seed, fallback, drain, status,
// watch) reaches the bus. It is exported so that envconfig reads the
// fields of the embedded bus.ConnConfig.
type ClientConfig struct {
	bus.ConnConfig
	Origin  string        `envconfig:"ORIGIN" desc:"origin id stamped on what this command sends (default client-<hostname>)"`
	Timeout time.Duration `envconfig:"TIMEOUT" default:"10s" desc:"how long a command waits for NATS and for the event log to acknowledge what it sends"`
}

// origin is the id the command publishes as: CACHEBUS_ORIGIN, or
// client-<hostname> with every character NATS names cannot carry replaced.
func (c *ClientConfig) origin() (string, error) {
	if c.Origin != "" {
		if !bus.ValidName(c.Origin) {
			return "", usagef("CACHEBUS_ORIGIN: must match [A-Za-z0-9_-]{1,64}, got %q", c.Origin)
		}
		return c.Origin, nil
	}
	host, _ := os.Hostname()
	return sanitizeID("client-" + host), nil
}

// sanitizeID turns s into a valid member or origin id.
func sanitizeID(s string) string { return bus.SanitizeName(s, "client") }

// connect connects a command to NATS, giving up after the configured
// timeout with an error that says which variable to check.
func (c *ClientConfig) connect(ctx context.Context, env *runEnv, name string) (*bus.Conn, error) {
	if c.Timeout <= 0 {
		return nil, usagef("CACHEBUS_TIMEOUT: must be positive, got %s", c.Timeout)
	}
	cctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	cfg := c.ConnConfig
	cfg.Name = "cachebus " + name
	conn, err := bus.Connect(cctx, cfg, bus.WithLogger(commandLogger(env)))
	if err != nil {
		return nil, fmt.Errorf("connect to NATS (CACHEBUS_NATS_URL): %w", err)
	}
	return conn, nil
}

// publisher connects and returns a publisher with the command's origin.
func (c *ClientConfig) publisher(ctx context.Context, env *runEnv, name string) (*bus.Conn, *bus.Publisher, error) {
	origin, err := c.origin()
	if err != nil {
		return nil, nil, err
	}
	conn, err := c.connect(ctx, env, name)
	if err != nil {
		return nil, nil, err
	}
	pub, err := bus.NewPublisher(conn, origin)
	if err != nil {
		conn.NC.Close()
		return nil, nil, err
	}
	return conn, pub, nil
}

// bindState opens the cluster state bucket a daemon created.
func bindState(ctx context.Context, conn *bus.Conn) (*persistence.State, error) {
	st, err := persistence.BindState(ctx, conn)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, fmt.Errorf("no cluster state bucket %s on this NATS: start a cachebus daemon (dev, nats) first: %w",
			conn.Subjects.StateBucket(), err)
	}
	return st, err
}

// closeConn drains the connection, logging rather than failing: what was
// sent was acknowledged already. The end of a clean close is not a
// disconnect worth a warning, so that handler goes first.
func closeConn(env *runEnv, conn *bus.Conn) {
	conn.NC.SetDisconnectErrHandler(nil)
	if err := conn.Close(5 * time.Second); err != nil {
		env.log.Warn("closing the NATS connection", "err", err)
	}
}

// commandLogger quiets the bus's info lines, which repeat what a command
// prints, unless CACHEBUS_LOG_LEVEL asks for them.
func commandLogger(env *runEnv) *slog.Logger {
	if _, set := os.LookupEnv(envPrefix + "_LOG_LEVEL"); set {
		return env.log
	}
	return bus.AtLeast(env.log, slog.LevelWarn)
}

// parseWhen reads an RFC 3339 time or a duration from now ("10m").
func parseWhen(flagName, s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t.UTC(), nil
	}
	if d, err := time.ParseDuration(s); err == nil && d > 0 {
		return now.Add(d).UTC(), nil
	}
	return time.Time{}, usagef("--%s: want an RFC 3339 time or a duration such as 10m, got %q", flagName, s)
}

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string { return strings.Join(*l, ",") }

func (l *stringList) Set(v string) error {
	*l = append(*l, v)
	return nil
}

// usageFromValidation turns a rejected argument into a usage error.
func usageFromValidation(err error) error {
	var ve *bus.ValidationError
	if errors.As(err, &ve) {
		return usagef("%s: %s", ve.Field, ve.Reason)
	}
	return err
}
