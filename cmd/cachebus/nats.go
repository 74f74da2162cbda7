package main

import (
	"context"
	"fmt"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/persistence"
)

// natsConfig configures `cachebus nats`, an embedded NATS server node.
type natsConfig struct {
	bus.ServerConfig
	persistence.EventLogConfig
	persistence.StateConfig
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
	srv, err := bus.StartServer(cfg.ServerConfig, env.log)
	if err != nil {
		return err
	}
	defer srv.Shutdown()
	env.log.Info("nats ready", "url", srv.ClientURL(), "cluster", srv.ClusterAddr(), "name", srv.Name())
	fmt.Fprintf(env.stdout, "nats: %s\n", srv.ClientURL())
	<-ctx.Done()
	env.log.Info("shutting down")
	return nil
}
