package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"time"

	"github.com/cachebus/cachebus/admin"
	"github.com/cachebus/cachebus/bus"
)

// statusConfig configures `cachebus status`.
type statusConfig struct {
	ClientConfig
	bus.HeartbeatConfig
	JSON bool `ignored:"true"`
}

func init() {
	register(&command{
		name:    "status",
		summary: "show members, fallback, drains and the event log's position",
		usage:   "[--json]",
		config:  func() any { return &statusConfig{} },
		flags: func(fs *flag.FlagSet, cfg any) {
			fs.BoolVar(&cfg.(*statusConfig).JSON, "json", false, "print JSON (the same document as GET /v1/status)")
		},
		run: runStatus,
	})
}

func runStatus(ctx context.Context, env *runEnv, cfgAny any, args []string) error {
	cfg := cfgAny.(*statusConfig)
	if len(args) > 0 {
		return usagef("unexpected arguments %q", args)
	}
	if cfg.Interval <= 0 {
		return usagef("CACHEBUS_HEARTBEAT_INTERVAL: must be positive, got %s", cfg.Interval)
	}
	conn, err := cfg.connect(ctx, env, "status")
	if err != nil {
		return err
	}
	defer closeConn(env, conn)
	members, err := bus.TrackMembers(conn, cfg.FailureTimeout, bus.MembershipEvents{})
	if err != nil {
		return err
	}
	defer members.Stop()
	// Every live member heartbeats within an interval; listen a little longer.
	select {
	case <-time.After(cfg.Interval * 3 / 2):
	case <-ctx.Done():
		return ctx.Err()
	}

	cctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	var stateFn admin.StateFunc
	state, stateErr := bindState(cctx, conn)
	if stateErr == nil {
		stateFn = state.Load
	}
	st, err := admin.Collect(cctx, conn, stateFn, members)
	if stateErr != nil {
		st.Errors = append(st.Errors, stateErr.Error())
		if err == nil {
			err = stateErr
		}
	}
	if cfg.JSON {
		enc := json.NewEncoder(env.stdout)
		enc.SetIndent("", "  ")
		if encErr := enc.Encode(st); encErr != nil {
			return fmt.Errorf("status: %w", encErr)
		}
	} else if tblErr := admin.WriteTable(env.stdout, st); tblErr != nil {
		return fmt.Errorf("status: %w", tblErr)
	}
	if err != nil {
		return fmt.Errorf("status incomplete: %w", err)
	}
	return nil
}
