package main

import (
	"context"
	"fmt"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/persistence"
)

// rekeyConfig configures `cachebus rekey`.
type rekeyConfig struct {
	ClientConfig
	persistence.RecordLogConfig
}

func init() {
	register(&command{
		name:    "rekey",
		summary: "rewrite the long-term records sealed with CACHEBUS_RECORD_KEY_PREVIOUS (or in clear) under CACHEBUS_RECORD_KEY",
		usage:   "[ns...] (default: the namespaces of CACHEBUS_LONG_TERM)",
		config:  func() any { return &rekeyConfig{} },
		run:     runRekey,
	})
}

func runRekey(ctx context.Context, env *runEnv, cfgAny any, args []string) error {
	cfg := cfgAny.(*rekeyConfig)
	namespaces := args
	if len(namespaces) == 0 {
		namespaces = cfg.LongTerm
	}
	if len(namespaces) == 0 {
		return usagef("name the namespaces to rekey, or set CACHEBUS_LONG_TERM")
	}
	for _, ns := range namespaces {
		if err := bus.CheckNamespace(ns); err != nil {
			return usageFromValidation(err)
		}
	}
	if cfg.Key == "" {
		return usagef("CACHEBUS_RECORD_KEY: the key to seal the records with is not set")
	}
	conn, err := cfg.connect(ctx, env, "rekey")
	if err != nil {
		return err
	}
	defer closeConn(env, conn)
	lcfg := cfg.RecordLogConfig
	lcfg.LongTerm = namespaces
	log, err := persistence.BindRecordLog(ctx, conn, lcfg)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "sealing with key %s (stream %s)\n", log.Codec().KeyID(), log.Stream())
	for _, ns := range namespaces {
		start := time.Now()
		n, err := log.Rekey(ctx, ns, nil)
		if err != nil {
			return fmt.Errorf("rekey %s: %d records rewritten before: %w", ns, n, err)
		}
		fmt.Fprintf(env.stdout, "rekeyed ns=%s records=%d in %s\n", ns, n, time.Since(start).Round(time.Millisecond))
	}
	return nil
}
