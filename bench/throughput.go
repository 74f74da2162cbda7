package bench

import (
	"context"
	"math"
	"time"
)

// ThroughputResult is the throughput mode's result.
type ThroughputResult struct {
	Batch int
	// Published counts expires acknowledged by the log, Unacked the others.
	Published, Unacked uint64
	// PublishTime is how long the publisher ran.
	PublishTime time.Duration
	// KeysPerSec is, per subscriber, the keys applied divided by the time
	// from the first publish to its last apply.
	KeysPerSec []float64
	// Slowest is the lowest of KeysPerSec: what every subscriber achieved.
	Slowest float64
	// PublishedKeysPerSec is the rate the log acknowledged keys at.
	PublishedKeysPerSec float64
	// Expected, Received and Lost count expires as in PathResult.
	Expected, Received, Lost, Duplicates uint64
	ViaCore, ViaLog, Flushes             uint64
	// Latency is publish→applied under the flood.
	Latency *Histogram
}

// throughput floods the event log with expires of Batch keys for Duration,
// as fast as acknowledgements allow, and measures what every subscriber
// applies.
func (r *rig) throughput(ctx context.Context) (*ThroughputResult, error) {
	cfg := r.cfg
	start := time.Now()
	deadline := start.Add(cfg.Duration)
	var seq uint64
	for ; time.Now().Before(deadline); seq++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		data := AppendPayload(make([]byte, 0, 16*cfg.Batch+64), kindMeasured, seq, time.Now(), cfg.Batch)
		if err := r.publishAsync(data); err != nil {
			r.busPub.failed.Add(1)
			r.log.Warn("bench publish failed", "err", err)
		}
	}
	pubTime := time.Since(start)
	r.log.Info("bench flood done, waiting for subscribers", "expires", seq, "in", pubTime)
	if err := r.settle(ctx, PathBus, kindMeasured); err != nil {
		return nil, err
	}
	p := r.pathResult(PathBus)
	res := &ThroughputResult{
		Batch: cfg.Batch, Published: p.Published, Unacked: p.Unacked, PublishTime: pubTime,
		Expected: p.Expected, Received: p.Received, Lost: p.Lost, Duplicates: p.Duplicates,
		ViaCore: p.ViaCore, ViaLog: p.ViaLog, Flushes: p.Flushes, Latency: p.Latency,
		PublishedKeysPerSec: float64(p.Published*uint64(cfg.Batch)) / pubTime.Seconds(),
	}
	res.Slowest = math.Inf(1)
	for _, s := range r.subs {
		s.bus.mu.Lock()
		kps := 0.0
		if el := s.bus.last.Sub(start); el > 0 {
			kps = float64(s.bus.keys) / el.Seconds()
		}
		s.bus.mu.Unlock()
		res.KeysPerSec = append(res.KeysPerSec, kps)
		res.Slowest = min(res.Slowest, kps)
	}
	return res, nil
}
