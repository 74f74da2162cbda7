package persistence

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"maps"
	"math"
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
	"github.com/prometheus/client_golang/prometheus"
)

// The record log keeps the long-term records of the cache tier in one
// JetStream stream per hierarchy (CACHEBUS_RECORDS), one subject per
// record:
//
//	<p>.rec.log.<ns>.<partition, 4 digits>.<key, base64url without padding>
//
// With one message per subject the stream keeps the latest write of each
// key, as a KV bucket does, while the partition in the subject lets a node
// read back its own partitions only. docs/PROTOCOL.md ("Long-term records
// at rest") is the contract; this file implements it.

// RecordLogConfig configures the record log. Its envconfig tags are read
// under CACHEBUS_.
type RecordLogConfig struct {
	LongTerm      []string      `envconfig:"LONG_TERM" desc:"record namespaces also kept in JetStream and replayed into memory after a restart (comma-separated, e.g. sessions,tokens)"`
	Replicas      int           `envconfig:"RECORDS_REPLICAS" default:"1" desc:"JetStream replicas of the record log (3 on a three-node NATS cluster)"`
	MaxBytes      int64         `envconfig:"RECORDS_MAX_BYTES" default:"-1" desc:"size limit of the record log in bytes; when it is full, long-term writes fail rather than older records being dropped (-1: none)"`
	MaxAge        time.Duration `envconfig:"RECORDS_MAX_AGE" default:"0" desc:"age at which the record log drops a record whatever its TTL (0: never); with NATS servers before 2.11, which cannot expire single messages, set it above CACHEBUS_RECORD_MAX_TTL"`
	TombstoneTTL  time.Duration `envconfig:"RECORDS_TOMBSTONE_TTL" default:"10m" desc:"how long the tombstone of a delete stays in the record log, and any message at least (at least 1s); snapshots are trusted for half of it after their last check, so a whole tier restarted within that reads them"`
	SnapshotEvery time.Duration `envconfig:"RECORDS_SNAPSHOT_EVERY" default:"15s" desc:"how often the primary of each partition folds the record log's new writes into the partition's snapshot, which a replay reads at memory speed before the log's tail (0: no snapshots, replays read every record from the log); below half of CACHEBUS_RECORDS_TOMBSTONE_TTL"`
	Key           string        `envconfig:"RECORD_KEY" desc:"32 bytes in base64: long-term values are sealed with AES-256-GCM under this key before they reach JetStream (empty: stored in clear)"`
	KeyPrevious   string        `envconfig:"RECORD_KEY_PREVIOUS" desc:"the key CACHEBUS_RECORD_KEY replaces, still used to open records sealed under it until cachebus rekey has rewritten them"`
}

// DefaultTombstoneTTL is CACHEBUS_RECORDS_TOMBSTONE_TTL's default.
const DefaultTombstoneTTL = 10 * time.Minute

// MaxRecordKeyLen is the longest key the record log takes, in bytes. The
// key travels base64-encoded in the subject (4 bytes for 3), and a NATS
// protocol line holding the subject is at most 4096 bytes by default.
const MaxRecordKeyLen = 2048

// keyEncoding encodes keys in subjects: base64url without padding.
var keyEncoding = base64.RawURLEncoding

// keyAlphabet is keyEncoding's alphabet; keyValues maps its bytes back,
// 0xff for any other byte.
const keyAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

var keyValues = func() (t [256]byte) {
	for i := range t {
		t[i] = 0xff
	}
	for i := 0; i < len(keyAlphabet); i++ {
		t[keyAlphabet[i]] = byte(i)
	}
	return t
}()

// decodeKey appends to dst the key encoded in tok and reports whether tok
// is the one canonical encoding of a key: only alphabet bytes (the
// standard decoder skips newlines), no impossible length, no stray bits in
// the last character. One key, one subject, or a key could have two
// messages in the stream. By hand, for a replay decodes one per record
// and the library's costs two allocations.
func decodeKey(dst []byte, tok string) ([]byte, bool) {
	if len(tok)%4 == 1 {
		return nil, false
	}
	var acc uint32
	bits := 0
	for i := 0; i < len(tok); i++ {
		v := keyValues[tok[i]]
		if v == 0xff {
			return nil, false
		}
		acc = acc<<6 | uint32(v)
		bits += 6
		if bits >= 8 {
			bits -= 8
			dst = append(dst, byte(acc>>bits))
			acc &= 1<<bits - 1
		}
	}
	return dst, acc == 0
}

// RecordHeader is the header of every record message: the format version,
// the operation and its options, e.g. "1 put exp=1795322156159 kid=…".
const RecordHeader = "Cachebus-Record"

// recordFormat is the first word of RecordHeader.
const recordFormat = "1"

// markerHeader marks the messages a server writes itself when it removes
// one by age and the stream asks for markers: the key is gone.
const markerHeader = "Nats-Marker-Reason"

// Errors of bad record messages; each wraps ErrBadRecord.
var (
	// ErrBadRecord is a message of the record log that is not a record:
	// a subject or header outside the format, as a foreign publisher or a
	// corruption leaves. Replay counts it and goes on.
	ErrBadRecord = errors.New("persistence: bad record")

	errBadSubject = fmt.Errorf("%w: subject", ErrBadRecord)
	errBadHeader  = fmt.Errorf("%w: header", ErrBadRecord)
)

// Record is one write of a long-term record, as kept in the record log.
type Record struct {
	// NS, Partition and Key say which record: Partition is
	// partition.PartitionOf(Key).
	NS        string
	Partition int
	Key       string
	// Value is the value in clear. Replay hands over a slice the callback
	// may keep.
	Value []byte
	// Expires is when the record stops being fresh; zero never. For a
	// tombstone it is when the tombstone may be forgotten.
	Expires time.Time
	// Version is the writer's version of the write (the cache node's
	// hybrid clock), 0 when it gave none.
	Version uint64
	// Deleted marks a tombstone: the key was deleted at Version.
	Deleted bool
	// Seq is the stream sequence of the message (read only).
	Seq uint64
	// KeyID is the id of the key the value was sealed with, empty when
	// it was stored in clear (read only).
	KeyID string
}

// RecordCodec turns records into record-log messages and back: subjects,
// the Cachebus-Record header and sealing. It holds no connection, so
// tools and fuzz tests use it alone.
type RecordCodec struct {
	root string // "<p>.rec.log."
	seal *sealer
}

// NewRecordCodec returns the codec of the hierarchy s, sealing under key
// and opening under key or previous (both base64, both optional).
func NewRecordCodec(s bus.Subjects, key, previous string) (*RecordCodec, error) {
	seal, err := newSealer(key, previous)
	if err != nil {
		return nil, err
	}
	return &RecordCodec{root: s.Records() + ".log.", seal: seal}, nil
}

// KeyID is the id of the key new values are sealed with, empty when they
// are stored in clear.
func (rc *RecordCodec) KeyID() string {
	if rc.seal.cur == nil {
		return ""
	}
	return rc.seal.cur.id
}

// Subjects are the subjects of the record log's stream.
func (rc *RecordCodec) Subjects() []string { return []string{rc.root + "*.*.*"} }

// Subject is the subject of record key of namespace ns in partition p.
func (rc *RecordCodec) Subject(ns string, p int, key string) string {
	b := make([]byte, 0, len(rc.root)+len(ns)+6+keyEncoding.EncodedLen(len(key)))
	b = append(b, rc.root...)
	b = append(b, ns...)
	b = append(b, '.')
	b = append(b, partitionToken(p)...)
	b = append(b, '.')
	return string(keyEncoding.AppendEncode(b, []byte(key)))
}

// namespaceFilter matches every record of ns. Not "<ns>.>": servers
// before 2.10 refuse it as no subset of the stream's "*.*.*".
func (rc *RecordCodec) namespaceFilter(ns string) string { return rc.root + ns + ".*.*" }

func partitionToken(p int) string {
	const digits = "0123456789"
	return string([]byte{digits[p/1000%10], digits[p/100%10], digits[p/10%10], digits[p%10]})
}

// checkRecord validates what names a record: the namespace, the key (1 to
// MaxRecordKeyLen bytes, no space or control byte, as the record protocol
// has it) and its partition.
func checkRecord(ns string, p int, key string) error {
	if err := bus.CheckNamespace(ns); err != nil {
		return fmt.Errorf("persistence: record: %w", err)
	}
	if key == "" || len(key) > MaxRecordKeyLen {
		return fmt.Errorf("persistence: record key must be 1 to %d bytes, got %d", MaxRecordKeyLen, len(key))
	}
	for i := 0; i < len(key); i++ {
		if c := key[i]; c <= ' ' || c == 0x7f {
			return fmt.Errorf("persistence: record key: byte %d is a space or control character", i)
		}
	}
	if p < 0 || p >= partition.Partitions {
		return fmt.Errorf("persistence: record partition must be 0 to %d, got %d", partition.Partitions-1, p)
	}
	// The reader refuses a record filed under another partition than its
	// key's: refuse it here, where the caller can still be told.
	if want := partition.PartitionOf(key); p != want {
		return fmt.Errorf("persistence: record key is in partition %d, not %d", want, p)
	}
	return nil
}

// Encode returns the message of r: its subject, the Cachebus-Record
// header and the value, sealed when the codec has a key. Seq and KeyID of
// r are ignored. It does not add the server's TTL header (the log does,
// when the server can use it).
func (rc *RecordCodec) Encode(r Record) (*nats.Msg, error) {
	if err := checkRecord(r.NS, r.Partition, r.Key); err != nil {
		return nil, err
	}
	hdr := make([]byte, 0, 80)
	hdr = append(hdr, recordFormat...)
	var data []byte
	var kid string
	if r.Deleted {
		hdr = append(hdr, " del"...)
	} else {
		hdr = append(hdr, " put"...)
		var err error
		if data, kid, err = rc.seal.seal(make([]byte, 0, len(r.Value)+sealNonceLen+16), r.NS, r.Key, r.Value); err != nil {
			return nil, err
		}
	}
	if !r.Expires.IsZero() {
		hdr = append(hdr, " exp="...)
		hdr = strconv.AppendInt(hdr, max(r.Expires.UnixMilli(), 1), 10)
	}
	if r.Version != 0 {
		hdr = append(hdr, " ver="...)
		hdr = strconv.AppendUint(hdr, r.Version, 10)
	}
	if kid != "" {
		hdr = append(hdr, " kid="...)
		hdr = append(hdr, kid...)
	}
	return &nats.Msg{
		Subject: rc.Subject(r.NS, r.Partition, r.Key),
		Header:  nats.Header{RecordHeader: []string{string(hdr)}},
		Data:    data,
	}, nil
}

// splitSubject cuts a record subject into its namespace, partition and
// encoded key, without checking the key.
func (rc *RecordCodec) splitSubject(subject string) (ns string, p int, keyTok string, err error) {
	rest, ok := strings.CutPrefix(subject, rc.root)
	if !ok {
		return "", 0, "", fmt.Errorf("%w: %q is not under %s", errBadSubject, clipString(subject), rc.root)
	}
	ns, rest, ok = strings.Cut(rest, ".")
	if !ok || !bus.ValidName(ns) {
		return "", 0, "", fmt.Errorf("%w: bad namespace in %q", errBadSubject, clipString(subject))
	}
	p, keyTok, err = splitPartition(subject, rest)
	return ns, p, keyTok, err
}

// splitPartition cuts rest, what follows the namespace in subject, into
// the partition and the encoded key.
func splitPartition(subject, rest string) (p int, keyTok string, err error) {
	if len(rest) < 6 || rest[4] != '.' {
		return 0, "", fmt.Errorf("%w: no 4-digit partition in %q", errBadSubject, clipString(subject))
	}
	for i := 0; i < 4; i++ {
		c := rest[i]
		if c < '0' || c > '9' {
			return 0, "", fmt.Errorf("%w: no 4-digit partition in %q", errBadSubject, clipString(subject))
		}
		p = p*10 + int(c-'0')
	}
	if p >= partition.Partitions {
		return 0, "", fmt.Errorf("%w: partition %d out of range", errBadSubject, p)
	}
	return p, rest[5:], nil
}

// Decode turns a message of the record log into a record. It opens a
// sealed value in place (data is overwritten) and never fails with a
// panic: a message that is not a record is an error wrapping ErrBadRecord,
// a value that does not open one wrapping ErrRecordKeyUnknown or
// ErrRecordSeal. It does not check expiry.
func (rc *RecordCodec) Decode(subject string, h nats.Header, data []byte) (Record, error) {
	ns, p, keyTok, err := rc.splitSubject(subject)
	if err != nil {
		return Record{}, err
	}
	return rc.decode(ns, p, keyTok, h, data)
}

func (rc *RecordCodec) decode(ns string, p int, keyTok string, h nats.Header, data []byte) (Record, error) {
	if len(keyTok) > keyEncoding.EncodedLen(MaxRecordKeyLen) {
		return Record{}, fmt.Errorf("%w: key of %d encoded bytes is too long", errBadSubject, len(keyTok))
	}
	var buf [128]byte // most keys: no allocation but the string
	kb, ok := decodeKey(buf[:0], keyTok)
	if !ok {
		return Record{}, fmt.Errorf("%w: key is not canonical base64url", errBadSubject)
	}
	r := Record{NS: ns, Partition: p, Key: string(kb)}
	if err := checkRecord(ns, p, r.Key); err != nil {
		return Record{}, fmt.Errorf("%w: %v", errBadSubject, err)
	}
	hv := h.Get(RecordHeader)
	if hv == "" {
		if h.Get(markerHeader) != "" {
			r.Deleted = true // the server removed the key's last message
			return r, nil
		}
		return Record{}, fmt.Errorf("%w: no %s header", errBadHeader, RecordHeader)
	}
	if err := rc.decodeBody(&r, hv, data); err != nil {
		return Record{}, err
	}
	return r, nil
}

// decodeBody reads the Cachebus-Record header hv and the value data into
// r, whose namespace and key are set and checked: a record message's, or
// an entry of a snapshot, which keeps both as the message had them.
func (rc *RecordCodec) decodeBody(r *Record, hv string, data []byte) error {
	if err := parseRecordHeader(hv, r); err != nil {
		return err
	}
	if r.Deleted || r.KeyID == "" {
		if !r.Deleted {
			r.Value = data
		}
		return nil
	}
	v, err := rc.seal.open(r.KeyID, r.NS, r.Key, data)
	if err != nil {
		return err
	}
	r.Value = v
	return nil
}

// parseRecordHeader reads "<format> put|del[ exp=<ms>][ ver=<n>][ kid=<hex>]"
// into r. Options it does not know are skipped: a later writer may add
// one that an older reader can do without, and a change an older reader
// cannot ignore takes a new format number.
func parseRecordHeader(hv string, r *Record) error {
	format, rest, _ := strings.Cut(hv, " ")
	if format != recordFormat {
		return fmt.Errorf("%w: format %q, want %s", errBadHeader, clipString(format), recordFormat)
	}
	op, rest, _ := strings.Cut(rest, " ")
	switch op {
	case "put":
	case "del":
		r.Deleted = true
	default:
		return fmt.Errorf("%w: operation %q, want put or del", errBadHeader, clipString(op))
	}
	for rest != "" {
		var word string
		word, rest, _ = strings.Cut(rest, " ")
		name, val, ok := strings.Cut(word, "=")
		if !ok {
			continue
		}
		switch name {
		case "exp":
			ms, ok := parseDecimal(val)
			if !ok || ms == 0 || ms > math.MaxInt64 {
				return fmt.Errorf("%w: exp=%q is not Unix milliseconds", errBadHeader, clipString(val))
			}
			r.Expires = time.UnixMilli(int64(ms))
		case "ver":
			v, ok := parseDecimal(val)
			if !ok {
				return fmt.Errorf("%w: ver=%q is not an unsigned integer", errBadHeader, clipString(val))
			}
			r.Version = v
		case "kid":
			if len(val) != 16 {
				return fmt.Errorf("%w: kid=%q is not a key id", errBadHeader, clipString(val))
			}
			r.KeyID = val
		}
	}
	return nil
}

// parseDecimal parses an unsigned 64-bit decimal: strconv.ParseUint
// without its error value, which costs a replay an allocation per bad
// record and time per good one.
func parseDecimal(s string) (uint64, bool) {
	if s == "" || len(s) > 20 {
		return 0, false
	}
	var n uint64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		d := uint64(c - '0')
		if n > (math.MaxUint64-d)/10 {
			return 0, false
		}
		n = n*10 + d
	}
	return n, true
}

func clipString(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}

// RecordMetrics are the record log's Prometheus metrics.
type RecordMetrics struct {
	// Written counts acknowledged writes, by operation (put, del).
	Written *prometheus.CounterVec
	// Replayed counts records handed to Replay's callback.
	Replayed prometheus.Counter
	// Rejected counts messages replay skipped as bad, by reason: subject,
	// header, key (no key to open it), seal (does not open) or snapshot
	// (a snapshot's message; its partition is read from the log).
	Rejected *prometheus.CounterVec
	// Snapshots counts partitions Compact looked at, by what it did:
	// built, folded, checked or dropped (unreadable, built next time).
	Snapshots *prometheus.CounterVec
}

// NewRecordMetrics creates the record log metrics and registers them with
// reg, when reg is not nil.
func NewRecordMetrics(reg prometheus.Registerer) *RecordMetrics {
	m := &RecordMetrics{
		Written: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cachebus_persistence_records_written_total",
			Help: "Long-term record writes acknowledged by JetStream, by operation.",
		}, []string{"op"}),
		Replayed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cachebus_persistence_records_replayed_total",
			Help: "Long-term records read back from JetStream by replays.",
		}),
		Rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cachebus_persistence_records_rejected_total",
			Help: "Messages of the record log skipped by replays as corrupt, foreign or unopenable, by reason.",
		}, []string{"reason"}),
		Snapshots: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cachebus_persistence_snapshot_partitions_total",
			Help: "Partitions whose record snapshot was brought up to date, by what it took: built (from the log), folded (the log's tail into a new one), checked (the manifest only) or dropped (unreadable, built next time).",
		}, []string{"result"}),
	}
	if reg != nil {
		reg.MustRegister(m.Written, m.Replayed, m.Rejected, m.Snapshots)
	}
	return m
}

// RecordLogOption adjusts OpenRecordLog.
type RecordLogOption func(*RecordLog)

// WithRecordMetrics sets the metrics the log records into; by default it
// keeps unregistered ones.
func WithRecordMetrics(m *RecordMetrics) RecordLogOption {
	return func(l *RecordLog) { l.metrics = m }
}

// RecordLog writes the long-term records of the cache tier to JetStream
// and reads them back. It is safe for concurrent use.
type RecordLog struct {
	c        *bus.Conn
	cfg      RecordLogConfig
	codec    *RecordCodec
	stream   jetstream.Stream
	name     string
	msgTTL   bool // the server expires single messages (2.11+)
	longTerm map[string]bool
	metrics  *RecordMetrics

	// snap is the snapshot stream, nil when the log keeps none
	// (snapshot.go); snapName is its name, snapRoot "<p>.rec.snap.".
	snap     jetstream.Stream
	snapName string
	snapRoot string

	// noMultiFilter is set once a server refused a consumer with several
	// filter subjects (before 2.10): replays filter by partition here.
	noMultiFilter atomic.Bool
}

// RecordStreamConfig is the JetStream configuration of the record log of
// hierarchy s. msgTTL asks for per-message TTLs, which servers before 2.11
// do not have.
func RecordStreamConfig(s bus.Subjects, cfg RecordLogConfig, msgTTL bool) jetstream.StreamConfig {
	if cfg.Replicas <= 0 {
		cfg.Replicas = 1
	}
	if cfg.MaxBytes == 0 {
		cfg.MaxBytes = -1
	}
	rc := RecordCodec{root: s.Records() + ".log."}
	return jetstream.StreamConfig{
		Name:        s.BucketName("CACHEBUS_RECORDS"),
		Description: "cachebus long-term records: the latest write of each key",
		Subjects:    rc.Subjects(),
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		// One message per subject, so per key: a write replaces the one
		// before, and a tombstone replaces the value it deletes.
		MaxMsgsPerSubject: 1,
		MaxMsgs:           -1,
		MaxBytes:          cfg.MaxBytes,
		MaxAge:            cfg.MaxAge,
		// Full is an error to the writer, never a silent loss of the
		// oldest records.
		Discard:     jetstream.DiscardNew,
		Replicas:    cfg.Replicas,
		AllowDirect: true,
		AllowMsgTTL: msgTTL,
	}
}

// BindRecordLog opens the record log's stream as the cache nodes left it,
// changing nothing of its configuration (replicas, limits): for commands
// such as `cachebus rekey`, which must not undo an operator's settings.
// cfg gives the keys and the long-term namespaces. When the stream does
// not exist the error wraps jetstream.ErrStreamNotFound.
func BindRecordLog(ctx context.Context, c *bus.Conn, cfg RecordLogConfig, opts ...RecordLogOption) (*RecordLog, error) {
	return openRecordLog(ctx, c, cfg, false, opts...)
}

// OpenRecordLog creates the record log's stream, or updates its limits
// and replicas, retrying while JetStream is not ready until ctx ends. It
// asks for per-message TTLs and goes on without them on a server that
// has none (before 2.11): expiry is enforced on read either way.
func OpenRecordLog(ctx context.Context, c *bus.Conn, cfg RecordLogConfig, opts ...RecordLogOption) (*RecordLog, error) {
	return openRecordLog(ctx, c, cfg, true, opts...)
}

func openRecordLog(ctx context.Context, c *bus.Conn, cfg RecordLogConfig, configure bool, opts ...RecordLogOption) (*RecordLog, error) {
	l := &RecordLog{c: c, longTerm: map[string]bool{}}
	for _, ns := range cfg.LongTerm {
		if ns = strings.TrimSpace(ns); ns == "" {
			continue
		}
		if err := bus.CheckNamespace(ns); err != nil {
			return nil, fmt.Errorf("persistence: CACHEBUS_LONG_TERM: %w", err)
		}
		l.longTerm[ns] = true
	}
	if cfg.Replicas <= 0 {
		cfg.Replicas = 1
	}
	if cfg.TombstoneTTL == 0 {
		cfg.TombstoneTTL = DefaultTombstoneTTL
	}
	if cfg.TombstoneTTL < time.Second {
		return nil, fmt.Errorf("persistence: CACHEBUS_RECORDS_TOMBSTONE_TTL must be at least 1s, got %s", cfg.TombstoneTTL)
	}
	if cfg.MaxAge < 0 {
		return nil, fmt.Errorf("persistence: CACHEBUS_RECORDS_MAX_AGE must not be negative, got %s", cfg.MaxAge)
	}
	l.cfg = cfg
	codec, err := NewRecordCodec(c.Subjects, cfg.Key, cfg.KeyPrevious)
	if err != nil {
		return nil, err
	}
	l.codec = codec
	for _, opt := range opts {
		opt(l)
	}
	if l.metrics == nil {
		l.metrics = NewRecordMetrics(nil)
	}

	sc := RecordStreamConfig(c.Subjects, cfg, true)
	l.name = sc.Name
	if !configure {
		st, err := c.JS.Stream(ctx, sc.Name)
		if err != nil {
			return nil, fmt.Errorf("persistence: record log %s (created by the cache nodes with long-term namespaces): %w", sc.Name, err)
		}
		l.stream = st
		l.msgTTL = st.CachedInfo().Config.AllowMsgTTL
		if err := l.openSnapshots(ctx, false); err != nil {
			return nil, err
		}
		return l, nil
	}
	create := func(sc jetstream.StreamConfig) (jetstream.Stream, error) {
		return ensure(ctx, c, "record log "+sc.Name, func(ctx context.Context) (jetstream.Stream, error) {
			return c.JS.CreateOrUpdateStream(ctx, sc)
		})
	}
	st, err := create(sc)
	if err != nil && ctx.Err() == nil {
		// A server that knows the field but refuses it; servers that do
		// not know it ignore it, and the answer below says so.
		var err2 error
		if st, err2 = create(RecordStreamConfig(c.Subjects, cfg, false)); err2 != nil {
			return nil, err
		}
	} else if err != nil {
		return nil, err
	}
	l.stream = st
	l.msgTTL = st.CachedInfo().Config.AllowMsgTTL
	if !l.msgTTL {
		c.Log.Info("record log: the NATS server cannot expire single messages (before 2.11); expired records are skipped on read and deletes purge their key",
			"stream", l.name, "max_age", cfg.MaxAge)
		if cfg.MaxAge == 0 {
			c.Log.Warn("record log: expired records stay in JetStream until their key is written again; set CACHEBUS_RECORDS_MAX_AGE above CACHEBUS_RECORD_MAX_TTL, or upgrade NATS to 2.11",
				"stream", l.name)
		}
	}
	if err := l.openSnapshots(ctx, true); err != nil {
		return nil, err
	}
	return l, nil
}

// Stream is the name of the record log's stream.
func (l *RecordLog) Stream() string { return l.name }

// Codec is the log's codec.
func (l *RecordLog) Codec() *RecordCodec { return l.codec }

// LongTerm reports whether namespace ns is long-term (CACHEBUS_LONG_TERM).
func (l *RecordLog) LongTerm(ns string) bool { return l.longTerm[ns] }

// Namespaces lists the long-term namespaces, sorted.
func (l *RecordLog) Namespaces() []string {
	return slices.Sorted(maps.Keys(l.longTerm))
}

// Sealed reports whether values are sealed before they reach JetStream.
// Without a key records at rest, which may hold session tokens, are in
// clear: a daemon warns at start when it has long-term namespaces and
// Sealed is false.
func (l *RecordLog) Sealed() bool { return l.codec.seal.cur != nil }

// MsgTTL reports whether the server expires records itself (per-message
// TTL, NATS 2.11+). Either way Replay skips expired records.
func (l *RecordLog) MsgTTL() bool { return l.msgTTL }

// Put writes value as the record key of namespace ns in partition p
// (partition.PartitionOf(key)), expiring at expires (zero: never), and
// returns its stream sequence once JetStream has acknowledged it.
func (l *RecordLog) Put(ctx context.Context, ns string, p int, key string, value []byte, expires time.Time) (uint64, error) {
	return l.Write(ctx, Record{NS: ns, Partition: p, Key: key, Value: value, Expires: expires})
}

// Delete deletes the record key of namespace ns in partition p and
// returns once JetStream has acknowledged it; see Write for how.
func (l *RecordLog) Delete(ctx context.Context, ns string, p int, key string) (uint64, error) {
	return l.Write(ctx, Record{NS: ns, Partition: p, Key: key, Deleted: true})
}

// Write writes r, a put or a tombstone, and returns its stream sequence
// once JetStream has acknowledged it: an acknowledged write is on the
// stream's replicas. The stream keeps one message per key, so a write
// replaces the previous one of its key; the caller orders the writes of
// one key (the key's serving node does).
//
// A tombstone expires TombstoneTTL from now unless r says when. On a
// server without per-message TTLs the tombstone could never leave, so
// there a delete purges the key's subject instead and returns sequence 0.
func (l *RecordLog) Write(ctx context.Context, r Record) (uint64, error) {
	return l.write(ctx, r)
}

// write is Write with extra publish options (conditions).
func (l *RecordLog) write(ctx context.Context, r Record, extra ...jetstream.PublishOpt) (uint64, error) {
	if r.Deleted && !l.msgTTL {
		subj := l.codec.Subject(r.NS, r.Partition, r.Key)
		if err := checkRecord(r.NS, r.Partition, r.Key); err != nil {
			return 0, err
		}
		if err := l.stream.Purge(ctx, jetstream.WithPurgeSubject(subj)); err != nil {
			return 0, fmt.Errorf("persistence: delete record %s/%s: %w", r.NS, clipString(r.Key), err)
		}
		l.metrics.Written.WithLabelValues("del").Inc()
		return 0, nil
	}
	msg, opts, err := l.message(r, time.Now())
	if err != nil {
		return 0, err
	}
	ack, err := l.c.JS.PublishMsg(ctx, msg, append(opts, extra...)...)
	if err != nil {
		return 0, fmt.Errorf("persistence: write record %s/%s: %w", r.NS, clipString(r.Key), err)
	}
	l.metrics.Written.WithLabelValues(opName(r)).Inc()
	return ack.Sequence, nil
}

// ErrRecordChanged is the error of WriteIfLast when the key's last
// message is no longer the one it was given.
var ErrRecordChanged = errors.New("persistence: the record changed meanwhile")

// Last reads the last message the log keeps of ns/key in partition p, as
// a record with its Seq set; found is false when the log keeps none. A
// message that is no record this log can open is returned as an error
// wrapping ErrBadRecord (or ErrRecordKeyUnknown, ErrRecordSeal), with
// Seq set all the same.
func (l *RecordLog) Last(ctx context.Context, ns string, p int, key string) (r Record, found bool, err error) {
	if err := checkRecord(ns, p, key); err != nil {
		return Record{}, false, err
	}
	m, err := l.stream.GetLastMsgForSubject(ctx, l.codec.Subject(ns, p, key))
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return Record{}, false, nil
	case err != nil:
		return Record{}, false, fmt.Errorf("persistence: read record %s/%s: %w", ns, clipString(key), err)
	}
	r, err = l.codec.Decode(m.Subject, m.Header, m.Data)
	r.Seq = m.Sequence
	return r, true, err
}

// WriteIfLast is Write on the condition that the key's last message is
// still the one of sequence last (0: none), so that a write made meanwhile
// is never overwritten; otherwise it fails with ErrRecordChanged. Without
// per-message TTLs a tombstone is a purge of the key, which takes no
// condition: it is made all the same, ordered after every message before
// it.
func (l *RecordLog) WriteIfLast(ctx context.Context, r Record, last uint64) (uint64, error) {
	seq, err := l.write(ctx, r, jetstream.WithExpectLastSequencePerSubject(last))
	if wrongLast(err) {
		return 0, fmt.Errorf("%w: %s/%s: %w", ErrRecordChanged, r.NS, clipString(r.Key), err)
	}
	return seq, err
}

// wrongLast reports whether err is JetStream's refusal of a write whose
// expected last sequence of its subject did not hold.
func wrongLast(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

func opName(r Record) string {
	if r.Deleted {
		return "del"
	}
	return "put"
}

// message encodes r with the server TTL that goes with its expiry.
func (l *RecordLog) message(r Record, now time.Time) (*nats.Msg, []jetstream.PublishOpt, error) {
	if r.Deleted && r.Expires.IsZero() {
		r.Expires = now.Add(l.cfg.TombstoneTTL)
	}
	msg, err := l.codec.Encode(r)
	if err != nil {
		return nil, nil, err
	}
	if !l.msgTTL || r.Expires.IsZero() {
		return msg, nil, nil
	}
	// Whole seconds, rounded up so the server never removes a record
	// before it expires; a tombstone TTL at least, even for one already
	// expired, which must still replace the value before it long enough
	// for the snapshots to see it go (snapshot.go). Readers check exp.
	ttl := max(r.Expires.Sub(now), l.cfg.TombstoneTTL)
	ttl = max((ttl+time.Second-1)/time.Second*time.Second, time.Second)
	return msg, []jetstream.PublishOpt{jetstream.WithMsgTTL(ttl)}, nil
}

// writeWindow is how many writes WriteAll keeps unacknowledged.
const writeWindow = 1024

// WriteAll writes every record of recs, pipelined, and returns once
// JetStream has acknowledged them all, or at the first failure (records
// before it may be written, later ones may be too). It is for bulk loads:
// a restore, a benchmark.
func (l *RecordLog) WriteAll(ctx context.Context, recs []Record) error {
	var futures []jetstream.PubAckFuture
	var ops []string
	wait := func() error {
		for i, f := range futures {
			select {
			case <-f.Ok():
				l.metrics.Written.WithLabelValues(ops[i]).Inc()
			case err := <-f.Err():
				return fmt.Errorf("persistence: write record: %w", err)
			case <-ctx.Done():
				return fmt.Errorf("persistence: write records: %w", ctx.Err())
			}
		}
		futures, ops = futures[:0], ops[:0]
		return nil
	}
	now := time.Now()
	for i, r := range recs {
		if r.Deleted && !l.msgTTL {
			if err := wait(); err != nil {
				return err
			}
			if _, err := l.Write(ctx, r); err != nil {
				return err
			}
			continue
		}
		if i%writeWindow == 0 {
			now = time.Now()
		}
		msg, opts, err := l.message(r, now)
		if err != nil {
			return err
		}
		f, err := l.c.JS.PublishMsgAsync(msg, opts...)
		if err != nil {
			return fmt.Errorf("persistence: write record: %w", err)
		}
		futures, ops = append(futures, f), append(ops, opName(r))
		if len(futures) >= writeWindow {
			if err := wait(); err != nil {
				return err
			}
		}
	}
	return wait()
}

// ReplayProgress is how far a replay is.
type ReplayProgress struct {
	// Records handed to the callback so far.
	Records int64
	// Messages read so far: records, tombstones, expired and rejected
	// ones, and those of other partitions when filtered here.
	Messages int64
	// Bytes of the messages read so far (their data).
	Bytes int64
	// Elapsed since the replay started.
	Elapsed time.Duration
	// Rate is Records per second of Elapsed.
	Rate float64
	// Percent of the messages to read that are read.
	Percent float64
}

// ReplayStats is what a replay read.
type ReplayStats struct {
	// Records handed to the callback, tombstones included.
	Records int64
	// Deleted counts the tombstones among Records.
	Deleted int64
	// Expired counts records and tombstones skipped as expired.
	Expired int64
	// Rejected counts messages skipped as corrupt, foreign or unopenable;
	// each one is logged (the first few in full).
	Rejected int64
	// Messages read from the stream, Bytes their data.
	Messages, Bytes int64
	// Elapsed is how long the replay took.
	Elapsed time.Duration
	// Filter says how partitions were picked: "subjects" (by the server,
	// one filter subject per partition), "namespace" (here, from every
	// record of the namespace), "all" (every partition) or "stream" (every
	// partition or here, from every message of a stream that held the
	// namespace alone).
	Filter string
	// Readers is how many consumers read the log at once (ReplayReaders).
	Readers int
	// Snapshots is how many partitions were read from a snapshot and
	// then from the log's tail only (snapshot.go).
	Snapshots int
}

// Rate is records per second.
func (s ReplayStats) Rate() float64 {
	if s.Elapsed <= 0 {
		return 0
	}
	return float64(s.Records) / s.Elapsed.Seconds()
}

// multiFilterMax is the largest partition count a replay asks the server
// to filter, with one filter subject per partition; above it the replay
// reads the whole namespace and drops other partitions here. Measured on
// 200,000 records (nats-server 2.15, CPU of server and client): per
// record replayed, the server's filter costs less up to half of the
// partitions, as much at two thirds (683, one node of three with one
// backup), and reading everything costs the same whatever the share.
const multiFilterMax = 512

// progressEvery is the shortest interval between two progress reports.
const progressEvery = 250 * time.Millisecond

// rejectLogMax is how many bad messages a replay logs one by one; the
// rest are counted and summed up at its end.
const rejectLogMax = 10

// errReplayDone ends a replay that read everything.
var errReplayDone = errors.New("replay done")

// Replay reads the records of namespace ns in partitions (0 to 1023; none
// reads nothing) as they are in the log when it starts, and hands each
// one to fn. Where the log keeps snapshots (snapshot.go) it reads the
// log's messages written since each partition's snapshot, then the
// snapshots less the keys those messages hold, so each key is handed over
// as a replay of the log alone would, once (a partition whose snapshot
// turns out not whole has the rest of its records read from the log).
// By default fn is called from one goroutine; with ReplayReaders(n) the
// log and the snapshots are read n at once and fn is called from up to n
// goroutines at once (see there). It skips expired records. It hands over
// tombstones (Deleted, no Value) that have not expired, so a caller that
// already holds some of these keys removes them and keeps the version
// that deleted them; a caller starting empty may ignore them. A message
// that is not a record, or whose value does not open, is logged, counted in Rejected and skipped. fn returning an error
// ends the replay with it. progress, when not nil, is called at most
// every 250ms and once at the end, never from two goroutines at once.
//
// Writes made while Replay runs may or may not be handed over: the caller
// applies them as it does any write.
func (l *RecordLog) Replay(ctx context.Context, ns string, partitions []int, fn func(Record) error, progress func(ReplayProgress), opts ...ReplayOption) (ReplayStats, error) {
	var o replayOptions
	for _, opt := range opts {
		opt(&o)
	}
	st, _, err := l.replay(ctx, ns, partitions, fn, progress, o)
	return st, err
}

// ReplayOption adjusts one Replay.
type ReplayOption func(*replayOptions)

type replayOptions struct {
	readers int
	logOnly bool
}

// ReplayFromLog has Replay read every record from the log, leaving the
// snapshots aside: to measure one beside the other.
func ReplayFromLog() ReplayOption {
	return func(o *replayOptions) { o.logOnly = true }
}

// MaxReplayReaders is the most consumers one replay reads with.
const MaxReplayReaders = 8

// ReplayReaders has Replay read the log with n consumers at once (1 to
// MaxReplayReaders; fewer for a small stream), each one an ordered
// consumer over its own share of the stream's sequences, decoding and
// calling fn from its own goroutine, and the snapshots are decoded by n
// goroutines, a partition each: so fn must be safe for concurrent use.
// Every message is still read by one consumer only, and each key has one
// message in the log, or one in a snapshot, so each record is handed over
// as with one reader; only the order across keys differs. On a machine with
// cores to spare it replays faster: the server's work for a consumer is
// one goroutine's, and so is the client's.
func ReplayReaders(n int) ReplayOption {
	return func(o *replayOptions) { o.readers = n }
}

// minReaderSpan is the fewest stream sequences a reader of a replay with
// several is given: below, fewer readers.
var minReaderSpan uint64 = 1024

// replay is Replay, also returning the rejections by reason.
func (l *RecordLog) replay(ctx context.Context, ns string, partitions []int, fn func(Record) error, progress func(ReplayProgress), o replayOptions) (ReplayStats, [reasons]int64, error) {
	var none [reasons]int64
	if err := bus.CheckNamespace(ns); err != nil {
		return ReplayStats{}, none, fmt.Errorf("persistence: replay: %w", err)
	}
	var want [partition.Partitions]bool
	n := 0
	for _, p := range partitions {
		if p < 0 || p >= partition.Partitions {
			return ReplayStats{}, none, fmt.Errorf("persistence: replay %s: partition must be 0 to %d, got %d", ns, partition.Partitions-1, p)
		}
		if !want[p] {
			want[p] = true
			n++
		}
	}
	if n == 0 {
		return ReplayStats{Filter: "none"}, none, nil
	}
	readers := min(max(o.readers, 1), MaxReplayReaders)
	start := time.Now()
	var sp *snapshotPlan
	if l.snap != nil && !o.logOnly {
		var err error
		if sp, err = l.planSnapshots(ctx, ns, &want, n); err != nil {
			if ctx.Err() != nil {
				return ReplayStats{}, none, err
			}
			// Snapshots only spare reading the log; the log alone is whole.
			// Their stream has a leader of its own, which after a heal may
			// be elected after the log's.
			l.c.Log.Warn("record replay: snapshots unreadable; reading the log alone", "ns", ns, "err", err)
			sp = nil
		}
	}
	plan := sp // nil when no partition has a snapshot to read
	if sp != nil && len(sp.manifests) == 0 {
		plan = nil
	}
	// The log first, only its tail where there is a snapshot; then the
	// snapshots, less the keys the tail held; then, from the log whole,
	// the partitions whose snapshot turned out not whole.
	st, rs, err := l.replayLog(ctx, ns, &want, n, fn, progress, readers, start, plan, nil)
	if err == nil && plan != nil {
		var ss ReplayStats
		var failed []int
		ss, failed, err = l.replaySnapshots(ctx, ns, sp, readers, fn, progress, st, start)
		st = addReplayStats(st, ss)
		st.Snapshots = ss.Snapshots
		if err == nil && len(failed) > 0 {
			var again [partition.Partitions]bool
			for _, p := range failed {
				again[p] = true
			}
			var fs ReplayStats
			var frs [reasons]int64
			// Their tails were handed over already: the rest.
			fs, frs, err = l.replayLog(ctx, ns, &again, len(failed), fn, nil, readers, start, nil, &sp.floor)
			st = addReplayStats(st, fs)
			for i := range rs {
				rs[i] += frs[i]
			}
		}
	}
	if sp != nil {
		st.Rejected += sp.rejected
		for i := range rs {
			rs[i] += sp.reasons[i]
		}
	}
	st.Elapsed = time.Since(start)
	if plan != nil && progress != nil && err == nil {
		progress(ReplayProgress{Records: st.Records, Messages: st.Messages, Bytes: st.Bytes, Elapsed: st.Elapsed,
			Rate: st.Rate(), Percent: 100})
	}
	l.metrics.Replayed.Add(float64(st.Records))
	if err != nil {
		return st, rs, err
	}
	l.c.Log.Info("records replayed", "ns", ns, "partitions", n, "records", st.Records, "deleted", st.Deleted,
		"expired", st.Expired, "rejected", st.Rejected, "bytes", st.Bytes, "elapsed", st.Elapsed.Round(time.Millisecond),
		"rate", int64(st.Rate()), "filter", st.Filter, "readers", st.Readers, "snapshots", st.Snapshots)
	return st, rs, nil
}

// addReplayStats adds b's counts to a's.
func addReplayStats(a, b ReplayStats) ReplayStats {
	a.Records += b.Records
	a.Deleted += b.Deleted
	a.Expired += b.Expired
	a.Rejected += b.Rejected
	a.Messages += b.Messages
	a.Bytes += b.Bytes
	return a
}

// replayLog reads the records of the wanted partitions of ns from the
// log, and hands them to fn. With a plan it reads the planned partitions'
// messages after their snapshot only, noting their keys, and leaves the
// last progress report to the snapshots' read. With upTo it reads each
// partition's messages up to that sequence only.
func (l *RecordLog) replayLog(ctx context.Context, ns string, want *[partition.Partitions]bool, n int, fn func(Record) error,
	progress func(ReplayProgress), readers int, start time.Time, plan *snapshotPlan, upTo *[partition.Partitions]uint64) (ReplayStats, [reasons]int64, error) {
	newReplay := func() *replay {
		r := &replay{l: l, ns: ns, nsPrefix: l.codec.root + ns + ".", fn: fn, progress: progress, start: start, readers: readers, upTo: upTo}
		if plan != nil {
			// The log is read from the oldest snapshot's end on, and
			// each partition's messages up to its own are skipped.
			r.plan, r.extra = plan, plan.records
			r.from = math.MaxUint64
			for p := range want {
				if want[p] {
					r.from = min(r.from, plan.floor[p]+1)
				}
			}
		}
		return r
	}
	r := newReplay()
	filters, here := l.partitionFilters(l.codec.root, ns, "*", want, n)
	switch {
	case n == partition.Partitions:
		r.st.Filter = "all"
	case here == nil:
		r.st.Filter = "subjects"
	default:
		r.st.Filter = "namespace"
		r.want = here
	}
	err := r.run(ctx, filters)
	if errors.Is(err, jetstream.ErrConsumerMultipleFilterSubjectsNotSupported) {
		l.noMultiFilter.Store(true)
		l.c.Log.Info("record log: the NATS server cannot filter a consumer by several subjects (before 2.10); replays filter partitions here",
			"stream", l.name)
		if plan != nil {
			plan.mu.Lock()
			clear(plan.tail) // noted by the failed read; read again
			plan.mu.Unlock()
		}
		r = newReplay()
		r.want = want
		r.st.Filter = "namespace"
		err = r.run(ctx, []string{l.codec.namespaceFilter(ns)})
	}
	return r.st, r.reasons, err
}

// multiFilterServer reports whether the connected server is 2.10 or later,
// the first to filter a consumer by several subjects. (A cluster of mixed
// versions may still refuse: Replay then falls back.)
func multiFilterServer(nc *nats.Conn) bool {
	v := strings.TrimPrefix(nc.ConnectedServerVersion(), "v")
	major, rest, _ := strings.Cut(v, ".")
	minor, _, _ := strings.Cut(rest, ".")
	ma, err1 := strconv.Atoi(major)
	mi, err2 := strconv.Atoi(minor)
	if err1 != nil || err2 != nil {
		return true // unknown: try, and fall back on refusal
	}
	return ma > 2 || ma == 2 && mi >= 10
}

// replay is one run of Replay: one reader, or several over disjoint
// ranges of stream sequences.
type replay struct {
	l        *RecordLog
	ns       string
	want     *[partition.Partitions]bool // nil: every partition delivered is wanted
	otherNS  bool                        // read unfiltered: other namespaces are skipped
	nsPrefix string                      // "<p>.rec.log.<ns>."
	// plan, when not nil, has snapshots of some partitions, read after
	// the log: their messages up to the snapshot's upto are skipped, the
	// keys of the others noted. from is the first sequence to read, extra
	// how many records the snapshots add (for the percentage).
	plan  *snapshotPlan
	from  uint64
	extra int64
	// upTo, when not nil, is the last sequence to hand over of each
	// partition: the rest was, from the log's tail.
	upTo     *[partition.Partitions]uint64
	fn       func(Record) error
	progress func(ReplayProgress)
	start    time.Time
	readers  int // at most, as asked
	rejected atomic.Int64
	done     chan readerDone

	mu           sync.Mutex // guards all below; progress is called holding it
	rds          []*replayReader
	st           ReplayStats // the sum of the readers' once they are stopped
	reasons      [reasons]int64
	percent      float64
	lastProgress time.Time
}

// readerDone is what ends a reader: errReplayDone when it read its range,
// else the error that ends the replay.
type readerDone struct {
	rd  *replayReader
	err error
}

// replayReader is one consumer of a replay, reading stream sequences lo
// to hi. Its handler runs on one goroutine at a time.
type replayReader struct {
	r      *replay
	lo, hi uint64
	// beyond is how many of the messages the consumer had pending when
	// created come after hi: what its pending count holds beside its own.
	beyond uint64
	cons   jetstream.Consumer
	cc     jetstream.ConsumeContext

	mu       sync.Mutex // held while a message is handled; guards all below
	finished bool
	st       ReplayStats
	reasons  [reasons]int64
	nowMs    int64  // the clock expiry is checked against, in Unix ms
	lastSeq  uint64 // stream sequence of the last message handled
	pending  uint64 // messages of its range still to read, as last told

	// shown are the figures last added to the replay's progress (under
	// r.mu).
	shownMsgs, shownRecords, shownBytes int64
	shownPending                        uint64
}

// report calls progress, at most every progressEvery unless final. The
// caller holds r.mu.
func (r *replay) report(final bool) {
	if r.progress == nil {
		return
	}
	now := time.Now()
	if !final && now.Sub(r.lastProgress) < progressEvery || final && r.plan != nil {
		return // the last report is the snapshots' read's
	}
	r.lastProgress = now
	var p ReplayProgress
	var pending uint64
	for _, rd := range r.rds {
		p.Records += rd.shownRecords
		p.Messages += rd.shownMsgs
		p.Bytes += rd.shownBytes
		pending += rd.shownPending
	}
	p.Elapsed = now.Sub(r.start)
	if final {
		p.Records, p.Messages, p.Bytes = r.st.Records, r.st.Messages, r.st.Bytes
		r.percent = 100
	} else if p.Messages > 0 {
		// Never back: a write made meanwhile adds to what is pending.
		r.percent = max(r.percent, float64(p.Messages)/float64(p.Messages+int64(pending)+r.extra)*100)
	}
	p.Percent = r.percent
	if s := p.Elapsed.Seconds(); s > 0 {
		p.Rate = float64(p.Records) / s
	}
	r.progress(p)
}

// show adds rd's figures to the replay's progress and reports it when it
// is time. The caller holds rd.mu.
func (rd *replayReader) show(final bool) {
	r := rd.r
	if r.progress == nil {
		return
	}
	r.mu.Lock()
	rd.shownMsgs, rd.shownRecords, rd.shownBytes, rd.shownPending = rd.st.Messages, rd.st.Records, rd.st.Bytes, rd.pending
	if final {
		rd.shownPending = 0
	}
	r.report(false)
	r.mu.Unlock()
}

// run reads the messages of filters up to the stream's last sequence at
// the start.
func (r *replay) run(ctx context.Context, filters []string) error {
	l := r.l
	actx, acancel := context.WithTimeout(ctx, replayAPITimeout)
	info, err := l.stream.Info(actx)
	acancel()
	if err != nil {
		return fmt.Errorf("persistence: replay %s: %w", r.ns, err)
	}
	first, last := max(info.State.FirstSeq, 1, r.from), info.State.LastSeq
	if last == 0 || info.State.Msgs == 0 || first > last {
		r.finishStats()
		r.mu.Lock()
		r.report(true)
		r.mu.Unlock()
		return nil
	}
	// Ordered consumers: no acks, in order, recreated by the client
	// where it left off if the connection or the server fails it. The
	// stream keeps one message per key, so delivering all of them is
	// delivering the last of each key: the set DeliverLastPerSubject
	// gives, and what a recreated ordered consumer reads anyway (from a
	// start sequence, whatever the policy it began with).
	r.done = make(chan readerDone, max(r.readers, 1))
	defer r.stop()
	cfg := jetstream.OrderedConsumerConfig{
		FilterSubjects:    filters,
		DeliverPolicy:     jetstream.DeliverAllPolicy,
		InactiveThreshold: 30 * time.Second,
	}
	if first > max(info.State.FirstSeq, 1) {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, first
	}
	actx, acancel = context.WithTimeout(ctx, replayAPITimeout)
	cons, err := l.c.JS.OrderedConsumer(actx, l.name, cfg)
	acancel()
	if err != nil {
		if errors.Is(err, jetstream.ErrConsumerMultipleFilterSubjectsNotSupported) {
			return err
		}
		return fmt.Errorf("persistence: replay %s: %w", r.ns, err)
	}
	// When the namespace is all the stream holds, read the stream
	// unfiltered: the server then matches no subject against a filter,
	// 25% faster measured. What other namespaces get meanwhile is
	// skipped here.
	if ci := cons.CachedInfo(); len(filters) == 1 && filters[0] == l.codec.namespaceFilter(r.ns) &&
		ci != nil && ci.NumPending > 0 && ci.NumPending == info.State.Msgs {
		cfg.FilterSubjects = nil
		actx, acancel := context.WithTimeout(ctx, replayAPITimeout)
		whole, err := l.c.JS.OrderedConsumer(actx, l.name, cfg)
		acancel()
		if err == nil {
			l.deleteConsumer(l.name, ci.Name)
			cons, r.otherNS = whole, true
			r.st.Filter = "stream"
		}
	}
	r.rds = []*replayReader{{r: r, cons: cons, lo: first, hi: last}}
	r.st.Readers = 1
	// With several readers, each one reads its own range of sequences up
	// to last; a key rewritten meanwhile has its new message after last,
	// so each key is read at most once whatever the readers' pace. The
	// ranges split the sequences between the namespace's first and last
	// records evenly, which splits the records evenly when they are spread
	// over them (a node's partitions are: keys hash to partitions).
	if r.readers > 1 && !r.otherNS {
		first, last = l.namespaceBounds(ctx, r.ns, first, last)
	}
	span := last - first + 1
	n := uint64(r.readers)
	if m := span / minReaderSpan; m < n {
		n = max(m, 1)
	}
	if n > 1 {
		r.rds[0].hi = first + span/n - 1
		for i := uint64(1); i < n; i++ {
			r.rds = append(r.rds, &replayReader{r: r, lo: first + i*span/n, hi: first + (i+1)*span/n - 1})
		}
		r.st.Readers = int(n)
	}
	// The others start at their range; created from the last one down so
	// that each one's pending count, less the next one's, is about its
	// share (for the percentage only).
	cfg.DeliverPolicy = jetstream.DeliverByStartSequencePolicy
	for i := len(r.rds) - 1; i >= 1; i-- {
		cfg.OptStartSeq = r.rds[i].lo
		actx, acancel := context.WithTimeout(ctx, replayAPITimeout)
		r.rds[i].cons, err = l.c.JS.OrderedConsumer(actx, l.name, cfg)
		acancel()
		if err != nil {
			return fmt.Errorf("persistence: replay %s: %w", r.ns, err)
		}
	}
	var next uint64 // pending of the reader after, at its creation
	for i := len(r.rds) - 1; i >= 0; i-- {
		rd := r.rds[i]
		var pending uint64
		if ci := rd.cons.CachedInfo(); ci != nil {
			pending = ci.NumPending
		}
		rd.beyond = min(next, pending)
		rd.pending = pending - rd.beyond
		rd.shownPending = rd.pending
		next = pending
	}
	for _, rd := range r.rds {
		rd.cc, err = rd.cons.Consume(rd.handle,
			jetstream.PullMaxMessages(replayBatch),
			jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
				l.c.Log.Debug("record replay: consumer", "ns", r.ns, "err", err)
			}))
		if err != nil {
			if errors.Is(err, jetstream.ErrConsumerMultipleFilterSubjectsNotSupported) {
				return err
			}
			return fmt.Errorf("persistence: replay %s: %w", r.ns, err)
		}
		if ci := rd.cons.CachedInfo(); ci != nil && ci.NumPending == 0 && ci.Delivered.Stream < rd.lo {
			rd.mu.Lock()
			if rd.st.Messages == 0 {
				rd.finish(errReplayDone)
			}
			rd.mu.Unlock()
		}
	}
	// The last message of a range may go before it is delivered (its TTL
	// ends, its key is purged): then no message says it was the last.
	// A reader idle for a while asks the server whether anything is left.
	idle := time.NewTicker(idleCheck)
	defer idle.Stop()
	seen := make([]int64, len(r.rds))
	moved := make([]time.Time, len(r.rds)) // when each reader last read
	for i := range moved {
		moved[i] = time.Now()
	}
	busy := len(r.rds)
	for err == nil && busy > 0 {
		select {
		case d := <-r.done:
			if d.err != errReplayDone {
				err = d.err
				break
			}
			busy--
			// Done with its range: stop it reading the next one's.
			if d.rd.cc != nil {
				d.rd.cc.Stop()
				d.rd.cc = nil
			}
		case <-ctx.Done():
			err = fmt.Errorf("persistence: replay %s: %w", r.ns, ctx.Err())
		case <-idle.C:
			for i, rd := range r.rds {
				rd.mu.Lock()
				// Before its first message the consumer has delivered
				// up to the one before its range.
				msgs, handled, finished := rd.st.Messages, max(rd.lastSeq, rd.lo-1), rd.finished
				rd.mu.Unlock()
				if finished || msgs != seen[i] {
					seen[i], moved[i] = msgs, time.Now()
					continue
				}
				ictx, icancel := context.WithTimeout(ctx, replayAPITimeout)
				ci, ierr := rd.cons.Info(ictx)
				icancel()
				switch {
				case ierr == nil && ci.NumPending == 0 && ci.Delivered.Stream <= handled:
					rd.mu.Lock()
					rd.finish(errReplayDone)
					rd.mu.Unlock()
				case time.Since(moved[i]) > replayStall:
					// A consumer the server lost, or a reply lost in a
					// leader change: fail, and let the caller try again,
					// rather than wait for ever.
					pending := "unknown"
					if ierr == nil {
						pending = strconv.FormatUint(ci.NumPending, 10)
					}
					err = fmt.Errorf("persistence: replay %s: stalled: nothing read for %s with %s messages pending (last error: %v)",
						r.ns, replayStall, pending, ierr)
				}
			}
		}
	}
	if err != nil {
		return err
	}
	r.stop()
	r.mu.Lock()
	r.report(true)
	r.mu.Unlock()
	return nil
}

// stop stops every reader, waits out a message being handled and shuts
// the door: fn is never called once Replay has returned. Then it sums up
// what the readers read. It may be called twice.
func (r *replay) stop() {
	for _, rd := range r.rds {
		if rd.cc != nil {
			rd.cc.Stop()
			rd.cc = nil
		}
		rd.mu.Lock()
		rd.finished = true
		rd.mu.Unlock()
		if rd.cons != nil {
			if ci := rd.cons.CachedInfo(); ci != nil {
				r.l.deleteConsumer(r.l.name, ci.Name)
			}
			rd.cons = nil
		}
	}
	r.finishStats()
}

// finishStats sums up the readers' figures into r.st and r.reasons.
func (r *replay) finishStats() {
	var st ReplayStats
	var rs [reasons]int64
	for _, rd := range r.rds {
		rd.mu.Lock()
		s := rd.st
		for i, n := range rd.reasons {
			rs[i] += n
		}
		rd.mu.Unlock()
		st = addReplayStats(st, s)
	}
	r.mu.Lock()
	st.Filter, st.Readers = r.st.Filter, r.st.Readers
	r.st, r.reasons = st, rs
	r.mu.Unlock()
}

// namespaceBounds narrows first to last, the stream's sequences, to those
// of the first and the last record of namespace ns; it keeps them when the
// server cannot say.
func (l *RecordLog) namespaceBounds(ctx context.Context, ns string, first, last uint64) (uint64, uint64) {
	filter := l.codec.namespaceFilter(ns)
	ctx, cancel := context.WithTimeout(ctx, replayAPITimeout)
	defer cancel()
	lo, err := l.stream.GetMsg(ctx, first, jetstream.WithGetMsgSubject(filter))
	if err != nil {
		return first, last
	}
	hi, err := l.stream.GetLastMsgForSubject(ctx, filter)
	if err != nil || hi.Sequence < lo.Sequence || lo.Sequence < first || hi.Sequence > last {
		return first, last
	}
	return lo.Sequence, hi.Sequence
}

// deleteConsumer deletes a replay's or a compaction's consumer of stream
// in the background. The server would drop it after its
// InactiveThreshold; a node replaying often need not leave them behind
// meanwhile.
func (l *RecordLog) deleteConsumer(stream, name string) {
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = l.c.JS.DeleteConsumer(ctx, stream, name)
	}()
}

// clockEvery is how many messages a replay handles on one reading of the
// clock: reading it for each one took 5% of a replay's CPU (a virtual
// machine's clock), and a record expiring in the meantime is at most a
// few milliseconds late, which the store's own expiry check catches.
const clockEvery = 128

// idleCheck is how long a replay waits without a message before it asks
// the server whether any is left.
const idleCheck = 500 * time.Millisecond

// replayAPITimeout bounds each JetStream API request of a replay: a reply
// lost while the stream changes leader must not hold the replay up until
// the caller's deadline (a node's takeover has none).
const replayAPITimeout = 10 * time.Second

// replayStall is how long a reader may read nothing with messages still
// pending before the replay fails as stalled.
const replayStall = 30 * time.Second

// replayBatch is how many messages a consumer asks for at once.
const replayBatch = 4096

// finish ends the reader's part of the replay with err (errReplayDone when
// it read its range), once. The caller holds rd.mu.
func (rd *replayReader) finish(err error) {
	if rd.finished {
		return
	}
	rd.finished = true
	rd.r.done <- readerDone{rd, err} // room for one per reader
}

// handle takes one message of the reader's consumer.
func (rd *replayReader) handle(m jetstream.Msg) {
	rd.mu.Lock()
	defer rd.mu.Unlock()
	if rd.finished {
		return
	}
	r := rd.r
	seq, pending, ok := AckSeqPending(m.Reply())
	if !ok {
		r.l.c.Log.Warn("record replay: message without metadata", "ns", r.ns, "reply", clipString(m.Reply()))
		return
	}
	if seq > rd.hi {
		// The next reader's: this one is done.
		rd.pending = 0
		rd.show(true)
		rd.finish(errReplayDone)
		return
	}
	data := m.Data()
	rd.lastSeq = seq
	rd.st.Messages++
	rd.st.Bytes += int64(len(data))
	if rd.st.Messages%clockEvery == 1 {
		rd.nowMs = time.Now().UnixMilli()
	}
	if err := rd.apply(m.Subject(), m.Headers(), data, seq); err != nil {
		rd.finish(err)
		return
	}
	done := pending == 0 || seq >= rd.hi
	if r.progress != nil {
		rd.pending = 0
		if pending > rd.beyond {
			rd.pending = pending - rd.beyond
		}
		if done || rd.st.Messages%256 == 0 {
			rd.show(done)
		}
	}
	if done {
		rd.finish(errReplayDone)
	}
}

// AckSeqPending reads the stream sequence and the pending count from the
// reply subject of a consumer's message, as jetstream's Metadata does but
// without its allocations (for Replay, and for the raw reads beside which
// it is measured):
//
//	$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<tm>.<pending>
//	$JS.ACK.<domain>.<hash>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<tm>.<pending>[.<token>…]
func AckSeqPending(reply string) (seq, pending uint64, ok bool) {
	rest, ok := strings.CutPrefix(reply, "$JS.ACK.")
	if !ok {
		return 0, 0, false
	}
	var tok [12]string
	n := 2 // "$JS" and "ACK"
	for n < len(tok) {
		var t string
		t, rest, ok = strings.Cut(rest, ".")
		tok[n] = t
		n++
		if !ok {
			break
		}
	}
	var s, p string
	switch {
	case n == 9 && !ok:
		s, p = tok[5], tok[8]
	case n >= 11:
		s, p = tok[7], tok[10]
	default:
		return 0, 0, false
	}
	seq, ok1 := parseDecimal(s)
	pending, ok2 := parseDecimal(p)
	return seq, pending, ok1 && ok2
}

// apply decodes one message and hands its record to fn; only fn's error
// is returned. The caller holds rd.mu.
func (rd *replayReader) apply(subject string, h nats.Header, data []byte, seq uint64) error {
	r := rd.r
	var p int
	var keyTok string
	rest, ok := strings.CutPrefix(subject, r.nsPrefix)
	var err error
	switch {
	case ok:
		p, keyTok, err = splitPartition(subject, rest)
	case r.otherNS:
		return nil // another namespace's, read because the stream is read unfiltered
	default:
		var ns string
		if ns, _, _, err = r.l.codec.splitSubject(subject); err == nil {
			err = fmt.Errorf("%w: namespace %s delivered to a replay of %s", errBadSubject, ns, r.ns)
		}
	}
	if err != nil {
		rd.reject(subject, seq, err)
		return nil
	}
	if r.want != nil && !r.want[p] || r.upTo != nil && seq > r.upTo[p] {
		return nil
	}
	if r.plan != nil && r.plan.has[p] {
		if seq <= r.plan.floor[p] {
			return nil // in the snapshot
		}
		r.plan.noteTail(p, keyTok)
	}
	rec, err := r.l.codec.decode(r.ns, p, keyTok, h, data)
	if err != nil {
		rd.reject(subject, seq, err)
		return nil
	}
	rec.Seq = seq
	if !rec.Expires.IsZero() && rec.Expires.UnixMilli() <= rd.nowMs {
		rd.st.Expired++
		return nil
	}
	rd.st.Records++
	if rec.Deleted {
		rd.st.Deleted++
	}
	return r.fn(rec)
}

// Reasons a replay rejects a message for: the values of the reason label
// of RecordMetrics.Rejected.
const (
	reasonSubject = iota
	reasonHeader
	reasonKey
	reasonSeal
	reasonSnapshot
	reasons
)

var reasonNames = [reasons]string{"subject", "header", "key", "seal", "snapshot"}

func reasonOf(err error) int {
	switch {
	case errors.Is(err, errBadSubject):
		return reasonSubject
	case errors.Is(err, ErrRecordKeyUnknown):
		return reasonKey
	case errors.Is(err, ErrRecordSeal):
		return reasonSeal
	case errors.Is(err, ErrBadSnapshot):
		return reasonSnapshot
	}
	return reasonHeader
}

// reject logs and counts a bad message. The caller holds rd.mu.
func (rd *replayReader) reject(subject string, seq uint64, err error) {
	r := rd.r
	rd.st.Rejected++
	reason := reasonOf(err)
	rd.reasons[reason]++
	r.l.metrics.Rejected.WithLabelValues(reasonNames[reason]).Inc()
	switch n := r.rejected.Add(1); {
	case n <= rejectLogMax:
		r.l.c.Log.Warn("record replay: skipped a bad message", "ns", r.ns, "seq", seq,
			"subject", clipString(subject), "reason", reasonNames[reason], "err", err)
	case n == rejectLogMax+1:
		r.l.c.Log.Warn("record replay: more bad messages; counting them without logging each", "ns", r.ns)
	}
}

// rekeyWindow is how many rewrites Rekey keeps unacknowledged.
const rekeyWindow = 256

// Rekey rewrites every live record of namespace ns that is not sealed
// with the current key (sealed with CACHEBUS_RECORD_KEY_PREVIOUS, or in
// clear) under the current key, and returns how many it rewrote. Each
// rewrite expects the record's key to hold the same message still, so a
// write made meanwhile (sealed with the current key already) is never
// overwritten with an older value. Records no key opens are left as they
// are and reported in the error, which wraps ErrRecordKeyUnknown or
// ErrRecordSeal. It reads the log alone and drops the namespace's
// snapshots, which hold values sealed as they were. progress is Replay's.
func (l *RecordLog) Rekey(ctx context.Context, ns string, progress func(ReplayProgress)) (int, error) {
	cur := l.codec.seal.cur
	if cur == nil {
		return 0, errors.New("persistence: rekey: no CACHEBUS_RECORD_KEY to seal with")
	}
	var (
		rewritten int
		pending   []jetstream.PubAckFuture
	)
	wait := func() error {
		for _, f := range pending {
			select {
			case <-f.Ok():
				rewritten++
			case err := <-f.Err():
				if wrongLast(err) {
					continue // written again meanwhile, with the current key
				}
				return fmt.Errorf("persistence: rekey %s: %w", ns, err)
			case <-ctx.Done():
				return fmt.Errorf("persistence: rekey %s: %w", ns, ctx.Err())
			}
		}
		pending = pending[:0]
		return nil
	}
	st, reasons, err := l.replay(ctx, ns, partition.All(), func(r Record) error {
		if r.Deleted || r.KeyID == cur.id {
			return nil
		}
		msg, opts, err := l.message(r, time.Now())
		if err != nil {
			return err
		}
		f, err := l.c.JS.PublishMsgAsync(msg, append(opts, jetstream.WithExpectLastSequencePerSubject(r.Seq))...)
		if err != nil {
			return fmt.Errorf("persistence: rekey %s: %w", ns, err)
		}
		pending = append(pending, f)
		if len(pending) >= rekeyWindow {
			return wait()
		}
		return nil
	}, progress, replayOptions{logOnly: true})
	if err == nil {
		err = wait()
	}
	if err == nil {
		// Snapshots keep values as the log had them: sealed under the
		// old key. The next Compact builds them anew from the log.
		err = l.DropSnapshots(ctx, ns)
	}
	if err != nil {
		return rewritten, err
	}
	var unopened error
	l.c.Log.Info("records rekeyed", "ns", ns, "rewritten", rewritten, "kid", cur.id, "rejected", st.Rejected)
	if st.Rejected > 0 {
		switch {
		case reasons[reasonKey] > 0:
			unopened = ErrRecordKeyUnknown
		case reasons[reasonSeal] > 0:
			unopened = ErrRecordSeal
		default:
			unopened = ErrBadRecord
		}
		return rewritten, fmt.Errorf("persistence: rekey %s: %d messages could not be read and keep their old seal (see the log): %w",
			ns, st.Rejected, unopened)
	}
	return rewritten, nil
}
