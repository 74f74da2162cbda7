package main

import (
	"context"
	"fmt"
	"net"
	"strconv"

	"github.com/cachebus/cachebus/admin"
	"github.com/cachebus/cachebus/bus"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// daemonMetrics is the registry a daemon's /metrics serves: Go and process
// metrics, and the bus metrics every part records into.
func daemonMetrics() (*prometheus.Registry, *bus.Metrics) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg, bus.NewMetrics(reg)
}

// adminRun is an admin API serving in the background.
type adminRun struct {
	url    string
	cancel context.CancelFunc
	done   chan error
}

// serveAdmin listens on addr and serves srv until stop is called or ctx
// ends; a listen failure (address in use) is returned at once.
func serveAdmin(ctx context.Context, srv *admin.Server, addr string) (*adminRun, error) {
	ln, err := admin.Listen(addr)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	r := &adminRun{url: admin.URL(ln.Addr()), cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- srv.Serve(ctx, ln) }()
	return r, nil
}

// stop shuts the admin API down gracefully and returns Serve's error.
func (r *adminRun) stop() error {
	r.cancel()
	return <-r.done
}

// checkPortFree fails fast, with the variable or flag to change, when the
// embedded server's client port is taken; the server itself would only
// time out.
func checkPortFree(host string, port int, setting string) error {
	if port <= 0 {
		return nil
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		return fmt.Errorf("NATS client port %d on %s is in use (%s; -1 picks a free one): %w", port, host, setting, err)
	}
	return ln.Close()
}
