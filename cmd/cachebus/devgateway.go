package main

import (
	"context"
	"fmt"
	"net"

	"github.com/cachebus/cachebus/lbgateway"
	"github.com/kelseyhightower/envconfig"
)

// The gateway of `cachebus dev`: gw1 in front of the apps that announce
// themselves by heartbeat, with the response cache on for every path (a
// response is cached only when its headers allow it).
func init() {
	registerDevPart(devPart{name: "gateway", order: 30, start: startDevGateway})
}

func startDevGateway(ctx context.Context, d *devStack) error {
	if d.cfg.GatewayAddr == "" || d.cfg.GatewayAddr == "off" {
		return nil
	}
	// The gateway variables apply; the id, address and heartbeat timing
	// are dev's.
	var cfg lbgateway.Config
	if err := envconfig.Process(envPrefix, &cfg); err != nil {
		return usagef("%v", err)
	}
	cfg.ID, cfg.Addr, cfg.HeartbeatConfig = "gw1", d.cfg.GatewayAddr, d.cfg.HeartbeatConfig
	if len(cfg.Cache) == 0 {
		cfg.Cache = []string{"/"}
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("gateway port in use? (--gateway ADDR; port 0 picks a free one): %w", err)
	}
	conn, err := d.connect(ctx, cfg.ID)
	if err != nil {
		_ = ln.Close()
		return err
	}
	gw, err := lbgateway.New(ctx, cfg, lbgateway.Options{Conn: conn, State: d.state, Registerer: d.reg,
		Log: d.env.log, Version: buildVersion(), Guard: d.admin.Guard})
	if err != nil {
		_ = ln.Close()
		return err
	}
	sctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	served := make(chan error, 1)
	go func() { served <- gw.Serve(sctx, ln) }()
	d.onStop(func(context.Context) {
		stop()
		if err := <-served; err != nil {
			d.env.log.Warn("gateway", "err", err)
		}
		gw.Close()
	})
	url := gw.Scheme() + "://" + ln.Addr().String()
	d.readies = append(d.readies, gw.Ready)
	d.sections["gateway"] = func() any { return gw.Status() }
	d.say("gateway    %s   (status page %s/_cachebus/)", url, url)
	d.gatewayURL = url
	d.examples = append(d.examples, func() []string {
		return []string{
			"Put your own app behind the gateway (any language; the sidecar heartbeats for it):",
			"  cachebus announce --id myapp --addr http://127.0.0.1:3000",
		}
	})
	return nil
}
