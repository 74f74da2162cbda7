package lbgateway

// The response cache: a shared HTTP cache (RFC 9111) in front of the app
// pool, kept in the project's bigcache-backed cachenode.Store.
//
// A response is stored under its request URI as one binary entry: the
// status, its times and stale windows, the header fields ready to be
// copied into a response, and the body. A hit is one store Get, a decode
// that only checks lengths, and one pass over the header fields; the
// header map Entry.Header is built only when someone asks for it.
//
// A response with Vary is stored as a marker under the URI, naming the
// request headers it varies on and a generation, and as a variant under
// URI "\x00" generation ("\x00" value)*: a purge of the URI deletes the
// marker, and the next response stored there gets a new generation, so
// every earlier variant is unreachable at once, with no sweep. Prefix and
// tag purges are the store's own and cover variants as they cover any key.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/cachenode"
)

// CacheConfig configures the response cache.
type CacheConfig struct {
	// Prefixes are the request path prefixes whose responses are cached.
	// Empty: the cache is off (NewCache works, Cacheable says false).
	Prefixes []string
	// MaxMB bounds the cache's memory, in MiB. Default 64.
	MaxMB int
	// MaxObject is the largest body stored, in bytes. Default 1 MiB.
	MaxObject int
	// Keep is how long a copy is kept once stale, for
	// stale-while-revalidate, stale-if-error and fallback. Default 1h.
	Keep time.Duration
	// Log receives the cache's warnings; nil discards them.
	Log *slog.Logger
}

// Freshness is what Lookup found.
type Freshness uint8

// Results of a Lookup.
const (
	// Miss: nothing usable; ask a backend.
	Miss Freshness = iota
	// Fresh: serve the entry.
	Fresh
	// Revalidate: stale but within stale-while-revalidate; serve it and
	// refresh it in the background.
	Revalidate
	// Stale: past that but still kept; usable on a backend error while
	// UsableOnError says so, and in fallback always.
	Stale
)

// String names f for logs and metrics.
func (f Freshness) String() string {
	switch f {
	case Fresh:
		return "fresh"
	case Revalidate:
		return "revalidate"
	case Stale:
		return "stale"
	}
	return "miss"
}

// CacheStats are the response cache's counters and size.
type CacheStats struct {
	// Lookups by outcome.
	Hits        uint64 `json:"hits"`
	Revalidates uint64 `json:"revalidates"`
	Stales      uint64 `json:"stales"`
	Misses      uint64 `json:"misses"`
	// Stored and NotStored count the responses offered to Store.
	Stored    uint64 `json:"stored"`
	NotStored uint64 `json:"not_stored"`
	// Purges counts the expires applied.
	Purges uint64 `json:"purges"`
	// Corrupt counts entries that did not decode (each also a miss).
	Corrupt uint64 `json:"corrupt"`
	// Entries and Bytes are the store's figures, variants, Vary markers
	// and purged entries not yet swept included.
	Entries int `json:"entries"`
	Bytes   int `json:"bytes"`
}

// cacheNS is the one namespace of the cache's store.
const cacheNS = "http"

// maxLifetime caps a response's freshness and stale windows.
const maxLifetime = 400 * 24 * time.Hour

// headerRoom is the room kept in a store entry beside the largest body,
// for the entry's own fields, the header fields and the store's header.
const headerRoom = 64 << 10

// maxVary is the most request fields a response may vary on and still
// be stored; each name is 256 bytes at most.
const maxVary = 32

// storedStatus lists the statuses a response may be stored with.
func storedStatus(code int) bool {
	switch code {
	case 200, 203, 204, 300, 301, 308, 404, 410:
		return true
	}
	return false
}

// unstored are the header fields never kept in a stored copy: hop-by-hop
// ones, those for us alone, and those Write computes.
var unstored = map[string]bool{
	"Connection": true, "Keep-Alive": true, "Proxy-Connection": true, "Proxy-Authenticate": true,
	"Proxy-Authorization": true, "Te": true, "Trailer": true, "Transfer-Encoding": true, "Upgrade": true,
	"Age": true, "Surrogate-Control": true, "Surrogate-Key": true, "Content-Length": true,
	"Set-Cookie": true, "Cachebus-Expire": true, "X-Cache": true,
}

// kv is the part of cachenode.Store the cache uses.
type kv interface {
	Get(ns, key string) ([]byte, cachenode.Lookup)
	GetUntil(ns, key string) ([]byte, int64, cachenode.Lookup)
	Set(ns, key string, value []byte, ttl time.Duration, tags ...string) error
	Mark(ns string) (uint64, error)
	SetIfUnexpired(ns, key string, value []byte, ttl time.Duration, mark uint64, tags ...string) (bool, error)
	Delete(ns, key string)
	ExpirePrefix(ns, prefix string)
	ExpireTag(ns, tag string)
	Flush(ns string)
	Stats(ns string) cachenode.NamespaceStats
	Close()
}

// Cache is the gateway's response cache. Its methods are safe for
// concurrent use.
type Cache struct {
	prefixes  []string
	maxObject int
	keep      time.Duration
	log       *slog.Logger
	store     kv // nil when the cache is off

	gen       atomic.Uint64 // last Vary generation given
	keyPurges atomic.Uint64 // purges by key, for Store to notice one racing it

	// hits is alone on its cache line: every hit adds to it.
	_           [64]byte
	hits        atomic.Uint64
	_           [56]byte
	revalidates atomic.Uint64
	stales      atomic.Uint64
	misses      atomic.Uint64
	stored      atomic.Uint64
	notStored   atomic.Uint64
	purges      atomic.Uint64
	corrupt     atomic.Uint64
}

// NewCache returns a response cache. It fails when a prefix does not
// start with "/" or when MaxMB is too small to hold an object of
// MaxObject bytes.
func NewCache(cfg CacheConfig) (*Cache, error) {
	if cfg.MaxMB <= 0 {
		cfg.MaxMB = 64
	}
	if cfg.MaxObject <= 0 {
		cfg.MaxObject = 1 << 20
	}
	if cfg.Keep <= 0 {
		cfg.Keep = time.Hour
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	for _, p := range cfg.Prefixes {
		if !strings.HasPrefix(p, "/") {
			return nil, fmt.Errorf("lbgateway: cache prefix %q must start with /", p)
		}
	}
	c := &Cache{prefixes: slices.Clone(cfg.Prefixes), maxObject: cfg.MaxObject,
		keep: min(cfg.Keep, maxLifetime), log: cfg.Log}
	if len(c.prefixes) == 0 {
		return c, nil
	}
	// The store takes entries up to half a shard: as many shards as keep
	// the largest object within that.
	shards := 256
	fits := func(n int) bool { return cfg.MaxMB<<20/n/2 >= cfg.MaxObject+headerRoom }
	for shards > 1 && !fits(shards) {
		shards /= 2
	}
	if !fits(shards) {
		return nil, fmt.Errorf("lbgateway: a cache of %d MiB cannot hold a %d-byte object: raise the memory bound to at least %d MiB or lower the largest object",
			cfg.MaxMB, cfg.MaxObject, (2*(cfg.MaxObject+headerRoom)+1<<20-1)>>20)
	}
	c.store = cachenode.NewStore(cachenode.StoreConfig{
		MaxMB:  cfg.MaxMB,
		MaxTTL: 2*maxLifetime + c.keep,
		Shards: shards,
		Log:    cfg.Log,
	})
	return c, nil
}

// Close releases the cache's memory.
func (c *Cache) Close() {
	if c.store != nil {
		c.store.Close()
	}
}

// Cacheable says whether r may be answered from the cache and its
// response stored: a GET or HEAD under one of the prefixes, without
// Authorization, whose Cache-Control has no no-store.
func (c *Cache) Cacheable(r *http.Request) bool {
	if c.store == nil || (r.Method != http.MethodGet && r.Method != http.MethodHead && r.Method != "") {
		return false
	}
	under := false
	for _, p := range c.prefixes {
		if strings.HasPrefix(r.URL.Path, p) {
			under = true
			break
		}
	}
	if !under {
		return false
	}
	if _, ok := r.Header["Authorization"]; ok {
		return false
	}
	if v, ok := r.Header["Cache-Control"]; ok && parseCacheControlLines(v).NoStore {
		return false
	}
	return true
}

// refusesCached says whether r's Cache-Control asks for an answer from
// the origin: no-cache or max-age=0.
func refusesCached(r *http.Request) bool {
	v, ok := r.Header["Cache-Control"]
	if !ok {
		return false
	}
	cc := parseCacheControlLines(v)
	return cc.NoCache || (cc.HasMaxAge && cc.MaxAge == 0)
}

// Lookup finds the stored response for r (a request Cacheable accepts)
// and says how fresh it is at now. A HEAD is answered from the GET's
// entry. When r's Cache-Control has no-cache or max-age=0, it returns
// Miss, with the entry it found if any: it must not be served as a hit,
// but may still be used on a backend error or in fallback.
func (c *Cache) Lookup(r *http.Request, now time.Time) (*Entry, Freshness) {
	if c.store == nil {
		return nil, Miss
	}
	key := r.URL.RequestURI()
	raw, l := c.store.Get(cacheNS, key)
	if l == cachenode.Miss {
		c.misses.Add(1)
		return nil, Miss
	}
	if len(raw) > 0 && raw[0] == markerVersion {
		vkey, err := variantKey(key, raw, r.Header)
		if err != nil {
			c.corruptAt(key, err)
			return nil, Miss
		}
		key = vkey
		if raw, l = c.store.Get(cacheNS, key); l == cachenode.Miss {
			c.misses.Add(1)
			return nil, Miss
		}
	}
	e, err := decodeEntry(raw)
	if err != nil {
		c.corruptAt(key, err)
		return nil, Miss
	}
	if refusesCached(r) {
		c.misses.Add(1)
		return e, Miss
	}
	switch {
	case now.Before(e.FreshUntil):
		c.hits.Add(1)
		return e, Fresh
	case now.Before(e.FreshUntil.Add(e.SWR)):
		c.revalidates.Add(1)
		return e, Revalidate
	}
	c.stales.Add(1)
	return e, Stale
}

// corruptAt drops an entry that does not decode and counts it.
func (c *Cache) corruptAt(key string, err error) {
	c.corrupt.Add(1)
	c.misses.Add(1)
	c.store.Delete(cacheNS, key)
	c.log.Warn("response cache: corrupt entry dropped", "key", key, "err", err)
}

// Store keeps the response to r when a shared cache may: r is a GET that
// Cacheable accepts, the status is one of 200, 203, 204, 300, 301, 308,
// 404 and 410, the response has no Set-Cookie, no "Vary: *", no
// no-store, private or no-cache, and an explicit freshness
// (Surrogate-Control max-age, then s-maxage, then max-age, then Expires
// minus Date). body is the complete body. It says whether it stored the
// response; h is not modified.
func (c *Cache) Store(r *http.Request, status int, h http.Header, body []byte, now time.Time) bool {
	return c.StoreSince(r, c.Mark(), status, h, body, now)
}

// Mark returns the point reached in the cache's purges, for StoreSince:
// take it before asking the origin.
func (c *Cache) Mark() uint64 {
	if c.store == nil {
		return 0
	}
	mark, _ := c.store.Mark(cacheNS) // cacheNS is a valid namespace
	return mark
}

// StoreSince is Store for a response the origin was asked for after mark
// was taken: it stores nothing when a purge that may cover the URI came
// after mark, since the response may predate the change the purge was
// for, and would then be served stale until it expires.
func (c *Cache) StoreSince(r *http.Request, mark uint64, status int, h http.Header, body []byte, now time.Time) bool {
	if c.store == nil {
		return false
	}
	ok, why := c.store1(r, mark, status, h, body, now)
	if !ok {
		c.notStored.Add(1)
		c.log.Debug("response not cached", "uri", r.URL.RequestURI(), "status", status, "reason", why)
		return false
	}
	c.stored.Add(1)
	return true
}

// store1 is Store; when it stores nothing, why says the reason.
func (c *Cache) store1(r *http.Request, mark uint64, status int, h http.Header, body []byte, now time.Time) (bool, string) {
	switch {
	case r.Method == http.MethodHead:
		return false, "response to HEAD"
	case !c.Cacheable(r):
		return false, "request not cacheable"
	case !storedStatus(status):
		return false, "status " + strconv.Itoa(status)
	case len(body) > c.maxObject:
		return false, "body larger than the largest object"
	}
	if _, ok := h["Set-Cookie"]; ok {
		return false, "Set-Cookie"
	}
	vary, ok := varyNames(h)
	if !ok {
		return false, "Vary: *"
	}
	if len(vary) > maxVary || slices.ContainsFunc(vary, func(n string) bool { return len(n) > 256 }) {
		return false, "Vary names too many fields, or too long ones"
	}
	cc := parseCacheControlLines(h["Cache-Control"])
	sc := parseCacheControlLines(h["Surrogate-Control"])
	if cc.NoStore || cc.Private || cc.NoCache || sc.NoStore || sc.Private || sc.NoCache {
		return false, "Cache-Control forbids a shared cache"
	}
	var life time.Duration
	switch {
	case sc.HasMaxAge:
		life = sc.MaxAge
	case cc.HasSMaxAge:
		life = cc.SMaxAge
	case cc.HasMaxAge:
		life = cc.MaxAge
	case len(h["Expires"]) > 0:
		// An Expires that does not parse is in the past (RFC 9111 5.3).
		if exp, err := http.ParseTime(h.Get("Expires")); err == nil {
			date, err := http.ParseTime(h.Get("Date"))
			if err != nil {
				date = now
			}
			life = max(exp.Sub(date), 0)
		}
	default:
		return false, "no explicit freshness"
	}
	var age time.Duration
	if a, ok := deltaSeconds(strings.TrimSpace(h.Get("Age"))); ok {
		age = time.Duration(a) * time.Second
	}
	life = min(life, maxLifetime)
	swr, sie := sc.SWR, sc.SIE
	mustRevalidate := cc.MustRevalidate || sc.MustRevalidate
	if swr == 0 && !mustRevalidate {
		swr = cc.SWR
	}
	if sie == 0 && !mustRevalidate {
		sie = cc.SIE
	}
	swr, sie = min(swr, maxLifetime), min(sie, maxLifetime)
	if life <= age && swr == 0 && sie == 0 {
		return false, "fresh for no time"
	}
	freshUntil := now.Add(life - age)
	ttl := freshUntil.Sub(now) + max(c.keep, swr, sie)
	if ttl <= 0 {
		return false, "already past its keep window"
	}
	value, err := encodeEntry(status, now.Add(-age), freshUntil, swr, sie, h, body)
	if err != nil {
		return false, err.Error()
	}
	var tags []string
	if sk := h["Surrogate-Key"]; len(sk) > 0 {
		for _, v := range sk {
			tags = append(tags, strings.Fields(v)...)
		}
	}
	base := r.URL.RequestURI()
	if len(vary) == 0 {
		kept, err := c.store.SetIfUnexpired(cacheNS, base, value, ttl, mark, tags...)
		switch {
		case err != nil:
			return false, err.Error()
		case !kept:
			return false, "purged while the origin answered"
		}
		return true, ""
	}
	return c.storeVariant(r, mark, base, vary, value, ttl, tags)
}

// storeVariant stores a response with Vary: the variant, then the marker
// that leads to it.
func (c *Cache) storeVariant(r *http.Request, mark uint64, base string, vary []string, value []byte, ttl time.Duration, tags []string) (bool, string) {
	seq := c.keyPurges.Load()
	markerTTL := ttl
	var gen uint64
	if old, deadline, l := c.store.GetUntil(cacheNS, base); l != cachenode.Miss {
		if g, names, err := decodeMarker(old); err == nil && slices.Equal(names, vary) {
			gen = g
			markerTTL = max(ttl, time.Duration(deadline-time.Now().UnixNano()))
		}
	}
	if gen == 0 {
		gen = c.gen.Add(1)
	}
	marker := encodeMarker(gen, vary)
	vkey, err := variantKey(base, marker, r.Header)
	if err != nil {
		return false, err.Error()
	}
	if err := c.store.Set(cacheNS, vkey, value, ttl, tags...); err != nil {
		return false, err.Error()
	}
	// The marker leads to the variant: written only if no purge of the
	// URI came since mark, it leaves a variant the origin sent before a
	// purge unreachable.
	if kept, err := c.store.SetIfUnexpired(cacheNS, base, marker, markerTTL, mark); err != nil {
		return false, err.Error()
	} else if !kept {
		return false, "purged while the origin answered"
	}
	if c.keyPurges.Load() != seq {
		// A purge by key ran meanwhile and may have deleted the marker
		// this one replaced: drop it, so that no purged variant of its
		// generation comes back. (Prefix, tag and whole-cache purges
		// need no such care: the store drops what was written before
		// them, whatever is written after.)
		c.store.Delete(cacheNS, base)
		return false, "purged while being stored"
	}
	return true, ""
}

// varyNames returns the canonical, sorted, distinct field names of h's
// Vary; ok is false for "Vary: *".
func varyNames(h http.Header) (names []string, ok bool) {
	for _, v := range h["Vary"] {
		for f := range strings.SplitSeq(v, ",") {
			f = strings.TrimSpace(f)
			switch f {
			case "":
				continue
			case "*":
				return nil, false
			}
			names = append(names, http.CanonicalHeaderKey(f))
		}
	}
	slices.Sort(names)
	return slices.Compact(names), true
}

// Purge applies an expire from the bus: Keys are request URIs (path and
// query, as r.URL.RequestURI()), each with every Vary variant of it;
// Prefixes are URI prefixes; Tags are Surrogate-Key values; All empties
// the cache.
func (c *Cache) Purge(e bus.Expire) {
	if c.store == nil {
		return
	}
	c.purges.Add(1)
	if e.All {
		c.store.Flush(cacheNS)
		return
	}
	if len(e.Keys) > 0 {
		c.keyPurges.Add(1)
	}
	for _, k := range e.Keys {
		// Deleting a Vary marker makes its generation's variants
		// unreachable: the next marker stored has a new one.
		c.store.Delete(cacheNS, k)
	}
	for _, p := range e.Prefixes {
		c.store.ExpirePrefix(cacheNS, p)
	}
	for _, t := range e.Tags {
		c.store.ExpireTag(cacheNS, t)
	}
}

// Stats returns the cache's counters and size.
func (c *Cache) Stats() CacheStats {
	s := CacheStats{
		Hits: c.hits.Load(), Revalidates: c.revalidates.Load(), Stales: c.stales.Load(), Misses: c.misses.Load(),
		Stored: c.stored.Load(), NotStored: c.notStored.Load(), Purges: c.purges.Load(), Corrupt: c.corrupt.Load(),
	}
	if c.store != nil {
		ns := c.store.Stats(cacheNS)
		s.Entries, s.Bytes = ns.Entries, ns.Bytes
	}
	return s
}

// Entry is a stored response.
type Entry struct {
	// Status is the response's status code.
	Status int
	// Header holds the stored header fields once Headers has decoded
	// them. An entry from Lookup keeps them encoded, and Write copies
	// them straight into the response; when Header is set, Write sends
	// it instead.
	Header http.Header
	// Body is the whole body.
	Body []byte
	// Stored is when the response was made, as far as the cache knows:
	// when it was stored, less the Age it came with.
	Stored time.Time
	// FreshUntil is when it turns stale.
	FreshUntil time.Time
	// SWR and SIE are its stale-while-revalidate and stale-if-error
	// windows, from FreshUntil on.
	SWR, SIE time.Duration

	hdr            []byte // encoded header fields
	fields, values int
}

// Age is how old the entry is at now.
func (e *Entry) Age(now time.Time) time.Duration {
	return max(now.Sub(e.Stored), 0)
}

// UsableOnError says whether the entry may answer a request its backend
// failed at now: it is fresh, or stale within stale-if-error.
func (e *Entry) UsableOnError(now time.Time) bool {
	return now.Before(e.FreshUntil.Add(e.SIE))
}

// Headers returns the entry's header fields, decoding them into Header
// on first use.
func (e *Entry) Headers() http.Header {
	if e.Header != nil {
		return e.Header
	}
	h := make(http.Header, e.fields)
	e.eachField(0, func(name string, values []string) { h[name] = values })
	e.Header = h
	return h
}

// eachField calls fn with every encoded header field; values has no
// spare capacity, so an append to it copies. Every value is in one
// slice, with room for extra more after them: eachField returns that
// room.
func (e *Entry) eachField(extra int, fn func(name string, values []string)) []string {
	vals := make([]string, e.values+extra)
	if e.fields == 0 {
		return vals
	}
	s := string(e.hdr) // one allocation for every name and value
	p, n := 0, 0
	for range e.fields {
		nl := int(binary.LittleEndian.Uint16(e.hdr[p:]))
		name := s[p+2 : p+2+nl]
		p += 2 + nl
		cnt := int(binary.LittleEndian.Uint16(e.hdr[p:]))
		p += 2
		for i := range cnt {
			vl := int(binary.LittleEndian.Uint32(e.hdr[p:]))
			vals[n+i] = s[p+4 : p+4+vl]
			p += 4 + vl
		}
		fn(name, vals[n:n+cnt:n+cnt])
		n += cnt
	}
	return vals[e.values:]
}

// Write sends the entry in answer to r: its header fields, Age (whole
// seconds at now), X-Cache set to xcache (HIT, STALE), and its body
// unless r is a HEAD. For a 2xx entry it answers 304 Not Modified when
// r's If-None-Match names its ETag (weak comparison) or, without
// If-None-Match, when r's If-Modified-Since is not before its
// Last-Modified.
func (e *Entry) Write(w http.ResponseWriter, r *http.Request, xcache string, now time.Time) {
	h := w.Header()
	inm, conditional := r.Header["If-None-Match"]
	ims, hasIMS := r.Header["If-Modified-Since"]
	conditional = conditional || hasIMS
	var etag, lastModified string
	copyField := func(name string, values []string) {
		h[name] = values
		if conditional {
			switch name {
			case "Etag":
				etag = values[0]
			case "Last-Modified":
				lastModified = values[0]
			}
		}
	}
	var ours []string // Age and X-Cache
	if e.Header != nil {
		for k, v := range e.Header {
			if len(v) > 0 {
				copyField(k, slices.Clip(v))
			}
		}
		ours = make([]string, 2)
	} else {
		ours = e.eachField(2, copyField)
	}
	ours[0], ours[1] = strconv.FormatInt(int64(e.Age(now)/time.Second), 10), xcache
	h["Age"], h["X-Cache"] = ours[0:1:1], ours[1:2:2]

	status := e.Status
	if conditional && status >= 200 && status < 300 && notModified(inm, ims, etag, lastModified) {
		status = http.StatusNotModified
		delete(h, "Content-Length")
		delete(h, "Content-Type")
	}
	w.WriteHeader(status)
	if r.Method != http.MethodHead && bodyAllowed(status) && len(e.Body) > 0 {
		_, _ = w.Write(e.Body)
	}
}

// notModified evaluates If-None-Match, or without it If-Modified-Since,
// against the stored validators (RFC 9110 section 13.2.2).
func notModified(inm, ims []string, etag, lastModified string) bool {
	if len(inm) > 0 {
		return etagMatchWeak(inm, etag)
	}
	if len(ims) == 0 || lastModified == "" {
		return false
	}
	since, err := http.ParseTime(ims[0])
	if err != nil {
		return false
	}
	lm, err := http.ParseTime(lastModified)
	return err == nil && !lm.After(since)
}

// bodyAllowed says whether a response with status has a body.
func bodyAllowed(status int) bool {
	return status >= 200 && status != http.StatusNoContent && status != http.StatusNotModified
}

// Entry encoding, little endian:
//
//	version (1) | status (2) | stored, fresh until (Unix ns, 8 each) |
//	SWR, SIE (ns, 8 each) | fields (2) | values (2) | header bytes (4) |
//	per field: name length (2), name, value count (2),
//	           per value: length (4), value |
//	body
//
// A Vary marker: version (1) | generation (8) | names (2) |
// per name: length (2), name.
const (
	entryVersion  = 1
	markerVersion = 2
	entryHead     = 1 + 2 + 4*8 + 2 + 2 + 4
)

// errCorrupt is wrapped by every decoding error.
var errCorrupt = errors.New("lbgateway: corrupt cache entry")

// encodeEntry encodes a response for the store. The header fields are
// canonicalised and sorted, those in unstored and those Connection names
// are left out, and a Content-Length of the body is added when the
// status has one.
func encodeEntry(status int, stored, freshUntil time.Time, swr, sie time.Duration, h http.Header, body []byte) ([]byte, error) {
	var drop map[string]bool
	for _, v := range h["Connection"] {
		for f := range strings.SplitSeq(v, ",") {
			if f = strings.TrimSpace(f); f != "" {
				if drop == nil {
					drop = map[string]bool{}
				}
				drop[http.CanonicalHeaderKey(f)] = true
			}
		}
	}
	type field struct {
		name   string
		values []string
	}
	fields := make([]field, 0, len(h)+1)
	for k, v := range h {
		ck := http.CanonicalHeaderKey(k)
		if len(v) == 0 || unstored[ck] || drop[ck] {
			continue
		}
		fields = append(fields, field{ck, v})
	}
	if bodyAllowed(status) {
		fields = append(fields, field{"Content-Length", []string{strconv.Itoa(len(body))}})
	}
	slices.SortFunc(fields, func(a, b field) int { return strings.Compare(a.name, b.name) })
	// Merge fields whose names differ only before canonicalisation.
	merged := fields[:0]
	for _, f := range fields {
		if n := len(merged); n > 0 && merged[n-1].name == f.name {
			merged[n-1].values = append(slices.Clip(merged[n-1].values), f.values...)
			continue
		}
		merged = append(merged, f)
	}
	fields = merged

	size, values := 0, 0
	for _, f := range fields {
		if len(f.name) > 0xffff || len(f.values) > 0xffff {
			return nil, fmt.Errorf("lbgateway: header field %.40q too large to cache", f.name)
		}
		size += 4 + len(f.name)
		for _, v := range f.values {
			size += 4 + len(v)
		}
		values += len(f.values)
	}
	if len(fields) > 0xffff || values > 0xffff || size > 1<<30 {
		return nil, errors.New("lbgateway: header too large to cache")
	}
	b := make([]byte, 0, entryHead+size+len(body))
	b = append(b, entryVersion)
	b = binary.LittleEndian.AppendUint16(b, uint16(status))
	b = binary.LittleEndian.AppendUint64(b, uint64(stored.UnixNano()))
	b = binary.LittleEndian.AppendUint64(b, uint64(freshUntil.UnixNano()))
	b = binary.LittleEndian.AppendUint64(b, uint64(swr))
	b = binary.LittleEndian.AppendUint64(b, uint64(sie))
	b = binary.LittleEndian.AppendUint16(b, uint16(len(fields)))
	b = binary.LittleEndian.AppendUint16(b, uint16(values))
	b = binary.LittleEndian.AppendUint32(b, uint32(size))
	for _, f := range fields {
		b = binary.LittleEndian.AppendUint16(b, uint16(len(f.name)))
		b = append(b, f.name...)
		b = binary.LittleEndian.AppendUint16(b, uint16(len(f.values)))
		for _, v := range f.values {
			b = binary.LittleEndian.AppendUint32(b, uint32(len(v)))
			b = append(b, v...)
		}
	}
	return append(b, body...), nil
}

// decodeEntry decodes an entry encodeEntry made. It checks every length,
// so that nothing it returns can make Write or Headers index out of
// range; the header fields stay encoded until used, and Body is a slice
// of b.
func decodeEntry(b []byte) (*Entry, error) {
	if len(b) < entryHead {
		return nil, fmt.Errorf("%w: %d bytes", errCorrupt, len(b))
	}
	if b[0] != entryVersion {
		return nil, fmt.Errorf("%w: version %d", errCorrupt, b[0])
	}
	e := &Entry{Status: int(binary.LittleEndian.Uint16(b[1:]))}
	if e.Status < 100 || e.Status > 999 {
		return nil, fmt.Errorf("%w: status %d", errCorrupt, e.Status)
	}
	e.Stored = time.Unix(0, int64(binary.LittleEndian.Uint64(b[3:])))
	e.FreshUntil = time.Unix(0, int64(binary.LittleEndian.Uint64(b[11:])))
	e.SWR = time.Duration(binary.LittleEndian.Uint64(b[19:]))
	e.SIE = time.Duration(binary.LittleEndian.Uint64(b[27:]))
	if e.SWR < 0 || e.SIE < 0 {
		return nil, fmt.Errorf("%w: negative stale window", errCorrupt)
	}
	e.fields = int(binary.LittleEndian.Uint16(b[35:]))
	e.values = int(binary.LittleEndian.Uint16(b[37:]))
	size := uint64(binary.LittleEndian.Uint32(b[39:]))
	if size > uint64(len(b)-entryHead) {
		return nil, fmt.Errorf("%w: header of %d bytes in %d", errCorrupt, size, len(b))
	}
	hdr := b[entryHead : entryHead+int(size)]
	p, values := 0, 0
	for range e.fields {
		if len(hdr)-p < 2 {
			return nil, fmt.Errorf("%w: truncated field", errCorrupt)
		}
		nl := int(binary.LittleEndian.Uint16(hdr[p:]))
		if nl == 0 || len(hdr)-p-2 < nl+2 {
			return nil, fmt.Errorf("%w: bad field name", errCorrupt)
		}
		p += 2 + nl
		cnt := int(binary.LittleEndian.Uint16(hdr[p:]))
		p += 2
		if cnt == 0 {
			return nil, fmt.Errorf("%w: field without values", errCorrupt)
		}
		for range cnt {
			if len(hdr)-p < 4 {
				return nil, fmt.Errorf("%w: truncated value", errCorrupt)
			}
			vl := uint64(binary.LittleEndian.Uint32(hdr[p:]))
			if vl > uint64(len(hdr)-p-4) {
				return nil, fmt.Errorf("%w: value past the header", errCorrupt)
			}
			p += 4 + int(vl)
		}
		values += cnt
	}
	if p != len(hdr) || values != e.values {
		return nil, fmt.Errorf("%w: header does not add up", errCorrupt)
	}
	e.hdr, e.Body = hdr, b[entryHead+len(hdr):]
	return e, nil
}

// encodeMarker encodes a Vary marker.
func encodeMarker(gen uint64, names []string) []byte {
	b := make([]byte, 0, 11+len(names)*24)
	b = append(b, markerVersion)
	b = binary.LittleEndian.AppendUint64(b, gen)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(names)))
	for _, n := range names {
		b = binary.LittleEndian.AppendUint16(b, uint16(len(n)))
		b = append(b, n...)
	}
	return b
}

// walkMarker checks a Vary marker and calls fn, if not nil, with each
// name it lists.
func walkMarker(b []byte, fn func(name []byte)) (gen uint64, err error) {
	if len(b) < 11 || b[0] != markerVersion {
		return 0, fmt.Errorf("%w: bad Vary marker", errCorrupt)
	}
	gen = binary.LittleEndian.Uint64(b[1:])
	n := int(binary.LittleEndian.Uint16(b[9:]))
	p := 11
	for range n {
		if len(b)-p < 2 {
			return 0, fmt.Errorf("%w: truncated Vary marker", errCorrupt)
		}
		l := int(binary.LittleEndian.Uint16(b[p:]))
		if len(b)-p-2 < l {
			return 0, fmt.Errorf("%w: truncated Vary marker", errCorrupt)
		}
		if fn != nil {
			fn(b[p+2 : p+2+l])
		}
		p += 2 + l
	}
	if p != len(b) || n == 0 {
		return 0, fmt.Errorf("%w: bad Vary marker", errCorrupt)
	}
	return gen, nil
}

// decodeMarker returns a Vary marker's generation and names.
func decodeMarker(b []byte) (uint64, []string, error) {
	var names []string
	gen, err := walkMarker(b, func(n []byte) { names = append(names, string(n)) })
	return gen, names, err
}

// variantKey is where the variant of base that request header h selects
// is stored, by the marker's generation and names: base, then "\x00" and
// the generation, then per name "\x00" and the request's values of that
// field joined by commas.
func variantKey(base string, marker []byte, h http.Header) (string, error) {
	if len(marker) < 11 {
		return "", fmt.Errorf("%w: bad Vary marker", errCorrupt)
	}
	k := make([]byte, 0, len(base)+64)
	k = append(k, base...)
	k = append(k, 0)
	k = strconv.AppendUint(k, binary.LittleEndian.Uint64(marker[1:]), 36)
	_, err := walkMarker(marker, func(name []byte) {
		k = append(k, 0)
		for i, v := range h[string(name)] {
			if i > 0 {
				k = append(k, ',')
			}
			k = append(k, strings.TrimSpace(v)...)
		}
	})
	if err != nil {
		return "", err
	}
	return string(k), nil
}
