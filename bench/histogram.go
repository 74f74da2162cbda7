package bench

import (
	"math"
	"math/bits"
	"time"
)

// subBits sets the histogram's precision: 2^subBits buckets per power of
// two, so a recorded value is known to within 1/128 (under 0.8%).
const subBits = 7

const (
	subCount = 1 << subBits
	// maxExp covers values up to 2^(maxExp+subBits) ns, about 39 hours.
	maxExp = 40
)

// Histogram records durations in log-linear buckets, like an HDR
// histogram: fixed memory, constant-time recording, quantiles to within
// 0.8%. The exact minimum and maximum are kept besides. The zero value is
// ready to use; it is not safe for concurrent use.
type Histogram struct {
	counts [(maxExp + 1) * subCount]uint64
	n      uint64
	sum    float64
	min    int64
	max    int64
}

// bucket returns the index of value v (ns, at least 0).
func bucket(v int64) int {
	if v < subCount {
		return int(v)
	}
	e := bits.Len64(uint64(v)) - subBits - 1 // v>>e is in [subCount, 2*subCount)
	if e >= maxExp {
		return len(Histogram{}.counts) - 1
	}
	return (e+1)*subCount + int(v>>e) - subCount
}

// bucketValue returns the middle of bucket i.
func bucketValue(i int) int64 {
	if i < subCount {
		return int64(i)
	}
	e := i/subCount - 1
	lo := int64(i%subCount+subCount) << e
	return lo + (int64(1)<<e)/2
}

// Record adds one duration; a negative one (clock adjustment) counts as 0.
func (h *Histogram) Record(d time.Duration) {
	v := max(int64(d), 0)
	h.counts[bucket(v)]++
	if h.n == 0 || v < h.min {
		h.min = v
	}
	if v > h.max {
		h.max = v
	}
	h.n++
	h.sum += float64(v)
}

// Merge adds every value recorded in o.
func (h *Histogram) Merge(o *Histogram) {
	if o.n == 0 {
		return
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	if h.n == 0 || o.min < h.min {
		h.min = o.min
	}
	h.max = max(h.max, o.max)
	h.n += o.n
	h.sum += o.sum
}

// Count is the number of values recorded.
func (h *Histogram) Count() uint64 { return h.n }

// Max is the largest value recorded, exactly.
func (h *Histogram) Max() time.Duration { return time.Duration(h.max) }

// Min is the smallest value recorded, exactly.
func (h *Histogram) Min() time.Duration { return time.Duration(h.min) }

// Mean is the average of the values recorded.
func (h *Histogram) Mean() time.Duration {
	if h.n == 0 {
		return 0
	}
	return time.Duration(math.Round(h.sum / float64(h.n)))
}

// Quantile returns the value below which a fraction q (0..1) of the
// recorded values fall, to within the bucket precision, clamped to the
// exact minimum and maximum. It is 0 when nothing was recorded.
func (h *Histogram) Quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	rank = min(max(rank, 1), h.n)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			if i == len(h.counts)-1 {
				return time.Duration(h.max) // the overflow bucket
			}
			return time.Duration(min(max(bucketValue(i), h.min), h.max))
		}
	}
	return time.Duration(h.max)
}
