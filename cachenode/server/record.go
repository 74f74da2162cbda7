package server

import (
	"encoding/binary"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cachebus/cachebus/cachenode"
	"github.com/cachebus/cachebus/cachenode/wire"
)

// A record is kept in the node's store as an envelope in front of its
// value: version (8) | writer (8) | flags (1) | value. The envelope is what
// orders concurrent and replicated writes: the higher (version, writer)
// wins everywhere, so primaries and backups agree whatever order writes
// reach them in.
const envelopeLen = 17

const flagDeleted = 1 << 0

// tombstoneTTL is how long a delete is remembered, so that an older write
// arriving late (reordered replication, a handover in flight) cannot bring
// the record back.
const tombstoneTTL = time.Minute

// envelope is a record's header as stored.
type envelope struct {
	version, writer uint64
	deleted         bool
}

func parseEnvelope(v []byte) (envelope, []byte, bool) {
	if len(v) < envelopeLen {
		return envelope{}, nil, false
	}
	return envelope{
		version: binary.LittleEndian.Uint64(v),
		writer:  binary.LittleEndian.Uint64(v[8:]),
		deleted: v[16]&flagDeleted != 0,
	}, v[envelopeLen:], true
}

func appendEnvelope(buf []byte, e *wire.Entry) []byte {
	buf = binary.LittleEndian.AppendUint64(buf, e.Version)
	buf = binary.LittleEndian.AppendUint64(buf, e.Writer)
	var f byte
	if e.Deleted {
		f = flagDeleted
	}
	return append(append(buf, f), e.Value...)
}

// records is the node's local record store: the shared bigcache-backed
// Store with an envelope per record and a lock per key stripe, so that
// reading a record's version and writing a newer one is one step.
type records struct {
	store   *cachenode.Store
	stripes [256]sync.Mutex
	clock   hlc
}

func stripe(ns, key string) uint8 {
	h := uint32(2166136261)
	for i := 0; i < len(ns); i++ {
		h = (h ^ uint32(ns[i])) * 16777619
	}
	for i := 0; i < len(key); i++ {
		h = (h ^ uint32(key[i])) * 16777619
	}
	return uint8(h ^ h>>8 ^ h>>16 ^ h>>24)
}

// get returns a record as a reply item; a tombstone is not found, and a
// stale record is found only when stale is allowed.
func (r *records) get(ns, key string, allowStale bool) wire.Item {
	v, deadline, l := r.store.GetUntil(ns, key)
	if l == cachenode.Miss || (l == cachenode.Stale && !allowStale) {
		return wire.Item{}
	}
	env, val, ok := parseEnvelope(v)
	if !ok || env.deleted {
		return wire.Item{}
	}
	return wire.Item{Found: true, Version: env.version, Expires: deadline / int64(time.Millisecond),
		Stale: l == cachenode.Stale, Value: val}
}

// current returns the version and writer of what is stored under ns/key,
// tombstones and stale records included; zero when nothing is.
func (r *records) current(ns, key string) (version, writer uint64) {
	v, _, l := r.store.GetUntil(ns, key)
	if l == cachenode.Miss {
		return 0, 0
	}
	env, _, ok := parseEnvelope(v)
	if !ok {
		return 0, 0
	}
	return env.version, env.writer
}

// write stores a new version of ns/key written here: e's Version is set
// above both the clock and the stored version. e.Deadline must be set.
func (r *records) write(e *wire.Entry) error {
	mu := &r.stripes[stripe(e.NS, e.Key)]
	mu.Lock()
	defer mu.Unlock()
	v, _ := r.current(e.NS, e.Key)
	e.Version = r.clock.next(v)
	return r.set(e)
}

// reserve returns the version a write of ns/key made here now gets, above
// both the clock and the stored version as write assigns it, and stores
// nothing: a long-term write takes its version first and is stored, with
// apply, only once the record log has acknowledged it.
func (r *records) reserve(ns, key string) uint64 {
	mu := &r.stripes[stripe(ns, key)]
	mu.Lock()
	defer mu.Unlock()
	v, _ := r.current(ns, key)
	return r.clock.next(v)
}

// apply stores a replicated or handed-over entry unless what is stored is
// newer; it reports whether it stored it.
func (r *records) apply(e *wire.Entry) (bool, error) {
	mu := &r.stripes[stripe(e.NS, e.Key)]
	mu.Lock()
	defer mu.Unlock()
	if v, w := r.current(e.NS, e.Key); (v != 0 || w != 0) && !e.Newer(v, w) {
		return false, nil
	}
	r.clock.observe(e.Version)
	return true, r.set(e)
}

func (r *records) set(e *wire.Entry) error {
	bufp := envPool.Get().(*[]byte)
	buf := appendEnvelope((*bufp)[:0], e)
	err := r.store.SetUntil(e.NS, e.Key, buf, e.Deadline)
	if cap(buf) <= 64<<10 {
		*bufp = buf
		envPool.Put(bufp)
	}
	if errors.Is(err, cachenode.ErrValueTooLarge) {
		return wire.Errorf(wire.CodeTooLarge, "record %s/%s does not fit the namespace's store (%d bytes, limit %d)",
			e.NS, e.Key, len(e.Value)+envelopeLen+cachenode.Overhead, r.store.MaxEntry())
	}
	return err
}

var envPool = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

// entry reads ns/key as stored (tombstones included) for a handover.
func entryOf(ns, key string, v []byte, deadline int64) (wire.Entry, bool) {
	env, val, ok := parseEnvelope(v)
	if !ok {
		return wire.Entry{}, false
	}
	return wire.Entry{NS: ns, Key: key, Version: env.version, Writer: env.writer,
		Deadline: deadline, Deleted: env.deleted, Value: val}, true
}

// hlc hands out record versions: nanoseconds of the wall clock, but always
// above any version handed out or seen before, so a node whose clock is
// behind its peer's still orders its writes after what it received.
type hlc struct{ last atomic.Uint64 }

func (c *hlc) next(above uint64) uint64 {
	for {
		last := c.last.Load()
		v := max(uint64(time.Now().UnixNano()), last+1, above+1)
		if c.last.CompareAndSwap(last, v) {
			return v
		}
	}
}

func (c *hlc) observe(v uint64) {
	for {
		last := c.last.Load()
		if v <= last || c.last.CompareAndSwap(last, v) {
			return
		}
	}
}
