package fault

import (
	"context"
	"testing"
	"time"
)

// budget bounds a whole test: its context ends at the deadline, and within
// cuts each of the test's waits to what is left, so that a slow step is
// reported by the wait that saw it rather than by go test's timeout.
func budget(t *testing.T, total time.Duration) (ctx context.Context, within func(time.Duration) time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), total)
	t.Cleanup(cancel)
	deadline, _ := ctx.Deadline()
	return ctx, func(d time.Duration) time.Duration { return max(0, min(d, time.Until(deadline))) }
}
