package memo_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/allegro/bigcache/v3"
	"github.com/cachebus/cachebus/bus/bustest"
	"github.com/cachebus/cachebus/cachenode/memo"
	"github.com/cachebus/cachebus/persistence"
)

// BenchmarkHit compares the hit path of memo.Do with a raw bigcache.Get
// of the same 100-byte values, in one run: the target is at most 1.5x the
// ns/op and no allocation beyond bigcache's own copy.
func BenchmarkHit(b *testing.B) {
	const n = 1024
	keys := make([]string, n)
	value := make([]byte, 100)
	for i := range keys {
		keys[i] = fmt.Sprintf("user:%d", i)
	}

	b.Run("bigcache", func(b *testing.B) {
		cfg := bigcache.DefaultConfig(time.Hour)
		cfg.Verbose = false
		cfg.Shards = 256
		cfg.MaxEntriesInWindow = 256 * 64
		cfg.MaxEntrySize = 256
		bc, err := bigcache.New(context.Background(), cfg)
		if err != nil {
			b.Fatal(err)
		}
		defer bc.Close()
		for _, k := range keys {
			_ = bc.Set(k, value)
		}
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, err := bc.Get(keys[i&(n-1)]); err != nil {
				b.Fatal(err)
			}
		}
	})

	b.Run("memo", func(b *testing.B) {
		tg := bustest.Embedded(b)
		conn := bustest.Connect(b, tg.URL)
		bustest.EnsureEvents(b, conn, persistence.EventLogConfig{})
		c, err := memo.New(context.Background(), conn, memo.Options{Namespace: "bench"})
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		fill := func(context.Context) ([]byte, error) { return value, nil }
		for _, k := range keys {
			if _, err := c.Do(context.Background(), k, time.Hour, fill); err != nil {
				b.Fatal(err)
			}
		}
		miss := func(context.Context) ([]byte, error) { b.Fatal("miss"); return nil, nil }
		ctx := context.Background()
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, err := c.Do(ctx, keys[i&(n-1)], time.Hour, miss); err != nil {
				b.Fatal(err)
			}
		}
	})
}
