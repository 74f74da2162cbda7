package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/cachebus/cachebus/admin"
	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/persistence"
	"github.com/prometheus/client_golang/prometheus"
)

// devConfig configures `cachebus dev`.
type devConfig struct {
	admin.Config
	bus.HeartbeatConfig
	persistence.EventLogConfig
	Prefix   string `envconfig:"PREFIX" default:"cachebus" desc:"subject prefix of the cachebus hierarchy"`
	DataDir  string `ignored:"true"`
	NATSPort int    `ignored:"true"`
	Nodes    int    `ignored:"true"`
	// Apps is how many demo app servers dev runs behind its gateway.
	Apps int `ignored:"true"`
	// GatewayAddr is where dev's gateway serves the app pool; "off" runs
	// none.
	GatewayAddr string `ignored:"true"`
}

func init() {
	register(&command{
		name:    "dev",
		summary: "run cachebus on this machine: embedded NATS with JetStream, the admin API, cache nodes and a gateway, until Ctrl-C",
		usage:   "[--data DIR] [--nats-port N] [--http ADDR] [--nodes N] [--apps N] [--gateway ADDR]",
		config:  func() any { return &devConfig{} },
		flags: func(fs *flag.FlagSet, cfg any) {
			c := cfg.(*devConfig)
			fs.StringVar(&c.DataDir, "data", "", "JetStream store directory, kept across runs (default: a temporary directory removed on exit)")
			fs.IntVar(&c.NATSPort, "nats-port", 4222, "client port of the embedded NATS server (0 or -1: a free one)")
			fs.StringVar(&c.HTTPAddr, "http", "", "address of the admin API (default: CACHEBUS_HTTP_ADDR, 127.0.0.1:7380; port 0: a free one)")
			fs.StringVar(&c.GatewayAddr, "gateway", "127.0.0.1:8080", "address of the gateway in front of the apps (port 0: a free one; off: no gateway; the variables of `cachebus gateway -h` apply)")
			fs.IntVar(&c.Apps, "apps", 3, "demo app servers to run behind the gateway, app1..appN, on free ports (0: none)")
			fs.IntVar(&c.Nodes, "nodes", 1, "cache nodes to run, node1..nodeN, each on its own connection (0: none; the record and node variables of `cachebus node -h` apply)")
		},
		run: runDev,
	})
}

// devPart is one part of the dev stack. Later parts (cache nodes, the
// gateway, demo apps) register themselves with registerDevPart; they start
// in order after the bus is up and before the admin API serves, so they
// can add admin routes, status sections and lines to the banner.
type devPart struct {
	name  string
	order int
	// start brings the part up; what it must undo on exit it passes to
	// d.onStop.
	start func(ctx context.Context, d *devStack) error
}

var devParts []devPart

func registerDevPart(p devPart) { devParts = append(devParts, p) }

// devStack is everything `cachebus dev` runs, in one process.
type devStack struct {
	cfg *devConfig
	env *runEnv

	srv      *bus.Server
	conn     *bus.Conn
	reg      *prometheus.Registry
	metrics  *bus.Metrics
	pub      *bus.Publisher
	state    *persistence.State
	follower *persistence.Follower
	members  *bus.Membership
	admin    *admin.Server
	adminURL string
	token    string
	// gatewayURL is where dev's gateway serves, once it does.
	gatewayURL string

	// sections are status sections parts add, by name.
	sections map[string]func() any
	// readies are the parts' readiness checks, for /readyz.
	readies []func() error
	// banner holds lines parts add to what dev prints at start; examples
	// blocks of lines printed after the expire examples, built once the
	// admin API serves.
	banner   []string
	examples []func() []string
	stops    []func(context.Context)
}

// connect opens a connection of its own to dev's server for one part,
// named "cachebus dev <name>", as a separate process would have; it is
// drained at shutdown, after what the part registers later has stopped.
func (d *devStack) connect(ctx context.Context, name string) (*bus.Conn, error) {
	conn, err := bus.Connect(ctx, bus.ConnConfig{URL: d.srv.ClientURL(), Prefix: d.cfg.Prefix, Name: "cachebus dev " + name},
		bus.WithServer(d.srv), bus.WithLogger(d.env.log), bus.WithMetrics(d.metrics))
	if err != nil {
		return nil, err
	}
	d.onStop(func(context.Context) { closeConn(d.env, conn) })
	return conn, nil
}

// onStop registers fn to run at shutdown; the last registered runs first.
func (d *devStack) onStop(fn func(context.Context)) { d.stops = append(d.stops, fn) }

// say adds a line to the banner.
func (d *devStack) say(format string, args ...any) {
	d.banner = append(d.banner, fmt.Sprintf(format, args...))
}

func runDev(ctx context.Context, env *runEnv, cfgAny any, args []string) error {
	cfg := cfgAny.(*devConfig)
	if len(args) > 0 {
		return usagef("unexpected arguments %q", args)
	}
	if cfg.NATSPort < -1 || cfg.NATSPort > 65535 {
		return usagef("--nats-port: want a port, 0 or -1, got %d", cfg.NATSPort)
	}
	if cfg.HTTPAddr == "" {
		return usagef("--http: the admin API needs an address, such as 127.0.0.1:7380")
	}
	if cfg.Apps < 0 {
		return usagef("--apps: want 0 or more, got %d", cfg.Apps)
	}
	if cfg.Nodes < 0 {
		return usagef("--nodes: want 0 or more, got %d", cfg.Nodes)
	}
	if _, err := admin.ParseAllow(cfg.Allow); err != nil {
		return usagef("%v", err)
	}
	d := &devStack{cfg: cfg, env: env, sections: map[string]func() any{}}
	defer d.stop()
	if err := d.start(ctx); err != nil {
		return err
	}
	d.waitReady(ctx)
	d.printBanner(env.stdout)
	<-ctx.Done()
	env.log.Info("shutting down")
	return nil
}

func (d *devStack) start(ctx context.Context) error {
	cfg, log := d.cfg, d.env.log
	port := cfg.NATSPort
	if port == 0 {
		port = -1 // nats-server reads 0 as its default port
	}
	if err := checkPortFree("127.0.0.1", port, "--nats-port"); err != nil {
		return err
	}
	var err error
	d.srv, err = bus.StartServer(bus.ServerConfig{Host: "127.0.0.1", Port: port, StoreDir: cfg.DataDir}, log)
	if err != nil {
		return err
	}
	d.onStop(func(context.Context) { d.srv.Shutdown() })

	d.reg, d.metrics = daemonMetrics()
	d.conn, err = bus.Connect(ctx, bus.ConnConfig{URL: d.srv.ClientURL(), Prefix: cfg.Prefix, Name: "cachebus dev"},
		bus.WithServer(d.srv), bus.WithLogger(log), bus.WithMetrics(d.metrics))
	if err != nil {
		return err
	}
	d.onStop(func(context.Context) { closeConn(d.env, d.conn) })

	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := persistence.EnsureEvents(sctx, d.conn, cfg.EventLogConfig); err != nil {
		return err
	}
	if d.state, err = persistence.OpenState(sctx, d.conn, persistence.StateConfig{Replicas: 1}); err != nil {
		return err
	}
	if d.follower, err = d.state.Follow(sctx); err != nil {
		return err
	}
	d.onStop(func(context.Context) { d.follower.Stop() })
	if d.members, err = bus.TrackMembers(d.conn, cfg.FailureTimeout, bus.MembershipEvents{}); err != nil {
		return err
	}
	d.onStop(func(context.Context) { d.members.Stop() })
	if d.pub, err = bus.NewPublisher(d.conn, "dev"); err != nil {
		return err
	}

	d.token = cfg.Token
	if d.token == "" {
		d.token = randomToken()
	}
	acfg := cfg.Config
	acfg.Token = d.token
	d.admin, err = admin.New(acfg, admin.Options{
		Conn: d.conn, Publisher: d.pub, State: d.state, Follower: d.follower, Members: d.members,
		Gatherer: d.reg, Registerer: d.reg, Log: log, Extra: d.extra, Ready: d.ready,
	})
	if err != nil {
		return err
	}

	parts := slices.Clone(devParts)
	slices.SortStableFunc(parts, func(a, b devPart) int { return a.order - b.order })
	for _, p := range parts {
		if err := p.start(ctx, d); err != nil {
			return fmt.Errorf("dev %s: %w", p.name, err)
		}
		log.Info("dev part started", "part", p.name)
	}

	run, err := serveAdmin(context.WithoutCancel(ctx), d.admin, cfg.HTTPAddr)
	if err != nil {
		return err
	}
	d.adminURL = run.url
	d.onStop(func(context.Context) {
		if err := run.stop(); err != nil {
			log.Warn("admin API", "err", err)
		}
	})

	hb, err := bus.StartHeartbeat(d.conn, bus.Heartbeat{ID: "dev", Role: bus.RoleClient, Addr: d.adminURL}, cfg.Interval, nil)
	if err != nil {
		return err
	}
	d.onStop(func(ctx context.Context) { hb.Stop(ctx) })
	log.Info("dev ready", "nats", d.srv.ClientURL(), "admin", d.adminURL)
	return nil
}

// extra gathers the status sections of the parts.
func (d *devStack) extra() map[string]any {
	if len(d.sections) == 0 {
		return nil
	}
	out := make(map[string]any, len(d.sections))
	for name, fn := range d.sections {
		out[name] = fn()
	}
	return out
}

// waitReady waits a while for the parts to be ready (cache nodes take
// their partitions within the failure timeout), so that what the banner
// suggests works when it is printed.
func (d *devStack) waitReady(ctx context.Context) {
	err := d.ready()
	if err == nil {
		return
	}
	d.env.log.Info("waiting for dev to be ready", "reason", err)
	ctx, cancel := context.WithTimeout(ctx, 2*d.cfg.FailureTimeout+5*time.Second)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			if err := d.ready(); err != nil {
				d.env.log.Warn("dev not ready yet; /readyz says when", "reason", err)
			}
			return
		case <-tick.C:
			if d.ready() == nil {
				return
			}
		}
	}
}

// ready is dev's readiness: NATS connected and every part ready.
func (d *devStack) ready() error {
	if err := admin.ConnReady(d.conn); err != nil {
		return err
	}
	for _, r := range d.readies {
		if err := r(); err != nil {
			return err
		}
	}
	return nil
}

// stop undoes start in reverse: the heartbeat says gone, the admin API
// and the parts stop, the connection drains, the server shuts down.
func (d *devStack) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := len(d.stops) - 1; i >= 0; i-- {
		d.stops[i](ctx)
	}
	d.stops = nil
}

func (d *devStack) printBanner(w io.Writer) {
	natsURL := d.srv.ClientURL()
	data := d.cfg.DataDir
	if data == "" {
		data = "a temporary directory, removed on exit (--data DIR keeps it)"
	}
	subject := d.conn.Subjects.Expire("users")
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	p("cachebus dev is running; Ctrl-C stops it.")
	p("")
	p("  NATS URL   %s", natsURL)
	p("  admin URL  %s   (/healthz /readyz /metrics /v1/status)", d.adminURL)
	p("  token      %s", d.token)
	p("  data       %s", data)
	for _, line := range d.banner {
		p("  %s", line)
	}
	p("")
	p("Publish an expire, acknowledged by the event log:")
	p("  export CACHEBUS_NATS_URL=%s CACHEBUS_ADMIN_TOKEN=%s", natsURL, d.token)
	if d.cfg.Prefix != bus.DefaultPrefix {
		p("  export CACHEBUS_PREFIX=%s", d.cfg.Prefix)
	}
	p("  cachebus expire users user:42 --prefix cart:42:")
	p("  curl -H 'Authorization: Bearer %s' --data-binary 'user:42' %s/v1/expire/users", d.token, d.adminURL)
	p("Or with the NATS CLI (delivered at once, stored in the log while the server keeps up):")
	p("  nats -s %s pub %s user:42", natsURL, subject)
	for _, ex := range d.examples {
		for _, line := range ex() {
			p("%s", line)
		}
	}
	p("")
	p("Watch the event log: cachebus watch    Cluster state: cachebus status")
	_, _ = io.WriteString(w, b.String())
}

// randomToken returns a fresh admin token for a dev run.
func randomToken() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return hex.EncodeToString(b[:])
}
