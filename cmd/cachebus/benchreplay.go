package main

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/cachebus/cachebus/bench"
	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/cachenode"
	"github.com/cachebus/cachebus/cachenode/partition"
	"github.com/cachebus/cachebus/persistence"
	"github.com/nats-io/nats.go/jetstream"
)

// benchReplayNS is the namespace `cachebus bench replay` loads and
// replays; it purges it first, so it must not hold records that matter.
const benchReplayNS = "bench-replay"

// runBenchReplay loads --records records of --size bytes into the record
// log, then replays every partition into a cache node's store, round after
// round, alternating with a raw ordered consumer reading the same
// messages: the records/s of each and their ratio, measured side by side so
// that a busy machine slows both alike. The replay runs with one reader
// and with several (persistence.ReplayReaders; --readers,
// by default the CPUs from 2 to 4), and the raw read with one consumer and
// with as many over the same shares of the stream, so that each ratio
// compares like with like. With CACHEBUS_RECORD_KEY set the records are
// sealed, and the replay opens them.
func runBenchReplay(ctx context.Context, env *runEnv, cfg *benchConfig) error {
	if cfg.Records <= 0 || cfg.Size < 0 {
		return usagef("replay: --records must be positive and --size not negative")
	}
	rounds := cfg.Rounds
	if rounds <= 0 {
		rounds = 3
	}
	machine := bench.ThisMachine()
	url := cfg.NATS
	if url == "" {
		dir, err := os.MkdirTemp("", "cachebus-bench-replay-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		srv, err := bus.StartServer(bus.ServerConfig{Host: "127.0.0.1", Port: -1, StoreDir: dir}, env.log)
		if err != nil {
			return err
		}
		defer srv.Shutdown()
		url = srv.ClientURL()
	}
	c, err := bus.Connect(ctx, bus.ConnConfig{URL: url, Prefix: bus.DefaultPrefix, Name: "cachebus-bench-replay"},
		bus.WithLogger(env.log))
	if err != nil {
		return err
	}
	defer c.NC.Close()
	log, err := persistence.OpenRecordLog(ctx, c, persistence.RecordLogConfig{Key: os.Getenv("CACHEBUS_RECORD_KEY"),
		SnapshotEvery: persistence.DefaultSnapshotEvery})
	if err != nil {
		return err
	}
	st, err := c.JS.Stream(ctx, log.Stream())
	if err != nil {
		return err
	}
	filter := c.Subjects.Records() + ".log." + benchReplayNS + ".*.*"
	if err := st.Purge(ctx, jetstream.WithPurgeSubject(filter)); err != nil {
		return fmt.Errorf("replay: purge %s: %w", filter, err)
	}
	if err := log.DropSnapshots(ctx, benchReplayNS); err != nil {
		return err
	}

	start := time.Now()
	value := make([]byte, cfg.Size)
	for i := range value {
		value[i] = 'a' + byte(i%26)
	}
	exp := time.Now().Add(time.Hour)
	const chunk = 10_000
	recs := make([]persistence.Record, 0, chunk)
	for i := 0; i < cfg.Records; i += chunk {
		recs = recs[:0]
		for j := i; j < min(i+chunk, cfg.Records); j++ {
			k := "session:" + strconv.Itoa(j)
			recs = append(recs, persistence.Record{NS: benchReplayNS, Partition: partition.PartitionOf(k), Key: k, Value: value, Expires: exp})
		}
		if err := log.WriteAll(ctx, recs); err != nil {
			return fmt.Errorf("replay: load: %w", err)
		}
	}
	load := time.Since(start)
	all := partition.All()
	var compact persistence.CompactStats
	if log.Snapshots() {
		if compact, err = log.Compact(ctx, benchReplayNS, all); err != nil {
			return fmt.Errorf("replay: snapshots: %w", err)
		}
	}

	// Replay reads a namespace that is all the stream holds without a
	// filter; the raw read does as it does, to compare like with like.
	info, err := st.Info(ctx)
	if err != nil {
		return err
	}
	rawFilter := filter
	if info.State.Msgs == uint64(cfg.Records) {
		rawFilter = ""
	}
	readers, err := benchReplayReaders(cfg.Readers)
	if err != nil {
		return err
	}
	// Room for every record twice over: bigcache overwrites the oldest
	// entries of a full shard, which would lose records, not time.
	maxMB := max(64, cfg.Records*(cfg.Size+96)*2>>20)
	// Four ways in each round: the raw read with one consumer (the
	// reference of the target) and with as many as the parallel
	// replay uses, and the replay with one reader and with several. The
	// order turns round every round, so a machine growing busier slows
	// none of them more than the others.
	type way struct {
		name    string
		readers int
		raw     bool
		time    time.Duration
		best    time.Duration
		records int64
		filter  string
		logOnly bool
	}
	ways := []*way{{name: "raw", readers: 1, raw: true}, {name: "raw", readers: readers, raw: true},
		{name: "replay", readers: 1}, {name: "replay", readers: readers}, {name: "replay", readers: readers, logOnly: true}}
	var check time.Duration // the longest Compact finding nothing new
	run := func(w *way) error {
		t0 := time.Now()
		if w.raw {
			var n int64
			var err error
			if w.readers == 1 {
				n, err = bench.RawOrderedRead(ctx, c.JS, log.Stream(), rawFilter, cfg.Records)
			} else {
				n, err = bench.RawOrderedReadParallel(ctx, c.JS, log.Stream(), rawFilter, w.readers, cfg.Records)
			}
			if err != nil {
				return err
			}
			took := time.Since(t0)
			if n != int64(cfg.Records) {
				return fmt.Errorf("replay: raw read %d of %d records", n, cfg.Records)
			}
			w.time += took
			w.records += n
			return nil
		}
		if !w.logOnly && log.Snapshots() {
			// A node checks its snapshots every SnapshotEvery; a
			// round lasts longer than they stay fresh without it.
			cs, err := log.Compact(ctx, benchReplayNS, all)
			if err != nil {
				return fmt.Errorf("replay: snapshots: %w", err)
			}
			check = max(check, cs.Elapsed)
		}
		store := cachenode.NewStore(cachenode.StoreConfig{MaxMB: maxMB, MaxTTL: 2 * time.Hour, Log: env.log})
		t0 = time.Now()
		// The store is safe for concurrent use: with several readers
		// fn is called from each one's goroutine.
		opts := []persistence.ReplayOption{persistence.ReplayReaders(w.readers)}
		if w.logOnly {
			opts = append(opts, persistence.ReplayFromLog())
		}
		rs, err := log.Replay(ctx, benchReplayNS, all, func(r persistence.Record) error {
			if r.Deleted {
				store.Delete(r.NS, r.Key)
				return nil
			}
			return store.SetUntil(r.NS, r.Key, r.Value, r.Expires.UnixNano())
		}, nil, opts...)
		took := time.Since(t0)
		entries := store.Stats(benchReplayNS).Entries
		store.Close()
		if err != nil {
			return err
		}
		if rs.Records != int64(cfg.Records) || rs.Rejected != 0 || entries != cfg.Records {
			return fmt.Errorf("replay: %d records replayed, %d rejected, %d in memory; want %d", rs.Records, rs.Rejected, entries, cfg.Records)
		}
		w.time += took
		w.records += rs.Records
		w.filter = fmt.Sprintf("filter %s, %d readers, %d partitions from snapshots", rs.Filter, rs.Readers, rs.Snapshots)
		if w.best == 0 || took < w.best {
			w.best = took
		}
		return nil
	}
	for round := range rounds {
		for i := range ways {
			if round%2 == 1 {
				i = len(ways) - 1 - i
			}
			if err := run(ways[i]); err != nil {
				return err
			}
		}
	}
	_ = st.Purge(ctx, jetstream.WithPurgeSubject(filter))
	_ = log.DropSnapshots(ctx, benchReplayNS)

	rate := func(w *way) float64 { return float64(w.records) / w.time.Seconds() }
	raw1, rawN, replay1, replayN, replayLog := ways[0], ways[1], ways[2], ways[3], ways[4]
	w := tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "machine\t%s\n", machine)
	fmt.Fprintf(w, "records\t%d of %d bytes (sealed: %v, server message TTLs: %v)\n", cfg.Records, cfg.Size, log.Sealed(), log.MsgTTL())
	fmt.Fprintf(w, "load\t%s, %.0f records/s, each acknowledged\n", load.Round(time.Millisecond), float64(cfg.Records)/load.Seconds())
	if log.Snapshots() {
		fmt.Fprintf(w, "snapshots\t%s to build %d partitions from the log (%d records, %d MB); %s at most to check them unchanged\n",
			compact.Elapsed.Round(time.Millisecond), compact.Built, compact.Records, compact.Bytes>>20, check.Round(time.Millisecond))
	} else {
		fmt.Fprintf(w, "snapshots\tnone (CACHEBUS_RECORDS_SNAPSHOT_EVERY=0, or a server before 2.11)\n")
	}
	fmt.Fprintf(w, "raw ordered consumer\t%.0f records/s (1 consumer, filter %q)\n", rate(raw1), rawFilter)
	fmt.Fprintf(w, "raw ordered consumers\t%.0f records/s (%d consumers over shares of the stream)\n", rate(rawN), readers)
	fmt.Fprintf(w, "replay into memory\t%.0f records/s (%.2f × raw with 1 consumer; %s)\n", rate(replay1), rate(replay1)/rate(raw1), replay1.filter)
	fmt.Fprintf(w, "replay into memory\t%.0f records/s (%.2f × raw with 1 consumer, %.2f × raw with %d; %s)\n",
		rate(replayN), rate(replayN)/rate(raw1), rate(replayN)/rate(rawN), readers, replayN.filter)
	fmt.Fprintf(w, "replay, log only\t%.0f records/s (%.2f × raw with 1 consumer, %.2f × raw with %d; %s)\n",
		rate(replayLog), rate(replayLog)/rate(raw1), rate(replayLog)/rate(rawN), readers, replayLog.filter)
	fmt.Fprintf(w, "ready\t%s for %d records with %d readers, %s with 1 (best of %d rounds)\n",
		replayN.best.Round(time.Millisecond), cfg.Records, readers, replay1.best.Round(time.Millisecond), rounds)
	return w.Flush()
}

// benchReplayReaders is how many readers the parallel replay of `cachebus
// bench replay` uses: n (--readers) when set, else the CPUs, 2 to 4.
func benchReplayReaders(n int) (int, error) {
	if n == 0 {
		return min(max(runtime.GOMAXPROCS(0), 2), 4), nil
	}
	if n < 1 || n > persistence.MaxReplayReaders {
		return 0, usagef("replay: --readers must be 1 to %d, got %d", persistence.MaxReplayReaders, n)
	}
	return n, nil
}
