package bench

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus/bustest"
)

// TestFanoutCountsEverything runs a tiny latency bench (2 subscribers, 200
// messages per path) on an embedded and on an external server and checks
// the bookkeeping, not the speed.
func TestFanoutCountsEverything(t *testing.T) {
	for _, name := range []string{"embedded", "external"} {
		t.Run(name, func(t *testing.T) {
			cfg := FanoutConfig{Subscribers: 2, Rate: 1000, Duration: 200 * time.Millisecond, Rounds: 2,
				Warmup: 20 * time.Millisecond, Log: bustest.Logger(t)}
			if name == "external" {
				cfg.URL = bustest.External(t).URL
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			res, err := Fanout(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			wantServer := ServerEmbedded
			if name == "external" {
				wantServer = "external " + cfg.URL
			}
			if res.Server != wantServer {
				t.Errorf("server = %q, want %q", res.Server, wantServer)
			}
			for _, p := range []*PathResult{res.Core, res.Bus} {
				if p.Published != 200 || p.Expected != 400 || p.Received != 400 || p.Lost != 0 || p.Duplicates != 0 {
					t.Errorf("%s: published %d expected %d received %d lost %d dup %d; want 200, 400, 400, 0, 0",
						p.Name, p.Published, p.Expected, p.Received, p.Lost, p.Duplicates)
				}
				checkSane(t, p.Name, p.Latency, 400)
			}
			if b := res.Bus; b.Unacked != 0 || b.Flushes != 0 || b.ViaCore+b.ViaLog != 400 {
				t.Errorf("bus: unacked %d flushes %d, applied via core %d + log %d; want 0, 0, 400 in all",
					b.Unacked, b.Flushes, b.ViaCore, b.ViaLog)
			}
			var out strings.Builder
			if err := res.WriteText(&out); err != nil {
				t.Fatal(err)
			}
			text := out.String()
			for _, want := range []string{"server: " + wantServer, "p50 ratio bus/core: ", "p99 ratio bus/core: "} {
				if !strings.Contains(text, want) {
					t.Errorf("report lacks %q:\n%s", want, text)
				}
			}
			lines := strings.Split(strings.TrimSpace(text), "\n")
			if last := lines[len(lines)-1]; !strings.HasPrefix(last, "p99 ratio bus/core: ") {
				t.Errorf("last line = %q, want the p99 ratio", last)
			}
		})
	}
}

// TestFanoutThroughputCounts floods briefly with batches of 10 keys and
// checks every key of every acknowledged expire is applied everywhere.
func TestFanoutThroughputCounts(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := Fanout(ctx, FanoutConfig{Subscribers: 2, Duration: 100 * time.Millisecond, Throughput: true,
		Batch: 10, Log: bustest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	tp := res.Throughput
	if tp == nil || res.Core != nil {
		t.Fatalf("throughput mode gave %+v", res)
	}
	if tp.Published == 0 || tp.Unacked != 0 || tp.Received != 2*tp.Published || tp.Lost != 0 || tp.Duplicates != 0 {
		t.Fatalf("published %d unacked %d received %d lost %d dup %d; want all of 2×published",
			tp.Published, tp.Unacked, tp.Received, tp.Lost, tp.Duplicates)
	}
	if len(tp.KeysPerSec) != 2 || tp.Slowest <= 0 || tp.Slowest > tp.KeysPerSec[0] || tp.Slowest > tp.KeysPerSec[1] {
		t.Fatalf("keys/s %v, slowest %v", tp.KeysPerSec, tp.Slowest)
	}
	checkSane(t, "throughput", tp.Latency, 2*tp.Published)
	var out strings.Builder
	if err := res.WriteText(&out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "keys/s applied at every subscriber (slowest): ") {
		t.Errorf("report:\n%s", out.String())
	}
}

func TestFanoutRejectsBadConfig(t *testing.T) {
	for _, cfg := range []FanoutConfig{{Subscribers: -1}, {Rate: 2_000_000}, {Batch: 100_000}, {Prefix: "a b"}} {
		if _, err := Fanout(context.Background(), cfg); err == nil {
			t.Errorf("%+v: no error", cfg)
		}
	}
}

// checkSane checks counts and the order of the percentiles, never a speed.
func checkSane(t *testing.T, name string, h *Histogram, n uint64) {
	t.Helper()
	if h.Count() != n {
		t.Errorf("%s: %d latencies recorded, want %d", name, h.Count(), n)
	}
	p50, p99, p999 := h.Quantile(0.5), h.Quantile(0.99), h.Quantile(0.999)
	if !(0 < p50 && p50 <= p99 && p99 <= p999 && p999 <= h.Max()) || h.Max() > time.Minute {
		t.Errorf("%s: p50 %s p99 %s p99.9 %s max %s: want 0 < p50 ≤ p99 ≤ p99.9 ≤ max < 1m", name, p50, p99, p999, h.Max())
	}
}
