package bench

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// LatencyHeader is the header of the latency table; LatencyRow prints a
// row under it. The e2e script prints Redis's row with the same pair.
func LatencyHeader(w io.Writer) {
	fmt.Fprintln(w, "path\tpublished\texpected\treceived\tlost\tdup\tunacked\tp50 µs\tp99 µs\tp99.9 µs\tmax µs\t")
}

// LatencyRow prints one path's row of the latency table; unacked < 0
// prints as "-" (a path without acknowledgements).
func LatencyRow(w io.Writer, name string, published, expected, received, lost, dup uint64, unacked int64, h *Histogram) {
	un := "-"
	if unacked >= 0 {
		un = fmt.Sprint(unacked)
	}
	fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t\n", name, published, expected, received, lost, dup, un,
		us(h.Quantile(0.50)), us(h.Quantile(0.99)), us(h.Quantile(0.999)), us(h.Max()))
}

// us formats a duration in microseconds with one decimal.
func us(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d)/float64(time.Microsecond)) }

// Ratio is a/b, or 0 when b is 0.
func Ratio(a, b time.Duration) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

// WriteText prints the result as a table. In latency mode its last lines
// are the bus/core (memo/core in memo mode) ratios of p99.9, p50 and p99.
func (r *FanoutResult) WriteText(w io.Writer) error {
	var b strings.Builder
	c := r.Config
	if r.Throughput != nil {
		fmt.Fprintf(&b, "cachebus bench fanout --throughput: %d subscribers, expires of %d keys through the event log for %s, %d unacknowledged at most\n",
			c.Subscribers, c.Batch, c.Duration, c.Window)
	} else if c.Memo {
		fmt.Fprintf(&b, "cachebus bench fanout --memo: Flush on one memo client (%d goroutines) → applied on %d others, beside core NATS to %d subscribers; %d msg/s, %s per path in %d alternating rounds (after %s warm-up each)\n",
			c.Flushers, c.Subscribers, c.Subscribers, c.Rate, c.Duration, c.Rounds, max(c.Warmup, 0))
	} else {
		fmt.Fprintf(&b, "cachebus bench fanout: %d subscribers, %d msg/s, %s per path in %d alternating rounds (after %s warm-up each)\n",
			c.Subscribers, c.Rate, c.Duration, c.Rounds, max(c.Warmup, 0))
	}
	fmt.Fprintf(&b, "machine: %s\n", r.Machine)
	if r.Server == ServerEmbedded {
		fmt.Fprintf(&b, "server: %s (clients over loopback TCP to %s)\n\n", r.Server, r.URL)
	} else {
		fmt.Fprintf(&b, "server: %s\n\n", r.Server)
	}
	if t := r.Throughput; t != nil {
		writeThroughput(&b, t)
	} else {
		writeLatency(&b, r)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// spread formats the median, least and greatest of xs.
func spread(xs []float64) string {
	s := slices.Clone(xs)
	slices.Sort(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return fmt.Sprintf("%.2f (%.2f–%.2f)", med, s[0], s[len(s)-1])
}

// writeLatency prints the core path beside the other one: the bus, or in
// memo mode the memo clients.
func writeLatency(b *strings.Builder, r *FanoutResult) {
	core, p := r.Core, r.Bus
	if r.Memo != nil {
		p = r.Memo
	}
	name := p.Name
	tw := tabwriter.NewWriter(b, 0, 0, 2, ' ', tabwriter.AlignRight)
	LatencyHeader(tw)
	LatencyRow(tw, core.Name, core.Published, core.Expected, core.Received, core.Lost, core.Duplicates, -1, core.Latency)
	LatencyRow(tw, name, p.Published, p.Expected, p.Received, p.Lost, p.Duplicates, int64(p.Unacked), p.Latency)
	_ = tw.Flush()
	fmt.Fprintf(b, "\nslowest subscriber p99: core %s µs, %s %s µs; publisher behind schedule at worst: core %s, %s %s\n",
		us(core.WorstP99), name, us(p.WorstP99), core.Behind.Round(time.Microsecond), name, p.Behind.Round(time.Microsecond))
	fmt.Fprintf(b, "%s: applied first from core %d, from the log %d (p50 %s µs, p99 %s µs); gap flushes %d\n",
		name, p.ViaCore, p.ViaLog, us(p.ByLog.Quantile(0.5)), us(p.ByLog.Quantile(0.99)), p.Flushes)
	fmt.Fprintf(b, "CPU of this process per message published: core %s µs, %s %s µs (%.2f×)\n",
		us(core.CPUPerMessage()), name, us(p.CPUPerMessage()), Ratio(p.CPUPerMessage(), core.CPUPerMessage()))
	if len(r.Rounds) > 1 {
		var p50s, p99s []float64
		for _, rd := range r.Rounds {
			p50s = append(p50s, Ratio(rd.BusP50, rd.CoreP50))
			p99s = append(p99s, Ratio(rd.BusP99, rd.CoreP99))
		}
		fmt.Fprintf(b, "per round, %s/core (median, min–max of %d rounds): p50 %s, p99 %s\n",
			name, len(r.Rounds), spread(p50s), spread(p99s))
	}
	if p.Lost > 0 {
		fmt.Fprintf(b, "LOST: %d acknowledged deliveries never applied\n", p.Lost)
	}
	fmt.Fprintf(b, "\np99.9 ratio %s/core: %.2f\n", name, Ratio(p.Latency.Quantile(0.999), core.Latency.Quantile(0.999)))
	fmt.Fprintf(b, "p50 ratio %s/core: %.2f\n", name, Ratio(p.Latency.Quantile(0.50), core.Latency.Quantile(0.50)))
	fmt.Fprintf(b, "p99 ratio %s/core: %.2f\n", name, Ratio(p.Latency.Quantile(0.99), core.Latency.Quantile(0.99)))
}

func writeThroughput(b *strings.Builder, t *ThroughputResult) {
	tw := tabwriter.NewWriter(b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "subscriber\tkeys/s applied\t")
	for i, k := range t.KeysPerSec {
		fmt.Fprintf(tw, "%d\t%.0f\t\n", i, k)
	}
	_ = tw.Flush()
	fmt.Fprintf(b, "\nexpires acknowledged %d (%d keys) in %s, unacknowledged %d; log acknowledged %.0f keys/s\n",
		t.Published, t.Published*uint64(t.Batch), t.PublishTime.Round(time.Millisecond), t.Unacked, t.PublishedKeysPerSec)
	fmt.Fprintf(b, "deliveries %d of %d, lost %d, duplicates %d; applied first from core %d, from the log %d; gap flushes %d\n",
		t.Received, t.Expected, t.Lost, t.Duplicates, t.ViaCore, t.ViaLog, t.Flushes)
	fmt.Fprintf(b, "publish→applied under the flood: p50 %s µs, p99 %s µs, max %s µs\n",
		us(t.Latency.Quantile(0.5)), us(t.Latency.Quantile(0.99)), us(t.Latency.Max()))
	fmt.Fprintf(b, "\nkeys/s applied at every subscriber (slowest): %.0f\n", t.Slowest)
}
