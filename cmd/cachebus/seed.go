package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/cachebus/cachebus/bus"
)

// seedConfig configures `cachebus seed`.
type seedConfig struct {
	ClientConfig
	TTL time.Duration `ignored:"true"`
}

func init() {
	register(&command{
		name:    "seed",
		summary: "set a key's value on every member that holds the namespace",
		usage:   "<ns> <key> <value | - (value from standard input, as is)> [--ttl D]",
		config:  func() any { return &seedConfig{} },
		flags: func(fs *flag.FlagSet, cfg any) {
			c := cfg.(*seedConfig)
			fs.DurationVar(&c.TTL, "ttl", 0, "time to live of the value, such as 30s (0: the member's default)")
		},
		run: runSeed,
	})
}

func runSeed(ctx context.Context, env *runEnv, cfgAny any, args []string) error {
	cfg := cfgAny.(*seedConfig)
	if len(args) != 3 {
		return usagef("want <ns> <key> <value>, got %d arguments", len(args))
	}
	ns, key := args[0], args[1]
	if err := bus.CheckNamespace(ns); err != nil {
		return usageFromValidation(err)
	}
	value := []byte(args[2])
	if args[2] == "-" {
		var err error
		if value, err = io.ReadAll(io.LimitReader(env.stdin, bus.MaxPayload+1)); err != nil {
			return fmt.Errorf("reading the value from standard input: %w", err)
		}
	}
	sd := bus.Seed{Key: key, Value: value, TTL: cfg.TTL}
	data, err := sd.Encode()
	if err != nil {
		return usageFromValidation(err)
	}
	if len(data) > bus.MaxPayload {
		return usagef("value of %d bytes is too large: the payload would be %d bytes, over the limit of %d", len(value), len(data), bus.MaxPayload)
	}

	conn, pub, err := cfg.publisher(ctx, env, "seed")
	if err != nil {
		return err
	}
	defer closeConn(env, conn)
	pctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	seq, err := pub.Seed(pctx, ns, sd)
	if err != nil {
		return fmt.Errorf("seed %s: %w", ns, err)
	}
	fmt.Fprintf(env.stdout, "sent seed ns=%s %s origin=%s seq=%d\n", ns, describe(bus.Event{Seed: &sd}), pub.Origin(), seq)
	return nil
}
