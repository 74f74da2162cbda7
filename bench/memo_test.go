package bench

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus/bustest"
)

// TestFanoutMemoCounts runs the memo mode with 2 receivers and 200 flushes
// per path and checks the bookkeeping, not the speed.
func TestFanoutMemoCounts(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := Fanout(ctx, FanoutConfig{Subscribers: 2, Rate: 1000, Duration: 200 * time.Millisecond, Rounds: 2,
		Warmup: 20 * time.Millisecond, Memo: true, Flushers: 4, Log: bustest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if res.Bus != nil || res.Memo == nil || res.Memo.Name != PathMemo {
		t.Fatalf("memo mode gave bus %+v, memo %+v", res.Bus, res.Memo)
	}
	for _, p := range []*PathResult{res.Core, res.Memo} {
		if p.Published != 200 || p.Expected != 400 || p.Received != 400 || p.Lost != 0 || p.Duplicates != 0 {
			t.Errorf("%s: published %d expected %d received %d lost %d dup %d; want 200, 400, 400, 0, 0",
				p.Name, p.Published, p.Expected, p.Received, p.Lost, p.Duplicates)
		}
		checkSane(t, p.Name, p.Latency, 400)
	}
	if m := res.Memo; m.Unacked != 0 || m.Flushes != 0 || m.ViaCore+m.ViaLog != 400 {
		t.Errorf("memo: unacked %d gap flushes %d, applied via core %d + log %d; want 0, 0, 400 in all",
			m.Unacked, m.Flushes, m.ViaCore, m.ViaLog)
	}
	var out strings.Builder
	if err := res.WriteText(&out); err != nil {
		t.Fatal(err)
	}
	text := out.String()
	if strings.Contains(text, "bus/core") || strings.Contains(text, "\nbus:") || strings.Contains(text, "  bus  ") {
		t.Errorf("memo report names the bus path:\n%s", text)
	}
	lines := strings.Split(strings.TrimSpace(text), "\n")
	if n := len(lines); n < 2 || !strings.HasPrefix(lines[n-2], "p50 ratio memo/core: ") ||
		!strings.HasPrefix(lines[n-1], "p99 ratio memo/core: ") {
		t.Errorf("last lines are not the memo/core ratios:\n%s", text)
	}
}

func TestFanoutMemoNotWithThroughput(t *testing.T) {
	if _, err := Fanout(context.Background(), FanoutConfig{Memo: true, Throughput: true}); err == nil {
		t.Fatal("memo and throughput together: no error")
	}
}
