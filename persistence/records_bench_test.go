package persistence_test

import (
	"context"
	"flag"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bench"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/bus/bustest"
	"github.com/cachebus/cachebus/cachenode/partition"
	"github.com/cachebus/cachebus/persistence"
	"github.com/nats-io/nats.go/jetstream"
)

var (
	benchRecords = flag.Int("replay.records", 1_000_000, "records BenchmarkReplay loads into the record log")
	benchSize    = flag.Int("replay.size", 100, "value size in bytes of BenchmarkReplay's records")
)

// BenchmarkReplay loads -replay.records records of -replay.size bytes into
// one record log, then measures in the same run, on the same stream:
// Replay of every partition, a raw ordered consumer reading the same
// messages (the ceiling: no decoding, no callback), both in turn, Replay
// of sealed records, and Replay of a node's share of the partitions; then
// Replay with several readers beside a raw read by as many consumers over
// the same shares of the stream.
//
//	go test -run x -bench Replay -benchtime 5x ./persistence/
func BenchmarkReplay(b *testing.B) {
	tg := bustest.Embedded(b)
	c := bustest.Connect(b, tg.URL)
	ctx := context.Background()
	key := testKey(1)
	plain := openLog(b, c, persistence.RecordLogConfig{})
	sealed := openLog(b, c, persistence.RecordLogConfig{Key: key})

	n, size := *benchRecords, *benchSize
	load := func(l *persistence.RecordLog, ns string) {
		start := time.Now()
		value := make([]byte, size)
		for i := range value {
			value[i] = 'a' + byte(i%26)
		}
		exp := time.Now().Add(time.Hour)
		const chunk = 10_000
		recs := make([]persistence.Record, 0, chunk)
		for i := 0; i < n; i += chunk {
			recs = recs[:0]
			for j := i; j < min(i+chunk, n); j++ {
				k := "session:" + strconv.Itoa(j)
				recs = append(recs, persistence.Record{NS: ns, Partition: partition.PartitionOf(k), Key: k, Value: value, Expires: exp})
			}
			if err := l.WriteAll(ctx, recs); err != nil {
				b.Fatal(err)
			}
		}
		b.Logf("loaded %d records of %d bytes into %s in %s", n, size, ns, time.Since(start).Round(time.Millisecond))
	}
	load(plain, "bench")
	load(sealed, "sealed")

	all := make([]int, partition.Partitions)
	for i := range all {
		all[i] = i
	}
	replay := func(b *testing.B, l *persistence.RecordLog, ns string, parts []int, opts ...persistence.ReplayOption) {
		var records int64
		start := time.Now()
		for b.Loop() {
			st, err := l.Replay(ctx, ns, parts, func(persistence.Record) error { return nil }, nil, opts...)
			if err != nil {
				b.Fatal(err)
			}
			if st.Rejected != 0 || len(parts) == len(all) && st.Records != int64(n) {
				b.Fatalf("replayed %+v, want %d records", st, n)
			}
			records += st.Records
		}
		b.ReportMetric(float64(records)/time.Since(start).Seconds(), "records/s")
	}
	b.Run("Replay", func(b *testing.B) { replay(b, plain, "bench", all) })
	b.Run("RawOrderedConsumer", func(b *testing.B) {
		var records int64
		start := time.Now()
		for b.Loop() {
			records += rawRead(b, c.JS, plain.Stream(), "cachebus.rec.log.bench.*.*", n)
		}
		b.ReportMetric(float64(records)/time.Since(start).Seconds(), "records/s")
	})
	// Both in turn, so that a machine busy with something else slows
	// both alike: the ratio is the figure to compare with the 0.7 target.
	b.Run("Alternating", func(b *testing.B) {
		var replayTime, rawTime time.Duration
		var records int64
		for b.Loop() {
			start := time.Now()
			rawRead(b, c.JS, plain.Stream(), "cachebus.rec.log.bench.*.*", n)
			rawTime += time.Since(start)
			start = time.Now()
			st, err := plain.Replay(ctx, "bench", all, func(persistence.Record) error { return nil }, nil)
			if err != nil {
				b.Fatal(err)
			}
			replayTime += time.Since(start)
			records += st.Records
		}
		b.ReportMetric(float64(records)/replayTime.Seconds(), "replay-records/s")
		b.ReportMetric(float64(records)/rawTime.Seconds(), "raw-records/s")
		b.ReportMetric(rawTime.Seconds()/replayTime.Seconds(), "replay/raw")
	})
	b.Run("ReplaySealed", func(b *testing.B) { replay(b, sealed, "sealed", all) })
	// A node's share: 1/3 of the partitions is one node of three without
	// backups, 2/3 one of three with one backup.
	for _, share := range []int{128, 342, 683} {
		b.Run(fmt.Sprintf("Partitions%d", share), func(b *testing.B) { replay(b, plain, "bench", all[:share]) })
	}
	// Several readers, beside a raw read by as many consumers: the ratio
	// to compare is with the raw read that splits the stream alike.
	for _, readers := range []int{2, 4} {
		b.Run(fmt.Sprintf("AlternatingReaders%d", readers), func(b *testing.B) {
			var replayTime, rawTime time.Duration
			var records int64
			for b.Loop() {
				start := time.Now()
				if _, err := bench.RawOrderedReadParallel(ctx, c.JS, plain.Stream(), "cachebus.rec.log.bench.*.*", readers, n); err != nil {
					b.Fatal(err)
				}
				rawTime += time.Since(start)
				start = time.Now()
				st, err := plain.Replay(ctx, "bench", all, func(persistence.Record) error { return nil }, nil,
					persistence.ReplayReaders(readers))
				if err != nil {
					b.Fatal(err)
				}
				if st.Records != int64(n) || st.Readers != readers {
					b.Fatalf("replayed %+v, want %d records by %d readers", st, n, readers)
				}
				replayTime += time.Since(start)
				records += st.Records
			}
			b.ReportMetric(float64(records)/replayTime.Seconds(), "replay-records/s")
			b.ReportMetric(float64(records)/rawTime.Seconds(), "raw-records/s")
			b.ReportMetric(rawTime.Seconds()/replayTime.Seconds(), "replay/raw")
		})
	}
	b.Run("Partitions342Readers2", func(b *testing.B) {
		replay(b, plain, "bench", all[:342], persistence.ReplayReaders(2))
	})
}

// rawRead reads want messages of filter with an ordered consumer set up as
// Replay sets up its own, touching nothing but their count.
func rawRead(b *testing.B, js jetstream.JetStream, stream, filter string, want int) int64 {
	n, err := bench.RawOrderedRead(context.Background(), js, stream, filter, want)
	if err != nil {
		b.Fatal(err)
	}
	return n
}

// BenchmarkDecodeRecord is the client's share of a replay for one record:
// the subject, the header and the value, in clear and sealed.
func BenchmarkDecodeRecord(b *testing.B) {
	s := bus.Subjects{Prefix: bus.DefaultPrefix}
	for _, key := range []string{"", testKey(1)} {
		codec, err := persistence.NewRecordCodec(s, key, "")
		if err != nil {
			b.Fatal(err)
		}
		k := "session:8f14e45fceea167a"
		m, err := codec.Encode(persistence.Record{NS: "sessions", Partition: partition.PartitionOf(k), Key: k,
			Value: make([]byte, 100), Expires: time.Now().Add(time.Hour), Version: 1795322096159769415})
		if err != nil {
			b.Fatal(err)
		}
		name := "plain"
		if key != "" {
			name = "sealed"
		}
		b.Run(name, func(b *testing.B) {
			data := make([]byte, len(m.Data))
			b.ReportAllocs()
			for b.Loop() {
				copy(data, m.Data) // sealed values open in place
				if _, err := codec.Decode(m.Subject, m.Header, data); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
