package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/nats-io/nuid"
)

// ErrLost is returned, with the full result, when a subscriber missed an
// event the event log had acknowledged: the one thing the bus promises.
var ErrLost = errors.New("bench: acknowledged events lost")

// ServerEmbedded is FanoutResult.Server for a run on an embedded server.
const ServerEmbedded = "embedded in-process"

// Path names.
const (
	PathCore = "core"
	PathBus  = "bus"
	PathMemo = "memo"
)

// FanoutConfig configures Fanout. A zero field takes its default.
type FanoutConfig struct {
	// URL of an external NATS server with JetStream; empty starts an
	// embedded server in this process on a free loopback port.
	URL string
	// Subscribers is the number of subscribers, each on its own
	// connection. Default 8.
	Subscribers int
	// Rate is the publish rate in messages per second (latency mode).
	// Default 10,000.
	Rate int
	// Duration is how long each path is measured (latency mode), or how
	// long the publisher floods (throughput mode). Default 10s.
	Duration time.Duration
	// Rounds splits each path's Duration into this many alternating
	// rounds: core, bus, bus, core, core, bus… Default one per second.
	Rounds int
	// Warmup is an unrecorded run of each path before the rounds. Default
	// 500ms; negative for none.
	Warmup time.Duration
	// Throughput selects the throughput mode: expires of Batch keys
	// through the event log as fast as acknowledgements allow.
	Throughput bool
	// Memo replaces the bus path of the latency mode by the memo path:
	// one memo.Client calls Flush at Rate, and Subscribers memo.Clients
	// record when they have applied it (memo.Options.Observe).
	Memo bool
	// Flushers is the number of goroutines calling Flush in memo mode;
	// each waits for the log's acknowledgement before it takes the next
	// message, so enough of them keep the rate. Default 16.
	Flushers int
	// Batch is the number of keys per expire in throughput mode. Default 100.
	Batch int
	// Storage is the event log's storage, "file" (default) or "memory".
	Storage string
	// Window is the largest number of unacknowledged asynchronous
	// publishes. Default 4096.
	Window int
	// Drain bounds the wait for the last deliveries after each phase.
	// Default 10s; in throughput mode 30s or three times Duration.
	Drain time.Duration
	// Prefix is the subject prefix of the bench's own hierarchy and event
	// log, deleted at the end. Default "cachebus-bench-<unique id>".
	Prefix string
	// Log receives progress at info level; the bus connections log at warn
	// level and above only (not every applied expire). Nil discards.
	Log *slog.Logger
}

func (c *FanoutConfig) defaults() error {
	if c.Subscribers == 0 {
		c.Subscribers = 8
	}
	if c.Rate == 0 {
		c.Rate = 10000
	}
	if c.Duration == 0 {
		c.Duration = 10 * time.Second
	}
	if c.Rounds == 0 {
		c.Rounds = max(1, int(c.Duration/time.Second))
	}
	if c.Warmup == 0 {
		c.Warmup = 500 * time.Millisecond
	}
	if c.Batch == 0 {
		c.Batch = 100
	}
	if c.Window == 0 {
		c.Window = 4096
	}
	if c.Flushers == 0 {
		c.Flushers = 16
	}
	if c.Drain == 0 {
		c.Drain = 10 * time.Second
		if c.Throughput {
			// The publisher may run ahead of the subscribers for the
			// whole flood; they get time to catch up.
			c.Drain = max(30*time.Second, 3*c.Duration)
		}
	}
	if c.Prefix == "" {
		// Unique per run, so that runs sharing an external server keep to
		// their own subjects and event log.
		c.Prefix = "cachebus-bench-" + nuid.Next()
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	switch {
	case c.Subscribers < 1 || c.Subscribers > 1000:
		return configErr("subscribers", "%d: want 1 to 1000", c.Subscribers)
	case c.Rate < 1 || c.Rate > 1_000_000:
		return configErr("rate", "%d: want 1 to 1,000,000 msg/s", c.Rate)
	case c.Duration < 0 || c.Duration > time.Hour:
		return configErr("duration", "%s: want up to an hour", c.Duration)
	case c.Rounds < 1:
		return configErr("rounds", "%d: want at least 1", c.Rounds)
	case c.Batch < 1 || c.Batch > bus.MaxItems:
		return configErr("batch", "%d: want 1 to %d keys", c.Batch, bus.MaxItems)
	case c.Window < 1:
		return configErr("window", "%d: want at least 1", c.Window)
	case c.Flushers < 1 || c.Flushers > 1024:
		return configErr("flushers", "%d: want 1 to 1024", c.Flushers)
	case c.Memo && c.Throughput:
		return configErr("memo", "and throughput: the memo mode measures latency only")
	}
	if _, err := bus.NewSubjects(c.Prefix); err != nil {
		return configErr("prefix", "%v", err)
	}
	return nil
}

// ConfigError is a FanoutConfig field out of range.
type ConfigError struct {
	Field, Reason string
}

func (e *ConfigError) Error() string { return "bench: " + e.Field + " " + e.Reason }

func configErr(field, format string, args ...any) *ConfigError {
	return &ConfigError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// FanoutResult is what Fanout measured.
type FanoutResult struct {
	// Config is the configuration run, defaults filled in.
	Config FanoutConfig
	// Server is ServerEmbedded or "external <URL>".
	Server string
	// URL is the client URL every connection used.
	URL string
	// Machine describes the CPUs and how busy they were at the start.
	Machine Machine
	// Core and Bus are the latency mode's paths; in memo mode Memo
	// takes the place of Bus.
	Core, Bus, Memo *PathResult
	// Rounds are the latency mode's rounds, in order.
	Rounds []Round
	// Throughput is the throughput mode's result.
	Throughput *ThroughputResult
}

// Round is one alternating round of the latency mode: what each path
// measured in it, over all subscribers. Comparing the paths round by round
// keeps a burst of load from elsewhere, which lands in one phase, from
// deciding the overall ratio. In memo mode BusP50 and BusP99 are the memo
// path's.
type Round struct {
	CoreP50, CoreP99, BusP50, BusP99 time.Duration
}

// PathResult is one path of the latency mode, over all its rounds and all
// subscribers.
type PathResult struct {
	Name string
	// Published counts messages published; for the bus and memo paths,
	// those the event log acknowledged.
	Published uint64
	// Unacked counts bus publishes, or memo flushes, that failed or were
	// not acknowledged.
	Unacked uint64
	// Expected is Published × subscribers; Received the deliveries of
	// those, each counted once per subscriber; Lost the difference.
	Expected, Received, Lost uint64
	// Duplicates counts a message applied twice by one subscriber.
	Duplicates uint64
	// ViaCore and ViaLog count the bus or memo path's events by the copy
	// that applied them first; Flushes the handler's flushes (gaps).
	ViaCore, ViaLog, Flushes uint64
	// Behind is how late the publisher was on its schedule, at worst.
	Behind time.Duration
	// CPU is the CPU time this process spent while the path ran, from the
	// first publish to the last delivery of each round (with an embedded
	// server, the server's share included).
	CPU time.Duration
	// Latency is publish→applied at every subscriber.
	Latency *Histogram
	// WorstP99 is the p99 of the slowest subscriber.
	WorstP99 time.Duration
	// ByLog is the latency of the bus path's events applied from their
	// log copy, because it came before the core copy (or instead of it).
	ByLog *Histogram
}

// CPUPerMessage is CPU divided by the messages published.
func (p *PathResult) CPUPerMessage() time.Duration {
	if p.Published == 0 {
		return 0
	}
	return p.CPU / time.Duration(p.Published)
}

// Fanout runs the fan-out benchmark that cfg describes. The result is
// returned with ErrLost when a bus subscriber, or a memo client, missed an
// acknowledged event.
func Fanout(ctx context.Context, cfg FanoutConfig) (*FanoutResult, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	r, err := newRig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer r.close()
	res := &FanoutResult{Config: cfg, Server: r.server, URL: r.url, Machine: ThisMachine()}
	if cfg.Throughput {
		res.Throughput, err = r.throughput(ctx)
		if err == nil && res.Throughput.Lost > 0 {
			err = fmt.Errorf("%w: %d deliveries of %d", ErrLost, res.Throughput.Lost, res.Throughput.Expected)
		}
		return res, err
	}
	var other *PathResult
	res.Core, other, res.Rounds, err = r.latency(ctx)
	if err != nil {
		return res, err
	}
	if cfg.Memo {
		res.Memo = other
	} else {
		res.Bus = other
	}
	if other.Lost > 0 {
		err = fmt.Errorf("%w: %d deliveries of %d", ErrLost, other.Lost, other.Expected)
	}
	return res, err
}

// latency runs the latency mode: warm-up, then the alternating rounds. It
// returns the core path and the one measured beside it.
func (r *rig) latency(ctx context.Context) (*PathResult, *PathResult, []Round, error) {
	cfg := r.cfg
	other := r.otherPath()
	perRound := int(math.Round(float64(cfg.Rate) * cfg.Duration.Seconds() / float64(cfg.Rounds)))
	behind, cpu := map[string]time.Duration{}, map[string]time.Duration{}
	if cfg.Warmup > 0 {
		n := int(float64(cfg.Rate) * cfg.Warmup.Seconds())
		for _, path := range []string{PathCore, other} {
			if _, _, err := r.phase(ctx, path, kindWarmup, 0, n); err != nil {
				return nil, nil, nil, err
			}
		}
	}
	next := map[string]uint64{}
	rounds := make([]Round, cfg.Rounds)
	for round := range cfg.Rounds {
		order := []string{PathCore, other}
		if round%2 == 1 {
			order[0], order[1] = order[1], order[0]
		}
		for _, path := range order {
			cpu0 := processCPU()
			b, h, err := r.phase(ctx, path, kindMeasured, next[path], perRound)
			if err != nil {
				return nil, nil, nil, err
			}
			if path == PathCore {
				rounds[round].CoreP50, rounds[round].CoreP99 = h.Quantile(0.5), h.Quantile(0.99)
			} else {
				rounds[round].BusP50, rounds[round].BusP99 = h.Quantile(0.5), h.Quantile(0.99)
			}
			cpu[path] += processCPU() - cpu0
			next[path] += uint64(perRound)
			behind[path] = max(behind[path], b)
		}
		r.log.Info("bench round done", "round", round+1, "of", cfg.Rounds)
	}
	core, res := r.pathResult(PathCore), r.pathResult(other)
	core.Behind, res.Behind = behind[PathCore], behind[other]
	core.CPU, res.CPU = cpu[PathCore], cpu[other]
	if other == PathMemo {
		res.Flushes = r.memoGapFlushes()
	}
	return core, res, rounds, nil
}

// phase publishes n messages on one path at the configured rate, then
// waits until every subscriber has applied them (and, for the bus path,
// has consumed the log up to them), so that no phase runs in another's
// wake. It returns how late the publisher was on its schedule and the
// latencies of the phase.
func (r *rig) phase(ctx context.Context, path string, kind byte, first uint64, n int) (time.Duration, *Histogram, error) {
	var (
		buf   []byte
		sent  uint64
		sendF func(int) error
	)
	switch path {
	case PathCore:
		sendF = func(i int) error {
			seq := first + uint64(i)
			buf = AppendPayload(buf[:0], kind, seq, time.Now(), 1)
			if err := r.pub.NC.Publish(r.coreSubject, buf); err != nil {
				return fmt.Errorf("bench: core publish: %w", err)
			}
			sent++
			if kind == kindMeasured {
				r.corePub.add(seq)
			}
			return nil
		}
	case PathBus:
		sendF = func(i int) error {
			seq := first + uint64(i)
			if err := r.publishAsync(AppendPayload(nil, kind, seq, time.Now(), 1)); err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				r.busPub.failed.Add(1)
				r.log.Warn("bench publish failed", "err", err)
			}
			return nil
		}
	case PathMemo:
		return r.memoPhase(ctx, kind, first, n)
	}
	_, behind, err := Pace(ctx, float64(r.cfg.Rate), n, sendF)
	if err != nil {
		return behind, nil, err
	}
	return r.endPhase(ctx, path, kind, behind)
}

// endPhase waits for the phase's deliveries and gathers its latencies.
func (r *rig) endPhase(ctx context.Context, path string, kind byte, behind time.Duration) (time.Duration, *Histogram, error) {
	if err := r.settle(ctx, path, kind); err != nil {
		return behind, nil, err
	}
	h := &Histogram{}
	for _, s := range r.subs {
		s.rec(path).takePhase(h)
	}
	if kind == kindMeasured {
		r.log.Info("bench phase", "path", path, "p50_us", us(h.Quantile(0.5)), "p99_us", us(h.Quantile(0.99)),
			"max_us", us(h.Max()), "behind", behind.Round(time.Microsecond))
	}
	return behind, h, nil
}

// pathResult gathers what every subscriber recorded on one path.
func (r *rig) pathResult(path string) *PathResult {
	pub := r.sent(path)
	res := &PathResult{Name: path, Latency: &Histogram{}, ByLog: &Histogram{}, Unacked: pub.failed.Load()}
	pub.mu.Lock()
	res.Published = pub.set.countAnd(pub.set)
	for _, s := range r.subs {
		rc := s.rec(path)
		rc.mu.Lock()
		res.Received += rc.seen.countAnd(pub.set)
		res.Duplicates += rc.dups
		res.ViaCore += rc.viaCore
		res.ViaLog += rc.viaLog
		res.Flushes += rc.flushes
		res.Latency.Merge(&rc.hist)
		res.ByLog.Merge(&rc.byLog)
		res.WorstP99 = max(res.WorstP99, rc.hist.Quantile(0.99))
		rc.mu.Unlock()
	}
	pub.mu.Unlock()
	res.Expected = res.Published * uint64(len(r.subs))
	res.Lost = res.Expected - min(res.Received, res.Expected)
	return res
}
