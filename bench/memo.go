package bench

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cachebus/cachebus/cachenode/memo"
	"github.com/prometheus/client_golang/prometheus"
)

// The memo path measures what an app sees: memo.Client.Flush on one
// client, applied in the memory of every other. The flusher and each
// receiver are memo clients on their own connections, in one namespace;
// a receiver records the latency when its Observe hook runs, after the
// flush has reached its store.

// memoNamespace is the namespace the memo clients share.
const memoNamespace = "bench"

// memoWarmEntries is how many entries each memo client holds before the
// run, so that flushes reach a live store rather than an empty namespace.
const memoWarmEntries = 1000

// startReceiver starts subscriber i's memo client on its connection.
func (r *rig) startReceiver(ctx context.Context, s *benchSub, i int) error {
	s.reg = prometheus.NewRegistry()
	c, err := memo.New(ctx, s.conn, memo.Options{
		Namespace:  memoNamespace,
		ID:         fmt.Sprintf("bench-memo-%d", i),
		Registerer: s.reg,
		Observe:    s.memo.Apply,
	})
	if err != nil {
		return fmt.Errorf("bench: memo client %d: %w", i, err)
	}
	s.client = c
	return warm(ctx, c)
}

// warm fills c with memoWarmEntries small entries.
func warm(ctx context.Context, c *memo.Client) error {
	for i := range memoWarmEntries {
		key := "warm:" + strconv.Itoa(i)
		if _, err := c.Do(ctx, key, time.Hour, func(context.Context) ([]byte, error) {
			return []byte(key), nil
		}); err != nil {
			return fmt.Errorf("bench: memo warm-up: %w", err)
		}
	}
	return nil
}

// memoPhase has the flusher call Flush for n messages at the configured
// rate. Flush returns when the event log has acknowledged the event, so a
// pool of Flushers goroutines takes the messages as they come due: one
// alone would send one message per round trip. The key of a message
// carries the time its Flush was called; how late the publisher was on
// its schedule includes the wait for a free goroutine.
func (r *rig) memoPhase(ctx context.Context, kind byte, first uint64, n int) (time.Duration, *Histogram, error) {
	if n <= 0 {
		return 0, &Histogram{}, nil
	}
	var (
		jobs     = make(chan int, r.cfg.Window)
		late     atomic.Int64 // the latest start of a Flush, past its due time
		wg       sync.WaitGroup
		interval = float64(time.Second) / float64(r.cfg.Rate)
		start    = time.Now()
	)
	for range min(r.cfg.Flushers, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var buf []byte
			for i := range jobs {
				now := time.Now()
				storeMax(&late, int64(now.Sub(start)-time.Duration(float64(i)*interval)))
				seq := first + uint64(i)
				buf = AppendKey(buf[:0], kind, seq, now)
				fctx, cancel := context.WithTimeout(ctx, r.cfg.Drain)
				err := r.flusher.Flush(fctx, string(buf))
				cancel()
				switch {
				case err == nil:
					if kind == kindMeasured {
						r.memoPub.add(seq)
					}
				case ctx.Err() != nil:
					// The run is over; Fanout returns ctx's error.
				default:
					r.memoPub.failed.Add(1)
					r.log.Warn("bench memo flush failed", "seq", seq, "err", err)
				}
			}
		}()
	}
	_, behind, err := Pace(ctx, float64(r.cfg.Rate), n, func(i int) error {
		select {
		case jobs <- i:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	close(jobs)
	wg.Wait()
	behind = max(behind, time.Duration(late.Load()))
	if err != nil {
		return behind, nil, err
	}
	return r.endPhase(ctx, PathMemo, kind, behind)
}

// memoGapFlushes counts the receivers' whole-namespace flushes for events
// missing from the log; a bench run must need none.
func (r *rig) memoGapFlushes() uint64 {
	var n float64
	for _, s := range r.subs {
		if s.reg == nil {
			continue
		}
		families, err := s.reg.Gather()
		if err != nil {
			r.log.Warn("bench memo metrics", "err", err)
			continue
		}
		for _, f := range families {
			if f.GetName() != "cachebus_memo_gap_flushes_total" {
				continue
			}
			for _, m := range f.GetMetric() {
				n += m.GetCounter().GetValue()
			}
		}
	}
	return uint64(n)
}

// storeMax raises a to v if v is greater.
func storeMax(a *atomic.Int64, v int64) {
	for cur := a.Load(); v > cur && !a.CompareAndSwap(cur, v); cur = a.Load() {
	}
}
