package demoapp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/cachenode"
	"github.com/cachebus/cachebus/cachenode/memo"
	"github.com/cachebus/cachebus/persistence"
)

// Options are what an App uses that is not configuration.
type Options struct {
	// Conn is the app's bus connection (required); the caller closes it
	// after Close.
	Conn *bus.Conn
	// Log receives what the app does; nil uses the connection's logger.
	Log *slog.Logger
	// Version is announced in heartbeats.
	Version string
}

// App is one demo app server.
type App struct {
	cfg      Config
	log      *slog.Logger
	conn     *bus.Conn
	version  string
	started  time.Time
	pages    *memo.Client
	records  *cachenode.Client
	sessions *sessions
	db       *db
	state    *persistence.State
	follower *persistence.Follower
	pub      *bus.Publisher
	srv      *http.Server
	// changed is signalled when the cluster state changes, for Drain.
	changed chan struct{}

	mu        sync.Mutex
	url       string
	hb        *bus.Heartbeater
	selfDrain bool // Drain has begun
}

// New starts an app on opts.Conn: its memo client, cache tier client,
// database and cluster state. It serves nothing until Serve.
func New(ctx context.Context, cfg Config, opts Options) (a *App, err error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	if opts.Conn == nil {
		return nil, errors.New("demoapp: Options.Conn is required")
	}
	if opts.Log == nil {
		opts.Log = opts.Conn.Log
	}
	a = &App{cfg: cfg, log: opts.Log.With("app", cfg.ID), conn: opts.Conn, version: opts.Version,
		started: time.Now().UTC(), changed: make(chan struct{}, 1)}
	defer func() {
		if err != nil {
			a.closeClients()
		}
	}()
	if a.state, err = persistence.OpenOrBindState(ctx, a.conn); err != nil {
		return nil, fmt.Errorf("demoapp: %w", err)
	}
	if a.follower, err = a.state.Follow(ctx, func(persistence.ClusterState) {
		select {
		case a.changed <- struct{}{}:
		default:
		}
	}); err != nil {
		return nil, fmt.Errorf("demoapp: %w", err)
	}
	// Its drains carry its id as origin, which is how a restarted app
	// tells the drain its previous run left from an operator's.
	if a.pub, err = bus.NewPublisher(a.conn, cfg.ID); err != nil {
		return nil, fmt.Errorf("demoapp: %w", err)
	}
	if ds, cleared, err := a.state.ClearOwnDrain(ctx, a.follower.Current(), a.pub, bus.RoleApp, cfg.ID, a.started); err != nil {
		a.log.Warn("drain left by a previous run not cleared", "err", err)
	} else if cleared {
		a.log.Info("cleared the drain a previous run left", "since", ds.Since)
	}
	if a.pages, err = memo.New(ctx, a.conn, memo.Options{Namespace: cfg.PageNS, ID: cfg.ID,
		StaleGrace: time.Hour, Log: a.log}); err != nil {
		return nil, fmt.Errorf("demoapp: %w", err)
	}
	if a.records, err = cachenode.NewClient(ctx, a.conn, cachenode.ClientOptions{}); err != nil {
		return nil, fmt.Errorf("demoapp: %w", err)
	}
	a.sessions = newSessions(a.records, cfg.SessionNS, cfg.SessionTTL, cfg.SessionIdle)
	if a.db, err = openDB(ctx, a.conn, cfg.DBReplicas); err != nil {
		return nil, fmt.Errorf("demoapp: %w", err)
	}
	a.srv = &http.Server{Handler: a.Handler(), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		ErrorLog: slog.NewLogLogger(a.log.Handler(), slog.LevelWarn)}
	return a, nil
}

// ID is the app's member id.
func (a *App) ID() string { return a.cfg.ID }

// URL is where the gateways reach the app, once Serve has begun.
func (a *App) URL() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.url
}

// Announce starts the heartbeats that tell the gateways the app serves on
// ln (at Config.URL, or ln's address): call it just before Serve.
func (a *App) Announce(ln net.Listener) error {
	url := a.cfg.AppURL
	if url == "" {
		url = "http://" + bus.Reachable(ln.Addr())
	}
	a.mu.Lock()
	announced := a.hb != nil
	a.mu.Unlock()
	if announced {
		return nil
	}
	// Not under a.mu: the first beat calls a.beat, which takes it.
	hb, err := bus.StartHeartbeat(a.conn, bus.Heartbeat{ID: a.cfg.ID, Role: bus.RoleApp, Addr: url,
		Version: a.version, Started: a.started}, a.cfg.Interval, a.beat)
	if err != nil {
		return fmt.Errorf("demoapp: %w", err)
	}
	a.mu.Lock()
	a.url, a.hb = url, hb
	a.mu.Unlock()
	a.log.Info("app announced", "listen", ln.Addr().String(), "url", url)
	return nil
}

// Serve serves HTTP on ln until Close, announcing the app first if
// Announce has not.
func (a *App) Serve(ln net.Listener) error {
	if err := a.Announce(ln); err != nil {
		return err
	}
	if err := a.srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("demoapp: %w", err)
	}
	return nil
}

// beat updates the heartbeat before it is sent.
func (a *App) beat(h *bus.Heartbeat) {
	h.Sessions = a.sessions.live()
	h.State = bus.StateUp
	if a.draining() {
		h.State = bus.StateDraining
	}
}

// draining reports whether the app takes no new sessions: it is draining
// itself, or an operator drains it (a drain older than this run was for
// its predecessor).
func (a *App) draining() bool {
	a.mu.Lock()
	self := a.selfDrain
	a.mu.Unlock()
	if self {
		return true
	}
	ds, on := a.follower.Current().Draining(bus.RoleApp, a.cfg.ID)
	return on && ds.Since.After(a.started)
}

// Drain stops new logins here and tells the gateways, then waits until
// the app's live sessions have ended, a gateway says it is drained, the
// drain timeout passes or ctx ends. It reports which.
func (a *App) Drain(ctx context.Context) string {
	a.mu.Lock()
	a.selfDrain = true
	hb := a.hb
	a.mu.Unlock()
	if hb != nil {
		hb.Announce()
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, a.cfg.DrainTimeout)
	defer cancel()
	if _, err := a.state.SetDrain(ctx, a.pub, bus.RoleApp, a.cfg.ID,
		bus.Drain{On: true, Deadline: start.Add(a.cfg.DrainTimeout).UTC()}); err != nil {
		// Its heartbeats say "draining" all the same.
		a.log.Warn("drain not recorded", "err", err)
	}
	a.log.Info("app draining", "sessions", a.sessions.live(), "timeout", a.cfg.DrainTimeout)
	// Live sessions end by idling out, which nothing signals: look again
	// every second.
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		if n := a.sessions.live(); n == 0 {
			return "its sessions ended after " + since(start)
		}
		if ds, ok := a.follower.Current().Drains[bus.RoleApp+"/"+a.cfg.ID]; ok && ds.On && ds.Drained && !ds.Since.Before(start) {
			return "a gateway drained it after " + since(start)
		}
		select {
		case <-ctx.Done():
			return "drain timeout with " + strconv.Itoa(a.sessions.live()) + " live sessions after " + since(start)
		case <-a.changed:
		case <-tick.C:
		}
	}
}

func since(t time.Time) string { return time.Since(t).Round(100 * time.Millisecond).String() }

// Close announces the app gone, stops serving (in-flight requests finish,
// bounded by ctx) and stops its clients. The connection is the caller's.
func (a *App) Close(ctx context.Context) {
	a.mu.Lock()
	hb := a.hb
	a.hb = nil
	a.mu.Unlock()
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
	}
	if hb != nil {
		hb.Stop(ctx)
	}
	if err := a.srv.Shutdown(ctx); err != nil {
		a.log.Warn("app shutdown", "err", err)
	}
	a.closeClients()
}

func (a *App) closeClients() {
	if a.pages != nil {
		_ = a.pages.Close()
	}
	if a.records != nil {
		a.records.Close()
	}
	if a.follower != nil {
		a.follower.Stop()
	}
}
