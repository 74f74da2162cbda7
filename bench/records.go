package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/cachenode"
	"github.com/cachebus/cachebus/cachenode/server"
)

// RecordsConfig configures a records benchmark.
type RecordsConfig struct {
	// URL of a NATS server whose cache nodes serve the records; empty
	// runs an embedded server and Nodes cache nodes in this process.
	URL string
	// Nodes started in process when URL is empty. Default 2 (so every
	// write has a backup).
	Nodes int
	// Backups per partition of an in-process cluster. Default 1.
	Backups int
	// Clients is the number of goroutines issuing requests, each waiting
	// for its reply before it sends the next (like redis-benchmark -c).
	Clients int
	// Conns is the number of NATS connections the clients share. Default 1.
	Conns int
	// Duration of each phase (put, then get).
	Duration time.Duration
	// Size of each value in bytes. Default 100.
	Size int
	// Keys is the key space (like redis-benchmark -r). Default 100000.
	Keys int
	// Namespace of the records. Default "bench".
	Namespace string
	Log       *slog.Logger
}

// PhaseResult is one operation's figures.
type PhaseResult struct {
	Op      string
	Ops     uint64
	Errors  uint64
	Elapsed time.Duration
	Latency *Histogram
	// FirstError is an example of what failed, if anything did.
	FirstError string
}

// OpsPerSec is the rate of successful operations.
func (p *PhaseResult) OpsPerSec() float64 {
	if p.Elapsed <= 0 {
		return 0
	}
	return float64(p.Ops) / p.Elapsed.Seconds()
}

// RecordsResult is a records benchmark's result.
type RecordsResult struct {
	Config  RecordsConfig
	Machine Machine
	Put     PhaseResult
	Get     PhaseResult
}

// Records measures puts then gets of Size-byte values through the Go
// client, Clients requests in flight at a time.
func Records(ctx context.Context, cfg RecordsConfig) (*RecordsResult, error) {
	if cfg.Nodes <= 0 {
		cfg.Nodes = 2
	}
	if cfg.Backups < 0 {
		return nil, configErr("backups", "must be 0 or more")
	}
	if cfg.Backups == 0 && cfg.URL == "" {
		cfg.Backups = 1
	}
	if cfg.Clients <= 0 {
		cfg.Clients = 16
	}
	if cfg.Conns <= 0 {
		cfg.Conns = 1
	}
	if cfg.Duration <= 0 {
		cfg.Duration = 10 * time.Second
	}
	if cfg.Size <= 0 {
		cfg.Size = 100
	}
	if cfg.Keys <= 0 {
		cfg.Keys = 100000
	}
	if cfg.Namespace == "" {
		cfg.Namespace = "bench"
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	res := &RecordsResult{Config: cfg, Machine: ThisMachine()}
	url := cfg.URL
	if url == "" {
		srv, err := bus.StartServer(bus.ServerConfig{Host: "127.0.0.1", Port: -1, StoreDir: ""}, cfg.Log)
		if err != nil {
			return nil, fmt.Errorf("embedded nats: %w", err)
		}
		defer srv.Shutdown()
		url = srv.ClientURL()
		stop, err := startNodes(ctx, url, cfg)
		if err != nil {
			return nil, err
		}
		defer stop()
	}
	clients := make([]*cachenode.Client, cfg.Conns)
	for i := range clients {
		c, err := bus.Connect(ctx, bus.ConnConfig{URL: url, Prefix: bus.DefaultPrefix, Name: fmt.Sprintf("bench-records-%d", i)}, bus.WithLogger(cfg.Log))
		if err != nil {
			return nil, err
		}
		defer c.NC.Close()
		if clients[i], err = cachenode.NewClient(ctx, c, cachenode.ClientOptions{}); err != nil {
			return nil, err
		}
		defer clients[i].Close()
	}
	if err := waitServed(ctx, clients[0]); err != nil {
		return nil, err
	}
	value := []byte(strings.Repeat("x", cfg.Size))
	var err error
	res.Put, err = phase(ctx, cfg, "put", clients, func(ctx context.Context, c *cachenode.Client, key string) error {
		_, err := c.Put(ctx, cfg.Namespace, key, value, 0)
		return err
	})
	if err != nil {
		return res, err
	}
	res.Get, err = phase(ctx, cfg, "get", clients, func(ctx context.Context, c *cachenode.Client, key string) error {
		_, err := c.Get(ctx, cfg.Namespace, key)
		if errors.Is(err, cachenode.ErrNotFound) {
			return nil // a key the put phase did not reach: still a served get
		}
		return err
	})
	return res, err
}

// startNodes starts cfg.Nodes cache nodes on url, each on its own
// connection as separate processes would be, and waits until they are
// ready.
func startNodes(ctx context.Context, url string, cfg RecordsConfig) (stop func(), err error) {
	ids := make([]string, cfg.Nodes)
	for i := range ids {
		ids[i] = fmt.Sprintf("bench%d", i+1)
	}
	var nodes []*server.Server
	var conns []*bus.Conn
	stop = func() {
		for _, n := range nodes {
			n.Shutdown(context.Background())
		}
		for _, c := range conns {
			c.NC.Close()
		}
	}
	for _, id := range ids {
		c, err := bus.Connect(ctx, bus.ConnConfig{URL: url, Prefix: bus.DefaultPrefix, Name: id}, bus.WithLogger(cfg.Log))
		if err != nil {
			stop()
			return nil, err
		}
		conns = append(conns, c)
		sc := server.Config{ID: id, Baseline: ids, Backups: cfg.Backups}
		sc.Interval, sc.FailureTimeout = 200*time.Millisecond, time.Second
		n, err := server.Start(ctx, sc, server.Options{Conn: c, Log: cfg.Log})
		if err != nil {
			stop()
			return nil, err
		}
		nodes = append(nodes, n)
	}
	for {
		ready := true
		for _, n := range nodes {
			if n.Ready() != nil {
				ready = false
			}
		}
		if ready {
			return stop, nil
		}
		select {
		case <-ctx.Done():
			stop()
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// waitServed waits until the client sees every partition served.
func waitServed(ctx context.Context, c *cachenode.Client) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		if un, _ := c.Table().Coverage(); un == 0 && len(c.Table().Nodes) > 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("bench: no cache node serves every partition (is a node running?): %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// phase runs op from cfg.Clients goroutines for cfg.Duration.
func phase(ctx context.Context, cfg RecordsConfig, name string, clients []*cachenode.Client,
	op func(context.Context, *cachenode.Client, string) error) (PhaseResult, error) {
	r := PhaseResult{Op: name, Latency: &Histogram{}}
	var ops, errs atomic.Uint64
	var firstErr atomic.Value
	var mu sync.Mutex
	var wg sync.WaitGroup
	ctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	start := time.Now()
	for i := range cfg.Clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := clients[i%len(clients)]
			rng := rand.New(rand.NewPCG(uint64(i), uint64(start.UnixNano())))
			h := &Histogram{}
			key := make([]byte, 0, 32)
			for ctx.Err() == nil {
				key = fmt.Appendf(key[:0], "key:%012d", rng.IntN(cfg.Keys))
				t0 := time.Now()
				err := op(context.Background(), c, string(key))
				if err != nil {
					errs.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				h.Record(time.Since(t0))
				ops.Add(1)
			}
			mu.Lock()
			r.Latency.Merge(h)
			mu.Unlock()
		}()
	}
	wg.Wait()
	r.Elapsed, r.Ops, r.Errors = time.Since(start), ops.Load(), errs.Load()
	if e, ok := firstErr.Load().(string); ok {
		r.FirstError = e
	}
	if ctx := context.Cause(ctx); ctx != nil && !errors.Is(ctx, context.DeadlineExceeded) {
		return r, ctx
	}
	return r, nil
}

// RecordsHeader is the header of the records table; RecordsRow prints a
// row under it. The e2e script prints Redis's rows with the same pair.
func RecordsHeader(w io.Writer) {
	fmt.Fprintln(w, "system\top\tops/s\terrors\tp50 µs\tp99 µs\tmax µs\t")
}

// RecordsRow prints one phase's row.
func RecordsRow(w io.Writer, system string, p *PhaseResult) {
	fmt.Fprintf(w, "%s\t%s\t%.0f\t%d\t%s\t%s\t%s\t\n", system, p.Op, p.OpsPerSec(), p.Errors,
		us(p.Latency.Quantile(0.50)), us(p.Latency.Quantile(0.99)), us(p.Latency.Max()))
}

// WriteText prints the result as a table.
func (r *RecordsResult) WriteText(w io.Writer) error {
	c := r.Config
	where := fmt.Sprintf("%d in-process nodes with %d backup(s) on an embedded NATS", c.Nodes, c.Backups)
	if c.URL != "" {
		where = "the cache nodes of " + bus.RedactURL(c.URL)
	}
	fmt.Fprintf(w, "cachebus bench records: %d clients over %d connection(s), %d-byte values, %d keys, %s per phase, against %s\n",
		c.Clients, c.Conns, c.Size, c.Keys, c.Duration, where)
	fmt.Fprintf(w, "machine: %s\n", r.Machine)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	RecordsHeader(tw)
	RecordsRow(tw, "cachebus", &r.Put)
	RecordsRow(tw, "cachebus", &r.Get)
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, p := range []*PhaseResult{&r.Put, &r.Get} {
		if p.FirstError != "" {
			fmt.Fprintf(w, "%s: %d errors, first: %s\n", p.Op, p.Errors, p.FirstError)
		}
	}
	return nil
}
