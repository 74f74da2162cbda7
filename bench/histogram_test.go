package bench

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func TestHistogramQuantiles(t *testing.T) {
	var h Histogram
	if h.Quantile(0.5) != 0 || h.Count() != 0 {
		t.Fatal("empty histogram reports values")
	}
	r := rand.New(rand.NewPCG(1, 2))
	var vals []time.Duration
	for range 100_000 {
		// Log-uniform between 1µs and 1s, the range latencies live in.
		d := time.Duration(float64(time.Microsecond) * math.Pow(10, r.Float64()*6))
		vals = append(vals, d)
		h.Record(d)
	}
	slices.Sort(vals)
	for _, q := range []float64{0, 0.5, 0.9, 0.99, 0.999, 1} {
		exact := vals[max(0, int(q*float64(len(vals)))-1)]
		got := h.Quantile(q)
		if diff := float64(got-exact) / float64(exact); diff > 0.01 || diff < -0.01 {
			t.Errorf("q%.3f = %s, exact %s: off by %.2f%%", q, got, exact, 100*diff)
		}
	}
	if h.Max() != vals[len(vals)-1] || h.Min() != vals[0] {
		t.Errorf("min %s max %s, want %s %s", h.Min(), h.Max(), vals[0], vals[len(vals)-1])
	}
}

func TestHistogramSmallAndMerge(t *testing.T) {
	var a, b Histogram
	for i := range 100 {
		a.Record(time.Duration(i)) // exact below 128 ns
	}
	b.Record(-5) // counts as 0
	b.Record(time.Hour * 100)
	a.Merge(&b)
	if a.Count() != 102 || a.Min() != 0 || a.Max() != 100*time.Hour {
		t.Fatalf("count %d min %s max %s", a.Count(), a.Min(), a.Max())
	}
	if got := a.Quantile(0.5); got != 49 { // 0, 0, 1, … 99, 100h: the 51st of 102
		t.Errorf("median %d ns, want 49", got)
	}
	if got := a.Quantile(1); got != 100*time.Hour {
		t.Errorf("q1 = %s, want the max", got)
	}
}

func TestBucketsAreMonotonic(t *testing.T) {
	prev := -1
	for v := int64(0); v < 1<<22; v += 1 + v/1000 {
		b := bucket(v)
		if b < prev {
			t.Fatalf("bucket(%d) = %d after %d", v, b, prev)
		}
		if mid := bucketValue(b); float64(abs(mid-v)) > float64(v)/subCount+1 {
			t.Fatalf("bucket(%d) = %d whose middle %d is too far", v, b, mid)
		}
		prev = b
	}
}

func TestPayloadRoundTrip(t *testing.T) {
	sent := time.Unix(0, 1_700_000_000_123_456_789)
	for _, batch := range []int{1, 3, 100} {
		data := AppendPayload(nil, kindMeasured, 42, sent, batch)
		key := payloadKey(data)
		kind, seq, ns, ok := ParseKey(key)
		if !ok || kind != kindMeasured || seq != 42 || ns != sent.UnixNano() {
			t.Errorf("batch %d: key %q parsed as %c %d %d %v", batch, key, kind, seq, ns, ok)
		}
	}
	for _, bad := range []string{"", "m:", "m:1", "m:x:2", "m:1:y", "user:12"} {
		if _, _, _, ok := ParseKey(bad); ok {
			t.Errorf("ParseKey(%q) ok", bad)
		}
	}
}

func abs(x int64) int64 {
	if x < 0 {
		return -x
	}
	return x
}

func BenchmarkHistogramRecord(b *testing.B) {
	var h Histogram
	for i := 0; b.Loop(); i++ {
		h.Record(time.Duration(i%1_000_000) * 137)
	}
}
