package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"sort"
	"strings"
	"time"

	"github.com/cachebus/cachebus/bench"
)

// benchConfig configures `cachebus bench`. Every field is also a flag.
type benchConfig struct {
	Subscribers int           `envconfig:"BENCH_SUBSCRIBERS" default:"8" desc:"subscribers, each on its own NATS connection"`
	Rate        int           `envconfig:"BENCH_RATE" default:"10000" desc:"publish rate in messages per second (latency mode)"`
	Duration    time.Duration `envconfig:"BENCH_DURATION" default:"10s" desc:"time measured per path (latency mode) or flood time (throughput mode)"`
	Rounds      int           `envconfig:"BENCH_ROUNDS" default:"0" desc:"alternating core/bus (or core/memo) rounds per path (0: one per second of duration)"`
	Throughput  bool          `envconfig:"BENCH_THROUGHPUT" default:"false" desc:"measure keys per second through the event log instead of latency"`
	Memo        bool          `envconfig:"BENCH_MEMO" default:"false" desc:"measure memo.Client Flush on one client, applied on the others, instead of the bus path"`
	Flushers    int           `envconfig:"BENCH_FLUSHERS" default:"0" desc:"goroutines calling Flush in memo mode (0: 16)"`
	Batch       int           `envconfig:"BENCH_BATCH" default:"100" desc:"keys per expire in throughput mode"`
	Storage     string        `envconfig:"BENCH_STORAGE" default:"file" desc:"event log storage for the bench: file or memory"`
	Window      int           `envconfig:"BENCH_WINDOW" default:"0" desc:"unacknowledged publishes at most (0: 4096)"`
	NATS        string        `envconfig:"BENCH_NATS" desc:"URL of an external NATS server with JetStream; empty runs an embedded one in this process"`
	CPUProfile  string        `envconfig:"BENCH_CPUPROFILE" desc:"write a CPU profile of the run to this file"`
	Clients     int           `envconfig:"BENCH_CLIENTS" default:"16" desc:"records: requests in flight, each waiting for its reply"`
	Conns       int           `envconfig:"BENCH_CONNS" default:"1" desc:"records: NATS connections the clients share"`
	Nodes       int           `envconfig:"BENCH_NODES" default:"2" desc:"records: cache nodes started in process when --nats is not given"`
	Backups     int           `envconfig:"BENCH_BACKUPS" default:"1" desc:"records: backups per partition of the in-process nodes"`
	Size        int           `envconfig:"BENCH_SIZE" default:"100" desc:"records: value size in bytes"`
	Keys        int           `envconfig:"BENCH_KEYS" default:"100000" desc:"records: key space"`
	Records     int           `envconfig:"BENCH_RECORDS" default:"1000000" desc:"replay: long-term records loaded, then replayed"`
	Readers     int           `envconfig:"BENCH_READERS" default:"0" desc:"replay: readers of the parallel replay (0: the CPUs, 2 to 4)"`
	Respond     int           `envconfig:"BENCH_RESPOND" default:"0" desc:"echo: answer as responder N (from 1) until stopped, instead of measuring"`
}

// benchKinds are the benchmarks `cachebus bench <kind>` runs.
var benchKinds = map[string]func(ctx context.Context, env *runEnv, cfg *benchConfig) error{
	"echo":    runBenchEcho,
	"fanout":  runBenchFanout,
	"records": runBenchRecords,
	"replay":  runBenchReplay,
}

func init() {
	register(&command{
		name:    "bench",
		summary: "measure the bus (fanout: publish→applied latency or throughput) or the cache tier (records: get and put ops/s; echo: the NATS request/reply ceiling of records; replay: long-term records read back into memory)",
		usage:   "echo [--clients 16] [--nodes 2] [--size 100] [--duration 10s] [--nats URL] [--respond N]\n  fanout [--subscribers 8] [--rate 10000] [--duration 10s] [--memo] [--throughput] [--batch 100] [--nats URL]\n  records [--clients 16] [--duration 10s] [--nodes 2] [--backups 1] [--size 100] [--nats URL]\n  replay [--records 1000000] [--size 100] [--rounds 3] [--readers N] [--nats URL]",
		config: func() any {
			return &benchConfig{Subscribers: 8, Rate: 10000, Duration: 10 * time.Second, Batch: 100,
				Clients: 16, Conns: 1, Nodes: 2, Backups: 1, Size: 100, Keys: 100000, Records: 1000000}
		},
		flags: func(fs *flag.FlagSet, cfgAny any) {
			cfg := cfgAny.(*benchConfig)
			fs.IntVar(&cfg.Subscribers, "subscribers", cfg.Subscribers, "subscribers, each on its own NATS connection")
			fs.IntVar(&cfg.Rate, "rate", cfg.Rate, "publish rate in messages per second (latency mode)")
			fs.DurationVar(&cfg.Duration, "duration", cfg.Duration, "time measured per path, or flood time in throughput mode")
			fs.IntVar(&cfg.Rounds, "rounds", cfg.Rounds, "alternating core/bus (or core/memo) rounds per path (0: one per second)")
			fs.BoolVar(&cfg.Throughput, "throughput", cfg.Throughput, "measure keys per second through the event log")
			fs.BoolVar(&cfg.Memo, "memo", cfg.Memo, "measure Flush on one memo client applied on the others, beside core NATS")
			fs.IntVar(&cfg.Flushers, "flushers", cfg.Flushers, "goroutines calling Flush in memo mode (0: 16)")
			fs.IntVar(&cfg.Batch, "batch", cfg.Batch, "keys per expire in throughput mode")
			fs.StringVar(&cfg.Storage, "storage", cfg.Storage, "event log storage: file or memory")
			fs.IntVar(&cfg.Window, "window", cfg.Window, "unacknowledged publishes at most (0: 4096)")
			fs.StringVar(&cfg.NATS, "nats", cfg.NATS, "external NATS URL (default: an embedded server)")
			fs.StringVar(&cfg.CPUProfile, "cpuprofile", cfg.CPUProfile, "write a CPU profile to this file")
			fs.IntVar(&cfg.Clients, "clients", cfg.Clients, "records: requests in flight")
			fs.IntVar(&cfg.Conns, "conns", cfg.Conns, "records: NATS connections the clients share")
			fs.IntVar(&cfg.Nodes, "nodes", cfg.Nodes, "records: in-process cache nodes (without --nats)")
			fs.IntVar(&cfg.Backups, "backups", cfg.Backups, "records: backups per partition of the in-process nodes")
			fs.IntVar(&cfg.Size, "size", cfg.Size, "records: value size in bytes")
			fs.IntVar(&cfg.Keys, "keys", cfg.Keys, "records: key space")
			fs.IntVar(&cfg.Records, "records", cfg.Records, "replay: long-term records loaded, then replayed")
			fs.IntVar(&cfg.Respond, "respond", cfg.Respond, "echo: answer as responder N (from 1) until stopped, instead of measuring")
			fs.IntVar(&cfg.Readers, "readers", cfg.Readers, "replay: readers of the parallel replay (0: the CPUs, 2 to 4)")
		},
		run: runBench,
	})
}

func runBench(ctx context.Context, env *runEnv, cfgAny any, args []string) error {
	cfg := cfgAny.(*benchConfig)
	kinds := make([]string, 0, len(benchKinds))
	for k := range benchKinds {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	if len(args) != 1 {
		return usagef("want one benchmark: %s", strings.Join(kinds, ", "))
	}
	run, ok := benchKinds[args[0]]
	if !ok {
		return usagef("unknown benchmark %q: want %s", args[0], strings.Join(kinds, ", "))
	}
	if cfg.CPUProfile != "" {
		f, err := os.Create(cfg.CPUProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	return run(ctx, env, cfg)
}

func runBenchFanout(ctx context.Context, env *runEnv, cfg *benchConfig) error {
	res, err := bench.Fanout(ctx, bench.FanoutConfig{
		URL:         cfg.NATS,
		Subscribers: cfg.Subscribers,
		Rate:        cfg.Rate,
		Duration:    cfg.Duration,
		Rounds:      cfg.Rounds,
		Throughput:  cfg.Throughput,
		Memo:        cfg.Memo,
		Flushers:    cfg.Flushers,
		Batch:       cfg.Batch,
		Window:      cfg.Window,
		Storage:     cfg.Storage,
		Log:         env.log,
	})
	if res == nil {
		return benchDone(env, "fanout", nil, err)
	}
	return benchDone(env, "fanout", res, err)
}

// benchDone prints what a benchmark measured, even when it then failed,
// and turns a configuration error into a usage error.
func benchDone(env *runEnv, kind string, res interface{ WriteText(io.Writer) error }, err error) error {
	if res != nil {
		if werr := res.WriteText(env.stdout); werr != nil {
			return werr
		}
	}
	var ce *bench.ConfigError
	if errors.As(err, &ce) {
		return usagef("%v", err)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", kind, err)
	}
	return nil
}

func runBenchRecords(ctx context.Context, env *runEnv, cfg *benchConfig) error {
	res, err := bench.Records(ctx, bench.RecordsConfig{
		URL:      cfg.NATS,
		Nodes:    cfg.Nodes,
		Backups:  cfg.Backups,
		Clients:  cfg.Clients,
		Conns:    cfg.Conns,
		Duration: cfg.Duration,
		Size:     cfg.Size,
		Keys:     cfg.Keys,
		Log:      env.log,
	})
	if res == nil {
		return benchDone(env, "records", nil, err)
	}
	return benchDone(env, "records", res, err)
}

// runBenchEcho measures the NATS request/reply ceiling of the records
// benchmark, or with --respond serves as one of its responders (the
// records script runs them as processes of their own, like cache nodes).
func runBenchEcho(ctx context.Context, env *runEnv, cfg *benchConfig) error {
	if cfg.Respond > 0 {
		if cfg.NATS == "" {
			return usagef("echo --respond needs --nats")
		}
		stop, err := bench.Respond(ctx, cfg.NATS, cfg.Respond, env.log)
		if err != nil {
			return err
		}
		fmt.Fprintf(env.stdout, "echo responder %d on %s\n", cfg.Respond, bench.EchoSubject(cfg.Respond))
		<-ctx.Done()
		stop()
		return nil
	}
	res, err := bench.Echo(ctx, bench.EchoConfig{
		URL:        cfg.NATS,
		Responders: cfg.Nodes,
		Clients:    cfg.Clients,
		Duration:   cfg.Duration,
		Size:       cfg.Size,
		Log:        env.log,
	})
	if res == nil {
		return benchDone(env, "echo", nil, err)
	}
	return benchDone(env, "echo", res, err)
}
