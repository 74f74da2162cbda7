package cachenode

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkFlushMillion fills a namespace with 1,000,000 entries, flushes
// it while a reader hammers it, and reports how long the caller of Flush
// waited and the slowest Get the reader saw from the flush until the
// background swap was done — beside the slowest Get over as many reads
// before the flush, since on a shared 2-core machine the scheduler alone
// delays some reads.
func BenchmarkFlushMillion(b *testing.B) {
	const n = 1_000_000
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("user:%d", i)
	}
	value := make([]byte, 100)
	var worstCaller, worstReader, worstBaseline time.Duration
	for i := 0; i < b.N; i++ {
		s := NewStore(StoreConfig{MaxMB: 512, Shards: 256, MaxTTL: time.Hour})
		for _, k := range keys {
			if err := s.Set("ns", k, value, time.Hour); err != nil {
				b.Fatal(err)
			}
		}
		var stop atomic.Bool
		var worst atomic.Int64
		var wg sync.WaitGroup
		var reads atomic.Int64
		for r := range 1 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := r; !stop.Load(); j += 7 {
					t0 := time.Now()
					s.Get("ns", keys[j%n])
					if d := int64(time.Since(t0)); d > worst.Load() {
						worst.Store(d)
					}
					reads.Add(1)
				}
			}()
		}
		for reads.Load() < 10000 {
			time.Sleep(time.Millisecond) // let the reader warm up
		}
		worst.Store(0)
		before := reads.Load()
		for reads.Load() < before+200000 {
			time.Sleep(time.Millisecond)
		}
		baseline := time.Duration(worst.Swap(0))
		t0 := time.Now()
		s.Flush("ns")
		caller := time.Since(t0)
		// Wait until the sweep swapped in the empty cache.
		sp := s.lookup("ns")
		for sp.cache.Load().Len() > 0 {
			time.Sleep(time.Millisecond)
		}
		after := reads.Load()
		for reads.Load() < after+200000 {
			time.Sleep(time.Millisecond)
		}
		stop.Store(true)
		wg.Wait()
		if _, l := s.Get("ns", keys[0]); l != Miss {
			b.Fatal("entry survived the flush")
		}
		worstCaller = max(worstCaller, caller)
		worstReader = max(worstReader, time.Duration(worst.Load()))
		worstBaseline = max(worstBaseline, baseline)
		s.Close()
	}
	b.ReportMetric(float64(worstCaller.Nanoseconds()), "flush-caller-ns")
	b.ReportMetric(float64(worstReader.Microseconds()), "worst-get-during-µs")
	b.ReportMetric(float64(worstBaseline.Microseconds()), "worst-get-before-µs")
}
