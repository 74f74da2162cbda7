package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"runtime/debug"
	"strings"
	"time"

	"github.com/cachebus/cachebus/admin"
	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/lbgateway"
	"github.com/cachebus/cachebus/persistence"
)

// gatewayConfig configures `cachebus gateway`, the sticky gateway in
// front of an app pool.
type gatewayConfig struct {
	admin.Config
	bus.ConnConfig
	Gateway
}

// Gateway is lbgateway.Config under a name that can sit beside
// admin.Config in gatewayConfig; exported so that envconfig reads its
// fields.
type Gateway = lbgateway.Config

func init() {
	register(&command{
		name:    "gateway",
		summary: "run the sticky gateway in front of an app pool: signed cookie, drain, redispatch, response cache",
		usage:   "[--id ID] [--addr ADDR] [--http ADDR]",
		config:  func() any { return &gatewayConfig{} },
		flags: func(fs *flag.FlagSet, cfg any) {
			c := cfg.(*gatewayConfig)
			fs.StringVar(&c.Gateway.ID, "id", "", "this gateway's id (as CACHEBUS_GATEWAY_ID; default: the host name)")
			fs.StringVar(&c.Addr, "addr", "", "address the app pool is served on (default: CACHEBUS_GATEWAY_ADDR, 127.0.0.1:8080)")
			fs.StringVar(&c.HTTPAddr, "http", "", "address of the admin API (default: CACHEBUS_HTTP_ADDR, 127.0.0.1:7380)")
		},
		run: runGateway,
	})
}

// check completes and validates cfg before anything starts.
func (c *gatewayConfig) check() error {
	if c.Gateway.ID == "" {
		host, _ := os.Hostname()
		c.Gateway.ID = bus.SanitizeName(host, "gateway")
	}
	if !bus.ValidName(c.Gateway.ID) {
		return usagef("--id / CACHEBUS_GATEWAY_ID: must match [A-Za-z0-9_-]{1,64}, got %q", c.Gateway.ID)
	}
	if _, err := lbgateway.ParseBackends(c.Backends); err != nil {
		return usagef("%v", err)
	}
	if c.Interval <= 0 || c.FailureTimeout <= c.Interval {
		return usagef("CACHEBUS_FAILURE_TIMEOUT (%s) must be longer than CACHEBUS_HEARTBEAT_INTERVAL (%s)", c.FailureTimeout, c.Interval)
	}
	if _, err := admin.ParseAllow(c.Allow); err != nil {
		return usagef("%v", err)
	}
	return nil
}

func runGateway(ctx context.Context, env *runEnv, cfgAny any, args []string) error {
	cfg := cfgAny.(*gatewayConfig)
	if len(args) > 0 {
		return usagef("unexpected arguments %q", args)
	}
	if err := cfg.check(); err != nil {
		return err
	}
	id, log := cfg.Gateway.ID, env.log
	if os.Getenv("GOGC") == "" {
		// A proxy allocates per request and keeps little: collecting at 4×
		// the live heap instead of 2× cost a few MiB and gave 15-20% more
		// requests per second under load on a 2-core machine.
		debug.SetGCPercent(400)
	}
	reg, metrics := daemonMetrics()
	cc := cfg.ConnConfig
	cc.Name = "cachebus gateway " + id
	conn, err := bus.Connect(ctx, cc, bus.WithLogger(log), bus.WithMetrics(metrics))
	if err != nil {
		return fmt.Errorf("connect to NATS (CACHEBUS_NATS_URL): %w", err)
	}
	// Last: drain the connection once the gateway has said it is gone.
	defer closeConn(env, conn)

	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	state, err := persistence.OpenOrBindState(sctx, conn)
	cancel()
	if err != nil {
		return fmt.Errorf("cluster state: %w", err)
	}
	pub, err := bus.NewPublisher(conn, id)
	if err != nil {
		return err
	}
	// The admin API is built first: its checks guard the status page on
	// the public port.
	var gw *lbgateway.Gateway
	adm, err := admin.New(cfg.Config, admin.Options{
		Conn: conn, Publisher: pub, State: state, Gatherer: reg, Registerer: reg, Log: log,
		Ready: func() error {
			if err := admin.ConnReady(conn); err != nil {
				return err
			}
			return gw.Ready()
		},
		Extra: func() map[string]any { return map[string]any{"gateway": gw.Status()} },
	})
	if err != nil {
		return usagef("%v", err)
	}
	gw, err = lbgateway.New(ctx, cfg.Gateway, lbgateway.Options{Conn: conn, State: state, Registerer: reg, Log: log,
		Version: buildVersion(), Guard: adm.Guard})
	if err != nil {
		return err
	}
	defer gw.Close()

	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("gateway: listen (CACHEBUS_GATEWAY_ADDR): %w", err)
	}
	if cfg.HTTPAddr != "" {
		run, err := serveAdmin(context.WithoutCancel(ctx), adm, cfg.HTTPAddr)
		if err != nil {
			_ = ln.Close()
			return err
		}
		defer func() {
			if err := run.stop(); err != nil {
				log.Warn("admin API", "err", err)
			}
		}()
		log.Info("gateway admin API listening", "url", run.url)
	}
	url := gw.Scheme() + strings.TrimPrefix(admin.URL(ln.Addr()), "http")
	log.Info("gateway listening", "url", url, "status", url+"/_cachebus/")
	fmt.Fprintf(env.stdout, "gateway %s: %s\n", id, url)
	return gw.Serve(ctx, ln)
}
