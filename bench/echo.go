package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/nats-io/nats.go"
)

// The echo benchmark is the ceiling of the records benchmark: the same
// requests in flight, over the same NATS, to as many responders as there
// are cache nodes, each answering at once with a reply of the request's
// size and doing nothing else. Requests travel as well framed as they can
// be: each responder always has one message in flight carrying its share
// of the requests. A cache tier on NATS request/reply cannot beat it on
// the same machine; the records benchmark's get is compared with it.

// EchoSubject is the subject echo responder i (from 1) answers on.
func EchoSubject(i int) string { return fmt.Sprintf("cachebus-bench.echo.%d", i) }

// EchoConfig configures an echo benchmark.
type EchoConfig struct {
	// URL of a NATS server whose responders (see Respond) answer; empty
	// runs an embedded server and the responders in this process.
	URL string
	// Responders, as many as the records benchmark's nodes. Default 2.
	Responders int
	// Clients is the number of requests in flight, as in RecordsConfig.
	// Default 16.
	Clients int
	// Duration of the measurement. Default 10s.
	Duration time.Duration
	// Size of each request and reply: a value plus the record protocol's
	// header. Default 100.
	Size int
	Log  *slog.Logger
}

// EchoResult is an echo benchmark's result.
type EchoResult struct {
	Config  EchoConfig
	Machine Machine
	// PerMessage is how many requests each message carries.
	PerMessage int
	Requests   uint64
	Messages   uint64
	Elapsed    time.Duration
}

// RequestsPerSec is the rate of requests answered.
func (r *EchoResult) RequestsPerSec() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Requests) / r.Elapsed.Seconds()
}

// echoOverhead approximates what the record protocol adds to a value in a
// frame: the request line, key and lengths.
const echoOverhead = 40

// Echo measures request/reply through NATS with nothing behind it.
func Echo(ctx context.Context, cfg EchoConfig) (*EchoResult, error) {
	if cfg.Responders <= 0 {
		cfg.Responders = 2
	}
	if cfg.Clients <= 0 {
		cfg.Clients = 16
	}
	if cfg.Duration <= 0 {
		cfg.Duration = 10 * time.Second
	}
	if cfg.Size <= 0 {
		cfg.Size = 100
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	url := cfg.URL
	if url == "" {
		srv, err := bus.StartServer(bus.ServerConfig{Host: "127.0.0.1", Port: -1, StoreDir: ""}, cfg.Log)
		if err != nil {
			return nil, fmt.Errorf("embedded nats: %w", err)
		}
		defer srv.Shutdown()
		url = srv.ClientURL()
		for i := 1; i <= cfg.Responders; i++ {
			stop, err := Respond(ctx, url, i, cfg.Log)
			if err != nil {
				return nil, err
			}
			defer stop()
		}
	}
	c, err := bus.Connect(ctx, bus.ConnConfig{URL: url, Prefix: bus.DefaultPrefix, Name: "cachebus bench echo"}, bus.WithLogger(cfg.Log))
	if err != nil {
		return nil, err
	}
	defer c.NC.Close()
	nc := c.NC
	per := (cfg.Clients + cfg.Responders - 1) / cfg.Responders
	payload := make([]byte, per*(cfg.Size+echoOverhead))
	res := &EchoResult{Config: cfg, Machine: ThisMachine(), PerMessage: per}
	var msgs atomic.Uint64
	var failed atomic.Value
	ctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	start := time.Now()
	var wg sync.WaitGroup
	for i := 1; i <= cfg.Responders; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Second)
				_, err := nc.RequestWithContext(rctx, EchoSubject(i), payload)
				rcancel()
				if err != nil {
					failed.CompareAndSwap(nil, fmt.Errorf("bench: echo %d: %w", i, err))
					cancel()
					return
				}
				msgs.Add(1)
			}
		}()
	}
	wg.Wait()
	res.Elapsed = time.Since(start)
	res.Messages = msgs.Load()
	res.Requests = res.Messages * uint64(per)
	if err, ok := failed.Load().(error); ok {
		return res, err
	}
	return res, nil
}

// Respond answers echo requests on EchoSubject(i) of the NATS server at
// url until stop is called or ctx is done.
func Respond(ctx context.Context, url string, i int, log *slog.Logger) (stop func(), err error) {
	c, err := bus.Connect(ctx, bus.ConnConfig{URL: url, Prefix: bus.DefaultPrefix, Name: fmt.Sprintf("cachebus bench echo responder %d", i)}, bus.WithLogger(log))
	if err != nil {
		return nil, err
	}
	nc := c.NC
	sub, err := nc.Subscribe(EchoSubject(i), func(m *nats.Msg) {
		if err := m.Respond(m.Data); err != nil {
			log.Debug("echo reply not sent", "err", err)
		}
	})
	if err == nil {
		err = nc.Flush()
	}
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("bench: echo responder %d: %w", i, err)
	}
	_ = sub.SetPendingLimits(-1, -1)
	stopped := make(chan struct{})
	var once sync.Once
	stop = func() {
		once.Do(func() {
			close(stopped)
			_ = nc.Drain()
		})
	}
	go func() {
		select {
		case <-ctx.Done():
			stop()
		case <-stopped:
		}
	}()
	return stop, nil
}

// WriteText prints the result.
func (r *EchoResult) WriteText(w io.Writer) error {
	c := r.Config
	where := fmt.Sprintf("%d in-process responders on an embedded NATS", c.Responders)
	if c.URL != "" {
		where = fmt.Sprintf("%d responders on %s", c.Responders, bus.RedactURL(c.URL))
	}
	fmt.Fprintf(w, "cachebus bench echo: %d requests in flight as %d messages of %d, %d-byte values, %s, against %s\n",
		c.Clients, c.Responders, r.PerMessage, c.Size, c.Duration, where)
	fmt.Fprintf(w, "machine: %s\n", r.Machine)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "system\top\treq/s\tmessages/s\t")
	fmt.Fprintf(tw, "nats\techo\t%.0f\t%.0f\t\n", r.RequestsPerSec(), float64(r.Messages)/r.Elapsed.Seconds())
	return tw.Flush()
}
