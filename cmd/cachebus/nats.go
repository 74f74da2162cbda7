package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/cachebus/cachebus/admin"
	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/persistence"
)

// natsConfig configures `cachebus nats`, an embedded NATS server node.
type natsConfig struct {
	bus.ServerConfig
	persistence.EventLogConfig
	persistence.StateConfig
	persistence.NodesConfig
	admin.Config
	NodeAuth
	Prefix         string        `envconfig:"PREFIX" default:"cachebus" desc:"subject prefix of the cachebus hierarchy"`
	FailureTimeout time.Duration `envconfig:"FAILURE_TIMEOUT" default:"5s" desc:"a member silent this long is dead (for /v1/status)"`
}

// NodeAuth is how the node's own in-process connection authenticates when
// its server requires it (users from CACHEBUS_NATS_CONFIG).
type NodeAuth struct {
	User     string `envconfig:"NATS_USER" desc:"user the node's own in-process connection authenticates as, when the server has users"`
	Password string `envconfig:"NATS_PASSWORD" desc:"password of CACHEBUS_NATS_USER"`
	Token    string `envconfig:"NATS_TOKEN" desc:"token the node's own in-process connection authenticates with, when the server wants one"`
}

func init() {
	register(&command{
		name:    "nats",
		summary: "run an embedded NATS server with JetStream (one node of a NATS cluster)",
		usage:   "[flags]",
		config:  func() any { return &natsConfig{} },
		run:     runNATS,
	})
}

func runNATS(ctx context.Context, env *runEnv, cfgAny any, args []string) error {
	cfg := cfgAny.(*natsConfig)
	if len(args) > 0 {
		return usagef("unexpected arguments %v", args)
	}
	if _, err := admin.ParseAllow(cfg.Allow); err != nil {
		return usagef("%v", err)
	}
	if err := checkPortFree(cfg.Host, cfg.Port, "CACHEBUS_NATS_PORT"); err != nil {
		return err
	}
	srv, err := bus.StartServer(cfg.ServerConfig, env.log)
	if err != nil {
		return err
	}
	defer srv.Shutdown()
	env.log.Info("nats ready", "url", srv.ClientURL(), "cluster", srv.ClusterAddr(), "name", srv.Name())
	fmt.Fprintf(env.stdout, "nats: %s\n", srv.ClientURL())

	reg, metrics := daemonMetrics()
	conn, err := bus.Connect(ctx, bus.ConnConfig{
		URL: srv.ClientURL(), Prefix: cfg.Prefix, Name: "cachebus nats " + srv.Name(),
		User: cfg.NodeAuth.User, Password: cfg.NodeAuth.Password, Token: cfg.NodeAuth.Token,
	}, bus.WithServer(srv), bus.WithLogger(env.log), bus.WithMetrics(metrics))
	if err != nil {
		return err
	}
	defer closeConn(env, conn)

	// In a cluster the event log and the state bucket wait for the meta
	// leader, which needs the peers: the node serves meanwhile, not ready.
	var (
		mu       sync.Mutex
		notReady = errors.New("waiting for JetStream to create the event log, the state bucket and the nodes bucket")
	)
	ready := func() error {
		if err := admin.ConnReady(conn); err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		return notReady
	}
	var adm *admin.Server
	var wg sync.WaitGroup
	defer wg.Wait()
	ensureCtx, stopEnsure := context.WithCancel(ctx)
	defer stopEnsure()

	if cfg.HTTPAddr != "" {
		members, err := bus.TrackMembers(conn, cfg.FailureTimeout, bus.MembershipEvents{})
		if err != nil {
			return err
		}
		defer members.Stop()
		pub, err := bus.NewPublisher(conn, sanitizeID("nats-"+srv.Name()))
		if err != nil {
			return err
		}
		adm, err = admin.New(cfg.Config, admin.Options{
			Conn: conn, Publisher: pub, Members: members, Gatherer: reg, Registerer: reg, Ready: ready, Log: env.log,
		})
		if err != nil {
			return usagef("%v", err)
		}
		run, err := serveAdmin(ctx, adm, cfg.HTTPAddr)
		if err != nil {
			return err
		}
		defer func() {
			if err := run.stop(); err != nil {
				env.log.Warn("admin API", "err", err)
			}
		}()
		env.log.Info("admin API ready", "url", run.url)
		fmt.Fprintf(env.stdout, "admin: %s\n", run.url)
	}

	wg.Add(1)
	go func() {
		defer wg.Done()
		if _, err := persistence.EnsureEvents(ensureCtx, conn, cfg.EventLogConfig); err != nil {
			if ensureCtx.Err() == nil {
				env.log.Error("event log not created", "err", err)
				mu.Lock()
				notReady = err
				mu.Unlock()
			}
			return
		}
		st, err := persistence.OpenState(ensureCtx, conn, cfg.StateConfig)
		if err != nil {
			if ensureCtx.Err() == nil {
				env.log.Error("state bucket not created", "err", err)
				mu.Lock()
				notReady = err
				mu.Unlock()
			}
			return
		}
		// The cache tier's baseline bucket too, so that it gets the
		// cluster's replicas before a cache node creates it with one.
		if _, err := persistence.OpenNodes(ensureCtx, conn, cfg.NodesConfig); err != nil {
			if ensureCtx.Err() == nil {
				env.log.Error("nodes bucket not created", "err", err)
				mu.Lock()
				notReady = err
				mu.Unlock()
			}
			return
		}
		if adm != nil {
			adm.SetState(st)
		}
		mu.Lock()
		notReady = nil
		mu.Unlock()
		env.log.Info("event log, state and nodes buckets ready", "stream", conn.Subjects.EventStream(),
			"state", conn.Subjects.StateBucket(), "nodes", conn.Subjects.NodesBucket(), "replicas", cfg.EventLogConfig.Replicas)
	}()

	<-ctx.Done()
	env.log.Info("shutting down")
	return nil
}
