package persistence_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/bus/bustest"
	"github.com/cachebus/cachebus/cachenode/partition"
	"github.com/cachebus/cachebus/persistence"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// snapRoot is the root of the snapshot stream's subjects:
// <root><ns>.<partition, 4 digits>.<m|chunk index>.
var snapRoot = bus.Subjects{Prefix: bus.DefaultPrefix}.Records() + ".snap."

func manifestSubject(ns string, p int) string { return fmt.Sprintf("%s%s.%04d.m", snapRoot, ns, p) }

func chunkSubject(ns string, p, i int) string { return fmt.Sprintf("%s%s.%04d.%d", snapRoot, ns, p, i) }

// snapConfig keeps snapshots, each one fresh for half an hour after its
// last Compact; key seals the values when not empty.
func snapConfig(key string) persistence.RecordLogConfig {
	return persistence.RecordLogConfig{TombstoneTTL: time.Hour, SnapshotEvery: time.Minute, Key: key}
}

// keysIn returns perPartition keys, named prefix and a number, in each of
// parts.
func keysIn(prefix string, parts []int, perPartition int) []string {
	want := map[int]int{}
	for _, p := range parts {
		want[p] = perPartition
	}
	left := len(want) * perPartition
	var keys []string
	for i := 0; left > 0; i++ {
		k := prefix + strconv.Itoa(i)
		if p := partition.PartitionOf(k); want[p] > 0 {
			want[p]--
			left--
			keys = append(keys, k)
		}
	}
	return keys
}

// partitionsOf returns the partitions of keys, sorted, once each.
func partitionsOf(keys []string) []int {
	var ps []int
	for _, k := range keys {
		ps = append(ps, partition.PartitionOf(k))
	}
	slices.Sort(ps)
	return slices.Compact(ps)
}

// writeMix writes one record of generation gen for each of keys in ns:
// puts with and without an expiry or a version, a tenth of tombstones and
// a twentieth expired when written.
func writeMix(t *testing.T, l *persistence.RecordLog, ns string, keys []string, gen int) {
	t.Helper()
	exp := time.Now().Add(time.Hour)
	recs := make([]persistence.Record, 0, len(keys))
	for i, k := range keys {
		r := persistence.Record{NS: ns, Partition: partition.PartitionOf(k), Key: k,
			Value:   fmt.Appendf(nil, "%s gen %d \x00\xff%s", k, gen, strings.Repeat("x", i%40)),
			Version: uint64(gen)<<32 | uint64(i)}
		switch i % 10 {
		case 1:
			r.Value, r.Deleted = nil, true
		case 2:
			r.Expires = exp
		case 3:
			if i%20 == 3 {
				r.Expires = time.Now().Add(-time.Minute) // the server's TTL or the read drops it
			}
		case 4:
			r.Version = 0
		}
		recs = append(recs, r)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := l.WriteAll(ctx, recs); err != nil {
		t.Fatal(err)
	}
}

// replayWith collects a replay of ns made with opts: the record handed
// over of each key, which must be handed over once.
func replayWith(t *testing.T, l *persistence.RecordLog, ns string, parts []int, opts ...persistence.ReplayOption) (map[string]persistence.Record, persistence.ReplayStats) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var mu sync.Mutex
	got := map[string]persistence.Record{}
	st, err := l.Replay(ctx, ns, parts, func(r persistence.Record) error {
		mu.Lock()
		defer mu.Unlock()
		if prev, ok := got[r.Key]; ok && prev.Seq >= r.Seq {
			t.Errorf("%s handed over with sequence %d after %d", r.Key, r.Seq, prev.Seq)
		}
		got[r.Key] = r
		return nil
	}, nil, opts...)
	if err != nil {
		t.Fatalf("replay %s: %v", ns, err)
	}
	return got, st
}

// sameRecords fails unless got holds the records of want, field by field.
func sameRecords(t *testing.T, what string, got, want map[string]persistence.Record) {
	t.Helper()
	bad := 0
	for k, w := range want {
		g, ok := got[k]
		switch {
		case !ok:
			t.Errorf("%s: %q missing, want %+v", what, k, w)
		case g.NS != w.NS || g.Partition != w.Partition || g.Key != w.Key || !bytes.Equal(g.Value, w.Value) ||
			!g.Expires.Equal(w.Expires) || g.Version != w.Version || g.Deleted != w.Deleted || g.Seq != w.Seq || g.KeyID != w.KeyID:
			t.Errorf("%s: %q is %+v, want %+v", what, k, g, w)
		default:
			continue
		}
		if bad++; bad > 10 {
			t.Fatalf("%s: more differences", what)
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("%s: %q not in the log: %+v", what, k, g)
			if bad++; bad > 10 {
				t.Fatalf("%s: more differences", what)
			}
		}
	}
}

// snapshotMatchesLog replays ns's parts with the snapshots and from the
// log alone, fails unless both hand over the same records, and returns
// them with the stats of both replays.
func snapshotMatchesLog(t *testing.T, l *persistence.RecordLog, ns string, parts []int, opts ...persistence.ReplayOption) (map[string]persistence.Record, persistence.ReplayStats, persistence.ReplayStats) {
	t.Helper()
	want, logSt := replayWith(t, l, ns, parts, append(slices.Clone(opts), persistence.ReplayFromLog())...)
	if logSt.Snapshots != 0 {
		t.Errorf("replay from the log alone read %d snapshots", logSt.Snapshots)
	}
	got, st := replayWith(t, l, ns, parts, opts...)
	sameRecords(t, "replay with snapshots", got, want)
	return got, st, logSt
}

// compact compacts ns's parts, failing the test on an error.
func compact(t *testing.T, l *persistence.RecordLog, ns string, parts []int) persistence.CompactStats {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cs, err := l.Compact(ctx, ns, parts)
	if err != nil {
		t.Fatalf("compact %s: %v", ns, err)
	}
	if cs.Partitions != cs.Built+cs.Folded+cs.Checked+cs.Dropped {
		t.Errorf("compact %s: %+v: partitions are not built, folded or checked", ns, cs)
	}
	return cs
}

// snapStream is the snapshot stream.
func snapStream(t *testing.T, c *bus.Conn) jetstream.Stream {
	t.Helper()
	st, err := c.JS.Stream(ctx10(t), persistence.SnapshotStreamConfig(c.Subjects, persistence.RecordLogConfig{}).Name)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// snapMsg reads the message the snapshot stream holds on subject, or nil.
func snapMsg(t *testing.T, c *bus.Conn, subject string) *jetstream.RawStreamMsg {
	t.Helper()
	m, err := snapStream(t, c).GetLastMsgForSubject(ctx10(t), subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// manifest reads partition p's manifest of ns: its header's fields by
// name, "kind" the second word; nil when there is none.
func manifest(t *testing.T, c *bus.Conn, ns string, p int) map[string]string {
	t.Helper()
	m := snapMsg(t, c, manifestSubject(ns, p))
	if m == nil {
		return nil
	}
	words := strings.Fields(m.Header.Get(persistence.SnapshotHeader))
	if len(words) < 2 || words[0] != "1" || words[1] != "manifest" {
		t.Fatalf("manifest of %s/%d: header %q", ns, p, m.Header.Get(persistence.SnapshotHeader))
	}
	f := map[string]string{"kind": words[1]}
	for _, w := range words[2:] {
		name, val, _ := strings.Cut(w, "=")
		f[name] = val
	}
	return f
}

func fieldInt(t *testing.T, f map[string]string, name string) int64 {
	t.Helper()
	v, err := strconv.ParseInt(f[name], 10, 64)
	if err != nil {
		t.Fatalf("manifest field %s=%q: %v", name, f[name], err)
	}
	return v
}

func publishSnap(t *testing.T, c *bus.Conn, subject string, h nats.Header, data []byte) {
	t.Helper()
	if _, err := c.JS.PublishMsg(ctx10(t), &nats.Msg{Subject: subject, Header: h, Data: data}); err != nil {
		t.Fatalf("publish on %s: %v", subject, err)
	}
}

func snapHeader(v string) nats.Header { return nats.Header{persistence.SnapshotHeader: {v}} }

// TestSnapshotReplay: right after Compact a replay hands over from the
// snapshots exactly the records a replay of the log alone does, sealed
// or in clear, for every partition or some, with one reader or several,
// and for partitions of which some have a snapshot and some not.
func TestSnapshotReplay(t *testing.T) {
	tg := bustest.Embedded(t)
	c := bustest.Connect(t, tg.URL)
	subset := append(slices.Clone(all[100:140]), 0, 1023, 0)
	nSubset := len(subset) - 1
	for _, mode := range []struct {
		name string
		key  string
	}{{"clear", ""}, {"sealed", testKey(1)}} {
		t.Run(mode.name, func(t *testing.T) {
			l := openLog(t, c, snapConfig(mode.key))
			if !l.Snapshots() || l.SnapshotEvery() != time.Minute || l.Sealed() != (mode.key != "") {
				t.Fatalf("snapshots %v every %s, sealed %v", l.Snapshots(), l.SnapshotEvery(), l.Sealed())
			}
			nsAll, nsSome := mode.name+"-all", mode.name+"-some"
			writeMix(t, l, nsAll, keysIn("a", all, 2), 1)
			writeMix(t, l, nsSome, keysIn("s", all, 2), 1)
			// Another namespace in both streams, which must not leak in.
			writeMix(t, l, "other", keysIn("a", subset, 3), 1)
			compact(t, l, "other", subset)

			start := time.Now()
			csAll := compact(t, l, nsAll, all)
			t.Logf("compacted %d partitions in %s: %+v", len(all), time.Since(start).Round(time.Millisecond), csAll)
			csSome := compact(t, l, nsSome, subset)
			for _, cs := range []struct {
				cs persistence.CompactStats
				n  int
			}{{csAll, len(all)}, {csSome, nSubset}} {
				if cs.cs.Partitions != cs.n || cs.cs.Built != cs.n || cs.cs.Folded != 0 || cs.cs.Checked != 0 ||
					cs.cs.Tail < cs.cs.Records || cs.cs.Bytes <= 0 {
					t.Errorf("first compaction of %d partitions: %+v", cs.n, cs.cs)
				}
			}
			cases := []struct {
				name      string
				ns        string
				parts     []int
				readers   int
				snapshots int
			}{
				{"all", nsAll, all, 1, len(all)},
				{"all, 4 readers", nsAll, all, 4, len(all)},
				{"subset of the compacted", nsAll, subset, 1, nSubset},
				{"one partition", nsAll, []int{7}, 1, 1},
				{"subset", nsSome, subset, 1, nSubset},
				{"subset, 3 readers", nsSome, subset, 3, nSubset},
				{"some from snapshots, most from the log", nsSome, all, 1, nSubset},
				{"some from snapshots, most from the log, 4 readers", nsSome, all[:700], 4, 40 + 1},
			}
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					got, st, logSt := snapshotMatchesLog(t, l, tc.ns, tc.parts, persistence.ReplayReaders(tc.readers))
					if st.Snapshots != tc.snapshots || st.Rejected != 0 || st.Records != logSt.Records || st.Deleted != logSt.Deleted {
						t.Errorf("stats %+v, from the log %+v; want %d snapshots", st, logSt, tc.snapshots)
					}
					if len(got) == 0 {
						t.Fatal("nothing replayed")
					}
					for _, r := range got {
						if r.NS != tc.ns || (mode.key != "" && !r.Deleted && r.KeyID != l.Codec().KeyID()) {
							t.Fatalf("replayed %+v", r)
						}
					}
				})
			}
			// The snapshot's records are the log's: the live records and
			// the tombstones, less what had expired.
			_, logSt := replayWith(t, l, nsAll, all, persistence.ReplayFromLog())
			if csAll.Records != logSt.Records {
				t.Errorf("compaction wrote %d records, the log replays %d", csAll.Records, logSt.Records)
			}
			// Nothing written since: the next compaction only checks.
			if cs := compact(t, l, nsAll, all); cs.Checked != len(all) || cs.Built+cs.Folded != 0 || cs.Tail != 0 || cs.Bytes != 0 {
				t.Errorf("second compaction: %+v", cs)
			}
			// Progress counts the snapshots' records, and ends at 100%.
			var reports []persistence.ReplayProgress
			st, err := l.Replay(ctx10(t), nsAll, all, func(persistence.Record) error { return nil },
				func(p persistence.ReplayProgress) { reports = append(reports, p) })
			if err != nil || st.Snapshots != len(all) || len(reports) == 0 {
				t.Fatalf("replay with progress: %+v, %d reports, %v", st, len(reports), err)
			}
			if last := reports[len(reports)-1]; last.Records != st.Records || last.Percent != 100 || last.Bytes != st.Bytes {
				t.Errorf("last report %+v, stats %+v", last, st)
			}
		})
	}
}

// TestSnapshotTail: what is written after a Compact (new keys, overwrites,
// deletes) is read from the log's tail after each partition's snapshot,
// so a replay with snapshots still hands over what the log holds; the
// next Compact folds the partitions whose tail holds a delete or many
// records and only checks the others.
func TestSnapshotTail(t *testing.T) {
	tg := bustest.Embedded(t)
	c := bustest.Connect(t, tg.URL)
	l := openLog(t, c, snapConfig(testKey(1)))
	const ns = "s"
	parts := all[200:232]
	keys := keysIn("k", parts, 30)
	// Beyond a tombstone TTL: a tail record expiring sooner is folded
	// at once, as a delete is.
	exp := time.Now().Add(24 * time.Hour)
	var recs []persistence.Record
	for _, k := range keys {
		recs = append(recs, persistence.Record{NS: ns, Partition: partition.PartitionOf(k), Key: k, Value: []byte("v1 " + k), Expires: exp, Version: 1})
	}
	if err := l.WriteAll(ctx10(t), recs); err != nil {
		t.Fatal(err)
	}
	if cs := compact(t, l, ns, parts); cs.Built != len(parts) || cs.Records != int64(len(keys)) {
		t.Fatalf("first compaction: %+v", cs)
	}
	before := map[int]map[string]string{}
	for _, p := range parts {
		before[p] = manifest(t, c, ns, p)
	}

	byPart := map[int][]string{}
	for _, k := range keys {
		byPart[partition.PartitionOf(k)] = append(byPart[partition.PartitionOf(k)], k)
	}
	added, overwritten, deleted, untouched := parts[0:8], parts[8:16], parts[16:24], parts[24:32]
	tail := 0
	for _, k := range keysIn("new", added, 5) {
		put(t, l, ns, k, "new "+k, time.Time{})
		tail++
	}
	for i, p := range overwritten {
		for j, k := range byPart[p][:5] {
			e := exp
			if i == 0 && j == 0 {
				e = time.Time{} // an expiry dropped
			}
			put(t, l, ns, k, "v2 "+k, e)
			tail++
		}
	}
	for _, p := range deleted {
		for _, k := range byPart[p][:3] {
			del(t, l, ns, k)
			tail++
		}
	}
	_, st, _ := snapshotMatchesLog(t, l, ns, parts)
	if st.Snapshots != len(parts) || st.Rejected != 0 {
		t.Errorf("replay of the tail: %+v", st)
	}
	_, st, _ = snapshotMatchesLog(t, l, ns, parts, persistence.ReplayReaders(3))
	if st.Snapshots != len(parts) {
		t.Errorf("replay of the tail with 3 readers: %+v", st)
	}

	cs := compact(t, l, ns, parts)
	if cs.Folded != len(deleted) || cs.Checked != len(parts)-len(deleted) || cs.Built != 0 || cs.Tail != int64(tail) {
		t.Errorf("second compaction: %+v; want %d folded (the deletes), %d checked, a tail of %d", cs, len(deleted), len(parts)-len(deleted), tail)
	}
	for _, p := range parts {
		was, now := before[p], manifest(t, c, ns, p)
		folded := slices.Contains(deleted, p)
		if (was["id"] != now["id"]) != folded {
			t.Errorf("partition %d: snapshot %s then %s, folded %v", p, was["id"], now["id"], folded)
		}
		if fieldInt(t, now, "checked") < fieldInt(t, was, "checked") {
			t.Errorf("partition %d: checked went back: %v then %v", p, was, now)
		}
		// A partition with a tail left in the log keeps its upto; one
		// without any moves to the log's end.
		movedUp := fieldInt(t, now, "upto") > fieldInt(t, was, "upto")
		if wantMoved := !slices.Contains(added, p) && !slices.Contains(overwritten, p); movedUp != wantMoved {
			t.Errorf("partition %d: upto %s then %s", p, was["upto"], now["upto"])
		}
		if folded && fieldInt(t, now, "records") != 30 { // tombstones are records until they expire
			t.Errorf("partition %d folded with %s records, want 30", p, now["records"])
		}
	}
	_, st, _ = snapshotMatchesLog(t, l, ns, parts)
	if st.Snapshots != len(parts) {
		t.Errorf("replay after the second compaction: %+v", st)
	}

	// A long tail without a delete is folded too.
	long := keysIn("long", untouched[:1], 70)
	for _, k := range long {
		put(t, l, ns, k, "long "+k, time.Time{})
	}
	if cs := compact(t, l, ns, parts); cs.Folded != 1 || cs.Checked != len(parts)-1 {
		t.Errorf("compaction after a long tail: %+v, want 1 folded", cs)
	}
	if f := manifest(t, c, ns, untouched[0]); fieldInt(t, f, "records") != 30+70 {
		t.Errorf("long tail folded into %s records, want 100", f["records"])
	}
	got, st, _ := snapshotMatchesLog(t, l, ns, parts)
	if st.Snapshots != len(parts) || string(got[long[69]].Value) != "long "+long[69] {
		t.Errorf("replay after folding a long tail: %+v", st)
	}
	// A key deleted after its put was folded is handed over as the
	// tombstone (from the tail) alone: the log is read first, and a key it
	// holds after the snapshot is left out of the snapshot's records.
	k := byPart[untouched[1]][0]
	del(t, l, ns, k)
	var handed []bool
	if _, err := l.Replay(ctx10(t), ns, []int{untouched[1]}, func(r persistence.Record) error {
		if r.Key == k {
			handed = append(handed, r.Deleted)
		}
		return nil
	}, nil); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(handed, []bool{true}) {
		t.Errorf("%s handed over as deleted %v, want the tombstone alone", k, handed)
	}
	// Every partition, of which 32 have a snapshot, of a namespace alone
	// in the log: the log is read unfiltered from its start, and the
	// messages of the 32 up to their snapshots are skipped.
	for _, readers := range []int{1, 3} {
		_, st, _ = snapshotMatchesLog(t, l, ns, all, persistence.ReplayReaders(readers))
		if st.Snapshots != len(parts) || st.Filter != "stream" {
			t.Errorf("replay of every partition with %d readers: %+v, want %d snapshots and the stream unfiltered", readers, st, len(parts))
		}
	}
}

// TestSnapshotDeleteNotResurrected: a delete folded into a snapshot whose
// tombstone then leaves the log does not bring the record back, whether
// the snapshot stays fresh (a Compact every SnapshotEvery) or goes stale.
func TestSnapshotDeleteNotResurrected(t *testing.T) {
	tg := bustest.Embedded(t)
	c := bustest.Connect(t, tg.URL)
	const ttl, every = 3 * time.Second, time.Second
	l := openLog(t, c, persistence.RecordLogConfig{TombstoneTTL: ttl, SnapshotEvery: every})
	const ns = "s"
	keys := []string{"gone", "kept", "gone-stale"}
	parts := partitionsOf(keys)
	for _, k := range keys {
		put(t, l, ns, k, "v "+k, time.Time{})
	}
	// "gone-stale" has a namespace of its own, compacted only once: its
	// snapshot goes stale while the tombstone is still in the log.
	const staleNS = "t"
	put(t, l, staleNS, "gone-stale", "v", time.Time{})
	stalePart := []int{partition.PartitionOf("gone-stale")}
	compact(t, l, ns, parts)
	compact(t, l, staleNS, stalePart)

	del(t, l, ns, "gone")
	del(t, l, staleNS, "gone-stale")
	foldedAt := time.Now()
	cs := compact(t, l, ns, parts)
	if cs.Folded != 1 || cs.Checked != len(parts)-1 {
		t.Errorf("compaction after a delete: %+v, want its partition folded", cs)
	}
	compact(t, l, staleNS, stalePart)
	got, st, _ := snapshotMatchesLog(t, l, ns, parts)
	if !got["gone"].Deleted || st.Snapshots != len(parts) {
		t.Fatalf("before the tombstone's TTL: %+v, %+v", got["gone"], st)
	}
	// A node compacts every SnapshotEvery meanwhile.
	last := time.Now()
	bustest.WaitFor(t, 3*ttl, "the tombstones to leave the log", func() bool {
		if time.Since(last) >= every/2 {
			compact(t, l, ns, parts)
			last = time.Now()
		}
		return lastMsg(t, c, l, ns, "gone") == nil && lastMsg(t, c, l, staleNS, "gone-stale") == nil
	})
	checked := time.Now()
	compact(t, l, ns, parts)
	got, st, _ = snapshotMatchesLog(t, l, ns, parts)
	if r, ok := got["gone"]; ok {
		t.Errorf("deleted record back from the snapshot: %+v", r)
	}
	if string(got["kept"].Value) != "v kept" {
		t.Errorf("after the tombstone's TTL: %v", got)
	}
	// Unless the machine is so slow that the snapshots went stale again,
	// or were folded anew (after 8 checks), dropping the tombstone, they
	// were read and the tombstone skipped as expired.
	if time.Since(checked) < ttl/2 && time.Since(foldedAt) < 8*every && (st.Snapshots != len(parts) || st.Expired < 1) {
		t.Errorf("after the tombstone's TTL: %+v; want the snapshots used and the tombstone skipped as expired", st)
	}
	got, st, _ = snapshotMatchesLog(t, l, staleNS, stalePart)
	if r, ok := got["gone-stale"]; ok || st.Snapshots != 0 {
		t.Errorf("stale snapshot: %+v (%v), %+v; want nothing, and no snapshot used", r, ok, st)
	}
	// Compacted again, the stale snapshot is built anew from the log.
	if cs := compact(t, l, staleNS, stalePart); cs.Built != 1 || cs.Records != 0 {
		t.Errorf("compaction of the stale snapshot: %+v", cs)
	}
	if got, st, _ := snapshotMatchesLog(t, l, staleNS, stalePart); len(got) != 0 || st.Snapshots != 1 {
		t.Errorf("after rebuilding: %v, %+v", got, st)
	}
}

// TestSnapshotStale: a snapshot last checked more than half the
// tombstones' TTL ago is not read, as a tombstone written since may have
// left the log; every record is read from the log instead, and the next
// Compact builds the snapshot anew. A reader with a longer TTL than the
// nodes that wrote the snapshot (a tool started without their settings)
// goes by theirs, which the manifest says.
func TestSnapshotStale(t *testing.T) {
	const ttl = 2 * time.Second
	writer := persistence.RecordLogConfig{TombstoneTTL: ttl, SnapshotEvery: 500 * time.Millisecond}
	for _, tc := range []struct {
		name   string
		reader persistence.RecordLogConfig
	}{
		{"the writer itself", writer},
		{"a reader with a longer TTL", snapConfig("")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tg := bustest.Embedded(t)
			c := bustest.Connect(t, tg.URL)
			l := openLog(t, c, writer)
			reader := openLog(t, c, tc.reader)
			const ns = "s"
			keys := keysIn("k", all[:4], 10)
			parts := partitionsOf(keys)
			for _, k := range keys {
				put(t, l, ns, k, "v "+k, time.Time{})
			}
			start := time.Now()
			compact(t, l, ns, parts)
			m := manifest(t, c, ns, parts[0])
			if fieldInt(t, m, "ttl") != ttl.Milliseconds() {
				t.Fatalf("manifest %v, want ttl=%d", m, ttl.Milliseconds())
			}
			checked := time.UnixMilli(fieldInt(t, m, "checked"))
			_, st, _ := snapshotMatchesLog(t, reader, ns, parts)
			if time.Since(start) < ttl/2-100*time.Millisecond && st.Snapshots != len(parts) {
				t.Errorf("fresh snapshots not read: %+v", st)
			}
			bustest.WaitFor(t, 10*time.Second, "the snapshots to go stale", func() bool { return time.Since(checked) > ttl/2 })
			got, st, _ := snapshotMatchesLog(t, reader, ns, parts)
			if st.Snapshots != 0 || len(got) != len(keys) || st.Records != int64(len(keys)) {
				t.Errorf("stale snapshots, checked %s ago: %d records, %+v; want %d from the log alone",
					time.Since(checked), len(got), st, len(keys))
			}
			if cs := compact(t, l, ns, parts); cs.Built != len(parts) {
				t.Errorf("compaction of stale snapshots: %+v, want them built anew", cs)
			}
		})
	}
}

// TestSnapshotSealedAtRest: with a key, the snapshot stream holds no
// value in clear, as the log does not: chunks keep the sealed bytes.
func TestSnapshotSealedAtRest(t *testing.T) {
	tg := bustest.Embedded(t)
	c := bustest.Connect(t, tg.URL)
	l := openLog(t, c, snapConfig(testKey(1)))
	const ns = "s"
	keys := keysIn("k", all[:16], 5)
	secret := func(k string) string { return "plaintext-token-of-" + k }
	for _, k := range keys {
		put(t, l, ns, k, secret(k), time.Time{})
	}
	if cs := compact(t, l, ns, partitionsOf(keys)); cs.Records != int64(len(keys)) {
		t.Fatalf("compaction: %+v", cs)
	}
	st, err := c.JS.Stream(ctx10(t), persistence.SnapshotStreamConfig(c.Subjects, persistence.RecordLogConfig{}).Name)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx10(t))
	if err != nil {
		t.Fatal(err)
	}
	chunks := 0
	for seq := info.State.FirstSeq; seq > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := st.GetMsg(ctx10(t), seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if len(m.Data) > 0 {
			chunks++
		}
		for _, k := range keys {
			if bytes.Contains(m.Data, []byte(secret(k))) || strings.Contains(fmt.Sprint(m.Header), secret(k)) {
				t.Errorf("%s holds the value of %s in clear", m.Subject, k)
			}
		}
	}
	if chunks == 0 {
		t.Fatal("no chunk in the snapshot stream")
	}
	got, _, _ := snapshotMatchesLog(t, l, ns, partitionsOf(keys))
	for _, k := range keys {
		if string(got[k].Value) != secret(k) {
			t.Errorf("%s replayed as %q", k, got[k].Value)
		}
	}
}

// TestSnapshotBadInput: foreign and corrupt messages in the snapshot
// stream never fail a replay: the partitions they spoil are read from the
// log, every record is handed over all the same, and the bad messages
// are counted as rejected.
func TestSnapshotBadInput(t *testing.T) {
	tg := bustest.Embedded(t)
	c := bustest.Connect(t, tg.URL)
	reg := prometheus.NewRegistry()
	m := persistence.NewRecordMetrics(reg)
	l := openLog(t, c, snapConfig(testKey(1)), persistence.WithRecordMetrics(m))
	const ns = "s"
	parts := all[300:320]
	keys := keysIn("k", parts, 5)
	writeMix(t, l, ns, keys, 1)
	compact(t, l, ns, parts)
	other := keysIn("o", []int{0}, 1)[0] // a key of another partition than any of parts

	// entryEnd is the end of the first entry of a chunk.
	entryEnd := func(b []byte) int {
		n := 0
		for range 3 {
			l, k := binary.Uvarint(b[n:])
			n += k + int(l)
		}
		_, k := binary.Uvarint(b[n:])
		return n + k
	}
	type corrupt struct {
		name     string
		rejected int // messages rejected
		spoil    func(p int, id string, n int, chunk0 []byte)
	}
	cases := []corrupt{
		{"chunk without a header", 1, func(p int, _ string, _ int, _ []byte) {
			publishSnap(t, c, chunkSubject(ns, p, 0), nil, []byte("hello"))
		}},
		{"chunk with another header only", 1, func(p int, _ string, _ int, chunk0 []byte) {
			publishSnap(t, c, chunkSubject(ns, p, 0), nats.Header{"X": {"y"}}, chunk0)
		}},
		{"chunk of format 2", 1, func(p int, id string, n int, chunk0 []byte) {
			publishSnap(t, c, chunkSubject(ns, p, 0), snapHeader("2 chunk id="+id+" i=0 n="+strconv.Itoa(n)), chunk0)
		}},
		{"unknown kind", 1, func(p int, id string, n int, chunk0 []byte) {
			publishSnap(t, c, chunkSubject(ns, p, 0), snapHeader("1 lump id="+id+" i=0 n="+strconv.Itoa(n)), chunk0)
		}},
		{"bad id", 1, func(p int, _ string, n int, chunk0 []byte) {
			publishSnap(t, c, chunkSubject(ns, p, 0), snapHeader("1 chunk id=a.b i=0 n="+strconv.Itoa(n)), chunk0)
		}},
		{"chunk index out of range", 1, func(p int, id string, n int, chunk0 []byte) {
			publishSnap(t, c, chunkSubject(ns, p, 0), snapHeader(fmt.Sprintf("1 chunk id=%s i=%d n=%d", id, n, n)), chunk0)
		}},
		{"chunk under another index", 1, func(p int, id string, n int, chunk0 []byte) {
			publishSnap(t, c, chunkSubject(ns, p, 0), snapHeader(fmt.Sprintf("1 chunk id=%s i=1 n=%d", id, n+1)), chunk0)
		}},
		{"manifest under a chunk subject", 1, func(p int, id string, n int, chunk0 []byte) {
			h := snapMsg(t, c, manifestSubject(ns, p)).Header
			publishSnap(t, c, chunkSubject(ns, p, 0), h, chunk0)
		}},
		{"chunk under the manifest subject", 1, func(p int, id string, n int, chunk0 []byte) {
			publishSnap(t, c, manifestSubject(ns, p), snapHeader(persistence.SnapshotChunkHeader(id, 0, n)), chunk0)
		}},
		{"garbage chunk of the snapshot", 1, func(p int, id string, n int, _ []byte) {
			publishSnap(t, c, chunkSubject(ns, p, 0), snapHeader(persistence.SnapshotChunkHeader(id, 0, n)), bytes.Repeat([]byte{0xff}, 40))
		}},
		{"chunk of the snapshot cut in an entry", 1, func(p int, id string, n int, chunk0 []byte) {
			publishSnap(t, c, chunkSubject(ns, p, 0), snapHeader(persistence.SnapshotChunkHeader(id, 0, n)), chunk0[:entryEnd(chunk0)+3])
		}},
		{"chunk of the snapshot cut after an entry", 1, func(p int, id string, n int, chunk0 []byte) {
			publishSnap(t, c, chunkSubject(ns, p, 0), snapHeader(persistence.SnapshotChunkHeader(id, 0, n)), chunk0[:entryEnd(chunk0)])
		}},
		{"entry of another partition", 1, func(p int, id string, n int, chunk0 []byte) {
			data := persistence.AppendSnapshotEntry(slices.Clone(chunk0), other, "1 put", []byte("x"), 1)
			publishSnap(t, c, chunkSubject(ns, p, 0), snapHeader(persistence.SnapshotChunkHeader(id, 0, n)), data)
		}},
		{"entry with a bad record header", 1, func(p int, id string, n int, chunk0 []byte) {
			k := keysIn("k", []int{p}, 1)[0]
			data := persistence.AppendSnapshotEntry(slices.Clone(chunk0), k, "1 upd", nil, 1)
			publishSnap(t, c, chunkSubject(ns, p, 0), snapHeader(persistence.SnapshotChunkHeader(id, 0, n)), data)
		}},
		{"entry that does not open", 1, func(p int, id string, n int, chunk0 []byte) {
			k := keysIn("k", []int{p}, 1)[0]
			data := persistence.AppendSnapshotEntry(slices.Clone(chunk0), k, "1 put kid="+l.Codec().KeyID(), []byte("not sealed at all, not at all"), 1)
			publishSnap(t, c, chunkSubject(ns, p, 0), snapHeader(persistence.SnapshotChunkHeader(id, 0, n)), data)
		}},
		{"manifest whose chunks are missing", 0, func(p int, _ string, _ int, _ []byte) {
			f := manifest(t, c, ns, p)
			publishSnap(t, c, manifestSubject(ns, p), snapHeader(fmt.Sprintf("1 manifest id=%s n=3 upto=%s checked=%s folded=%s records=%s log=%s",
				"SomeOtherSnapshotId123", f["upto"], f["checked"], f["folded"], f["records"], f["log"])), nil)
		}},
		{"chunk purged", 0, func(p int, _ string, _ int, _ []byte) {
			if err := snapStream(t, c).Purge(ctx10(t), jetstream.WithPurgeSubject(chunkSubject(ns, p, 0))); err != nil {
				t.Fatal(err)
			}
		}},
	}
	if len(cases) > len(parts) {
		t.Fatalf("%d cases for %d partitions", len(cases), len(parts))
	}
	spoiled, rejected := map[int]bool{}, 0
	for i, tc := range cases {
		p := parts[i]
		f := manifest(t, c, ns, p)
		cm := snapMsg(t, c, chunkSubject(ns, p, 0))
		if f == nil || cm == nil || f["n"] != "1" || fieldInt(t, f, "records") < 2 {
			t.Fatalf("partition %d: manifest %v, chunk %v; want one chunk of 2 records at least", p, f, cm)
		}
		tc.spoil(p, f["id"], int(fieldInt(t, f, "n")), cm.Data)
		spoiled[p] = true
		rejected += tc.rejected
	}

	_, st, _ := snapshotMatchesLog(t, l, ns, parts)
	if st.Snapshots != len(parts)-len(cases) || st.Rejected != int64(rejected) {
		t.Errorf("stats %+v; want %d snapshots, %d rejected", st, len(parts)-len(cases), rejected)
	}
	var metric float64
	for _, reason := range []string{"subject", "header", "key", "seal", "snapshot"} {
		metric += testutil.ToFloat64(m.Rejected.WithLabelValues(reason))
	}
	if metric != float64(rejected) {
		t.Errorf("rejected metric %v, want %d", metric, rejected)
	}
	var good []int
	for _, p := range parts {
		if !spoiled[p] {
			good = append(good, p)
		}
	}
	// Each spoiled partition beside a good one: read from the log, its
	// bad message counted.
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, st, _ := snapshotMatchesLog(t, l, ns, []int{parts[i], good[0]}, persistence.ReplayReaders(2))
			if st.Snapshots != 1 || st.Rejected != int64(tc.rejected) || len(got) == 0 {
				t.Errorf("%d records, stats %+v; want 1 snapshot (the good partition's), %d rejected", len(got), st, tc.rejected)
			}
		})
	}
	// The partitions left alone still come from their snapshots.
	if _, st, _ := snapshotMatchesLog(t, l, ns, good); st.Snapshots != len(good) || st.Rejected != 0 {
		t.Errorf("good partitions: %+v", st)
	}
}

// TestSnapshotsOff: no snapshots without a check interval, with one not
// below half the tombstones' TTL, or with a maximum age; Compact then
// fails, while Replay reads the log alone and ignores the snapshots
// another configuration wrote.
func TestSnapshotsOff(t *testing.T) {
	tg := bustest.Embedded(t)
	c := bustest.Connect(t, tg.URL)
	const ns = "s"
	keys := keysIn("k", all[:8], 5)
	parts := partitionsOf(keys)
	on := openLog(t, c, snapConfig(""))
	writeMix(t, on, ns, keys, 1)
	compact(t, on, ns, parts)
	if _, st, _ := snapshotMatchesLog(t, on, ns, parts); st.Snapshots != len(parts) {
		t.Fatalf("snapshots on: %+v", st)
	}
	cases := []struct {
		name  string
		cfg   persistence.RecordLogConfig
		every time.Duration // 0: off
	}{
		{"default tombstone TTL", persistence.RecordLogConfig{SnapshotEvery: 29 * time.Second}, 29 * time.Second},
		{"every second, tombstones for 3", persistence.RecordLogConfig{SnapshotEvery: time.Second, TombstoneTTL: 3 * time.Second}, time.Second},
		{"no interval", persistence.RecordLogConfig{TombstoneTTL: time.Minute}, 0},
		{"negative interval", persistence.RecordLogConfig{SnapshotEvery: -time.Second, TombstoneTTL: time.Minute}, 0},
		{"half the tombstone TTL", persistence.RecordLogConfig{SnapshotEvery: 30 * time.Second, TombstoneTTL: time.Minute}, 0},
		{"above the tombstone TTL", persistence.RecordLogConfig{SnapshotEvery: 2 * time.Minute, TombstoneTTL: time.Minute}, 0},
		{"default TTL, every 5m", persistence.RecordLogConfig{SnapshotEvery: 5 * time.Minute}, 0},
		{"max age", persistence.RecordLogConfig{SnapshotEvery: time.Second, TombstoneTTL: time.Minute, MaxAge: time.Hour}, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			l := openLog(t, c, tc.cfg)
			if l.Snapshots() != (tc.every > 0) || l.SnapshotEvery() != tc.every {
				t.Fatalf("snapshots %v every %s, want every %s", l.Snapshots(), l.SnapshotEvery(), tc.every)
			}
			_, st, _ := snapshotMatchesLog(t, l, ns, parts)
			if tc.every > 0 {
				if st.Snapshots != len(parts) {
					t.Errorf("snapshots on: %+v", st)
				}
				return
			}
			if st.Snapshots != 0 || st.Records == 0 {
				t.Errorf("snapshots off: %+v, want every record from the log", st)
			}
			if _, err := l.Compact(ctx10(t), ns, parts); err == nil || !strings.Contains(err.Error(), "no snapshots") {
				t.Errorf("compact without snapshots: %v", err)
			}
			if err := l.DropSnapshots(ctx10(t), ns); err != nil {
				t.Errorf("drop snapshots without snapshots: %v", err)
			}
		})
	}
	// The snapshots are still there for the configuration that has them.
	if _, st, _ := snapshotMatchesLog(t, openLog(t, c, snapConfig("")), ns, parts); st.Snapshots != len(parts) {
		t.Errorf("snapshots lost: %+v", st)
	}
}

// TestCompactBadInput: what Compact refuses.
func TestCompactBadInput(t *testing.T) {
	tg := bustest.Embedded(t)
	c := bustest.Connect(t, tg.URL)
	l := openLog(t, c, snapConfig(""))
	for _, tc := range []struct {
		name, ns string
		parts    []int
		want     string
	}{
		{"bad namespace", "a.b", []int{1}, "ns"},
		{"negative partition", "s", []int{1, -1}, "0 to 1023"},
		{"partition too big", "s", []int{1024}, "0 to 1023"},
	} {
		if _, err := l.Compact(ctx10(t), tc.ns, tc.parts); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
	if err := l.DropSnapshots(ctx10(t), "a.b"); err == nil {
		t.Errorf("drop snapshots of a bad namespace accepted")
	}
	// Nothing to compact: no partitions, or partitions without records.
	if cs, err := l.Compact(ctx10(t), "s", nil); err != nil || cs.Partitions != 0 {
		t.Errorf("compact of no partition: %+v, %v", cs, err)
	}
	if cs := compact(t, l, "s", []int{5, 5, 6}); cs.Partitions != 2 || cs.Built != 2 || cs.Records != 0 {
		t.Errorf("compact of empty partitions: %+v", cs)
	}
	if got, st := replayWith(t, l, "s", []int{5, 6}); len(got) != 0 || st.Snapshots != 2 {
		t.Errorf("replay of empty snapshots: %v, %+v", got, st)
	}
}

// TestSnapshotLogRecreated: the log's stream deleted and created again
// starts its sequences over; a snapshot of the old one is never read for
// the new one.
func TestSnapshotLogRecreated(t *testing.T) {
	tg := bustest.Embedded(t)
	c := bustest.Connect(t, tg.URL)
	const ns = "s"
	parts := all[:16]
	l := openLog(t, c, snapConfig(""))
	writeMix(t, l, ns, keysIn("old", parts, 5), 1)
	compact(t, l, ns, parts)
	if _, st, _ := snapshotMatchesLog(t, l, ns, parts); st.Snapshots != len(parts) {
		t.Fatalf("before: %+v", st)
	}
	if err := c.JS.DeleteStream(ctx10(t), l.Stream()); err != nil {
		t.Fatal(err)
	}
	l2 := openLog(t, c, snapConfig(""))
	// More messages than before, so that the new log's last sequence is
	// past the old snapshots' upto.
	writeMix(t, l2, ns, keysIn("new", parts, 10), 2)
	for _, lg := range []*persistence.RecordLog{l2, l} {
		got, st, _ := snapshotMatchesLog(t, lg, ns, parts)
		if st.Snapshots != 0 {
			t.Errorf("snapshots of the old log read: %+v", st)
		}
		for k := range got {
			if !strings.HasPrefix(k, "new") {
				t.Errorf("%s of the old log replayed", k)
			}
		}
	}
	if cs := compact(t, l2, ns, parts); cs.Built != len(parts) {
		t.Errorf("compaction of the new log: %+v, want every snapshot built", cs)
	}
	if _, st, _ := snapshotMatchesLog(t, l2, ns, parts); st.Snapshots != len(parts) {
		t.Errorf("after compaction: %+v", st)
	}
}

// TestSnapshotDrop: DropSnapshots and Rekey leave no snapshot of their
// namespace, and other namespaces keep theirs.
func TestSnapshotDrop(t *testing.T) {
	tg := bustest.Embedded(t)
	c := bustest.Connect(t, tg.URL)
	parts := all[500:510]
	k1, k2 := testKey(1), testKey(2)
	l := openLog(t, c, snapConfig(k1))
	for _, ns := range []string{"a", "b", "c"} {
		writeMix(t, l, ns, keysIn(ns, parts, 5), 1)
		compact(t, l, ns, parts)
	}
	noSnapshot := func(t *testing.T, ns string) {
		t.Helper()
		for _, p := range parts {
			if m := snapMsg(t, c, manifestSubject(ns, p)); m != nil {
				t.Errorf("%s/%d: manifest left: %q", ns, p, m.Header.Get(persistence.SnapshotHeader))
			}
			if m := snapMsg(t, c, chunkSubject(ns, p, 0)); m != nil {
				t.Errorf("%s/%d: chunk left", ns, p)
			}
		}
	}
	t.Run("drop", func(t *testing.T) {
		if err := l.DropSnapshots(ctx10(t), "a"); err != nil {
			t.Fatal(err)
		}
		noSnapshot(t, "a")
		if _, st, _ := snapshotMatchesLog(t, l, "a", parts); st.Snapshots != 0 {
			t.Errorf("dropped: %+v", st)
		}
		if _, st, _ := snapshotMatchesLog(t, l, "b", parts); st.Snapshots != len(parts) {
			t.Errorf("other namespace: %+v", st)
		}
		if cs := compact(t, l, "a", parts); cs.Built != len(parts) {
			t.Errorf("compaction after the drop: %+v", cs)
		}
	})
	t.Run("rekey", func(t *testing.T) {
		rotated := openLog(t, c, persistence.RecordLogConfig{TombstoneTTL: time.Hour, SnapshotEvery: time.Minute, Key: k2, KeyPrevious: k1})
		// Before the rekey the snapshots sealed with the previous key
		// open.
		if _, st, _ := snapshotMatchesLog(t, rotated, "c", parts); st.Snapshots != len(parts) || st.Rejected != 0 {
			t.Errorf("snapshots under the previous key: %+v", st)
		}
		n, err := rotated.Rekey(ctx10(t), "c", nil)
		if err != nil || n == 0 {
			t.Fatalf("rekey rewrote %d: %v", n, err)
		}
		noSnapshot(t, "c")
		got, st, _ := snapshotMatchesLog(t, rotated, "c", parts)
		if st.Snapshots != 0 {
			t.Errorf("after rekey: %+v", st)
		}
		for k, r := range got {
			if !r.Deleted && r.KeyID != rotated.Codec().KeyID() {
				t.Errorf("%s sealed with %q after rekey", k, r.KeyID)
			}
		}
		if _, st, _ := snapshotMatchesLog(t, rotated, "b", parts); st.Snapshots != len(parts) {
			t.Errorf("other namespace after rekey: %+v", st)
		}
		compact(t, rotated, "c", parts)
		current := openLog(t, c, persistence.RecordLogConfig{TombstoneTTL: time.Hour, SnapshotEvery: time.Minute, Key: k2})
		if _, st, _ := snapshotMatchesLog(t, current, "c", parts); st.Snapshots != len(parts) || st.Rejected != 0 {
			t.Errorf("compacted after rekey, read without the old key: %+v", st)
		}
	})
}

// TestSnapshotReplayStops: a callback's error ends a replay with
// snapshots with it, and the callback is not called again.
func TestSnapshotReplayStops(t *testing.T) {
	tg := bustest.Embedded(t)
	c := bustest.Connect(t, tg.URL)
	l := openLog(t, c, snapConfig(""))
	parts := all[:64]
	writeMix(t, l, "s", keysIn("k", parts, 10), 1)
	compact(t, l, "s", parts)
	boom := errors.New("store full")
	for _, readers := range []int{1, 4} {
		var calls atomic.Int64
		var returned atomic.Bool
		_, err := l.Replay(ctx10(t), "s", parts, func(persistence.Record) error {
			if returned.Load() {
				t.Error("fn called after Replay returned")
			}
			if calls.Add(1) == 10 {
				return boom
			}
			return nil
		}, nil, persistence.ReplayReaders(readers))
		returned.Store(true)
		if !errors.Is(err, boom) {
			t.Errorf("%d readers: err %v, want %v", readers, err, boom)
		}
		if n := calls.Load(); n < 10 || n > int64(10+readers-1) {
			t.Errorf("%d readers: fn called %d times, the 10th failing", readers, n)
		}
	}
}

// TestSnapshotShortExpiryOverwrite: a record of a snapshot overwritten
// with one expiring soon (a node expires a record so) never comes back
// from the snapshot: while the overwrite is in the log's tail the replay
// leaves the snapshot's record out, the next Compact folds it (it expires
// within a tombstone TTL), and the log keeps it a tombstone TTL at least,
// long enough for a Compact to see it, before the server removes it.
func TestSnapshotShortExpiryOverwrite(t *testing.T) {
	tg := bustest.Embedded(t)
	c := bustest.Connect(t, tg.URL)
	l := openLog(t, c, persistence.RecordLogConfig{TombstoneTTL: 3 * time.Second, SnapshotEvery: time.Second})
	const ns = "s"
	k1, k2 := "session:1", "session:2"
	parts := partitionsOf([]string{k1, k2})
	put(t, l, ns, k1, "v1", time.Now().Add(time.Hour))
	put(t, l, ns, k2, "v1", time.Now().Add(time.Hour))
	compact(t, l, ns, parts)
	absent := func(when string) {
		t.Helper()
		got, st, _ := snapshotMatchesLog(t, l, ns, parts)
		for _, k := range []string{k1, k2} {
			if r, ok := got[k]; ok && !r.Deleted {
				t.Errorf("%s: overwritten record back from the snapshot: %+v (%+v)", when, r, st)
			}
		}
		if st.Snapshots != len(parts) {
			t.Errorf("%s: %d partitions from snapshots, want %d", when, st.Snapshots, len(parts))
		}
	}
	// Expired when written. k2's is seen by a Compact, which folds it;
	// k1's is in the tail only.
	put(t, l, ns, k2, "v2", time.Now().Add(-time.Second))
	if cs := compact(t, l, ns, parts); cs.Folded != 1 {
		t.Errorf("compaction over an expired overwrite: %+v, want its partition folded", cs)
	}
	put(t, l, ns, k1, "v2", time.Now().Add(-time.Second))
	absent("in the tail")
	if m := lastMsg(t, c, l, ns, k1); m == nil {
		t.Fatal("the overwrite left the log at once; it must stay a tombstone TTL")
	}
	// Compacted as a node does, until the server has removed both.
	bustest.WaitFor(t, 15*time.Second, "the overwrites to leave the log", func() bool {
		compact(t, l, ns, parts)
		return lastMsg(t, c, l, ns, k1) == nil && lastMsg(t, c, l, ns, k2) == nil
	})
	absent("gone from the log")
}

// TestSnapshotCompactWhileWriting: two nodes compacting the same
// partitions at once while records are written, overwritten and deleted
// leave snapshots a replay reads right or refuses, never wrong ones.
func TestSnapshotCompactWhileWriting(t *testing.T) {
	tg := bustest.Embedded(t)
	c := bustest.Connect(t, tg.URL)
	l := openLog(t, c, snapConfig(""))
	const ns = "s"
	parts := all[600:608]
	keys := keysIn("k", parts, 40)
	writeMix(t, l, ns, keys, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var compactions atomic.Int64
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := l.Compact(ctx, ns, parts); err != nil {
					t.Errorf("compact: %v", err)
					return
				}
				compactions.Add(1)
			}
		}()
	}
	deadline := time.Now().Add(time.Second)
	for i := 0; time.Now().Before(deadline) || compactions.Load() < 4; i++ {
		k := keys[(i*7)%len(keys)]
		var err error
		if i%5 == 0 {
			_, err = l.Delete(ctx, ns, partition.PartitionOf(k), k)
		} else {
			_, err = l.Put(ctx, ns, partition.PartitionOf(k), k, []byte(fmt.Sprintf("v%d", i)), time.Time{})
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	_, st, _ := snapshotMatchesLog(t, l, ns, parts)
	t.Logf("%d compactions; replay %+v", compactions.Load(), st)
	// A snapshot the two spoiled (a manifest of one over chunks of the
	// other) stays refused until a fold finds it unreadable, some checks
	// later; dropped, they are all built anew.
	cs := compact(t, l, ns, parts)
	_, st, _ = snapshotMatchesLog(t, l, ns, parts)
	t.Logf("after a last compaction %+v: replay %+v", cs, st)
	if err := l.DropSnapshots(ctx, ns); err != nil {
		t.Fatal(err)
	}
	if cs := compact(t, l, ns, parts); cs.Built != len(parts) {
		t.Errorf("compaction after a drop: %+v", cs)
	}
	if _, st, _ := snapshotMatchesLog(t, l, ns, parts); st.Snapshots != len(parts) {
		t.Errorf("after dropping and compacting: %+v", st)
	}
}

// TestSnapshotForeignLogMessage: a message of the log that is no record
// (no header, or one a replay refuses), over a record folded into a
// snapshot, leaves that record absent from a replay with snapshots once
// compacted, as from a replay of the log alone.
func TestSnapshotForeignLogMessage(t *testing.T) {
	tg := bustest.Embedded(t)
	c := bustest.Connect(t, tg.URL)
	l := openLog(t, c, snapConfig(""))
	const ns = "s"
	p := 42
	keys := keysIn("k", []int{p}, 4)
	for _, k := range keys {
		put(t, l, ns, k, "v "+k, time.Time{})
	}
	compact(t, l, ns, []int{p})
	for i, h := range []nats.Header{nil, {persistence.RecordHeader: {"2 put"}}, {persistence.RecordHeader: {"1 put exp=soon"}}} {
		if _, err := c.JS.PublishMsg(ctx10(t), &nats.Msg{Subject: l.Codec().Subject(ns, p, keys[i]), Header: h, Data: []byte("foreign")}); err != nil {
			t.Fatal(err)
		}
	}
	cs := compact(t, l, ns, []int{p})
	got, st, logSt := snapshotMatchesLog(t, l, ns, []int{p})
	if len(got) != 1 || logSt.Rejected != 3 || st.Snapshots != 1 {
		t.Errorf("%d records, stats %+v, from the log %+v, compaction %+v; want 1, the 3 foreign messages rejected from the log", len(got), st, logSt, cs)
	}
}

// TestSnapshotRejectedAlone: a bad message of the snapshot stream is
// counted in Rejected also when no partition of the replay could be read
// from a snapshot.
func TestSnapshotRejectedAlone(t *testing.T) {
	tg := bustest.Embedded(t)
	c := bustest.Connect(t, tg.URL)
	l := openLog(t, c, snapConfig(""))
	const ns = "s"
	p := 42
	for _, k := range keysIn("k", []int{p}, 3) {
		put(t, l, ns, k, "v "+k, time.Time{})
	}
	compact(t, l, ns, []int{p})
	publishSnap(t, c, chunkSubject(ns, p, 0), nil, []byte("hello"))
	got, st, _ := snapshotMatchesLog(t, l, ns, []int{p})
	if len(got) != 3 || st.Snapshots != 0 || st.Rejected != 1 {
		t.Errorf("%d records, stats %+v; want 3 from the log and the bad chunk rejected", len(got), st)
	}
}

// TestSnapshotFoldUnreadable: a fold that cannot read the snapshot it
// folds into drops it, and the next Compact builds it from the log.
func TestSnapshotFoldUnreadable(t *testing.T) {
	tg := bustest.Embedded(t)
	c := bustest.Connect(t, tg.URL)
	l := openLog(t, c, snapConfig(testKey(1)))
	const ns = "s"
	p := 77
	keys := keysIn("k", []int{p}, 10)
	for _, k := range keys {
		put(t, l, ns, k, "v "+k, time.Time{})
	}
	compact(t, l, ns, []int{p})
	f := manifest(t, c, ns, p)
	publishSnap(t, c, chunkSubject(ns, p, 0), snapHeader("1 chunk id=SomeOtherSnapshot i=0 n=1"), []byte("garbage"))
	del(t, l, ns, keys[0]) // a delete in the tail: the next Compact folds
	if cs := compact(t, l, ns, []int{p}); cs.Dropped != 1 || cs.Folded != 0 {
		t.Errorf("compaction over unreadable chunks: %+v, want it dropped, not folded", cs)
	}
	if m := manifest(t, c, ns, p); m != nil {
		t.Errorf("manifest %v kept over chunks of another snapshot (was %v)", m, f)
	}
	if got, st, _ := snapshotMatchesLog(t, l, ns, []int{p}); st.Snapshots != 0 || len(got) != len(keys) || !got[keys[0]].Deleted {
		t.Errorf("%d records, stats %+v", len(got), st)
	}
	if cs := compact(t, l, ns, []int{p}); cs.Built != 1 || cs.Records != int64(len(keys)) {
		t.Errorf("compaction after the drop: %+v", cs)
	}
	if _, st, _ := snapshotMatchesLog(t, l, ns, []int{p}); st.Snapshots != 1 {
		t.Errorf("after rebuilding: %+v", st)
	}
}

// TestSnapshotStreamUnreadable: with the snapshot stream gone (after a heal
// its leader may come after the log's), a replay reads the log alone and
// gets every record.
func TestSnapshotStreamUnreadable(t *testing.T) {
	tg := bustest.Embedded(t)
	c := bustest.Connect(t, tg.URL)
	l := openLog(t, c, snapConfig(""))
	const ns = "s"
	keys := keysIn("k", all[:8], 4)
	for _, k := range keys {
		put(t, l, ns, k, "v-"+k, time.Time{})
	}
	compact(t, l, ns, partitionsOf(keys))
	if err := c.JS.DeleteStream(ctx10(t), persistence.SnapshotStreamConfig(c.Subjects, persistence.RecordLogConfig{}).Name); err != nil {
		t.Fatal(err)
	}
	got, st := replayWith(t, l, ns, partitionsOf(keys))
	if st.Snapshots != 0 {
		t.Errorf("%d snapshots read from a deleted stream", st.Snapshots)
	}
	for _, k := range keys {
		if string(got[k].Value) != "v-"+k {
			t.Errorf("%s replayed as %q, want %q", k, got[k].Value, "v-"+k)
		}
	}
}
