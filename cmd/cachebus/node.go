package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"runtime/debug"
	"time"

	"github.com/cachebus/cachebus/admin"
	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/cachenode/partition"
	"github.com/cachebus/cachebus/cachenode/server"
	"github.com/cachebus/cachebus/persistence"
	"github.com/prometheus/client_golang/prometheus"
)

// nodeConfig configures `cachebus node`, a cache node of the shared tier.
type nodeConfig struct {
	admin.Config
	bus.ConnConfig
	CacheNode
}

// CacheNode is server.Config under a name that can sit beside
// admin.Config in nodeConfig; exported so that envconfig reads its fields.
type CacheNode = server.Config

func init() {
	register(&command{
		name:    "node",
		summary: "run a cache node: records of the partitions the baseline assigns it, over NATS and HTTP",
		usage:   "[--id ID] [--http ADDR]",
		config:  func() any { return &nodeConfig{} },
		flags: func(fs *flag.FlagSet, cfg any) {
			c := cfg.(*nodeConfig)
			fs.StringVar(&c.CacheNode.ID, "id", "", "this node's id (as CACHEBUS_NODE_ID; default: the host name)")
			fs.StringVar(&c.HTTPAddr, "http", "", "address of the admin API and the records (default: CACHEBUS_HTTP_ADDR, 127.0.0.1:7380)")
		},
		run: runNode,
	})
}

// check completes and validates cfg before anything starts.
func (c *nodeConfig) check() error {
	if c.CacheNode.ID == "" {
		host, _ := os.Hostname()
		c.CacheNode.ID = bus.SanitizeName(host, "node")
	}
	if !bus.ValidName(c.CacheNode.ID) {
		return usagef("--id / CACHEBUS_NODE_ID: must match [A-Za-z0-9_-]{1,64}, got %q", c.CacheNode.ID)
	}
	if c.DC != "" && !bus.ValidName(c.DC) {
		return usagef("CACHEBUS_DC: must match [A-Za-z0-9_-]{1,64}, got %q", c.DC)
	}
	if _, err := partition.ParseMembers(c.Baseline); err != nil {
		return usagef("CACHEBUS_BASELINE: %v", err)
	}
	if c.Interval <= 0 || c.FailureTimeout <= c.Interval {
		return usagef("CACHEBUS_FAILURE_TIMEOUT (%s) must be longer than CACHEBUS_HEARTBEAT_INTERVAL (%s)", c.FailureTimeout, c.Interval)
	}
	if _, err := admin.ParseAllow(c.Allow); err != nil {
		return usagef("%v", err)
	}
	return nil
}

func runNode(ctx context.Context, env *runEnv, cfgAny any, args []string) error {
	cfg := cfgAny.(*nodeConfig)
	if len(args) > 0 {
		return usagef("unexpected arguments %q", args)
	}
	if err := cfg.check(); err != nil {
		return err
	}
	id, log := cfg.CacheNode.ID, env.log
	reg, metrics := daemonMetrics()
	cc := cfg.ConnConfig
	cc.Name = "cachebus node " + id
	conn, err := bus.Connect(ctx, cc, bus.WithLogger(log), bus.WithMetrics(metrics))
	if err != nil {
		return fmt.Errorf("connect to NATS (CACHEBUS_NATS_URL): %w", err)
	}
	// Last: drain the connection once the node has said it is gone.
	defer closeConn(env, conn)

	s, err := server.Start(ctx, cfg.CacheNode, server.Options{Conn: conn, Registerer: reg, Log: log, Version: buildVersion()})
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s.Shutdown(sctx)
	}()

	if cfg.HTTPAddr != "" {
		run, err := serveNodeAdmin(ctx, env, cfg, conn, s, reg)
		if err != nil {
			return err
		}
		// First: no HTTP request reaches a node shutting down.
		defer func() {
			if err := run.stop(); err != nil {
				log.Warn("admin API", "err", err)
			}
		}()
		log.Info("cache node listening", "node", id, "url", run.url, "records", run.url+server.RecordsPattern+"{ns}/{key}")
		fmt.Fprintf(env.stdout, "node %s: %s\n", id, run.url)
	} else {
		fmt.Fprintf(env.stdout, "node %s: no HTTP (CACHEBUS_HTTP_ADDR is empty)\n", id)
	}

	<-ctx.Done()
	log.Info("shutting down", "node", id)
	return nil
}

// serveNodeAdmin serves the admin API of a node: its readiness, its
// status section, and its records behind the admin checks.
func serveNodeAdmin(ctx context.Context, env *runEnv, cfg *nodeConfig, conn *bus.Conn, s *server.Server, reg *prometheus.Registry) (*adminRun, error) {
	pub, err := bus.NewPublisher(conn, cfg.CacheNode.ID)
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	state, err := persistence.OpenOrBindState(sctx, conn)
	if err != nil {
		return nil, fmt.Errorf("cluster state: %w", err)
	}
	adm, err := admin.New(cfg.Config, admin.Options{
		Conn: conn, Publisher: pub, State: state, Members: s.Members(), Gatherer: reg, Registerer: reg, Log: env.log,
		Ready: func() error {
			if err := admin.ConnReady(conn); err != nil {
				return err
			}
			return s.Ready()
		},
		Extra: func() map[string]any { return map[string]any{"node": s.Status()} },
	})
	if err != nil {
		return nil, usagef("%v", err)
	}
	adm.Handle(server.RecordsPattern, s.RecordsHandler())
	// The server's context is not ctx: the deferred stop shuts it down
	// gracefully after ctx ends, in its turn.
	return serveAdmin(context.WithoutCancel(ctx), adm, cfg.HTTPAddr)
}

// buildVersion is what a heartbeat announces: the module version, or the
// VCS revision of a build from a checkout.
func buildVersion() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return ""
	}
	for _, st := range bi.Settings {
		if st.Key == "vcs.revision" && len(st.Value) >= 12 {
			return st.Value[:12]
		}
	}
	if v := bi.Main.Version; v != "(devel)" {
		return v
	}
	return ""
}
