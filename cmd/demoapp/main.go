// Command demoapp is the cachebus demo app server as its own daemon: one
// demoapp.App on its own NATS connection, announced to the gateways by
// heartbeat, drained on SIGTERM. `cachebus dev` runs three in its own
// process; compose runs three of these.
//
// Usage: demoapp [--id ID] [--listen ADDR] [--url URL]; -h lists the
// CACHEBUS_* variables.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/demoapp"
	"github.com/kelseyhightower/envconfig"
)

// config is everything demoapp reads from CACHEBUS_* variables.
type config struct {
	bus.ConnConfig
	demoapp.Config
	LogLevel string `envconfig:"LOG_LEVEL" default:"info" desc:"log level: debug, info, warn or error"`
}

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "demoapp:", err)
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		os.Exit(1)
	}
}

func run(args []string, stdout, stderr io.Writer) error {
	var cfg config
	if err := envconfig.Process("CACHEBUS", &cfg); err != nil {
		return err
	}
	fs := flag.NewFlagSet("demoapp", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.ID, "id", cfg.ID, "member id (as CACHEBUS_DEMO_ID)")
	fs.StringVar(&cfg.Listen, "listen", cfg.Listen, "address to serve HTTP on (as CACHEBUS_DEMO_LISTEN)")
	fs.StringVar(&cfg.AppURL, "url", cfg.AppURL, "URL the gateways reach it at (as CACHEBUS_DEMO_URL)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: demoapp [--id ID] [--listen ADDR] [--url URL]\n\nThe cachebus demo app server.\n\nFlags:")
		fs.PrintDefaults()
		fmt.Fprintln(stderr, "\nEnvironment:")
		_ = envconfig.Usagef("CACHEBUS", &cfg, stderr, "{{range .}}  {{usage_key .}}{{if usage_default .}} (default {{usage_default .}}){{end}}\n      {{usage_description .}}\n{{end}}")
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
		return fmt.Errorf("CACHEBUS_LOG_LEVEL: %w", err)
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cc := cfg.ConnConfig
	cc.Name = "demoapp " + cfg.ID
	conn, err := bus.Connect(ctx, cc, bus.WithLogger(log))
	if err != nil {
		return fmt.Errorf("connect to NATS (CACHEBUS_NATS_URL): %w", err)
	}
	defer func() {
		if err := conn.Close(5 * time.Second); err != nil {
			log.Warn("closing the NATS connection", "err", err)
		}
	}()
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	app, err := demoapp.New(sctx, cfg.Config, demoapp.Options{Conn: conn, Log: log, Version: version()})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		app.Close(context.Background())
		return fmt.Errorf("CACHEBUS_DEMO_LISTEN: %w", err)
	}
	if err := app.Announce(ln); err != nil {
		_ = ln.Close()
		app.Close(context.Background())
		return err
	}
	served := make(chan error, 1)
	go func() { served <- app.Serve(ln) }()
	fmt.Fprintf(stdout, "%s serving on %s, announced as %s\n", cfg.ID, ln.Addr(), app.URL())

	select {
	case err := <-served:
		app.Close(context.Background())
		return err
	case <-ctx.Done():
	}
	// A second signal stops the drain.
	stop()
	dctx, cancelDrain := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancelDrain()
	fmt.Fprintf(stdout, "%s draining: no new sessions; exits when its sessions end, a gateway drains it or in %s (a second signal exits now)\n",
		cfg.ID, cfg.DrainTimeout)
	fmt.Fprintf(stdout, "%s drained: %s\n", cfg.ID, app.Drain(dctx))
	cctx, cancelClose := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancelClose()
	app.Close(cctx)
	fmt.Fprintf(stdout, "%s gone\n", cfg.ID)
	return <-served
}

func version() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "dev"
}
