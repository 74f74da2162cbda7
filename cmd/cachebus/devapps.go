package main

import (
	"context"
	"fmt"
	"net"
	"strings"

	"github.com/cachebus/cachebus/demoapp"
	"github.com/kelseyhightower/envconfig"
)

// The demo apps of `cachebus dev`: app1..appN on free ports of 127.0.0.1,
// each on its own connection as separate processes would be, started
// after the cache nodes (their sessions live there) and before the
// gateway, which finds them by their heartbeats.
func init() {
	registerDevPart(devPart{name: "demo apps", order: 20, start: startDevApps})
}

func startDevApps(ctx context.Context, d *devStack) error {
	if d.cfg.Apps == 0 {
		return nil
	}
	// The demo variables apply (TTLs, compute delay); the ids, addresses
	// and heartbeat timing are dev's.
	var base demoapp.Config
	if err := envconfig.Process(envPrefix, &base); err != nil {
		return usagef("%v", err)
	}
	base.HeartbeatConfig = d.cfg.HeartbeatConfig
	base.AppURL = ""
	var lines []string
	for i := range d.cfg.Apps {
		cfg := base
		cfg.ID = fmt.Sprintf("app%d", i+1)
		conn, err := d.connect(ctx, cfg.ID)
		if err != nil {
			return err
		}
		app, err := demoapp.New(ctx, cfg, demoapp.Options{Conn: conn, Log: d.env.log, Version: buildVersion()})
		if err != nil {
			return err
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			app.Close(ctx)
			return fmt.Errorf("%s: %w", cfg.ID, err)
		}
		if err := app.Announce(ln); err != nil {
			_ = ln.Close()
			app.Close(ctx)
			return err
		}
		served := make(chan error, 1)
		go func() { served <- app.Serve(ln) }()
		d.onStop(func(ctx context.Context) {
			app.Close(ctx)
			if err := <-served; err != nil {
				d.env.log.Warn("demo app", "app", app.ID(), "err", err)
			}
		})
		lines = append(lines, app.ID()+" "+app.URL())
	}
	d.say("apps       %s", strings.Join(lines, ", "))
	d.examples = append(d.examples, func() []string {
		open := "The demo apps serve no gateway (--gateway off); open one of them directly:"
		if d.gatewayURL != "" {
			open = "Open the demo, three app servers behind the gateway: " + d.gatewayURL + "/"
		}
		return []string{
			open,
			"  cachebus expire " + base.PageNS + " product:1         # product 1 recomputed on every app server",
			"  cachebus expire http --tag news              # /news purged from the gateway",
			"  cachebus fallback on; cachebus fallback off  # serve what the caches hold, stale or not",
			"  cachebus drain app app1 --wait               # app1 takes no new sessions; its sessions stay",
		}
	})
	return nil
}
