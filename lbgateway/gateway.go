package lbgateway

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/persistence"
	"github.com/prometheus/client_golang/prometheus"
)

// Options are what a gateway is given besides its Config.
type Options struct {
	// Conn is the bus connection: app heartbeats, drains and fallback
	// from the cluster state, expires for the cache, and Cachebus-Expire
	// publishing. Nil runs the gateway alone on its static backends.
	Conn *bus.Conn
	// State is the cluster state bucket; nil opens (or creates) it on Conn.
	State *persistence.State
	// Registerer receives the gateway's metrics; nil keeps them
	// unregistered.
	Registerer prometheus.Registerer
	// Log receives the gateway's logs; nil means slog.Default.
	Log *slog.Logger
	// Version is announced in the gateway's heartbeat.
	Version string
	// Guard protects the status pages under /_cachebus/ (the admin
	// allow-list and token); nil serves them to anyone, for tests.
	Guard func(http.Handler) http.Handler
}

// Gateway is the sticky reverse proxy in front of an app pool: an
// http.Handler, with Serve to run it on a listener.
type Gateway struct {
	cfg    Config
	log    *slog.Logger
	opts   Options
	pool   *Pool
	sticky *Sticky
	cache  *Cache
	// transport carries requests to backends; checks carries the active
	// health checks, on connections of their own so a busy pool does not
	// delay them.
	transport *http.Transport
	dialer    *net.Dialer
	checks    *http.Client
	tls       *tls.Config // nil: plain HTTP to clients
	metrics   *metrics
	status    http.Handler

	conn      *bus.Conn
	state     *persistence.State
	pub       *bus.Publisher
	members   *bus.Membership
	follower  *persistence.Follower
	sub       *bus.Subscriber
	heartbeat *bus.Heartbeater

	// fallbacks are the fallback commands of the cluster state that
	// cover the cache's namespace and are on; each is checked against the
	// clock per request, since a fallback may carry an end time.
	fallbacks    atomic.Pointer[[]bus.Fallback]
	inflight     atomic.Int64
	cacheCounts  [cacheResults]atomic.Uint64
	revalidating sync.Map // request URI → struct{}: refreshes in flight
	started      time.Time

	done      chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup
}

var _ http.Handler = (*Gateway)(nil)

// New builds a gateway: its pool (static backends now, heartbeat backends
// as they announce themselves), cookie codec, cache and bus subscriptions.
// It serves once given to Serve or to an http.Server.
func New(ctx context.Context, cfg Config, opts Options) (*Gateway, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	log := opts.Log.With("gateway", cfg.ID)
	if cfg.Secret == "" {
		cfg.Secret = randomSecret()
		log.Warn("CACHEBUS_GATEWAY_SECRET is not set: sticky cookies are signed with a random key, so they do not survive a restart and other gateways refuse them")
	}
	sticky, err := NewSticky(StickyConfig{Name: cfg.Cookie, Secret: cfg.Secret, Previous: cfg.SecretPrevious,
		MaxIdle: cfg.MaxIdle, MaxLife: cfg.MaxLife})
	if err != nil {
		return nil, err
	}
	m, err := newMetrics(opts.Registerer, cfg.ID)
	if err != nil {
		return nil, err
	}
	statics, _ := ParseBackends(cfg.Backends) // checked by cfg.check
	g := &Gateway{cfg: cfg, log: log, opts: opts, sticky: sticky, metrics: m, conn: opts.Conn, state: opts.State,
		started: time.Now(), done: make(chan struct{})}
	if cfg.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("lbgateway: CACHEBUS_GATEWAY_TLS_CERT/_KEY: %w", err)
		}
		g.tls = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12,
			NextProtos: []string{"http/1.1"}}
	}
	g.dialer = &net.Dialer{Timeout: cfg.ConnectTimeout, KeepAlive: 30 * time.Second}
	g.transport = newTransport(&g.cfg, g.dialer)
	g.checks = &http.Client{Transport: newTransport(&g.cfg, g.dialer), Timeout: cfg.HealthTimeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	g.pool = newPool(&g.cfg, log)
	g.pool.onAdd = g.addedLocked
	g.status = g.statusHandler()
	if opts.Guard != nil {
		g.status = opts.Guard(g.status)
	}
	if len(cfg.Cache) > 0 {
		if g.cache, err = NewCache(CacheConfig{Prefixes: cfg.Cache, MaxMB: cfg.CacheMB, MaxObject: cfg.CacheMaxObject,
			Keep: cfg.CacheKeep, Log: log}); err != nil {
			return nil, err
		}
	}
	g.pool.addStatic(statics)
	if g.conn != nil {
		if err := g.joinBus(ctx); err != nil {
			g.Close()
			return nil, err
		}
	}
	g.wg.Add(1)
	go g.drainLoop()
	log.Info("gateway ready", "static_backends", len(statics), "heartbeats", cfg.Heartbeats && g.conn != nil,
		"cookie", cfg.Cookie, "cookie_mode", cfg.CookieMode, "cache", strings.Join(cfg.Cache, ","), "health", cfg.HealthPath)
	return g, nil
}

// randomSecret is the sticky key of a gateway started without one.
func randomSecret() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return base64.RawStdEncoding.EncodeToString(b)
}

// addedLocked readies a new backend: its connection pool and its active
// checks. The pool's lock is held, so b is not yet in any view.
func (g *Gateway) addedLocked(b *Backend) {
	if b.URL.Scheme == "http" {
		b.up = newUpstream(backendAddr(b.URL), g.dialer, g.cfg.BodyTimeout)
	}
	g.startChecksLocked(b)
}

// backendAddr is the host:port a backend URL is dialled at.
func backendAddr(u *url.URL) string {
	if u.Port() != "" {
		return u.Host
	}
	port := "80"
	if u.Scheme == "https" {
		port = "443"
	}
	return net.JoinHostPort(u.Hostname(), port)
}

// newTransport makes the connection pool to the backends: bounded
// connect and response-header times, and enough idle connections per
// backend that a busy gateway does not reconnect for every request.
func newTransport(cfg *Config, dialer *net.Dialer) *http.Transport {
	return &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := dialer.DialContext(ctx, network, addr)
			if err != nil {
				return nil, &connectError{addr: addr, err: err}
			}
			return c, nil
		},
		ForceAttemptHTTP2:     false,
		MaxIdleConns:          4096,
		MaxIdleConnsPerHost:   1024,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: cfg.ResponseTimeout,
		ExpectContinueTimeout: time.Second,
		// The backend's encoding goes to the client as it is.
		DisableCompression: true,
	}
}

// connectError is a failure to reach a backend at all: the request was
// not sent, so any request may be retried elsewhere.
type connectError struct {
	addr string
	err  error
}

func (e *connectError) Error() string { return "connect to " + e.addr + ": " + e.err.Error() }
func (e *connectError) Unwrap() error { return e.err }

// joinBus follows the cluster: app heartbeats, drains and fallback, and
// the expires of the cache's namespace.
func (g *Gateway) joinBus(ctx context.Context) error {
	var err error
	if g.pub, err = bus.NewPublisher(g.conn, g.cfg.ID); err != nil {
		return err
	}
	if g.state == nil {
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		g.state, err = persistence.OpenOrBindState(sctx, g.conn)
		cancel()
		if err != nil {
			return fmt.Errorf("lbgateway: cluster state: %w", err)
		}
	}
	if g.cfg.Heartbeats {
		app := func(m bus.Member) bool { return m.Role == bus.RoleApp }
		if g.members, err = bus.TrackMembers(g.conn, g.cfg.FailureTimeout, bus.MembershipEvents{
			Beat: func(m bus.Member) {
				if app(m) {
					g.pool.memberBeat(m)
				}
			},
			Leave: func(m bus.Member, reason string) {
				if app(m) {
					g.pool.memberLeft(m, reason)
				}
			},
		}); err != nil {
			return err
		}
	}
	// The state is read in full before the gateway serves: a drain or a
	// fallback given before it started applies from its first request.
	if g.follower, err = g.state.Follow(ctx, g.applyState); err != nil {
		return fmt.Errorf("lbgateway: follow cluster state: %w", err)
	}
	g.applyState(g.follower.Current())
	if g.cache != nil {
		g.sub, err = bus.Subscribe(ctx, g.conn, bus.HandlerFuncs{
			ApplyFunc: func(e bus.Event) {
				if e.Kind == bus.KindExpire && e.NS == g.cfg.CacheNS {
					g.cache.Purge(*e.Expire)
				}
			},
			FlushFunc: func([]string) { g.cache.Purge(bus.Expire{All: true}) },
		}, bus.SubscriberOptions{Name: "gateway " + g.cfg.ID, Self: g.cfg.ID, Namespaces: []string{g.cfg.CacheNS}})
		if err != nil {
			return fmt.Errorf("lbgateway: subscribe to expires: %w", err)
		}
	}
	return nil
}

// applyState takes a new cluster state: app drains and fallbacks.
func (g *Gateway) applyState(cs persistence.ClusterState) {
	g.pool.setDrains(cs)
	var fbs []bus.Fallback
	for _, f := range cs.Fallbacks {
		if f.On && f.Covers(g.cfg.CacheNS) {
			fbs = append(fbs, f)
		}
	}
	g.fallbacks.Store(&fbs)
}

// Ready says whether the gateway can serve: its bus connection is up.
// A pool with no live backend is not unready: the gateway still answers,
// in fallback.
func (g *Gateway) Ready() error {
	if g.conn != nil && !g.conn.NC.IsConnected() {
		return errors.New("lbgateway: NATS disconnected")
	}
	return nil
}

// Scheme is what clients speak to the gateway: https with a certificate,
// http otherwise.
func (g *Gateway) Scheme() string {
	if g.tls != nil {
		return "https"
	}
	return "http"
}

// ID is the gateway's id.
func (g *Gateway) ID() string { return g.cfg.ID }

// Serve serves on ln (with TLS when configured) and announces the
// gateway by heartbeat until ctx ends; then it stops accepting, lets requests in flight finish (up to
// ShutdownTimeout), announces it is gone and returns.
func (g *Gateway) Serve(ctx context.Context, ln net.Listener) error {
	if g.tls != nil {
		ln = tls.NewListener(ln, g.tls)
	}
	if g.conn != nil {
		hb, err := bus.StartHeartbeat(g.conn, bus.Heartbeat{ID: g.cfg.ID, Role: bus.RoleGateway,
			Addr: g.Scheme() + "://" + bus.Reachable(ln.Addr()), Version: g.opts.Version}, g.cfg.Interval, func(h *bus.Heartbeat) {
			h.Load = float64(g.inflight.Load())
		})
		if err != nil {
			return err
		}
		g.heartbeat = hb
	}
	srv := newServer(g, g)
	errc := make(chan error, 1)
	go func() { errc <- srv.serve(ln) }()
	select {
	case err := <-errc:
		g.stopHeartbeat()
		return fmt.Errorf("lbgateway: serve on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	g.log.Info("gateway shutting down: no new connections, finishing requests in flight", "inflight", g.inflight.Load())
	if g.heartbeat != nil {
		g.heartbeat.SetState(bus.StateDraining)
	}
	_ = ln.Close()
	sctx, cancel := context.WithTimeout(context.Background(), g.cfg.ShutdownTimeout)
	defer cancel()
	err := srv.close(sctx)
	<-errc
	if err != nil {
		err = fmt.Errorf("lbgateway: shutdown: requests still in flight after %s: %w", g.cfg.ShutdownTimeout, err)
	}
	g.stopHeartbeat()
	return err
}

func (g *Gateway) stopHeartbeat() {
	if g.heartbeat == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	g.heartbeat.Stop(ctx)
}

// Close stops the gateway's background work and bus subscriptions; the
// connection stays open, its owner drains it.
func (g *Gateway) Close() {
	g.closeOnce.Do(func() {
		close(g.done)
		g.stopHeartbeat()
		if g.sub != nil {
			g.sub.Close()
		}
		if g.follower != nil {
			g.follower.Stop()
		}
		if g.members != nil {
			g.members.Stop()
		}
		g.pool.stop()
		g.wg.Wait()
		g.transport.CloseIdleConnections()
		g.checks.CloseIdleConnections()
		if g.cache != nil {
			g.cache.Close()
		}
	})
}
