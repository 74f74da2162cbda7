package bench

import (
	"context"
	"time"
)

// Pace calls send for i = 0, 1, … n-1 on an absolute schedule: call i is
// due at start + i/rate. It sleeps until the next call is due and, when it
// wakes late, makes every call that has come due at once, so the average
// rate holds however coarse the sleeps are. The Go timer wakes about once a
// millisecond on Linux, so 10,000 msg/s leave in bursts of about ten, the
// same on every path. (A nanosleep system call paces finer but holds one of
// the scheduler's Ps while it sleeps; on two cores that cost the measured
// paths more than the bursts do.) It stops early when ctx ends
// or send fails, and returns how many calls were made and how far behind
// schedule the latest call was.
func Pace(ctx context.Context, rate float64, n int, send func(i int) error) (int, time.Duration, error) {
	if n <= 0 || rate <= 0 {
		return 0, 0, nil
	}
	interval := float64(time.Second) / rate
	start := time.Now()
	due := func(i int) time.Duration { return time.Duration(float64(i) * interval) }
	var behind time.Duration
	for i := 0; i < n; {
		if err := ctx.Err(); err != nil {
			return i, behind, err
		}
		now := time.Since(start)
		if wait := due(i) - now; wait > 0 {
			time.Sleep(wait)
			continue
		}
		behind = max(behind, now-due(i))
		for ; i < n && due(i) <= now; i++ {
			if err := send(i); err != nil {
				return i, behind, err
			}
		}
	}
	return n, behind, nil
}
