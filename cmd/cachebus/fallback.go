package main

import (
	"context"
	"flag"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/cachebus/cachebus/bus"
)

// fallbackConfig configures `cachebus fallback`.
type fallbackConfig struct {
	ClientConfig
	Scope  string `ignored:"true"`
	Reason string `ignored:"true"`
	Until  string `ignored:"true"`
}

func init() {
	register(&command{
		name:    "fallback",
		summary: "turn serve-stale fallback on or off, for one namespace or all",
		usage:   "on|off [--scope *|NS] [--reason R] [--until T]",
		config:  func() any { return &fallbackConfig{} },
		flags: func(fs *flag.FlagSet, cfg any) {
			c := cfg.(*fallbackConfig)
			fs.StringVar(&c.Scope, "scope", "*", "namespace the fallback applies to, or * for all")
			fs.StringVar(&c.Reason, "reason", "", "why, shown in status and logs")
			fs.StringVar(&c.Until, "until", "", "when the fallback ends by itself: an RFC 3339 time or a duration such as 10m")
		},
		run: runFallback,
	})
}

func runFallback(ctx context.Context, env *runEnv, cfgAny any, args []string) error {
	cfg := cfgAny.(*fallbackConfig)
	switch {
	case len(args) == 0:
		return usagef("missing on or off")
	case len(args) > 1:
		return usagef("unexpected arguments after %s: %q", args[0], args[1:])
	case args[0] != "on" && args[0] != "off":
		return usagef("want on or off, got %q", args[0])
	}
	f := bus.Fallback{On: args[0] == "on", Scope: cfg.Scope, Reason: cfg.Reason}
	var err error
	if f.Until, err = parseWhen("until", cfg.Until, time.Now()); err != nil {
		return err
	}
	if !f.Until.IsZero() && !f.On {
		return usagef("--until applies to fallback on only")
	}
	if err := f.Validate(); err != nil {
		return usageFromValidation(err)
	}

	conn, pub, err := cfg.publisher(ctx, env, "fallback")
	if err != nil {
		return err
	}
	defer closeConn(env, conn)
	pctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	state, err := bindState(pctx, conn)
	if err != nil {
		return err
	}
	seq, err := state.SetFallback(pctx, pub, f)
	if err != nil {
		return fmt.Errorf("fallback: %w", err)
	}
	fmt.Fprintf(env.stdout, "sent fallback %s origin=%s seq=%d\n", describeFallback(f), pub.Origin(), seq)
	if !f.On {
		// Scopes are separate switches: "off" for * leaves a namespace's
		// own fallback on, which an operator ending an incident would
		// not expect without being told.
		if cs, err := state.Load(pctx); err == nil {
			now := time.Now()
			for _, scope := range slices.Sorted(maps.Keys(cs.Fallbacks)) {
				if other := cs.Fallbacks[scope]; scope != f.Scope && other.Active(now) {
					fmt.Fprintf(env.stdout, "fallback is still on for scope %s: cachebus fallback off --scope %s\n", scope, scope)
				}
			}
		}
	}
	return nil
}
