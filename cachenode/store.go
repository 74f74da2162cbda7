package cachenode

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/allegro/bigcache/v3"
	"github.com/cachebus/cachebus/bus"
)

// Lookup says what Get found.
type Lookup uint8

// Results of a Get.
const (
	// Miss: no entry, or one that was expired or flushed.
	Miss Lookup = iota
	// Hit: a fresh entry.
	Hit
	// Stale: an entry past its TTL but within the stale grace, kept for
	// fallback and stale-if-error.
	Stale
)

func (l Lookup) String() string {
	switch l {
	case Hit:
		return "hit"
	case Stale:
		return "stale"
	}
	return "miss"
}

// StoreConfig bounds every namespace of a Store.
type StoreConfig struct {
	// MaxMB is the memory bound of one namespace, in MiB (bigcache's hard
	// limit; the oldest entries are overwritten past it). Default 64.
	MaxMB int
	// MaxTTL caps every entry's life, stale grace excluded. Default 1h.
	MaxTTL time.Duration
	// DefaultTTL applies when Set is given no TTL. Default MaxTTL.
	DefaultTTL time.Duration
	// StaleGrace is how long an entry past its TTL is kept to be served
	// stale. Default 0 (none).
	StaleGrace time.Duration
	// Shards of each bigcache (a power of two). Default 256.
	Shards int
	// Log receives background sweep errors; nil discards them.
	Log *slog.Logger
}

func (c *StoreConfig) setDefaults() {
	if c.MaxMB <= 0 {
		c.MaxMB = 64
	}
	if c.MaxTTL <= 0 {
		c.MaxTTL = time.Hour
	}
	if c.DefaultTTL <= 0 || c.DefaultTTL > c.MaxTTL {
		c.DefaultTTL = c.MaxTTL
	}
	if c.Shards <= 0 {
		c.Shards = 256
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
}

// Store keeps values by namespace and key in bigcache, with a TTL per
// entry, tags, and expiry by key, prefix, tag or whole namespace.
//
// Flushes never walk the entries while the caller waits: every entry
// carries the store-wide sequence at which it was written, and a flush
// records the sequence at which it happened. A read drops an entry written
// before a flush that covers it. A background sweep then deletes what the
// flush covers and forgets the record; a namespace flush swaps in a new
// cache holding only what was written after it.
type Store struct {
	cfg    StoreConfig
	seq    atomic.Uint64
	mu     sync.Mutex                        // serialises namespace creation
	spaces atomic.Pointer[map[string]*space] // copy-on-write: reads take no lock
	closed chan struct{}
	wg     sync.WaitGroup
}

// NewStore returns an empty store.
func NewStore(cfg StoreConfig) *Store {
	cfg.setDefaults()
	s := &Store{cfg: cfg, closed: make(chan struct{})}
	startClock()
	m := map[string]*space{}
	s.spaces.Store(&m)
	return s
}

// space is one namespace.
type space struct {
	name  string
	cache atomic.Pointer[bigcache.BigCache]
	// flushedAt is the sequence of the last whole-namespace flush.
	flushedAt atomic.Uint64
	// rules are the prefix and tag flushes not yet swept; nil when none.
	rules   atomic.Pointer[flushRules]
	rulesMu sync.Mutex
	sweep   chan struct{}
	// swapMu is held shared by writers and exclusively by a swap, so no
	// write lands in a cache the swap is replacing.
	swapMu sync.RWMutex
	// rulesAt is the sequence of the last prefix or tag flush, and
	// deletedAt, by a stripe of the key's hash, that of the last Delete of
	// a key in the stripe: what SetIfUnexpired checks (see there).
	rulesAt   atomic.Uint64
	deletedAt [deleteStripes]atomic.Uint64
}

// deleteStripes is how many stripes of keys record their last Delete: a
// Delete of one key makes a SetIfUnexpired of another key of its stripe
// that began before it skip the store, one in 1024.
const deleteStripes = 1024

// flushRules is immutable once published; a change publishes a copy.
type flushRules struct {
	prefixes []prefixRule
	tags     map[string]uint64
}

type prefixRule struct {
	prefix string
	seq    uint64
}

// Entry layout: deadline (unix ns, 8) | hard deadline (8) | seq (8) |
// tag count (2) | per tag: length (2), bytes | value.
const headerLen = 26

func (s *Store) newCache() (*bigcache.BigCache, error) {
	bc := bigcache.Config{
		Shards:             s.cfg.Shards,
		LifeWindow:         s.cfg.MaxTTL + s.cfg.StaleGrace,
		CleanWindow:        time.Minute,
		MaxEntriesInWindow: s.cfg.Shards * 64,
		MaxEntrySize:       256,
		HardMaxCacheSize:   s.cfg.MaxMB,
		Hasher:             fnv64{},
	}
	return bigcache.New(context.Background(), bc)
}

// fnv64 is bigcache's default hasher, inlined so it allocates nothing.
type fnv64 struct{}

func (fnv64) Sum64(key string) uint64 {
	const offset, prime = 14695981039346656037, 1099511628211
	h := uint64(offset)
	for i := 0; i < len(key); i++ {
		h ^= uint64(key[i])
		h *= prime
	}
	return h
}

// space returns namespace ns, creating it on first use.
func (s *Store) space(ns string) (*space, error) {
	if sp := (*s.spaces.Load())[ns]; sp != nil {
		return sp, nil
	}
	if err := bus.CheckNamespace(ns); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	cur := *s.spaces.Load()
	if sp := cur[ns]; sp != nil {
		return sp, nil
	}
	c, err := s.newCache()
	if err != nil {
		return nil, fmt.Errorf("cachenode: namespace %s: %w", ns, err)
	}
	sp := &space{name: ns, sweep: make(chan struct{}, 1)}
	sp.cache.Store(c)
	next := maps.Clone(cur)
	next[ns] = sp
	s.spaces.Store(&next)
	s.wg.Add(1)
	go s.sweeper(sp)
	return sp, nil
}

// lookup returns namespace ns if it exists, without creating it.
func (s *Store) lookup(ns string) *space { return (*s.spaces.Load())[ns] }

// Namespaces lists the namespaces that hold or held entries.
func (s *Store) Namespaces() []string {
	m := *s.spaces.Load()
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// ErrValueTooLarge is returned by Set for an entry that cannot fit.
var ErrValueTooLarge = errors.New("cachenode: value too large")

// Set stores value under ns/key for ttl (DefaultTTL when zero, capped at
// MaxTTL) with optional tags.
func (s *Store) Set(ns, key string, value []byte, ttl time.Duration, tags ...string) error {
	if ttl <= 0 {
		ttl = s.cfg.DefaultTTL
	}
	return s.SetUntil(ns, key, value, now()+int64(min(ttl, s.cfg.MaxTTL)), tags...)
}

// SetUntil stores value under ns/key until deadline (Unix nanoseconds),
// capped at MaxTTL from now, with optional tags: for a copy that must
// expire when its original does.
func (s *Store) SetUntil(ns, key string, value []byte, deadline int64, tags ...string) error {
	if key == "" {
		return errors.New("cachenode: empty key")
	}
	sp, err := s.space(ns)
	if err != nil {
		return err
	}
	deadline = min(deadline, now()+int64(s.cfg.MaxTTL))
	size := headerLen + len(value)
	for _, t := range tags {
		if len(t) > 0xffff {
			return fmt.Errorf("cachenode: tag of %d bytes", len(t))
		}
		size += 2 + len(t)
	}
	if len(tags) > 0xffff || size > s.MaxEntry() {
		return fmt.Errorf("%w: %d bytes in namespace %s (limit %d)", ErrValueTooLarge, size, ns, s.MaxEntry())
	}
	bufp := entryPool.Get().(*[]byte)
	buf := (*bufp)[:0]
	if cap(buf) < size {
		buf = make([]byte, 0, size)
	}
	buf = binary.LittleEndian.AppendUint64(buf, uint64(deadline))
	buf = binary.LittleEndian.AppendUint64(buf, uint64(deadline+int64(s.cfg.StaleGrace)))
	buf = binary.LittleEndian.AppendUint64(buf, s.seq.Add(1))
	buf = binary.LittleEndian.AppendUint16(buf, uint16(len(tags)))
	for _, t := range tags {
		buf = binary.LittleEndian.AppendUint16(buf, uint16(len(t)))
		buf = append(buf, t...)
	}
	buf = append(buf, value...)
	sp.swapMu.RLock()
	err = sp.cache.Load().Set(key, buf) // bigcache copies the entry
	sp.swapMu.RUnlock()
	if cap(buf) <= 64<<10 {
		*bufp = buf
		entryPool.Put(bufp)
	}
	if err != nil {
		return fmt.Errorf("cachenode: set %s/%s: %w", ns, key, err)
	}
	return nil
}

// Mark returns the point reached in the store's sequence of writes and
// expires, for SetIfUnexpired; it creates namespace ns, so that an expire
// of ns that comes after it is recorded.
func (s *Store) Mark(ns string) (uint64, error) {
	if _, err := s.space(ns); err != nil {
		return 0, err
	}
	return s.seq.Load(), nil
}

// SetIfUnexpired is Set for a value read from its source after mark was
// taken: it stores nothing, and reports false, when an expire that may
// cover ns/key (a Delete of the key or of one of its stripe, a prefix or
// tag flush of ns, a flush of ns) came after mark. Without it, a value
// read just before the source changed, and stored just after the expire
// that followed the change went by, would be served stale until its TTL.
func (s *Store) SetIfUnexpired(ns, key string, value []byte, ttl time.Duration, mark uint64, tags ...string) (bool, error) {
	sp, err := s.space(ns)
	if err != nil {
		return false, err
	}
	if sp.expiredSince(key, mark) {
		return false, nil
	}
	if beforeUnexpiredSet != nil {
		beforeUnexpiredSet()
	}
	if err := s.Set(ns, key, value, ttl, tags...); err != nil {
		return false, err
	}
	// An expire may have come between the check and the write. Each
	// expire records its sequence before it takes effect, so either this
	// second check sees it, or the entry was written before the expire
	// recorded it: a Delete then deletes the entry, a flush covers it.
	if sp.expiredSince(key, mark) {
		sp.swapMu.RLock()
		_ = sp.cache.Load().Delete(key)
		sp.swapMu.RUnlock()
		return false, nil
	}
	return true, nil
}

// beforeUnexpiredSet, set by tests, runs between SetIfUnexpired's first
// check and its write: where an expire can slip in.
var beforeUnexpiredSet func()

// expiredSince reports whether an expire that may cover key came after
// sequence mark.
func (sp *space) expiredSince(key string, mark uint64) bool {
	return sp.flushedAt.Load() > mark || sp.rulesAt.Load() > mark || sp.deletedOf(key).Load() > mark
}

// deletedOf is the record of the last Delete of key's stripe.
func (sp *space) deletedOf(key string) *atomic.Uint64 {
	return &sp.deletedAt[fnv64{}.Sum64(key)%deleteStripes]
}

// raise sets v to seq unless it holds a later one already: two Deletes of
// one stripe may record theirs out of order.
func raise(v *atomic.Uint64, seq uint64) {
	for {
		cur := v.Load()
		if cur >= seq || v.CompareAndSwap(cur, seq) {
			return
		}
	}
}

// MaxEntry is the largest entry a namespace takes, header and tags
// included: half of one bigcache shard, because bigcache refuses an entry
// its shard's queue cannot grow around, which happens well before the
// entry is the shard's whole size.
func (s *Store) MaxEntry() int { return s.cfg.MaxMB << 20 / s.cfg.Shards / 2 }

// Overhead is how many bytes an entry adds to its value and tags.
const Overhead = headerLen

var entryPool = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

// Get returns the value of ns/key and whether it is fresh or stale. The
// returned slice is the caller's own.
func (s *Store) Get(ns, key string) ([]byte, Lookup) {
	v, _, l := s.GetUntil(ns, key)
	return v, l
}

// GetUntil is Get that also returns the entry's deadline (Unix
// nanoseconds): when it stops being fresh.
func (s *Store) GetUntil(ns, key string) ([]byte, int64, Lookup) {
	sp := s.lookup(ns)
	if sp == nil {
		return nil, 0, Miss
	}
	rules := sp.rules.Load() // before the entry: see check
	entry, err := sp.cache.Load().Get(key)
	if err != nil {
		return nil, 0, Miss
	}
	h, l := sp.check(key, entry, now(), rules)
	if l == Miss {
		return nil, 0, Miss
	}
	return entry[h.valueAt:], h.deadline, l
}

// check says what entry, stored under key, is worth at t. before is the
// namespace's flush rules as loaded before the entry was read: a sweep
// deletes what a rule covers and only then forgets the rule, so an entry
// read before the sweep deleted it is checked against the rule even when
// it is forgotten by now. The current rules add those made since.
func (sp *space) check(key string, entry []byte, t int64, before *flushRules) (entryHeader, Lookup) {
	h, ok := parseEntry(entry)
	if !ok || h.seq <= sp.flushedAt.Load() {
		return h, Miss
	}
	if before != nil && before.covers(key, h) {
		return h, Miss
	}
	if r := sp.rules.Load(); r != nil && r != before && r.covers(key, h) {
		return h, Miss
	}
	switch {
	case t < h.deadline:
		return h, Hit
	case t < h.hard:
		return h, Stale
	}
	return h, Miss
}

// Range calls fn with every entry of ns that Get would return (fresh or
// stale), in no particular order, until fn returns false. Entries written
// while it runs may or may not be seen. value is fn's own.
func (s *Store) Range(ns string, fn func(key string, value []byte, deadline int64) bool) {
	sp := s.lookup(ns)
	if sp == nil {
		return
	}
	t := now()
	rules := sp.rules.Load() // before any entry: see check
	it := sp.cache.Load().Iterator()
	for it.SetNext() {
		ei, err := it.Value()
		if err != nil {
			continue
		}
		entry := ei.Value()
		h, l := sp.check(ei.Key(), entry, t, rules)
		if l == Miss {
			continue
		}
		if !fn(ei.Key(), entry[h.valueAt:], h.deadline) {
			return
		}
	}
}

// entryHeader is what parseEntry reads in front of a stored value.
type entryHeader struct {
	deadline, hard int64 // unix ns: end of fresh, end of stale grace
	seq            uint64
	ntags          int
	tags           []byte // the encoded tags: per tag, length (2) and bytes
	valueAt        int
}

// parseEntry reads an entry's header; ok is false for a truncated one.
func parseEntry(entry []byte) (h entryHeader, ok bool) {
	if len(entry) < headerLen {
		return h, false
	}
	h.deadline = int64(binary.LittleEndian.Uint64(entry[0:]))
	h.hard = int64(binary.LittleEndian.Uint64(entry[8:]))
	h.seq = binary.LittleEndian.Uint64(entry[16:])
	h.ntags = int(binary.LittleEndian.Uint16(entry[24:]))
	end := headerLen
	for range h.ntags {
		if end+2 > len(entry) {
			return h, false
		}
		end += 2 + int(binary.LittleEndian.Uint16(entry[end:]))
	}
	if end > len(entry) {
		return h, false
	}
	h.tags, h.valueAt = entry[headerLen:end], end
	return h, true
}

// covers reports whether a flush recorded after the entry was written
// drops it.
func (r *flushRules) covers(key string, h entryHeader) bool {
	for _, p := range r.prefixes {
		if h.seq <= p.seq && strings.HasPrefix(key, p.prefix) {
			return true
		}
	}
	if len(r.tags) == 0 {
		return false
	}
	tags := h.tags
	for range h.ntags {
		n := int(binary.LittleEndian.Uint16(tags))
		if at, ok := r.tags[string(tags[2:2+n])]; ok && h.seq <= at {
			return true
		}
		tags = tags[2+n:]
	}
	return false
}

// Delete removes ns/key.
func (s *Store) Delete(ns, key string) {
	if sp := s.lookup(ns); sp != nil {
		// Recorded first: see SetIfUnexpired.
		raise(sp.deletedOf(key), s.seq.Add(1))
		sp.swapMu.RLock()
		_ = sp.cache.Load().Delete(key)
		sp.swapMu.RUnlock()
	}
}

// ExpirePrefix drops every entry of ns whose key starts with prefix.
func (s *Store) ExpirePrefix(ns, prefix string) {
	if prefix == "" {
		s.Flush(ns)
		return
	}
	s.addRule(ns, func(r *flushRules, seq uint64) {
		r.prefixes = append(r.prefixes, prefixRule{prefix, seq})
	})
}

// ExpireTag drops every entry of ns tagged tag.
func (s *Store) ExpireTag(ns, tag string) {
	s.addRule(ns, func(r *flushRules, seq uint64) { r.tags[tag] = seq })
}

func (s *Store) addRule(ns string, add func(*flushRules, uint64)) {
	sp := s.lookup(ns)
	if sp == nil {
		return // nothing stored, nothing to drop
	}
	sp.rulesMu.Lock()
	// Recorded before the rule's own sequence is taken: see SetIfUnexpired.
	sp.rulesAt.Store(s.seq.Add(1))
	next := &flushRules{tags: map[string]uint64{}}
	if cur := sp.rules.Load(); cur != nil {
		next.prefixes = append(next.prefixes, cur.prefixes...)
		maps.Copy(next.tags, cur.tags)
	}
	add(next, s.seq.Add(1))
	sp.rules.Store(next)
	sp.rulesMu.Unlock()
	select {
	case sp.sweep <- struct{}{}:
	default:
	}
}

// Flush drops every entry of namespace ns at once; the memory is released
// in the background.
func (s *Store) Flush(ns string) {
	sp := s.lookup(ns)
	if sp == nil {
		return
	}
	raise(&sp.flushedAt, s.seq.Add(1))
	select {
	case sp.sweep <- struct{}{}:
	default:
	}
}

// FlushAll drops every entry of every namespace.
func (s *Store) FlushAll() {
	for _, ns := range s.Namespaces() {
		s.Flush(ns)
	}
}

// Apply applies an expire from the bus to namespace ns.
func (s *Store) Apply(ns string, e bus.Expire) {
	if e.All {
		s.Flush(ns)
		return
	}
	for _, k := range e.Keys {
		s.Delete(ns, k)
	}
	for _, p := range e.Prefixes {
		s.ExpirePrefix(ns, p)
	}
	for _, t := range e.Tags {
		s.ExpireTag(ns, t)
	}
}

// NamespaceStats are the size figures of one namespace.
type NamespaceStats struct {
	Entries int
	Bytes   int
}

// Stats returns the entries and bytes held by ns, flushed ones not yet
// swept included.
func (s *Store) Stats(ns string) NamespaceStats {
	sp := s.lookup(ns)
	if sp == nil {
		return NamespaceStats{}
	}
	c := sp.cache.Load()
	return NamespaceStats{Entries: c.Len(), Bytes: c.Capacity()}
}

// Close stops the background sweeps and releases every namespace.
func (s *Store) Close() {
	select {
	case <-s.closed:
		return
	default:
	}
	close(s.closed)
	s.wg.Wait()
	stopClock()
	for _, sp := range *s.spaces.Load() {
		_ = sp.cache.Load().Close()
	}
}

// sweeper does the physical work of flushes for one namespace, off the
// callers' and readers' paths.
func (s *Store) sweeper(sp *space) {
	defer s.wg.Done()
	var swappedAt uint64
	for {
		select {
		case <-s.closed:
			return
		case <-sp.sweep:
		}
		if at := sp.flushedAt.Load(); at > swappedAt {
			s.swap(sp)
			swappedAt = at
		}
		if r := sp.rules.Load(); r != nil {
			s.sweepRules(sp, r)
		}
	}
}

// swap replaces a flushed namespace's cache with one holding only what
// was written after the flush. Writers wait while it copies those, so
// none is lost, and readers keep reading the old cache until the new one
// is complete: a write acknowledged after a flush stays readable.
func (s *Store) swap(sp *space) {
	c, err := s.newCache()
	if err != nil {
		s.cfg.Log.Error("namespace flush: new cache", "ns", sp.name, "err", err)
		return
	}
	sp.swapMu.Lock()
	old := sp.cache.Load()
	at := sp.flushedAt.Load()
	it := old.Iterator()
	for it.SetNext() {
		ei, err := it.Value()
		if err != nil {
			continue
		}
		if h, ok := parseEntry(ei.Value()); ok && h.seq > at {
			_ = c.Set(ei.Key(), ei.Value())
		}
	}
	sp.cache.Store(c)
	sp.swapMu.Unlock()
	_ = old.Close()
}

// sweepRules deletes the entries that rules r cover, then forgets the
// rules it has applied (newer ones stay).
func (s *Store) sweepRules(sp *space, r *flushRules) {
	it := sp.cache.Load().Iterator()
	for it.SetNext() {
		ei, err := it.Value()
		if err != nil {
			continue
		}
		if h, ok := parseEntry(ei.Value()); ok && r.covers(ei.Key(), h) {
			_ = sp.cache.Load().Delete(ei.Key())
		}
	}
	sp.rulesMu.Lock()
	defer sp.rulesMu.Unlock()
	cur := sp.rules.Load()
	next := &flushRules{tags: map[string]uint64{}}
	for _, p := range cur.prefixes {
		if !slices.Contains(r.prefixes, p) {
			next.prefixes = append(next.prefixes, p)
		}
	}
	for t, at := range cur.tags {
		if r.tags[t] != at {
			next.tags[t] = at
		}
	}
	if len(next.prefixes) == 0 && len(next.tags) == 0 {
		next = nil
	}
	sp.rules.Store(next)
}
