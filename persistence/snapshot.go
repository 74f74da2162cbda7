package persistence

// Snapshots of the record log. The log keeps one message per key, and a
// JetStream consumer delivers some 150,000 of them a second on two cores:
// a replay of a million records would take seven seconds. A snapshot
// packs the records of one partition of a namespace into a few large
// messages of a second stream, so a replay reads them at memory speed and
// then only the log's tail: the messages written since the snapshot.
//
// A snapshot is always a fold of the log itself up to a sequence (upto),
// never a copy of a node's memory, so it holds exactly what a replay of
// the log up to there would hand over. A replay reads the log's messages
// of that partition after upto, then the snapshot less the keys those
// messages hold. What could make the two differ is a message that leaves
// the log without a trace: a tombstone, or a record over one of the
// snapshot's, whose TTL ends. Every message stays in the log a tombstone
// TTL at least, and a snapshot counts only for half of
// CACHEBUS_RECORDS_TOMBSTONE_TTL after its last check. A server that cannot
// expire single messages (before 2.11) deletes by purging, which leaves no
// trace at all, and a log with a maximum age drops records unseen: in
// either case there are no snapshots.
//
// Subjects, in the stream CACHEBUS_RECORD_SNAPSHOTS (one message each):
//
//	<p>.rec.snap.<ns>.<partition, 4 digits>.m    the manifest
//	<p>.rec.snap.<ns>.<partition, 4 digits>.<i>  chunk i, from 0
//
// docs/PROTOCOL.md ("Snapshots of the record log") is the contract.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/cachenode/partition"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
)

// SnapshotHeader is the header of every message of the snapshot stream:
//
//	"1 chunk id=<id> i=<i> n=<n>"
//	"1 manifest id=<id> n=<n> upto=<seq> checked=<ms> folded=<ms> records=<k> log=<ns> ttl=<ms>"
//
// where log is the creation time of the record log's stream in Unix
// nanoseconds, so that a snapshot of a stream since deleted and created
// again, whose sequences start over, is never taken for one of the new;
// and ttl the writer's tombstone TTL (optional).
const SnapshotHeader = "Cachebus-Snapshot"

// DefaultSnapshotEvery is CACHEBUS_RECORDS_SNAPSHOT_EVERY's default: a
// new write is folded into a snapshot within seconds, and a snapshot is
// checked many times within half the tombstones' TTL (1m at the least).
const DefaultSnapshotEvery = 15 * time.Second

// snapshotFormat is the first word of SnapshotHeader.
const snapshotFormat = "1"

// snapshotChunkBytes is the size a chunk is filled to; one entry larger
// than that has a chunk of its own (it fitted in a message of the log).
const snapshotChunkBytes = 256 << 10

// snapshotPullBytes bounds what a read of the snapshot stream asks for at
// once: a batch of replayBatch chunks would be hundreds of megabytes,
// which the server takes for a slow consumer and cuts off.
const snapshotPullBytes = 8 << 20

// foldShare: a partition whose tail holds no tombstone is folded only when
// the tail reaches an eighth of its snapshot (64 records at least), or
// when its last fold is foldAfter checks old; in between only its
// manifest is rewritten, which costs one small message.
const (
	foldShare     = 8
	foldMinTail   = 64
	foldAfterRuns = 8
)

// errSnapshotDropped is writeSnapshot's word that it dropped a snapshot
// it could not read rather than fold into it.
var errSnapshotDropped = errors.New("persistence: snapshot dropped")

// ErrBadSnapshot is a message of the snapshot stream that is not part of a
// snapshot: a replay counts it in Rejected, reads the partition from the
// log instead, and goes on.
var ErrBadSnapshot = errors.New("persistence: bad snapshot")

// snapManifest is the manifest of one partition's snapshot.
type snapManifest struct {
	id      string
	chunks  int
	upto    uint64 // the log's sequence the snapshot is a fold up to
	checked int64  // Unix ms of the last look at the log's tail
	folded  int64  // Unix ms of the last fold
	records int
	logID   int64 // the log stream's creation, Unix ns
	// ttl is the writer's tombstone TTL in ms (0: not said): a reader
	// trusts the snapshot for half of the shorter of its own and this.
	ttl int64
}

func (m *snapManifest) header() string {
	b := make([]byte, 0, 128)
	b = append(b, snapshotFormat+" manifest id="...)
	b = append(b, m.id...)
	b = append(b, " n="...)
	b = strconv.AppendInt(b, int64(m.chunks), 10)
	b = append(b, " upto="...)
	b = strconv.AppendUint(b, m.upto, 10)
	b = append(b, " checked="...)
	b = strconv.AppendInt(b, m.checked, 10)
	b = append(b, " folded="...)
	b = strconv.AppendInt(b, m.folded, 10)
	b = append(b, " records="...)
	b = strconv.AppendInt(b, int64(m.records), 10)
	b = append(b, " log="...)
	b = strconv.AppendInt(b, m.logID, 10)
	if m.ttl > 0 {
		b = append(b, " ttl="...)
		b = strconv.AppendInt(b, m.ttl, 10)
	}
	return string(b)
}

// snapChunk is the header of one chunk message.
type snapChunk struct {
	id   string
	i, n int
}

// parseSnapshotHeader reads a SnapshotHeader into a manifest or a chunk.
func parseSnapshotHeader(hv string) (*snapManifest, *snapChunk, error) {
	format, rest, _ := strings.Cut(hv, " ")
	if format != snapshotFormat {
		return nil, nil, fmt.Errorf("%w: format %q, want %s", ErrBadSnapshot, clipString(format), snapshotFormat)
	}
	kind, rest, _ := strings.Cut(rest, " ")
	fields := map[string]string{}
	for rest != "" {
		var word string
		word, rest, _ = strings.Cut(rest, " ")
		if name, val, ok := strings.Cut(word, "="); ok {
			fields[name] = val
		}
	}
	num := func(name string, limit uint64) (uint64, error) {
		v, ok := parseDecimal(fields[name])
		if !ok || v > limit {
			return 0, fmt.Errorf("%w: %s=%q", ErrBadSnapshot, name, clipString(fields[name]))
		}
		return v, nil
	}
	id := fields["id"]
	if !bus.ValidName(id) {
		return nil, nil, fmt.Errorf("%w: id=%q", ErrBadSnapshot, clipString(id))
	}
	const maxChunks = 1 << 20
	n, err := num("n", maxChunks)
	if err != nil {
		return nil, nil, err
	}
	switch kind {
	case "manifest":
		m := &snapManifest{id: id, chunks: int(n)}
		var v [5]uint64
		for i, name := range []string{"upto", "checked", "folded", "records", "log"} {
			if v[i], err = num(name, 1<<63-1); err != nil {
				return nil, nil, err
			}
		}
		m.upto, m.checked, m.folded, m.records, m.logID = v[0], int64(v[1]), int64(v[2]), int(v[3]), int64(v[4])
		if _, ok := fields["ttl"]; ok {
			ttl, err := num("ttl", 1<<63-1)
			if err != nil {
				return nil, nil, err
			}
			m.ttl = int64(ttl)
		}
		return m, nil, nil
	case "chunk":
		i, err := num("i", maxChunks)
		if err != nil {
			return nil, nil, err
		}
		if i >= n {
			return nil, nil, fmt.Errorf("%w: chunk %d of %d", ErrBadSnapshot, i, n)
		}
		return nil, &snapChunk{id: id, i: int(i), n: int(n)}, nil
	}
	return nil, nil, fmt.Errorf("%w: kind %q, want manifest or chunk", ErrBadSnapshot, clipString(kind))
}

// snapEntry is one record of a snapshot as the log had it: the key, the
// Cachebus-Record header, the data (sealed or not) and its sequence.
type snapEntry struct {
	key  string
	hdr  string
	data []byte
	seq  uint64
}

func (e *snapEntry) size() int {
	return len(e.key) + len(e.hdr) + len(e.data) + 4*binary.MaxVarintLen64
}

// appendSnapEntry appends e: uvarint-prefixed key, header and data, then
// the sequence as a uvarint.
func appendSnapEntry(b []byte, e *snapEntry) []byte {
	b = binary.AppendUvarint(b, uint64(len(e.key)))
	b = append(b, e.key...)
	b = binary.AppendUvarint(b, uint64(len(e.hdr)))
	b = append(b, e.hdr...)
	b = binary.AppendUvarint(b, uint64(len(e.data)))
	b = append(b, e.data...)
	return binary.AppendUvarint(b, e.seq)
}

// nextSnapEntry reads the entry at the start of b. The data it returns is
// a slice of b.
func nextSnapEntry(b []byte) (e snapEntry, rest []byte, err error) {
	field := func(what string) ([]byte, error) {
		n, k := binary.Uvarint(b)
		if k <= 0 || n > uint64(len(b)-k) {
			return nil, fmt.Errorf("%w: entry %s truncated", ErrBadSnapshot, what)
		}
		f := b[k : k+int(n)]
		b = b[k+int(n):]
		return f, nil
	}
	key, err := field("key")
	if err != nil {
		return e, nil, err
	}
	hdr, err := field("header")
	if err != nil {
		return e, nil, err
	}
	data, err := field("data")
	if err != nil {
		return e, nil, err
	}
	seq, k := binary.Uvarint(b)
	if k <= 0 {
		return e, nil, fmt.Errorf("%w: entry sequence truncated", ErrBadSnapshot)
	}
	return snapEntry{key: string(key), hdr: string(hdr), data: data, seq: seq}, b[k:], nil
}

// decodeSnapshot turns the chunks of partition p's snapshot of ns, in
// order, into records, opening sealed values in place. An entry that is
// not a record of p fails the whole snapshot: the caller reads the
// partition from the log instead.
func (rc *RecordCodec) decodeSnapshot(ns string, p int, chunks [][]byte) ([]Record, error) {
	var recs []Record
	for _, b := range chunks {
		for len(b) > 0 {
			e, rest, err := nextSnapEntry(b)
			if err != nil {
				return nil, err
			}
			b = rest
			r := Record{NS: ns, Partition: p, Key: e.key, Seq: e.seq}
			if err := checkRecord(ns, p, e.key); err != nil {
				return nil, fmt.Errorf("%w: %v", ErrBadSnapshot, err)
			}
			if err := rc.decodeBody(&r, e.hdr, e.data); err != nil {
				return nil, err
			}
			recs = append(recs, r)
		}
	}
	return recs, nil
}

// SnapshotStreamConfig is the JetStream configuration of the snapshot
// stream of hierarchy s.
func SnapshotStreamConfig(s bus.Subjects, cfg RecordLogConfig) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:              s.BucketName("CACHEBUS_RECORD_SNAPSHOTS"),
		Description:       "cachebus long-term records: snapshots of the record log, by namespace and partition",
		Subjects:          []string{snapshotRoot(s) + "*.*.*"},
		Storage:           jetstream.FileStorage,
		Retention:         jetstream.LimitsPolicy,
		MaxMsgsPerSubject: 1,
		MaxMsgs:           -1,
		MaxBytes:          -1,
		Discard:           jetstream.DiscardOld,
		Replicas:          max(cfg.Replicas, 1),
		AllowDirect:       true,
	}
}

func snapshotRoot(s bus.Subjects) string { return s.Records() + ".snap." }

// Snapshots reports whether replays read snapshots and Compact writes
// them: on a server with per-message TTLs and a log without a maximum age,
// when OpenRecordLog was given a SnapshotEvery below half the tombstones'
// TTL, or when BindRecordLog found the nodes' snapshot stream.
func (l *RecordLog) Snapshots() bool { return l.snap != nil }

// SnapshotEvery is how often a node should Compact the partitions it is
// primary of, 0 when the log keeps no snapshots.
func (l *RecordLog) SnapshotEvery() time.Duration {
	if l.snap == nil || l.cfg.SnapshotEvery*2 >= l.cfg.TombstoneTTL {
		return 0
	}
	return l.cfg.SnapshotEvery
}

// openSnapshots creates (or, with configure false, binds) the snapshot
// stream when the log can keep snapshots; it leaves l.snap nil otherwise,
// saying why.
func (l *RecordLog) openSnapshots(ctx context.Context, configure bool) error {
	cfg := l.cfg
	why := ""
	// A tool binding the log (configure false) reads and drops the
	// snapshots the nodes keep, whatever its own SnapshotEvery.
	switch {
	case configure && cfg.SnapshotEvery <= 0:
		return nil
	case !l.msgTTL:
		why = "the NATS server cannot expire single messages (before 2.11), so deletes leave no tombstone a snapshot could see"
	case cfg.MaxAge > 0:
		why = "CACHEBUS_RECORDS_MAX_AGE drops records without a trace a snapshot could see"
	case configure && cfg.SnapshotEvery*2 >= cfg.TombstoneTTL:
		why = "CACHEBUS_RECORDS_SNAPSHOT_EVERY must be below half of CACHEBUS_RECORDS_TOMBSTONE_TTL"
	}
	if why != "" {
		if configure {
			l.c.Log.Info("record log: no snapshots; replays read every record from the log", "why", why)
		}
		return nil
	}
	sc := SnapshotStreamConfig(l.c.Subjects, cfg)
	var st jetstream.Stream
	var err error
	if configure {
		st, err = ensure(ctx, l.c, "record snapshots "+sc.Name, func(ctx context.Context) (jetstream.Stream, error) {
			return l.c.JS.CreateOrUpdateStream(ctx, sc)
		})
	} else {
		st, err = l.c.JS.Stream(ctx, sc.Name)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return nil // no node keeps snapshots: nothing to read or drop
		}
	}
	if err != nil {
		return fmt.Errorf("persistence: snapshot stream %s: %w", sc.Name, err)
	}
	l.snap, l.snapName, l.snapRoot = st, sc.Name, snapshotRoot(l.c.Subjects)
	return nil
}

func (l *RecordLog) manifestSubject(ns string, p int) string {
	return l.snapRoot + ns + "." + partitionToken(p) + ".m"
}

func (l *RecordLog) chunkSubject(ns string, p, i int) string {
	return l.snapRoot + ns + "." + partitionToken(p) + "." + strconv.Itoa(i)
}

// fresh reports whether m still describes the log of identity logID at
// sequence last: checked recently enough that no tombstone written since
// has left, for a log that is the one it was made of.
func (l *RecordLog) fresh(m *snapManifest, logID int64, last uint64, nowMs int64) bool {
	ttl := l.cfg.TombstoneTTL.Milliseconds()
	if m != nil && m.ttl > 0 {
		ttl = min(ttl, m.ttl) // the nodes' may be shorter than a tool's
	}
	return m != nil && m.logID == logID && m.upto <= last && nowMs-m.checked < ttl/2
}

// logIdentity reads the log stream's creation time and last sequence.
func (l *RecordLog) logIdentity(ctx context.Context) (int64, uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, replayAPITimeout)
	defer cancel()
	info, err := l.stream.Info(ctx)
	if err != nil {
		return 0, 0, err
	}
	return info.Created.UnixNano(), info.State.LastSeq, nil
}

// readAll reads the messages of stream matching filters (none: all) from
// sequence start (0: the first), as they are when it begins, and hands
// each to fn in stream order. It returns the highest sequence read.
func (l *RecordLog) readAll(ctx context.Context, stream string, filters []string, start uint64, fn func(m jetstream.Msg, seq uint64) error) (uint64, error) {
	cfg := jetstream.OrderedConsumerConfig{
		FilterSubjects:    filters,
		DeliverPolicy:     jetstream.DeliverAllPolicy,
		InactiveThreshold: 30 * time.Second,
	}
	if start > 1 {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, start
	}
	actx, acancel := context.WithTimeout(ctx, replayAPITimeout)
	cons, err := l.c.JS.OrderedConsumer(actx, stream, cfg)
	acancel()
	if err != nil {
		return 0, err
	}
	ci := cons.CachedInfo()
	if ci != nil {
		defer l.deleteConsumer(stream, ci.Name)
	}
	if ci == nil || ci.NumPending == 0 {
		return 0, nil
	}
	var pull jetstream.PullMessagesOpt = jetstream.PullMaxMessages(replayBatch)
	if stream == l.snapName {
		pull = jetstream.PullMaxBytes(snapshotPullBytes)
	}
	it, err := cons.Messages(pull)
	if err != nil {
		return 0, err
	}
	defer it.Stop()
	// A watchdog ends the read when ctx does, when the last message went
	// before it was delivered (no message then says it was the last), and
	// when the consumer stalls.
	var handled atomic.Uint64
	var read atomic.Int64
	var why atomic.Value
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		tick := time.NewTicker(idleCheck)
		defer tick.Stop()
		seen, moved := int64(-1), time.Now()
		for {
			select {
			case <-stop:
				return
			case <-ctx.Done():
				why.Store(ctx.Err())
				it.Stop()
				return
			case <-tick.C:
			}
			if n := read.Load(); n != seen {
				seen, moved = n, time.Now()
				continue
			}
			ictx, icancel := context.WithTimeout(ctx, replayAPITimeout)
			info, ierr := cons.Info(ictx)
			icancel()
			switch {
			case ierr == nil && info.NumPending == 0 && info.Delivered.Stream <= handled.Load():
				why.Store(errReplayDone)
				it.Stop()
				return
			case time.Since(moved) > replayStall:
				why.Store(fmt.Errorf("stalled: nothing read for %s (last error: %v)", replayStall, ierr))
				it.Stop()
				return
			}
		}
	}()
	var last uint64
	for {
		m, err := it.Next()
		if err != nil {
			if w, ok := why.Load().(error); ok {
				if w == errReplayDone {
					return last, nil
				}
				return last, w
			}
			return last, err
		}
		seq, pending, ok := AckSeqPending(m.Reply())
		if !ok {
			continue
		}
		if err := fn(m, seq); err != nil {
			return last, err
		}
		last = seq
		handled.Store(seq)
		read.Add(1)
		if pending == 0 {
			return last, nil
		}
	}
}

// partitionFilters are the filter subjects that read partitions want of
// namespace ns under root (either stream's): one per partition when the
// server can take them, else the whole namespace (nil want: filter here).
func (l *RecordLog) partitionFilters(root, ns, tail string, want *[partition.Partitions]bool, n int) ([]string, *[partition.Partitions]bool) {
	if n == partition.Partitions {
		return []string{root + ns + ".*." + tail}, nil
	}
	if n <= multiFilterMax && !l.noMultiFilter.Load() && multiFilterServer(l.c.NC) {
		var fs []string
		for p := range want {
			if want[p] {
				fs = append(fs, root+ns+"."+partitionToken(p)+"."+tail)
			}
		}
		return fs, nil
	}
	return []string{root + ns + ".*." + tail}, want
}

// readFiltered is readAll over the filters of partitionFilters, falling
// back to one namespace filter on a server that refuses several. fn gets
// the messages of wanted partitions only, with what follows the
// partition in their subject.
func (l *RecordLog) readFiltered(ctx context.Context, stream, root, ns, tail string, want *[partition.Partitions]bool, n int, start uint64,
	fn func(m jetstream.Msg, seq uint64, p int, rest string) error) (uint64, error) {
	filters, here := l.partitionFilters(root, ns, tail, want, n)
	prefix := root + ns + "."
	handle := func(m jetstream.Msg, seq uint64) error {
		rest, ok := strings.CutPrefix(m.Subject(), prefix)
		if !ok {
			return nil
		}
		p, rest, err := splitPartition(m.Subject(), rest)
		if err != nil || (here != nil && !here[p]) {
			return nil
		}
		return fn(m, seq, p, rest)
	}
	last, err := l.readAll(ctx, stream, filters, start, handle)
	if errors.Is(err, jetstream.ErrConsumerMultipleFilterSubjectsNotSupported) {
		l.noMultiFilter.Store(true)
		here = want
		last, err = l.readAll(ctx, stream, []string{root + ns + ".*." + tail}, start, handle)
	}
	return last, err
}

// snapshotPlan is what a replay reads from snapshots: the fresh manifest
// of each partition that has one. The log is read first, from the oldest
// upto on, and each key it holds after its partition's upto is noted, so
// that the snapshot's entry of that key is left out: for each key the
// replay then hands over what a replay of the log alone would, whatever
// the tail holds of it (a newer value, a delete, a record expired since,
// a message it refuses).
type snapshotPlan struct {
	manifests map[int]*snapManifest
	has       [partition.Partitions]bool   // of manifests, for the log's hot path
	floor     [partition.Partitions]uint64 // upto of each planned partition, else 0
	records   int64                        // the planned snapshots' records, for progress
	rejected  int64
	reasons   [reasons]int64

	mu   sync.Mutex
	tail map[int]map[string]bool // keys of the log's tail, by partition
}

// noteTail records that the log holds a message of key (still encoded)
// in partition p after its snapshot.
func (sp *snapshotPlan) noteTail(p int, keyTok string) {
	var buf [128]byte
	kb, ok := decodeKey(buf[:0], keyTok)
	if !ok {
		return // no key's message: a snapshot entry it could stand for has another key
	}
	sp.mu.Lock()
	keys := sp.tail[p]
	if keys == nil {
		keys = map[string]bool{}
		sp.tail[p] = keys
	}
	keys[string(kb)] = true
	sp.mu.Unlock()
}

// planSnapshots reads the manifests of the wanted partitions of ns and
// keeps the fresh ones.
func (l *RecordLog) planSnapshots(ctx context.Context, ns string, want *[partition.Partitions]bool, n int) (*snapshotPlan, error) {
	logID, last, err := l.logIdentity(ctx)
	if err != nil {
		return nil, fmt.Errorf("persistence: replay %s: %w", ns, err)
	}
	sp := &snapshotPlan{tail: map[int]map[string]bool{}}
	sp.manifests, err = l.freshManifests(ctx, ns, want, n, logID, last, func(p int, err error) { sp.reject(l, ns, p, err) })
	if err != nil {
		return nil, fmt.Errorf("persistence: replay %s: %w", ns, err)
	}
	for p, man := range sp.manifests {
		sp.has[p], sp.floor[p] = true, man.upto
		sp.records += int64(man.records)
	}
	return sp, nil
}

// freshManifests reads the manifests of the wanted partitions of ns and
// returns the fresh ones (see fresh) for the log of identity logID at
// sequence last; bad, when not nil, is told of each that does not parse.
func (l *RecordLog) freshManifests(ctx context.Context, ns string, want *[partition.Partitions]bool, n int, logID int64, last uint64,
	bad func(p int, err error)) (map[int]*snapManifest, error) {
	nowMs := time.Now().UnixMilli()
	manifests := map[int]*snapManifest{}
	_, err := l.readFiltered(ctx, l.snapName, l.snapRoot, ns, "m", want, n, 0, func(m jetstream.Msg, _ uint64, p int, _ string) error {
		man, _, err := parseSnapshotHeader(m.Headers().Get(SnapshotHeader))
		if err == nil && man == nil {
			err = fmt.Errorf("%w: a chunk header on manifest subject %q", ErrBadSnapshot, clipString(m.Subject()))
		}
		switch {
		case err != nil && bad != nil:
			bad(p, err)
		case err == nil && l.fresh(man, logID, last, nowMs):
			manifests[p] = man
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("snapshot manifests: %w", err)
	}
	return manifests, nil
}

// reject logs and counts a snapshot message or snapshot that is unusable.
func (sp *snapshotPlan) reject(l *RecordLog, ns string, p int, err error) {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	sp.rejected++
	reason := reasonOf(err)
	sp.reasons[reason]++
	l.metrics.Rejected.WithLabelValues(reasonNames[reason]).Inc()
	if sp.rejected <= rejectLogMax {
		l.c.Log.Warn("record replay: a snapshot is unusable; the partition is read from the log", "ns", ns, "partition", p, "err", err)
	}
}

// replaySnapshots hands fn the records of the planned snapshots, less the
// keys of the log's tail, from readers goroutines at once when readers >
// 1. It returns what it read and the planned partitions whose snapshot
// turned out not whole (rewritten meanwhile, or corrupt): the caller
// reads those from the log. base is what the log's read handed over, for
// progress.
func (l *RecordLog) replaySnapshots(ctx context.Context, ns string, sp *snapshotPlan, readers int, fn func(Record) error,
	progress func(ReplayProgress), base ReplayStats, start time.Time) (ReplayStats, []int, error) {
	var (
		st      ReplayStats
		mu      sync.Mutex // guards st, firstEr and the progress figures
		firstEr error
		stopped atomic.Bool // set with firstEr, read before each call of fn
		wg      sync.WaitGroup
		done    = map[int]bool{}
		lastRep time.Time
	)
	report := func(final bool) { // the caller holds mu
		if progress == nil || !final && time.Since(lastRep) < progressEvery {
			return
		}
		lastRep = time.Now()
		pr := ReplayProgress{Records: base.Records + st.Records, Messages: base.Messages + st.Messages,
			Bytes: base.Bytes + st.Bytes, Elapsed: time.Since(start), Percent: 100}
		if !final && base.Messages+sp.records > 0 {
			pr.Percent = float64(base.Messages+st.Records+st.Expired) / float64(base.Messages+sp.records) * 100
		}
		if s := pr.Elapsed.Seconds(); s > 0 {
			pr.Rate = float64(pr.Records) / s
		}
		progress(pr)
	}
	type job struct {
		p      int
		chunks [][]byte
	}
	jobs := make(chan job, partition.Partitions)
	for range max(readers, 1) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				mu.Lock()
				failed := firstEr != nil
				mu.Unlock()
				if failed {
					continue // fn ended the replay: call it no more
				}
				man := sp.manifests[j.p]
				recs, err := l.codec.decodeSnapshot(ns, j.p, j.chunks)
				if err == nil && len(recs) != man.records {
					// A chunk cut after an entry reads as fewer records.
					err = fmt.Errorf("%w: %d records, the manifest says %d", ErrBadSnapshot, len(recs), man.records)
				}
				if err != nil {
					sp.reject(l, ns, j.p, err)
					continue
				}
				sp.mu.Lock()
				inTail := sp.tail[j.p]
				sp.mu.Unlock()
				var records, expired, deleted int64
				now := time.Now().UnixMilli()
				for i := range recs {
					r := &recs[i]
					switch {
					case inTail[r.Key]:
						continue // the log holds a later message of the key
					case !r.Expires.IsZero() && r.Expires.UnixMilli() <= now:
						expired++
						continue
					case r.Deleted:
						deleted++
					}
					if stopped.Load() {
						break // fn ended the replay on another reader
					}
					records++
					if err := fn(*r); err != nil {
						mu.Lock()
						if firstEr == nil {
							firstEr = err
						}
						stopped.Store(true)
						mu.Unlock()
						break
					}
				}
				mu.Lock()
				done[j.p] = true
				st.Snapshots++
				st.Records += records
				st.Expired += expired
				st.Deleted += deleted
				report(false)
				mu.Unlock()
			}
		}()
	}
	type part struct {
		chunks [][]byte
		have   int
		queued bool
	}
	parts := map[int]*part{}
	for p, man := range sp.manifests {
		parts[p] = &part{chunks: make([][]byte, man.chunks)}
		if man.chunks == 0 {
			parts[p].queued = true
			jobs <- job{p: p}
		}
	}
	var want [partition.Partitions]bool
	for p := range sp.manifests {
		want[p] = true
	}
	_, err := l.readFiltered(ctx, l.snapName, l.snapRoot, ns, "*", &want, len(sp.manifests), 0, func(m jetstream.Msg, seq uint64, p int, rest string) error {
		if rest == "m" {
			return nil // read before
		}
		mu.Lock()
		st.Messages++
		st.Bytes += int64(len(m.Data()))
		mu.Unlock()
		pt, man := parts[p], sp.manifests[p]
		if pt == nil || pt.queued {
			return nil
		}
		_, ch, err := parseSnapshotHeader(m.Headers().Get(SnapshotHeader))
		switch {
		case err != nil:
		case ch == nil:
			err = fmt.Errorf("%w: a manifest header on chunk subject %q", ErrBadSnapshot, clipString(m.Subject()))
		case rest != strconv.Itoa(ch.i):
			err = fmt.Errorf("%w: chunk %d under %q", ErrBadSnapshot, ch.i, clipString(m.Subject()))
		case ch.id != man.id || ch.n != man.chunks:
			return nil // another snapshot's: this one is not whole, or no longer
		}
		if err != nil {
			sp.reject(l, ns, p, err)
			return nil
		}
		if pt.chunks[ch.i] == nil {
			pt.have++
		}
		pt.chunks[ch.i] = m.Data()
		if pt.have == man.chunks {
			pt.queued = true
			jobs <- job{p: p, chunks: pt.chunks}
			pt.chunks = nil
		}
		return nil
	})
	close(jobs)
	wg.Wait()
	if err == nil {
		err = firstEr
	}
	if err != nil {
		return st, nil, fmt.Errorf("persistence: replay %s from snapshots: %w", ns, err)
	}
	var failed []int
	for p := range sp.manifests {
		if !done[p] {
			failed = append(failed, p)
		}
	}
	slices.Sort(failed)
	return st, failed, nil
}

// CompactStats is what one Compact did.
type CompactStats struct {
	// Partitions looked at; of them Built had no usable snapshot and got
	// one from the log, Folded had their tail folded into a new one,
	// Checked only had their manifest rewritten, and Dropped had a
	// snapshot whose chunks did not read whole, dropped for the next
	// Compact to build.
	Partitions, Built, Folded, Checked, Dropped int
	// Records in the snapshots written (built and folded); Tail is the
	// messages read from the log.
	Records, Tail int64
	// Bytes of the chunks written.
	Bytes int64
	// Elapsed is how long it took.
	Elapsed time.Duration
}

// Compact brings the snapshots of namespace ns up to date for partitions:
// it reads the log's messages after each partition's snapshot and writes
// a new snapshot where they are many or hold a delete, else a manifest
// saying the snapshot was checked. A node calls it every SnapshotEvery
// for the partitions it is primary of; two nodes compacting the same
// partition at once leave a snapshot a replay refuses, never a wrong one.
func (l *RecordLog) Compact(ctx context.Context, ns string, partitions []int) (CompactStats, error) {
	var cs CompactStats
	start := time.Now()
	if l.snap == nil {
		return cs, errors.New("persistence: compact: the record log keeps no snapshots")
	}
	if err := bus.CheckNamespace(ns); err != nil {
		return cs, fmt.Errorf("persistence: compact: %w", err)
	}
	ps := slices.Clone(partitions)
	slices.Sort(ps)
	ps = slices.Compact(ps)
	for _, p := range ps {
		if p < 0 || p >= partition.Partitions {
			return cs, fmt.Errorf("persistence: compact %s: partition must be 0 to %d, got %d", ns, partition.Partitions-1, p)
		}
	}
	// One pass over the log for every partition: each pass of a
	// consumer filtered by subjects scans the whole stream on the server.
	if err := l.compactPartitions(ctx, ns, ps, &cs); err != nil {
		return cs, err
	}
	cs.Elapsed = time.Since(start)
	return cs, nil
}

// tailOf is what the log holds of one partition after its snapshot.
type tailOf struct {
	entries map[string]*snapEntry // nil value: the key is gone
	// foldNow: the tail holds a message that may leave the log unseen (a
	// tombstone, a record expiring soon) or that a replay refuses.
	foldNow bool
}

// compactPartitions is Compact of the sorted partitions ps.
func (l *RecordLog) compactPartitions(ctx context.Context, ns string, ps []int, cs *CompactStats) error {
	checked := time.Now()
	logID, last, err := l.logIdentity(ctx)
	if err != nil {
		return fmt.Errorf("persistence: compact %s: %w", ns, err)
	}
	nowMs := checked.UnixMilli()
	var want [partition.Partitions]bool
	for _, p := range ps {
		want[p] = true
	}
	// A snapshot no longer fresh is built again from the log.
	manifests, err := l.freshManifests(ctx, ns, &want, len(ps), logID, last, nil)
	if err != nil {
		return fmt.Errorf("persistence: compact %s: %w", ns, err)
	}
	var floor [partition.Partitions]uint64
	from := last + 1
	for _, p := range ps {
		if m := manifests[p]; m != nil {
			floor[p] = m.upto
		}
		from = min(from, floor[p]+1)
	}
	tails := map[int]*tailOf{}
	read, err := l.readFiltered(ctx, l.name, l.codec.root, ns, "*", &want, len(ps), from, func(m jetstream.Msg, seq uint64, p int, keyTok string) error {
		if seq <= floor[p] {
			return nil
		}
		cs.Tail++
		t := tails[p]
		if t == nil {
			t = &tailOf{entries: map[string]*snapEntry{}}
			tails[p] = t
		}
		var buf [128]byte
		kb, ok := decodeKey(buf[:0], keyTok)
		if !ok {
			return nil // a replay rejects it from the snapshot as from the log
		}
		key := string(kb)
		h := m.Headers()
		hv := h.Get(RecordHeader)
		var r Record
		if hv == "" || parseRecordHeader(hv, &r) != nil {
			// A server's marker, or a message a replay refuses: the key
			// has no record either way. Folded at once, so that the
			// snapshot's older record of the key goes too.
			t.entries[key], t.foldNow = nil, true
			return nil
		}
		// A delete, or a record expiring within a tombstone TTL, may
		// leave the log before the next look at it: folded at once.
		// (Every message stays at least a tombstone TTL, so one written
		// since the last look is still here.)
		if r.Deleted || !r.Expires.IsZero() && r.Expires.UnixMilli() < nowMs+l.cfg.TombstoneTTL.Milliseconds() {
			t.foldNow = true
		}
		t.entries[key] = &snapEntry{key: key, hdr: hv, data: m.Data(), seq: seq}
		return nil
	})
	if err != nil {
		return fmt.Errorf("persistence: compact %s: %w", ns, err)
	}
	upto := max(last, read)
	var writes snapshotWrites
	for _, p := range ps {
		cs.Partitions++
		m, t := manifests[p], tails[p]
		switch {
		case m == nil:
			var entries map[string]*snapEntry
			if t != nil {
				entries = t.entries
			}
			if err := l.writeSnapshot(ctx, ns, p, nil, entries, upto, logID, checked, cs, &writes); err != nil {
				return err
			}
			cs.Built++
			l.metrics.Snapshots.WithLabelValues("built").Inc()
		case t == nil:
			next := *m
			next.upto, next.checked = upto, nowMs
			if err := l.writeManifest(ns, p, &next, &writes); err != nil {
				return err
			}
			cs.Checked++
			l.metrics.Snapshots.WithLabelValues("checked").Inc()
		case !t.foldNow && len(t.entries) < max(foldMinTail, m.records/foldShare) &&
			nowMs-m.folded < int64(foldAfterRuns)*l.cfg.SnapshotEvery.Milliseconds():
			// The tail stays in the log, read after the snapshot; it
			// holds no tombstone that could leave unseen.
			next := *m
			next.checked = nowMs
			if err := l.writeManifest(ns, p, &next, &writes); err != nil {
				return err
			}
			cs.Checked++
			l.metrics.Snapshots.WithLabelValues("checked").Inc()
		default:
			err := l.writeSnapshot(ctx, ns, p, m, t.entries, upto, logID, checked, cs, &writes)
			if errors.Is(err, errSnapshotDropped) {
				continue
			}
			if err != nil {
				return err
			}
			cs.Folded++
			l.metrics.Snapshots.WithLabelValues("folded").Inc()
		}
	}
	return writes.wait(ctx, ns, "manifest")
}

// writeSnapshot writes partition p's snapshot up to upto: the entries of
// the snapshot of manifest old (none: nothing before), then those of the
// tail over them, less what has expired. When old's chunks cannot be read
// whole it drops old's manifest, so that the next Compact builds the
// snapshot from the log, and returns errSnapshotDropped.
func (l *RecordLog) writeSnapshot(ctx context.Context, ns string, p int, old *snapManifest, tail map[string]*snapEntry, upto uint64, logID int64, checked time.Time, cs *CompactStats, writes *snapshotWrites) error {
	entries := map[string]*snapEntry{}
	if old != nil {
		var err error
		if entries, err = l.snapshotEntries(ctx, ns, p, old); err != nil {
			l.c.Log.Warn("record snapshot: unreadable; dropped, the next compaction builds it from the log", "ns", ns, "partition", p, "err", err)
			pctx, cancel := context.WithTimeout(ctx, replayAPITimeout)
			perr := l.snap.Purge(pctx, jetstream.WithPurgeSubject(l.manifestSubject(ns, p)))
			cancel()
			if perr != nil {
				return fmt.Errorf("persistence: compact %s: drop snapshot of partition %d: %w", ns, p, perr)
			}
			cs.Dropped++
			l.metrics.Snapshots.WithLabelValues("dropped").Inc()
			return errSnapshotDropped
		}
	}
	for k, e := range tail {
		if e == nil {
			delete(entries, k)
		} else {
			entries[k] = e
		}
	}
	keys := make([]string, 0, len(entries))
	nowMs := time.Now().UnixMilli()
	for k, e := range entries {
		var r Record
		if err := parseRecordHeader(e.hdr, &r); err != nil || (!r.Expires.IsZero() && r.Expires.UnixMilli() <= nowMs) {
			continue
		}
		keys = append(keys, k)
	}
	slices.Sort(keys) // the same records give the same bytes
	id := nuid.Next()
	var futures snapshotWrites
	chunk := make([]byte, 0, snapshotChunkBytes)
	var chunks [][]byte
	for _, k := range keys {
		e := entries[k]
		if len(chunk) > 0 && len(chunk)+e.size() > snapshotChunkBytes {
			chunks = append(chunks, chunk)
			chunk = make([]byte, 0, snapshotChunkBytes)
		}
		chunk = appendSnapEntry(chunk, e)
	}
	if len(chunk) > 0 {
		chunks = append(chunks, chunk)
	}
	for i, data := range chunks {
		msg := &nats.Msg{Subject: l.chunkSubject(ns, p, i), Data: data, Header: nats.Header{}}
		msg.Header.Set(SnapshotHeader, snapshotFormat+" chunk id="+id+" i="+strconv.Itoa(i)+" n="+strconv.Itoa(len(chunks)))
		f, err := l.c.JS.PublishMsgAsync(msg)
		if err != nil {
			return fmt.Errorf("persistence: compact %s: write chunk: %w", ns, err)
		}
		futures = append(futures, f)
		cs.Bytes += int64(len(data))
	}
	if err := futures.wait(ctx, ns, "chunk"); err != nil {
		return err
	}
	ms := checked.UnixMilli()
	m := &snapManifest{id: id, chunks: len(chunks), upto: upto, checked: ms, folded: ms, records: len(keys), logID: logID}
	if err := l.writeManifest(ns, p, m, writes); err != nil {
		return err
	}
	cs.Records += int64(len(keys))
	if old != nil && old.chunks > len(chunks) {
		for i := len(chunks); i < old.chunks; i++ {
			pctx, cancel := context.WithTimeout(ctx, replayAPITimeout)
			err := l.snap.Purge(pctx, jetstream.WithPurgeSubject(l.chunkSubject(ns, p, i)))
			cancel()
			if err != nil {
				l.c.Log.Debug("record snapshot: stale chunk not purged", "ns", ns, "partition", p, "chunk", i, "err", err)
			}
		}
	}
	return nil
}

// snapshotEntries reads the entries of partition p's snapshot of manifest
// m, by key; any chunk missing, of another snapshot or corrupt is an
// error.
func (l *RecordLog) snapshotEntries(ctx context.Context, ns string, p int, m *snapManifest) (map[string]*snapEntry, error) {
	entries := map[string]*snapEntry{}
	for i := range m.chunks {
		gctx, cancel := context.WithTimeout(ctx, replayAPITimeout)
		raw, err := l.snap.GetLastMsgForSubject(gctx, l.chunkSubject(ns, p, i))
		cancel()
		if err != nil {
			return nil, err
		}
		_, ch, err := parseSnapshotHeader(raw.Header.Get(SnapshotHeader))
		if err == nil && (ch == nil || ch.id != m.id || ch.i != i || ch.n != m.chunks) {
			err = fmt.Errorf("%w: chunk %d is not of snapshot %s", ErrBadSnapshot, i, m.id)
		}
		for b := raw.Data; len(b) > 0 && err == nil; {
			var e snapEntry
			if e, b, err = nextSnapEntry(b); err == nil {
				entries[e.key] = &e
			}
		}
		if err != nil {
			return nil, err
		}
	}
	return entries, nil
}

// snapshotWrites are the writes of the snapshot stream a Compact has sent
// and not yet seen acknowledged: one round trip for all of them rather
// than one each.
type snapshotWrites []jetstream.PubAckFuture

func (l *RecordLog) writeManifest(ns string, p int, m *snapManifest, w *snapshotWrites) error {
	m.ttl = l.cfg.TombstoneTTL.Milliseconds()
	msg := &nats.Msg{Subject: l.manifestSubject(ns, p), Header: nats.Header{}}
	msg.Header.Set(SnapshotHeader, m.header())
	f, err := l.c.JS.PublishMsgAsync(msg)
	if err != nil {
		return fmt.Errorf("persistence: compact %s: write manifest of partition %d: %w", ns, p, err)
	}
	*w = append(*w, f)
	return nil
}

// wait waits for every write's acknowledgement; what names them in an
// error.
func (w snapshotWrites) wait(ctx context.Context, ns, what string) error {
	for _, f := range w {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return fmt.Errorf("persistence: compact %s: write %s: %w", ns, what, err)
		case <-ctx.Done():
			return fmt.Errorf("persistence: compact %s: %w", ns, ctx.Err())
		}
	}
	return nil
}

// DropSnapshots removes every snapshot of namespace ns, so replays read
// it from the log alone until the next Compact: for whoever purges or
// rewrites the log's records of ns outside of Write.
func (l *RecordLog) DropSnapshots(ctx context.Context, ns string) error {
	if l.snap == nil {
		return nil
	}
	if err := bus.CheckNamespace(ns); err != nil {
		return fmt.Errorf("persistence: drop snapshots: %w", err)
	}
	if err := l.snap.Purge(ctx, jetstream.WithPurgeSubject(l.snapRoot+ns+".*.*")); err != nil {
		return fmt.Errorf("persistence: drop snapshots of %s: %w", ns, err)
	}
	return nil
}
