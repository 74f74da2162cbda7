package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// probeConfig configures `cachebus probe`.
type probeConfig struct {
	Timeout time.Duration `envconfig:"PROBE_TIMEOUT" default:"2s" desc:"how long the whole check may take"`
}

// probeBodyMax is how much of a failed answer's body the probe reads, to
// quote its first line: a /readyz says there what is missing.
const probeBodyMax = 4 << 10

func init() {
	register(&command{
		name: "probe",
		// Container images built FROM scratch have no shell, curl or wget:
		// their health checks run the binary itself.
		summary: "check that GET URL answers 2xx (a health check for containers with no shell or curl)",
		usage:   "<URL> [--timeout D]",
		config:  func() any { return &probeConfig{} },
		flags: func(fs *flag.FlagSet, cfg any) {
			c := cfg.(*probeConfig)
			fs.DurationVar(&c.Timeout, "timeout", 0, "how long the whole check may take (default: CACHEBUS_PROBE_TIMEOUT, 2s)")
		},
		run: runProbe,
	})
}

func runProbe(ctx context.Context, env *runEnv, cfgAny any, args []string) error {
	cfg := cfgAny.(*probeConfig)
	switch {
	case len(args) == 0:
		return usagef("missing URL")
	case len(args) > 1:
		return usagef("unexpected arguments after the URL: %q", args[1:])
	}
	u, err := url.Parse(args[0])
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return usagef("want an http:// or https:// URL, got %q", args[0])
	}
	if cfg.Timeout <= 0 {
		return usagef("--timeout / CACHEBUS_PROBE_TIMEOUT: must be positive, got %s", cfg.Timeout)
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return fmt.Errorf("GET %s: %w", u.Redacted(), err)
	}
	client := &http.Client{
		// A probe checks the very address it is given: no proxy from the
		// environment, no connection kept, and a redirect is an answer
		// (not 2xx), not somewhere else to check.
		Transport:     &http.Transport{Proxy: nil, DisableKeepAlives: true},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	resp, err := client.Do(req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("GET %s: no answer within %s", u.Redacted(), cfg.Timeout)
		}
		return fmt.Errorf("GET %s: %w", u.Redacted(), err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, probeBodyMax))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		line, _, _ := strings.Cut(strings.TrimSpace(string(body)), "\n")
		if len(line) > 200 {
			line = line[:200] + "…"
		}
		if line != "" {
			return fmt.Errorf("GET %s: %s: %s", u.Redacted(), resp.Status, line)
		}
		return fmt.Errorf("GET %s: %s", u.Redacted(), resp.Status)
	}
	// Docker keeps a check's output in `docker inspect`: say what passed.
	fmt.Fprintf(env.stdout, "GET %s: %s\n", u.Redacted(), resp.Status)
	return nil
}
