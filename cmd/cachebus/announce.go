package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/persistence"
)

// announceConfig configures `cachebus announce`, the sidecar that
// heartbeats for an app server written in any language so that the
// gateways route to it.
type announceConfig struct {
	bus.ConnConfig
	bus.HeartbeatConfig
	ID             string        `envconfig:"APP_ID" desc:"member id of the app server, [A-Za-z0-9_-]{1,64} (as --id)"`
	Addr           string        `envconfig:"APP_ADDR" desc:"URL the gateways send the app's requests to, such as http://10.0.0.5:8080 (as --addr)"`
	Health         string        `envconfig:"APP_HEALTH" desc:"path of the app's health check, such as /healthz; empty: announced up with no check (as --health)"`
	HealthInterval time.Duration `envconfig:"HEALTH_INTERVAL" default:"2s" desc:"time between two health checks"`
	HealthTimeout  time.Duration `envconfig:"HEALTH_TIMEOUT" default:"1s" desc:"a health check not answered within this fails"`
	HealthRise     int           `envconfig:"HEALTH_RISE" default:"2" desc:"consecutive passing checks (2xx or 3xx) before the app is announced"`
	HealthFall     int           `envconfig:"HEALTH_FALL" default:"3" desc:"consecutive failing checks before the app is withdrawn"`
	DrainTimeout   time.Duration `envconfig:"ANNOUNCE_DRAIN_TIMEOUT" default:"5m" desc:"on SIGTERM or SIGINT, how long to wait for the gateways to drain the app before it is withdrawn"`
	DC             string        `envconfig:"DC" desc:"data center of the app, announced in its heartbeats (as --dc)"`
}

func init() {
	register(&command{
		name:    "announce",
		summary: "heartbeat for an app server in any language, so the gateways route to it; drain it on SIGTERM",
		usage:   "--id ID --addr URL [--health PATH] [--dc DC]",
		config:  func() any { return &announceConfig{} },
		flags: func(fs *flag.FlagSet, cfg any) {
			c := cfg.(*announceConfig)
			fs.StringVar(&c.ID, "id", "", "the app server's member id (as CACHEBUS_APP_ID)")
			fs.StringVar(&c.Addr, "addr", "", "URL the gateways send its requests to, http://host:port (as CACHEBUS_APP_ADDR)")
			fs.StringVar(&c.Health, "health", "", "path to check with GET before announcing it, such as /healthz (as CACHEBUS_APP_HEALTH)")
			fs.StringVar(&c.DC, "dc", "", "data center of the app (as CACHEBUS_DC)")
		},
		run: runAnnounce,
	})
}

// check validates cfg before anything starts, naming the flag or variable
// to fix.
func (c *announceConfig) check() error {
	if !bus.ValidName(c.ID) {
		return usagef("--id / CACHEBUS_APP_ID: must match [A-Za-z0-9_-]{1,64}, got %q", c.ID)
	}
	u, err := url.Parse(c.Addr)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil ||
		(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || len(c.Addr) > bus.MaxKeyLen {
		return usagef("--addr / CACHEBUS_APP_ADDR: want an absolute http or https URL of a host and port, such as http://10.0.0.5:8080, got %q", c.Addr)
	}
	c.Addr = strings.TrimSuffix(c.Addr, "/")
	if c.Health != "" && !strings.HasPrefix(c.Health, "/") {
		return usagef("--health / CACHEBUS_APP_HEALTH: want a path starting with /, such as /healthz, got %q", c.Health)
	}
	if c.DC != "" && !bus.ValidName(c.DC) {
		return usagef("--dc / CACHEBUS_DC: must match [A-Za-z0-9_-]{1,64}, got %q", c.DC)
	}
	if c.Interval <= 0 || c.FailureTimeout <= c.Interval {
		return usagef("CACHEBUS_FAILURE_TIMEOUT (%s) must be longer than CACHEBUS_HEARTBEAT_INTERVAL (%s)", c.FailureTimeout, c.Interval)
	}
	switch {
	case c.HealthInterval <= 0:
		return usagef("CACHEBUS_HEALTH_INTERVAL: must be positive, got %s", c.HealthInterval)
	case c.HealthTimeout <= 0:
		return usagef("CACHEBUS_HEALTH_TIMEOUT: must be positive, got %s", c.HealthTimeout)
	case c.HealthRise < 1:
		return usagef("CACHEBUS_HEALTH_RISE: must be at least 1, got %d", c.HealthRise)
	case c.HealthFall < 1:
		return usagef("CACHEBUS_HEALTH_FALL: must be at least 1, got %d", c.HealthFall)
	case c.DrainTimeout <= 0:
		return usagef("CACHEBUS_ANNOUNCE_DRAIN_TIMEOUT: must be positive, got %s", c.DrainTimeout)
	}
	return nil
}

// announcer is the state of one `cachebus announce`, owned by the
// goroutine of runAnnounce.
type announcer struct {
	cfg     *announceConfig
	env     *runEnv
	conn    *bus.Conn
	key     string // app/<id>
	started time.Time

	hb *bus.Heartbeater // nil while nothing is announced
	// drained is set while an operator's drain of this app is on.
	drained bool
}

func runAnnounce(ctx context.Context, env *runEnv, cfgAny any, args []string) error {
	cfg := cfgAny.(*announceConfig)
	if len(args) > 0 {
		return usagef("unexpected arguments %q", args)
	}
	if err := cfg.check(); err != nil {
		return err
	}
	a := &announcer{cfg: cfg, env: env, key: bus.RoleApp + "/" + cfg.ID, started: time.Now().UTC()}

	cc := cfg.ConnConfig
	cc.Name = "cachebus announce " + cfg.ID
	conn, err := bus.Connect(ctx, cc, bus.WithLogger(env.log))
	if err != nil {
		return fmt.Errorf("connect to NATS (CACHEBUS_NATS_URL): %w", err)
	}
	// Last: drain the connection once the app has said it is gone.
	defer closeConn(env, conn)
	a.conn = conn
	// Its own drains carry its id as origin, which is how a later run
	// tells the drain its predecessor left from an operator's.
	pub, err := bus.NewPublisher(conn, cfg.ID)
	if err != nil {
		return err
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	state, err := persistence.OpenOrBindState(sctx, conn)
	if err != nil {
		return fmt.Errorf("cluster state: %w", err)
	}
	changed := make(chan struct{}, 1)
	follower, err := state.Follow(sctx, func(persistence.ClusterState) {
		select {
		case changed <- struct{}{}:
		default:
		}
	})
	if err != nil {
		return err
	}
	defer follower.Stop()
	a.clearLeftover(sctx, state, pub, follower.Current())
	a.followDrain(follower.Current())

	var health <-chan healthResult
	gate := healthGate{rise: cfg.HealthRise, fall: cfg.HealthFall}
	if cfg.Health != "" {
		hctx, stopChecks := context.WithCancel(context.WithoutCancel(ctx))
		defer stopChecks()
		health = checkHealth(hctx, cfg.Addr+cfg.Health, cfg.HealthInterval, cfg.HealthTimeout)
		fmt.Fprintf(env.stdout, "%s waiting for GET %s to pass %d checks\n", a.key, cfg.Addr+cfg.Health, cfg.HealthRise)
	} else {
		if err := a.announce(); err != nil {
			return err
		}
	}

	for {
		select {
		case <-ctx.Done():
			return a.drain(state, pub, follower, changed, health, &gate)
		case <-changed:
			a.followDrain(follower.Current())
		case r := <-health:
			if !gate.observe(r.ok) {
				env.log.Debug("app health check", "role", bus.RoleApp, "member", cfg.ID, "ok", r.ok, "reason", r.reason)
				continue
			}
			if gate.healthy {
				env.log.Info("app healthy", "role", bus.RoleApp, "member", cfg.ID, "reason", r.reason, "checks", cfg.HealthRise)
				fmt.Fprintf(env.stdout, "%s healthy (%s)\n", a.key, r.reason)
				if err := a.announce(); err != nil {
					return err
				}
				continue
			}
			env.log.Warn("app unhealthy", "role", bus.RoleApp, "member", cfg.ID, "reason", r.reason, "checks", cfg.HealthFall)
			fmt.Fprintf(env.stdout, "%s unhealthy (%s): withdrawn\n", a.key, r.reason)
			a.withdraw()
		}
	}
}

// state is what the heartbeats say while the app is announced.
func (a *announcer) state() string {
	if a.drained {
		return bus.StateDraining
	}
	return bus.StateUp
}

// announce starts the heartbeats.
func (a *announcer) announce() error {
	hb, err := bus.StartHeartbeat(a.conn, bus.Heartbeat{
		ID: a.cfg.ID, Role: bus.RoleApp, Addr: a.cfg.Addr, DC: a.cfg.DC, State: a.state(),
	}, a.cfg.Interval, nil)
	if err != nil {
		return err
	}
	a.hb = hb
	fmt.Fprintf(a.env.stdout, "%s announcing %s state=%s\n", a.key, a.cfg.Addr, a.state())
	return nil
}

// withdraw stops the heartbeats with state "gone", so the gateways drop
// the app at once.
func (a *announcer) withdraw() {
	if a.hb == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	a.hb.Stop(ctx)
	a.hb = nil
	fmt.Fprintf(a.env.stdout, "%s gone\n", a.key)
}

// followDrain announces "draining" while an operator's drain of this app
// (`cachebus drain app <id>`) is on, and "up" again once it is off. A
// drain older than this process is left from before it started.
func (a *announcer) followDrain(cs persistence.ClusterState) {
	ds, on := cs.Draining(bus.RoleApp, a.cfg.ID)
	on = on && ds.Since.After(a.started)
	if on == a.drained {
		return
	}
	a.drained = on
	if on {
		a.env.log.Info("app drain on", "role", bus.RoleApp, "member", a.cfg.ID, "origin", ds.Origin)
		fmt.Fprintf(a.env.stdout, "%s drain on (by %s)\n", a.key, ds.Origin)
	} else {
		a.env.log.Info("app drain off", "role", bus.RoleApp, "member", a.cfg.ID)
		fmt.Fprintf(a.env.stdout, "%s drain off\n", a.key)
	}
	if a.hb != nil {
		a.hb.SetState(a.state())
		fmt.Fprintf(a.env.stdout, "%s announcing %s state=%s\n", a.key, a.cfg.Addr, a.state())
	}
}

// clearLeftover turns off the drain a previous run of this app left on
// when it stopped (its origin is the app's own id), so that the state
// bucket and the status page do not keep a restarted app draining. A
// drain an operator set stays as it is.
func (a *announcer) clearLeftover(ctx context.Context, state *persistence.State, pub *bus.Publisher, cs persistence.ClusterState) {
	ds, cleared, err := state.ClearOwnDrain(ctx, cs, pub, bus.RoleApp, a.cfg.ID, a.started)
	if err != nil {
		a.env.log.Warn("drain left by a previous run not cleared", "role", bus.RoleApp, "member", a.cfg.ID, "err", err)
		return
	}
	if cleared {
		fmt.Fprintf(a.env.stdout, "%s cleared the drain its previous run left (since %s)\n", a.key, ds.Since.Format(time.RFC3339))
	}
}

var (
	errDrainTimeout = errors.New("drain timeout")
	errSecondSignal = errors.New("second signal")
)

// drain runs once the command's context has ended (SIGTERM or SIGINT): it
// drains the app through the state bucket, waits until a gateway marks it
// drained, the drain timeout passes, the app fails its checks or a second
// signal arrives, and then withdraws it.
func (a *announcer) drain(state *persistence.State, pub *bus.Publisher, follower *persistence.Follower,
	changed <-chan struct{}, health <-chan healthResult, gate *healthGate) error {
	if a.hb == nil {
		fmt.Fprintf(a.env.stdout, "%s not announced: nothing to drain\n", a.key)
		return nil
	}
	// The first signal ended ctx; runWith's handler swallows the next ones,
	// so listen here. Registered now, not at start, so the first signal is
	// not taken for a second one.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sig)
	tctx, cancelTimeout := context.WithTimeoutCause(context.Background(), a.cfg.DrainTimeout, errDrainTimeout)
	defer cancelTimeout()
	dctx, cancel := context.WithCancelCause(tctx)
	defer cancel(nil)
	go func() {
		select {
		case <-sig:
			cancel(errSecondSignal)
		case <-dctx.Done():
		}
	}()

	start := time.Now()
	a.hb.SetState(bus.StateDraining)
	fmt.Fprintf(a.env.stdout, "%s draining: waiting up to %s for the gateways (a second signal stops waiting)\n", a.key, a.cfg.DrainTimeout)
	seq, err := state.SetDrain(dctx, pub, bus.RoleApp, a.cfg.ID, bus.Drain{On: true, Deadline: start.Add(a.cfg.DrainTimeout).UTC()})
	if err != nil {
		// The heartbeats say "draining" all the same.
		a.env.log.Warn("drain not recorded", "role", bus.RoleApp, "member", a.cfg.ID, "err", err)
	} else {
		a.env.log.Info("app draining", "role", bus.RoleApp, "member", a.cfg.ID, "seq", seq, "timeout", a.cfg.DrainTimeout)
	}
	took := func() time.Duration { return time.Since(start).Round(100 * time.Millisecond) }
wait:
	for {
		if ds, ok := follower.Current().Drains[a.key]; ok && ds.On && ds.Drained && !ds.Since.Before(start) {
			fmt.Fprintf(a.env.stdout, "%s drained after %s\n", a.key, took())
			break
		}
		select {
		case <-changed:
		case r := <-health:
			if gate.observe(r.ok) && !gate.healthy {
				a.env.log.Warn("app unhealthy while draining", "role", bus.RoleApp, "member", a.cfg.ID, "reason", r.reason)
				fmt.Fprintf(a.env.stdout, "%s unhealthy while draining (%s) after %s\n", a.key, r.reason, took())
				break wait
			}
		case <-dctx.Done():
			switch context.Cause(dctx) {
			case errSecondSignal:
				fmt.Fprintf(a.env.stdout, "%s second signal: stopped waiting after %s\n", a.key, took())
			default:
				a.env.log.Warn("app drain timed out", "role", bus.RoleApp, "member", a.cfg.ID, "timeout", a.cfg.DrainTimeout)
				fmt.Fprintf(a.env.stdout, "%s drain timeout after %s\n", a.key, a.cfg.DrainTimeout)
			}
			break wait
		}
	}
	a.withdraw()
	return nil
}

// healthResult is the outcome of one health check: ok, and why, as the
// status code or the error.
type healthResult struct {
	ok     bool
	reason string
}

// checkHealth GETs url at once and then every interval until ctx ends,
// sending each result. A 2xx or 3xx passes; redirects are not followed.
func checkHealth(ctx context.Context, url string, interval, timeout time.Duration) <-chan healthResult {
	out := make(chan healthResult)
	client := &http.Client{
		Timeout: timeout,
		// A new connection each time, as a load balancer's checks do, so
		// that a check also says the app still accepts.
		Transport:     &http.Transport{DisableKeepAlives: true},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	go func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			r := checkOnce(ctx, client, url)
			select {
			case out <- r:
			case <-ctx.Done():
				return
			}
			select {
			case <-t.C:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out
}

func checkOnce(ctx context.Context, client *http.Client, url string) healthResult {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return healthResult{reason: err.Error()}
	}
	req.Header.Set("User-Agent", "cachebus-announce")
	resp, err := client.Do(req)
	if err != nil {
		return healthResult{reason: err.Error()}
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	return healthResult{ok: resp.StatusCode >= 200 && resp.StatusCode < 400, reason: "status " + resp.Status}
}

// healthGate turns check results into transitions, as HAProxy's rise and
// fall: healthy after rise passing checks in a row, unhealthy after fall
// failing ones. It starts unhealthy.
type healthGate struct {
	rise, fall int
	healthy    bool
	streak     int // results in a row that disagree with healthy
}

// observe records one result and reports whether healthy changed.
func (g *healthGate) observe(ok bool) bool {
	if ok == g.healthy {
		g.streak = 0
		return false
	}
	g.streak++
	need := g.rise
	if g.healthy {
		need = g.fall
	}
	if g.streak < need {
		return false
	}
	g.healthy, g.streak = ok, 0
	return true
}
