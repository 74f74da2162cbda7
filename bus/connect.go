package bus

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ConnConfig says how a process reaches NATS. Its envconfig tags are read
// under CACHEBUS_ by every daemon and command.
type ConnConfig struct {
	URL       string `envconfig:"NATS_URL" default:"nats://127.0.0.1:4222" desc:"comma-separated NATS server URLs"`
	Prefix    string `envconfig:"PREFIX" default:"cachebus" desc:"subject prefix of the cachebus hierarchy"`
	User      string `envconfig:"NATS_USER" desc:"NATS user name"`
	Password  string `envconfig:"NATS_PASSWORD" desc:"NATS password"`
	Token     string `envconfig:"NATS_TOKEN" desc:"NATS authentication token"`
	NKeyFile  string `envconfig:"NATS_NKEY_FILE" desc:"file holding an nkey seed to authenticate with"`
	CredsFile string `envconfig:"NATS_CREDS" desc:"NATS credentials file (JWT and nkey seed)"`
	TLSCA     string `envconfig:"NATS_CA" desc:"CA (PEM) to verify the NATS servers with"`
	TLSCert   string `envconfig:"NATS_CERT" desc:"client certificate (PEM) for NATS TLS"`
	TLSKey    string `envconfig:"NATS_KEY" desc:"client key (PEM) for NATS TLS"`
	Name      string `ignored:"true"` // connection name shown by the server; set by each daemon
}

// Conn is a NATS connection with JetStream, the subject hierarchy, a logger
// and the bus metrics: what every part of cachebus is built on.
type Conn struct {
	NC       *nats.Conn
	JS       jetstream.JetStream
	Subjects Subjects
	Log      *slog.Logger
	Metrics  *Metrics

	mu        sync.Mutex
	listeners []func(ConnEvent)
	denied    map[string]time.Time // subject → when the server last refused a publish to it
}

// ConnEvent is a change of the connection's state seen by listeners.
type ConnEvent int

// Connection state changes delivered to OnEvent listeners.
const (
	Disconnected ConnEvent = iota
	Reconnected
	SlowConsumer
)

// Option adjusts how Connect connects.
type Option func(*connectOptions)

type connectOptions struct {
	log       *slog.Logger
	metrics   *Metrics
	nats      []nats.Option
	inProcess bool
}

// WithLogger sets the logger; by default the connection logs nowhere.
func WithLogger(l *slog.Logger) Option { return func(o *connectOptions) { o.log = l } }

// WithMetrics sets the metrics the connection's users record into.
func WithMetrics(m *Metrics) Option { return func(o *connectOptions) { o.metrics = m } }

// WithServer connects in-process to an embedded server, without a socket.
func WithServer(s *Server) Option {
	return func(o *connectOptions) { o.nats, o.inProcess = append(o.nats, s.InProcess()), true }
}

// WithNATSOptions passes options through to nats.Connect.
func WithNATSOptions(opts ...nats.Option) Option {
	return func(o *connectOptions) { o.nats = append(o.nats, opts...) }
}

// Connect connects to NATS as cfg says. It retries the first connection
// until ctx ends, so a daemon started before its NATS server waits for it,
// and reconnects forever afterwards.
func Connect(ctx context.Context, cfg ConnConfig, opts ...Option) (*Conn, error) {
	o := connectOptions{}
	for _, opt := range opts {
		opt(&o)
	}
	if o.log == nil {
		o.log = slog.New(slog.DiscardHandler)
	}
	if o.metrics == nil {
		o.metrics = NewMetrics(nil)
	}
	subjects, err := NewSubjects(cfg.Prefix)
	if err != nil {
		return nil, err
	}
	c := &Conn{Subjects: subjects, Log: o.log, Metrics: o.metrics}

	nopts := []nats.Option{
		nats.Name(cfg.Name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectJitter(100*time.Millisecond, time.Second),
		nats.PingInterval(5 * time.Second),
		nats.MaxPingsOutstanding(2),
		nats.ReconnectBufSize(16 << 20),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err == nil {
				return // our own Close
			}
			c.Log.Warn("nats disconnected", "err", err)
			c.notify(Disconnected)
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			c.Log.Info("nats reconnected", "server", nc.ConnectedUrlRedacted())
			c.notify(Reconnected)
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subj := ""
			if sub != nil {
				subj = sub.Subject
			}
			c.Log.Warn("nats async error", "subject", subj, "err", err)
			if subject, ok := deniedSubject(err); ok {
				c.mu.Lock()
				if c.denied == nil {
					c.denied = map[string]time.Time{}
				}
				c.denied[subject] = time.Now()
				c.mu.Unlock()
			}
			if err == nats.ErrSlowConsumer {
				c.notify(SlowConsumer)
			}
		}),
	}
	auth, err := authOptions(cfg)
	if err != nil {
		return nil, err
	}
	nopts = append(nopts, auth...)
	nopts = append(nopts, o.nats...)

	url := cfg.URL
	if o.inProcess {
		// The server's URL says tls:// when it has TLS, which would make
		// the client start a handshake on the in-process pipe and show a
		// certificate it has not got; the server wants no TLS there.
		url = inProcessURL(url)
	}
	for attempt := 0; ; attempt++ {
		c.NC, err = nats.Connect(url, nopts...)
		if err == nil {
			break
		}
		if attempt == 0 {
			o.log.Warn("nats not reachable yet, retrying", "url", RedactURL(cfg.URL), "err", err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("bus: connect %s: %w", RedactURL(cfg.URL), err)
		case <-time.After(250 * time.Millisecond):
		}
	}
	c.JS, err = jetstream.New(c.NC)
	if err != nil {
		c.NC.Close()
		return nil, fmt.Errorf("bus: jetstream: %w", err)
	}
	return c, nil
}

func authOptions(cfg ConnConfig) ([]nats.Option, error) {
	var opts []nats.Option
	if cfg.User != "" {
		opts = append(opts, nats.UserInfo(cfg.User, cfg.Password))
	}
	if cfg.Token != "" {
		opts = append(opts, nats.Token(cfg.Token))
	}
	if cfg.NKeyFile != "" {
		o, err := nats.NkeyOptionFromSeed(cfg.NKeyFile)
		if err != nil {
			return nil, fmt.Errorf("bus: nkey %s: %w", cfg.NKeyFile, err)
		}
		opts = append(opts, o)
	}
	if cfg.CredsFile != "" {
		opts = append(opts, nats.UserCredentials(cfg.CredsFile))
	}
	if cfg.TLSCA != "" || cfg.TLSCert != "" {
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if cfg.TLSCA != "" {
			pool, err := loadCA(cfg.TLSCA)
			if err != nil {
				return nil, err
			}
			tc.RootCAs = pool
		}
		if cfg.TLSCert != "" {
			cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
			if err != nil {
				return nil, fmt.Errorf("bus: nats client cert: %w", err)
			}
			tc.Certificates = []tls.Certificate{cert}
		}
		opts = append(opts, nats.Secure(tc))
	}
	return opts, nil
}

// RedactURL hides the credentials in a comma-separated list of NATS URLs,
// so it can be logged or printed.
func RedactURL(urls string) string {
	parts := strings.Split(urls, ",")
	for i, u := range parts {
		if at := strings.LastIndexByte(u, '@'); at >= 0 {
			if s := strings.Index(u, "://"); s >= 0 && s < at {
				parts[i] = u[:s+3] + "***" + u[at:]
			}
		}
	}
	return strings.Join(parts, ",")
}

// OnEvent registers fn to be called on every connection state change. It
// returns a function that removes the listener.
func (c *Conn) OnEvent(fn func(ConnEvent)) (remove func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.listeners = append(c.listeners, fn)
	idx := len(c.listeners) - 1
	return func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.listeners[idx] = nil
	}
}

func (c *Conn) notify(ev ConnEvent) {
	c.mu.Lock()
	ls := append([]func(ConnEvent){}, c.listeners...)
	c.mu.Unlock()
	for _, fn := range ls {
		if fn != nil {
			fn(ev)
		}
	}
}

// Close drains the connection, so that published messages and in-flight
// handlers finish, and waits for it to close (at most timeout).
func (c *Conn) Close(timeout time.Duration) error {
	if c.NC.IsClosed() {
		return nil
	}
	closed := make(chan struct{})
	c.NC.SetClosedHandler(func(*nats.Conn) { close(closed) })
	if err := c.NC.Drain(); err != nil {
		c.NC.Close()
		return fmt.Errorf("bus: drain: %w", err)
	}
	select {
	case <-closed:
		return nil
	case <-time.After(timeout):
		c.NC.Close()
		return fmt.Errorf("bus: drain not finished after %s", timeout)
	}
}

// inProcessURL is url with tls:// turned into nats://.
func inProcessURL(url string) string {
	if rest, ok := strings.CutPrefix(url, "tls://"); ok {
		return "nats://" + rest
	}
	return url
}

// deniedSubject reads the subject of a publish the server refused from the
// error it reported: nats: permissions violation: Permissions Violation
// for Publish to "<subject>".
func deniedSubject(err error) (string, bool) {
	if !errors.Is(err, nats.ErrPermissionViolation) {
		return "", false
	}
	_, rest, ok := strings.Cut(err.Error(), `Publish to "`)
	if !ok {
		return "", false
	}
	subject, _, ok := strings.Cut(rest, `"`)
	return subject, ok && subject != ""
}

// deniedSince reports whether the server refused a publish to subject, for
// want of permission, at or after since. The refusal comes asynchronously,
// so a publish that waits for an acknowledgement learns of it here.
func (c *Conn) deniedSince(subject string, since time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	at, ok := c.denied[subject]
	return ok && !at.Before(since)
}
