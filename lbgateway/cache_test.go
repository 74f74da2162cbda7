package lbgateway

import (
	"bytes"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/cachenode"
)

// spyKV counts the store calls the cache makes and records the TTLs it
// asks for.
type spyKV struct {
	kv
	gets  atomic.Int64
	mu    sync.Mutex
	ttls  map[string]time.Duration
	onSet func(key string) // called before each Set
}

func (s *spyKV) Get(ns, key string) ([]byte, cachenode.Lookup) {
	s.gets.Add(1)
	return s.kv.Get(ns, key)
}

func (s *spyKV) Set(ns, key string, v []byte, ttl time.Duration, tags ...string) error {
	s.mu.Lock()
	s.ttls[key] = ttl
	on := s.onSet
	s.mu.Unlock()
	if on != nil {
		on(key)
	}
	return s.kv.Set(ns, key, v, ttl, tags...)
}

func (s *spyKV) SetIfUnexpired(ns, key string, v []byte, ttl time.Duration, mark uint64, tags ...string) (bool, error) {
	s.mu.Lock()
	s.ttls[key] = ttl
	on := s.onSet
	s.mu.Unlock()
	if on != nil {
		on(key)
	}
	return s.kv.SetIfUnexpired(ns, key, v, ttl, mark, tags...)
}

func (s *spyKV) ttl(key string) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ttls[key]
}

// newTestCache returns a cache of everything under "/" (unless cfg says
// otherwise) whose store is spied on.
func newTestCache(t *testing.T, cfg CacheConfig) (*Cache, *spyKV) {
	t.Helper()
	if cfg.Prefixes == nil {
		cfg.Prefixes = []string{"/"}
	}
	if cfg.MaxMB == 0 {
		cfg.MaxMB = 8
	}
	if cfg.MaxObject == 0 {
		cfg.MaxObject = 64 << 10
	}
	c, err := NewCache(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	spy := &spyKV{kv: c.store, ttls: map[string]time.Duration{}}
	c.store = spy
	return c, spy
}

// creq builds a request: method, URI, then header name/value pairs.
func creq(method, uri string, kv ...string) *http.Request {
	r := httptest.NewRequest(method, uri, nil)
	for i := 0; i+1 < len(kv); i += 2 {
		r.Header.Add(kv[i], kv[i+1])
	}
	return r
}

// hdrs builds a header from name/value pairs.
func hdrs(kv ...string) http.Header {
	h := http.Header{}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Add(kv[i], kv[i+1])
	}
	return h
}

// served writes e as the answer to r into a recorder.
func served(e *Entry, r *http.Request, xcache string, now time.Time) *httptest.ResponseRecorder {
	w := httptest.NewRecorder()
	e.Write(w, r, xcache, now)
	return w
}

func TestNewCache(t *testing.T) {
	tests := []struct {
		name    string
		cfg     CacheConfig
		wantErr string
		on      bool
	}{
		{"off without prefixes", CacheConfig{}, "", false},
		{"defaults", CacheConfig{Prefixes: []string{"/static/"}}, "", true},
		{"prefix without slash", CacheConfig{Prefixes: []string{"static/"}}, "must start with /", false},
		{"memory too small for the largest object", CacheConfig{Prefixes: []string{"/"}, MaxMB: 1, MaxObject: 1 << 20}, "cannot hold", false},
		{"small memory, small objects", CacheConfig{Prefixes: []string{"/"}, MaxMB: 1, MaxObject: 100 << 10}, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := NewCache(tt.cfg)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.HasPrefix(err.Error(), "lbgateway: ") {
					t.Fatalf("err %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if got := c.Cacheable(creq("GET", "/static/x")); got != tt.on {
				t.Fatalf("Cacheable = %v, want %v", got, tt.on)
			}
			if e, f := c.Lookup(creq("GET", "/static/x"), time.Now()); e != nil || f != Miss {
				t.Fatalf("Lookup on an empty cache = %v, %v", e, f)
			}
			if !tt.on {
				if c.Store(creq("GET", "/static/x"), 200, hdrs("Cache-Control", "max-age=60"), nil, time.Now()) {
					t.Fatal("a cache that is off stored a response")
				}
				c.Purge(bus.Expire{All: true})
			}
		})
	}
}

func TestCacheable(t *testing.T) {
	c, _ := newTestCache(t, CacheConfig{Prefixes: []string{"/static/", "/api/catalog/"}})
	tests := []struct {
		name string
		r    *http.Request
		want bool
	}{
		{"GET under a prefix", creq("GET", "/static/app.js"), true},
		{"HEAD under a prefix", creq("HEAD", "/static/app.js"), true},
		{"GET under the second prefix, with a query", creq("GET", "/api/catalog/1?x=2"), true},
		{"POST", creq("POST", "/static/app.js"), false},
		{"PUT", creq("PUT", "/static/app.js"), false},
		{"outside the prefixes", creq("GET", "/app/home"), false},
		{"prefix without its slash", creq("GET", "/static"), false},
		{"Authorization", creq("GET", "/static/app.js", "Authorization", "Bearer x"), false},
		{"request no-store", creq("GET", "/static/app.js", "Cache-Control", "no-store"), false},
		{"request no-store on a second line", creq("GET", "/static/app.js", "Cache-Control", "max-age=10", "Cache-Control", "NO-STORE"), false},
		{"request no-cache is still cacheable", creq("GET", "/static/app.js", "Cache-Control", "no-cache"), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := c.Cacheable(tt.r); got != tt.want {
				t.Fatalf("Cacheable = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestStoreRules(t *testing.T) {
	c, _ := newTestCache(t, CacheConfig{MaxObject: 1000})
	ok := "Cache-Control"
	tests := []struct {
		name   string
		r      *http.Request
		status int
		h      http.Header
		body   int
		want   bool
	}{
		{"200 max-age", creq("GET", "/a"), 200, hdrs(ok, "max-age=60"), 10, true},
		{"203", creq("GET", "/a"), 203, hdrs(ok, "max-age=60"), 10, true},
		{"204", creq("GET", "/a"), 204, hdrs(ok, "max-age=60"), 0, true},
		{"300", creq("GET", "/a"), 300, hdrs(ok, "max-age=60"), 10, true},
		{"301", creq("GET", "/a"), 301, hdrs(ok, "max-age=60"), 10, true},
		{"308", creq("GET", "/a"), 308, hdrs(ok, "max-age=60"), 10, true},
		{"404", creq("GET", "/a"), 404, hdrs(ok, "max-age=60"), 10, true},
		{"410", creq("GET", "/a"), 410, hdrs(ok, "max-age=60"), 10, true},
		{"201", creq("GET", "/a"), 201, hdrs(ok, "max-age=60"), 10, false},
		{"206", creq("GET", "/a"), 206, hdrs(ok, "max-age=60"), 10, false},
		{"302", creq("GET", "/a"), 302, hdrs(ok, "max-age=60"), 10, false},
		{"304", creq("GET", "/a"), 304, hdrs(ok, "max-age=60"), 0, false},
		{"500", creq("GET", "/a"), 500, hdrs(ok, "max-age=60"), 10, false},
		{"503", creq("GET", "/a"), 503, hdrs(ok, "max-age=60"), 10, false},
		{"Set-Cookie", creq("GET", "/a"), 200, hdrs(ok, "max-age=60", "Set-Cookie", "s=1"), 10, false},
		{"Vary: *", creq("GET", "/a"), 200, hdrs(ok, "max-age=60", "Vary", "Accept, *"), 10, false},
		{"Vary on too many fields", creq("GET", "/a"), 200, hdrs(ok, "max-age=60", "Vary", manyFields(maxVary+1)), 10, false},
		{"Vary on the most fields", creq("GET", "/a"), 200, hdrs(ok, "max-age=60", "Vary", manyFields(maxVary)), 10, true},
		{"Vary on a long name", creq("GET", "/a"), 200, hdrs(ok, "max-age=60", "Vary", strings.Repeat("x", 257)), 10, false},
		{"Vary", creq("GET", "/a"), 200, hdrs(ok, "max-age=60", "Vary", "Accept"), 10, true},
		{"no-store", creq("GET", "/a"), 200, hdrs(ok, "max-age=60, no-store"), 10, false},
		{"private", creq("GET", "/a"), 200, hdrs(ok, "private, max-age=60"), 10, false},
		{"private with fields", creq("GET", "/a"), 200, hdrs(ok, `private="X-User", max-age=60`), 10, false},
		{"no-cache", creq("GET", "/a"), 200, hdrs(ok, "no-cache, max-age=60"), 10, false},
		{"no-cache with fields", creq("GET", "/a"), 200, hdrs(ok, `max-age=60, no-cache="Set-Cookie"`), 10, false},
		{"Surrogate-Control no-store", creq("GET", "/a"), 200, hdrs(ok, "max-age=60", "Surrogate-Control", "no-store"), 10, false},
		{"no explicit freshness", creq("GET", "/a"), 200, hdrs("Last-Modified", "Mon, 02 Jan 2006 15:04:05 GMT"), 10, false},
		{"public alone", creq("GET", "/a"), 200, hdrs(ok, "public"), 10, false},
		{"bad max-age", creq("GET", "/a"), 200, hdrs(ok, "max-age=ten"), 10, false},
		{"max-age=0", creq("GET", "/a"), 200, hdrs(ok, "max-age=0"), 10, false},
		{"max-age=0 with stale-if-error", creq("GET", "/a"), 200, hdrs(ok, "max-age=0, stale-if-error=60"), 10, true},
		{"max-age spent by Age", creq("GET", "/a"), 200, hdrs(ok, "max-age=60", "Age", "60"), 10, false},
		{"Expires that does not parse", creq("GET", "/a"), 200, hdrs("Expires", "0"), 10, false},
		{"HEAD", creq("HEAD", "/a"), 200, hdrs(ok, "max-age=60"), 0, false},
		{"POST", creq("POST", "/a"), 200, hdrs(ok, "max-age=60"), 10, false},
		{"request with Authorization", creq("GET", "/a", "Authorization", "Basic eDp5"), 200, hdrs(ok, "max-age=60"), 10, false},
		{"request no-store", creq("GET", "/a", "Cache-Control", "no-store"), 200, hdrs(ok, "max-age=60"), 10, false},
		{"request no-cache: still stored", creq("GET", "/a", "Cache-Control", "no-cache"), 200, hdrs(ok, "max-age=60"), 10, true},
		{"body at the largest object", creq("GET", "/a"), 200, hdrs(ok, "max-age=60"), 1000, true},
		{"body over the largest object", creq("GET", "/a"), 200, hdrs(ok, "max-age=60"), 1001, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c.Purge(bus.Expire{Keys: []string{"/a"}})
			before := c.Stats()
			now := time.Now()
			body := bytes.Repeat([]byte("x"), tt.body)
			if got := c.Store(tt.r, tt.status, tt.h, body, now); got != tt.want {
				t.Fatalf("Store = %v, want %v", got, tt.want)
			}
			e, f := c.Lookup(creq("GET", "/a"), now)
			if tt.want != (e != nil) {
				t.Fatalf("Lookup after Store: %v, %v", e, f)
			}
			if e != nil && (e.Status != tt.status || !bytes.Equal(e.Body, body)) {
				t.Fatalf("stored %d %q, want %d %q", e.Status, e.Body, tt.status, body)
			}
			after := c.Stats()
			if tt.want && after.Stored != before.Stored+1 || !tt.want && after.NotStored != before.NotStored+1 {
				t.Fatalf("stats before %+v after %+v", before, after)
			}
		})
	}
}

// manyFields is a Vary value naming n fields.
func manyFields(n int) string {
	names := make([]string, n)
	for i := range names {
		names[i] = "X-F" + strconv.Itoa(i)
	}
	return strings.Join(names, ", ")
}

func TestFreshnessSources(t *testing.T) {
	c, _ := newTestCache(t, CacheConfig{})
	now := time.Now().Truncate(time.Second)
	date := now.UTC().Format(http.TimeFormat)
	at := func(d time.Duration) string { return now.Add(d).UTC().Format(http.TimeFormat) }
	tests := []struct {
		name string
		h    http.Header
		want time.Duration // FreshUntil - now
	}{
		{"max-age", hdrs("Cache-Control", "max-age=60"), 60 * time.Second},
		{"s-maxage over max-age", hdrs("Cache-Control", "max-age=60, s-maxage=120"), 120 * time.Second},
		{"s-maxage=0 over max-age", hdrs("Cache-Control", "max-age=60, s-maxage=0, stale-if-error=5"), 0},
		{"Surrogate-Control over s-maxage", hdrs("Cache-Control", "max-age=60, s-maxage=120", "Surrogate-Control", "max-age=300"), 300 * time.Second},
		{"Surrogate-Control over Expires", hdrs("Surrogate-Control", "max-age=30", "Date", date, "Expires", at(time.Hour)), 30 * time.Second},
		{"Surrogate-Control without max-age", hdrs("Surrogate-Control", "stale-if-error=5", "Cache-Control", "max-age=45"), 45 * time.Second},
		{"max-age over Expires", hdrs("Cache-Control", "max-age=60", "Date", date, "Expires", at(time.Hour)), 60 * time.Second},
		{"Expires minus Date", hdrs("Date", date, "Expires", at(90*time.Second)), 90 * time.Second},
		{"Expires minus Date, Date in the past", hdrs("Date", at(-time.Hour), "Expires", at(-time.Hour+90*time.Second)), 90 * time.Second},
		{"Expires without Date", hdrs("Expires", at(50*time.Second)), 50 * time.Second},
		{"Age subtracted", hdrs("Cache-Control", "max-age=60", "Age", "20"), 40 * time.Second},
		{"bad Age ignored", hdrs("Cache-Control", "max-age=60", "Age", "-3"), 60 * time.Second},
		{"huge max-age capped", hdrs("Cache-Control", "max-age=99999999999999"), maxLifetime},
		{"first max-age wins", hdrs("Cache-Control", "max-age=10", "Cache-Control", "max-age=20"), 10 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := creq("GET", "/fresh")
			if !c.Store(r, 200, tt.h, []byte("b"), now) {
				t.Fatal("not stored")
			}
			e, _ := c.Lookup(r, now)
			if e == nil {
				t.Fatal("not found")
			}
			if got := e.FreshUntil.Sub(now); got != tt.want {
				t.Fatalf("fresh for %s, want %s", got, tt.want)
			}
		})
	}
}

func TestStaleWindows(t *testing.T) {
	c, spy := newTestCache(t, CacheConfig{Keep: time.Hour})
	now := time.Now()
	tests := []struct {
		name     string
		h        http.Header
		at       time.Duration
		want     Freshness
		onError  bool
		keepTTL  time.Duration // store TTL
		wantSWR  time.Duration
		wantSIE  time.Duration
		ageAtNow time.Duration
	}{
		{"fresh", hdrs("Cache-Control", "max-age=60, stale-while-revalidate=30, stale-if-error=300"), 59 * time.Second, Fresh, true, 60*time.Second + time.Hour, 30 * time.Second, 300 * time.Second, 0},
		{"within stale-while-revalidate", hdrs("Cache-Control", "max-age=60, stale-while-revalidate=30, stale-if-error=300"), 61 * time.Second, Revalidate, true, 60*time.Second + time.Hour, 30 * time.Second, 300 * time.Second, 0},
		{"past stale-while-revalidate, within stale-if-error", hdrs("Cache-Control", "max-age=60, stale-while-revalidate=30, stale-if-error=300"), 91 * time.Second, Stale, true, 60*time.Second + time.Hour, 30 * time.Second, 300 * time.Second, 0},
		{"past stale-if-error, still kept", hdrs("Cache-Control", "max-age=60, stale-while-revalidate=30, stale-if-error=300"), 361 * time.Second, Stale, false, 60*time.Second + time.Hour, 30 * time.Second, 300 * time.Second, 0},
		{"no stale windows", hdrs("Cache-Control", "max-age=60"), 61 * time.Second, Stale, false, 60*time.Second + time.Hour, 0, 0, 0},
		{"stale-if-error longer than Keep", hdrs("Cache-Control", "max-age=60, stale-if-error=7200"), 2 * time.Hour, Stale, true, 60*time.Second + 2*time.Hour, 0, 2 * time.Hour, 0},
		{"stale-while-revalidate longer than Keep", hdrs("Cache-Control", "max-age=60, stale-while-revalidate=10800"), 2 * time.Hour, Revalidate, false, 60*time.Second + 3*time.Hour, 3 * time.Hour, 0, 0},
		{"windows from Surrogate-Control", hdrs("Cache-Control", "max-age=60, stale-while-revalidate=5", "Surrogate-Control", "stale-while-revalidate=100, stale-if-error=200"), 120 * time.Second, Revalidate, true, 60*time.Second + time.Hour, 100 * time.Second, 200 * time.Second, 0},
		{"must-revalidate forbids stale", hdrs("Cache-Control", "max-age=60, must-revalidate, stale-while-revalidate=30, stale-if-error=300"), 61 * time.Second, Stale, false, 60*time.Second + time.Hour, 0, 0, 0},
		{"proxy-revalidate forbids stale", hdrs("Cache-Control", "max-age=60, proxy-revalidate, stale-if-error=300"), 61 * time.Second, Stale, false, 60*time.Second + time.Hour, 0, 0, 0},
		{"Age counts", hdrs("Cache-Control", "max-age=60", "Age", "50"), 11 * time.Second, Stale, false, 10*time.Second + time.Hour, 0, 0, 50 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := creq("GET", "/w")
			if !c.Store(r, 200, tt.h, []byte("b"), now) {
				t.Fatal("not stored")
			}
			if got := spy.ttl("/w"); got != tt.keepTTL {
				t.Fatalf("kept for %s, want %s", got, tt.keepTTL)
			}
			e, f := c.Lookup(r, now.Add(tt.at))
			if f != tt.want {
				t.Fatalf("at +%s: %v, want %v", tt.at, f, tt.want)
			}
			if e.SWR != tt.wantSWR || e.SIE != tt.wantSIE {
				t.Fatalf("SWR %s SIE %s, want %s %s", e.SWR, e.SIE, tt.wantSWR, tt.wantSIE)
			}
			if got := e.UsableOnError(now.Add(tt.at)); got != tt.onError {
				t.Fatalf("UsableOnError = %v, want %v", got, tt.onError)
			}
			if got := e.Age(now); got != tt.ageAtNow {
				t.Fatalf("Age at store time %s, want %s", got, tt.ageAtNow)
			}
		})
	}
}

func TestRequestRefusesCached(t *testing.T) {
	c, _ := newTestCache(t, CacheConfig{})
	now := time.Now()
	if !c.Store(creq("GET", "/r"), 200, hdrs("Cache-Control", "max-age=60"), []byte("b"), now) {
		t.Fatal("not stored")
	}
	tests := []struct {
		name string
		r    *http.Request
		want Freshness
	}{
		{"plain", creq("GET", "/r"), Fresh},
		{"no-cache", creq("GET", "/r", "Cache-Control", "no-cache"), Miss},
		{"max-age=0", creq("GET", "/r", "Cache-Control", "max-age=0"), Miss},
		{"max-age=10", creq("GET", "/r", "Cache-Control", "max-age=10"), Fresh},
		{"junk", creq("GET", "/r", "Cache-Control", `max-age="x`), Fresh},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, f := c.Lookup(tt.r, now)
			if f != tt.want {
				t.Fatalf("Lookup = %v, want %v", f, tt.want)
			}
			// A refused copy is still handed over, for errors and fallback.
			if e == nil || string(e.Body) != "b" {
				t.Fatalf("entry %v", e)
			}
		})
	}
}

func TestHeadFromGet(t *testing.T) {
	c, _ := newTestCache(t, CacheConfig{})
	now := time.Now()
	body := []byte("hello, world")
	if c.Store(creq("HEAD", "/h"), 200, hdrs("Cache-Control", "max-age=60", "Content-Length", "12"), nil, now) {
		t.Fatal("a response to HEAD was stored")
	}
	if e, f := c.Lookup(creq("HEAD", "/h"), now); f != Miss || e != nil {
		t.Fatalf("after a HEAD: %v %v", e, f)
	}
	if !c.Store(creq("GET", "/h"), 200, hdrs("Cache-Control", "max-age=60", "Content-Type", "text/plain"), body, now) {
		t.Fatal("GET not stored")
	}
	head := creq("HEAD", "/h")
	e, f := c.Lookup(head, now)
	if f != Fresh {
		t.Fatalf("HEAD after GET: %v", f)
	}
	w := served(e, head, "HIT", now)
	if w.Code != 200 || w.Body.Len() != 0 || w.Header().Get("Content-Length") != "12" || w.Header().Get("Content-Type") != "text/plain" {
		t.Fatalf("HEAD answer %d %q %v", w.Code, w.Body, w.Header())
	}
	get := creq("GET", "/h")
	e, _ = c.Lookup(get, now)
	if w := served(e, get, "HIT", now); w.Body.String() != string(body) {
		t.Fatalf("GET answer %q", w.Body)
	}
}

func TestEntryWrite(t *testing.T) {
	c, _ := newTestCache(t, CacheConfig{})
	now := time.Now()
	lm := "Mon, 02 Jan 2006 15:04:05 GMT"
	if !c.Store(creq("GET", "/w"), 200, hdrs("Cache-Control", "max-age=60", "Etag", `"v1"`, "Last-Modified", lm,
		"Content-Type", "text/plain", "X-Multi", "a", "X-Multi", "b"), []byte("body"), now) {
		t.Fatal("not stored")
	}
	if !c.Store(creq("GET", "/noetag"), 200, hdrs("Cache-Control", "max-age=60", "Content-Type", "text/plain",
		"X-Multi", "a", "X-Multi", "b"), []byte("body"), now) {
		t.Fatal("not stored")
	}
	if !c.Store(creq("GET", "/gone"), 404, hdrs("Cache-Control", "max-age=60", "Etag", `"v1"`), []byte("nope"), now) {
		t.Fatal("404 not stored")
	}
	tests := []struct {
		name   string
		r      *http.Request
		status int
		body   string
	}{
		{"plain", creq("GET", "/w"), 200, "body"},
		{"If-None-Match strong", creq("GET", "/w", "If-None-Match", `"v1"`), 304, ""},
		{"If-None-Match weak", creq("GET", "/w", "If-None-Match", `W/"v1"`), 304, ""},
		{"If-None-Match list", creq("GET", "/w", "If-None-Match", `"v0", W/"v1"`), 304, ""},
		{"If-None-Match second line", creq("GET", "/w", "If-None-Match", `"v0"`, "If-None-Match", `"v1"`), 304, ""},
		{"If-None-Match star", creq("GET", "/w", "If-None-Match", `*`), 304, ""},
		{"If-None-Match other", creq("GET", "/w", "If-None-Match", `"v2"`), 200, "body"},
		{"If-None-Match junk", creq("GET", "/w", "If-None-Match", `v1, "v1`), 200, "body"},
		{"If-None-Match wins over If-Modified-Since", creq("GET", "/w", "If-None-Match", `"v2"`, "If-Modified-Since", lm), 200, "body"},
		{"If-Modified-Since equal", creq("GET", "/w", "If-Modified-Since", lm), 304, ""},
		{"If-Modified-Since later", creq("GET", "/w", "If-Modified-Since", "Tue, 03 Jan 2006 15:04:05 GMT"), 304, ""},
		{"If-Modified-Since earlier", creq("GET", "/w", "If-Modified-Since", "Sun, 01 Jan 2006 15:04:05 GMT"), 200, "body"},
		{"If-Modified-Since junk", creq("GET", "/w", "If-Modified-Since", "yesterday"), 200, "body"},
		{"HEAD If-None-Match", creq("HEAD", "/w", "If-None-Match", `"v1"`), 304, ""},
		{"404 ignores If-None-Match", creq("GET", "/gone", "If-None-Match", `"v1"`), 404, "nope"},
		{"If-None-Match star without an ETag", creq("GET", "/noetag", "If-None-Match", `*`), 304, ""},
		{"If-None-Match without an ETag", creq("GET", "/noetag", "If-None-Match", `"v1"`), 200, "body"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, f := c.Lookup(tt.r, now.Add(3500*time.Millisecond))
			if f != Fresh {
				t.Fatalf("Lookup: %v", f)
			}
			w := served(e, tt.r, "HIT", now.Add(3500*time.Millisecond))
			if w.Code != tt.status || w.Body.String() != tt.body {
				t.Fatalf("answer %d %q, want %d %q", w.Code, w.Body, tt.status, tt.body)
			}
			h := w.Header()
			if h.Get("Age") != "3" || h.Get("X-Cache") != "HIT" || (h.Get("Etag") != `"v1"`) != (tt.r.URL.Path == "/noetag") {
				t.Fatalf("Age %q X-Cache %q ETag %q", h.Get("Age"), h.Get("X-Cache"), h.Get("Etag"))
			}
			if tt.status == 304 && (h.Get("Content-Length") != "" || h.Get("Content-Type") != "") {
				t.Fatalf("304 with content headers: %v", h)
			}
			if tt.status == 200 && (h.Get("Content-Length") != "4" || !slices.Equal(h["X-Multi"], []string{"a", "b"})) {
				t.Fatalf("200 headers: %v", h)
			}
		})
	}
	t.Run("an append to a written field does not reach the entry", func(t *testing.T) {
		r := creq("GET", "/w")
		e, _ := c.Lookup(r, now)
		e.Headers()
		w := served(e, r, "STALE", now)
		w.Header().Add("X-Multi", "c")
		w2 := served(e, r, "STALE", now)
		if got := w2.Header()["X-Multi"]; !slices.Equal(got, []string{"a", "b"}) || w2.Header().Get("X-Cache") != "STALE" {
			t.Fatalf("second write has X-Multi %q X-Cache %q", got, w2.Header().Get("X-Cache"))
		}
	})
}

func TestStoredHeadersStripped(t *testing.T) {
	c, _ := newTestCache(t, CacheConfig{})
	now := time.Now()
	h := hdrs("Cache-Control", "max-age=60", "Connection", "X-Hop, keep-alive", "X-Hop", "1", "Keep-Alive", "timeout=5",
		"Transfer-Encoding", "chunked", "Trailer", "X-T", "Upgrade", "h2c", "Proxy-Authenticate", "Basic",
		"Age", "5", "Surrogate-Control", "max-age=600", "Surrogate-Key", "a b", "Cachebus-Expire", "http /x",
		"Content-Length", "999", "Content-Type", "text/plain", "X-Kept", "yes", "Date", "Mon, 02 Jan 2006 15:04:05 GMT")
	h["x-lower"] = []string{"l"} // not canonical: stored canonical
	orig := h.Clone()
	if !c.Store(creq("GET", "/s"), 200, h, []byte("abc"), now) {
		t.Fatal("not stored")
	}
	if !equalHeader(h, orig) {
		t.Fatal("Store changed the header it was given")
	}
	e, _ := c.Lookup(creq("GET", "/s"), now)
	got := e.Headers()
	want := http.Header{"Cache-Control": {"max-age=60"}, "Content-Length": {"3"}, "Content-Type": {"text/plain"},
		"X-Kept": {"yes"}, "X-Lower": {"l"}, "Date": {"Mon, 02 Jan 2006 15:04:05 GMT"}}
	if !equalHeader(got, want) {
		t.Fatalf("stored header\n%v\nwant\n%v", got, want)
	}
	w := served(e, creq("GET", "/s"), "HIT", now)
	for _, k := range []string{"Connection", "X-Hop", "Keep-Alive", "Transfer-Encoding", "Trailer", "Upgrade",
		"Proxy-Authenticate", "Surrogate-Control", "Surrogate-Key", "Cachebus-Expire"} {
		if v, ok := w.Header()[k]; ok {
			t.Errorf("%s: %q sent from the cache", k, v)
		}
	}
	if w.Header().Get("Age") != "5" {
		t.Errorf("Age %q, want the origin's 5 plus none", w.Header().Get("Age"))
	}
}

func equalHeader(a, b http.Header) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if !slices.Equal(v, b[k]) {
			return false
		}
	}
	return true
}

func TestAge(t *testing.T) {
	c, _ := newTestCache(t, CacheConfig{})
	now := time.Now()
	if !c.Store(creq("GET", "/age"), 200, hdrs("Cache-Control", "max-age=600", "Age", "10"), nil, now) {
		t.Fatal("not stored")
	}
	tests := []struct {
		at   time.Duration
		want string
	}{
		{0, "10"}, {999 * time.Millisecond, "10"}, {5700 * time.Millisecond, "15"}, {100 * time.Second, "110"}, {-time.Hour, "0"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			r := creq("GET", "/age")
			e, _ := c.Lookup(r, now.Add(tt.at))
			if got := served(e, r, "HIT", now.Add(tt.at)).Header().Get("Age"); got != tt.want {
				t.Fatalf("Age %q, want %q", got, tt.want)
			}
		})
	}
}

func TestVary(t *testing.T) {
	c, spy := newTestCache(t, CacheConfig{})
	now := time.Now()
	store := func(enc, body string) {
		t.Helper()
		h := hdrs("Cache-Control", "max-age=60", "Vary", "accept-encoding", "Vary", "Accept-Language, Accept-Encoding")
		if !c.Store(creq("GET", "/v?q=1", "Accept-Encoding", enc, "Accept-Language", "en"), 200, h, []byte(body), now) {
			t.Fatalf("variant %s not stored", enc)
		}
	}
	lookup := func(enc string) string {
		e, f := c.Lookup(creq("GET", "/v?q=1", "Accept-Encoding", enc, "Accept-Language", "en"), now)
		if f != Fresh {
			return ""
		}
		return string(e.Body)
	}
	store("gzip", "zipped")
	store("br", "brotli")
	if raw, _ := c.store.Get(cacheNS, "/v?q=1"); len(raw) == 0 || raw[0] != markerVersion {
		t.Fatal("no Vary marker under the URI")
	} else if _, names, err := decodeMarker(raw); err != nil || !slices.Equal(names, []string{"Accept-Encoding", "Accept-Language"}) {
		t.Fatalf("marker names %q, %v", names, err)
	}
	tests := []struct{ enc, want string }{{"gzip", "zipped"}, {"br", "brotli"}, {" gzip ", "zipped"}, {"identity", ""}, {"", ""}}
	for _, tt := range tests {
		t.Run("lookup "+tt.enc, func(t *testing.T) {
			if got := lookup(tt.enc); got != tt.want {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
	t.Run("two store gets per hit", func(t *testing.T) {
		before := spy.gets.Load()
		lookup("gzip")
		if n := spy.gets.Load() - before; n != 2 {
			t.Fatalf("%d gets", n)
		}
	})
	t.Run("purge of the URI drops every variant", func(t *testing.T) {
		c.Purge(bus.Expire{Keys: []string{"/v?q=1"}})
		if lookup("gzip") != "" || lookup("br") != "" {
			t.Fatal("variant survived the purge")
		}
		// A new variant stored after the purge does not bring back the
		// other, purged one.
		store("gzip", "zipped2")
		if got := lookup("gzip"); got != "zipped2" {
			t.Fatalf("new variant: %q", got)
		}
		if got := lookup("br"); got != "" {
			t.Fatalf("purged variant came back: %q", got)
		}
	})
	t.Run("prefix purge covers variants", func(t *testing.T) {
		store("br", "brotli")
		c.Purge(bus.Expire{Prefixes: []string{"/v"}})
		if lookup("gzip") != "" || lookup("br") != "" {
			t.Fatal("variant survived the prefix purge")
		}
	})
	t.Run("a non-Vary response replaces the marker", func(t *testing.T) {
		store("gzip", "zipped")
		if !c.Store(creq("GET", "/v?q=1"), 200, hdrs("Cache-Control", "max-age=60"), []byte("plain"), now) {
			t.Fatal("not stored")
		}
		if got := lookup("gzip"); got != "plain" {
			t.Fatalf("got %q", got)
		}
	})
	t.Run("a purge racing a store brings no purged variant back", func(t *testing.T) {
		c.Purge(bus.Expire{All: true})
		store("gzip", "old-zipped")
		store("br", "old-brotli")
		// The purge lands after the store read the marker, before it
		// wrote it back.
		spy.mu.Lock()
		spy.onSet = func(key string) {
			if strings.Contains(key, "\x00") {
				c.Purge(bus.Expire{Keys: []string{"/v?q=1"}})
			}
		}
		spy.mu.Unlock()
		h := hdrs("Cache-Control", "max-age=60", "Vary", "Accept-Encoding, Accept-Language")
		c.Store(creq("GET", "/v?q=1", "Accept-Encoding", "gzip", "Accept-Language", "en"), 200, h, []byte("new"), now)
		spy.mu.Lock()
		spy.onSet = nil
		spy.mu.Unlock()
		if got := lookup("br"); got != "" {
			t.Fatalf("purged variant came back: %q", got)
		}
	})
}

func TestOneGetOnHit(t *testing.T) {
	c, spy := newTestCache(t, CacheConfig{})
	now := time.Now()
	if !c.Store(creq("GET", "/one"), 200, hdrs("Cache-Control", "max-age=60"), []byte("b"), now) {
		t.Fatal("not stored")
	}
	before := spy.gets.Load()
	r := creq("GET", "/one")
	e, f := c.Lookup(r, now)
	served(e, r, "HIT", now)
	if n := spy.gets.Load() - before; f != Fresh || n != 1 {
		t.Fatalf("%v with %d store gets, want a hit with 1", f, n)
	}
}

func TestCachePurge(t *testing.T) {
	now := time.Now()
	stored := []struct {
		uri  string
		keys string // Surrogate-Key
	}{
		{"/p/a", "cat prod-1"}, {"/p/a?page=2", "cat"}, {"/p/b", "prod-2"}, {"/q/c", "cat"}, {"/q/d", ""},
	}
	tests := []struct {
		name string
		e    bus.Expire
		left []string
	}{
		{"key", bus.Expire{Keys: []string{"/p/a"}}, []string{"/p/a?page=2", "/p/b", "/q/c", "/q/d"}},
		{"key with query", bus.Expire{Keys: []string{"/p/a?page=2"}}, []string{"/p/a", "/p/b", "/q/c", "/q/d"}},
		{"unknown key", bus.Expire{Keys: []string{"/nope"}}, []string{"/p/a", "/p/a?page=2", "/p/b", "/q/c", "/q/d"}},
		{"prefix", bus.Expire{Prefixes: []string{"/p/"}}, []string{"/q/c", "/q/d"}},
		{"prefix with query", bus.Expire{Prefixes: []string{"/p/a?"}}, []string{"/p/a", "/p/b", "/q/c", "/q/d"}},
		{"tag", bus.Expire{Tags: []string{"cat"}}, []string{"/p/b", "/q/d"}},
		{"tags", bus.Expire{Tags: []string{"prod-1", "prod-2"}}, []string{"/p/a?page=2", "/q/c", "/q/d"}},
		{"all", bus.Expire{All: true}, nil},
		{"all wins", bus.Expire{All: true, Keys: []string{"/p/a"}}, nil},
		{"mixed", bus.Expire{Keys: []string{"/q/d"}, Tags: []string{"prod-2"}}, []string{"/p/a", "/p/a?page=2", "/q/c"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, _ := newTestCache(t, CacheConfig{})
			for _, s := range stored {
				if !c.Store(creq("GET", s.uri), 200, hdrs("Cache-Control", "max-age=60", "Surrogate-Key", s.keys), []byte(s.uri), now) {
					t.Fatalf("%s not stored", s.uri)
				}
			}
			c.Purge(tt.e)
			var left []string
			for _, s := range stored {
				if e, f := c.Lookup(creq("GET", s.uri), now); f == Fresh && string(e.Body) == s.uri {
					left = append(left, s.uri)
				}
			}
			if !slices.Equal(left, tt.left) {
				t.Fatalf("left %q, want %q", left, tt.left)
			}
			if st := c.Stats(); st.Purges != 1 {
				t.Fatalf("purges %d", st.Purges)
			}
		})
	}
}

// TestPurgeWhileOriginAnswers: a purge that comes after the mark taken
// before the origin was asked keeps the origin's answer out of the cache
// (it may predate the change the purge was for); one that covers another
// URI does not.
func TestPurgeWhileOriginAnswers(t *testing.T) {
	now := time.Now()
	tests := []struct {
		name   string
		vary   bool
		e      bus.Expire
		stored bool
	}{
		{"key", false, bus.Expire{Keys: []string{"/p/a"}}, false},
		{"prefix", false, bus.Expire{Prefixes: []string{"/p/"}}, false},
		{"tag", false, bus.Expire{Tags: []string{"cat"}}, false},
		{"all", false, bus.Expire{All: true}, false},
		{"other key", false, bus.Expire{Keys: []string{"/q/b"}}, true},
		{"key, Vary", true, bus.Expire{Keys: []string{"/p/a"}}, false},
		{"tag, Vary", true, bus.Expire{Tags: []string{"cat"}}, false},
		{"other key, Vary", true, bus.Expire{Keys: []string{"/q/b"}}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, _ := newTestCache(t, CacheConfig{})
			h := hdrs("Cache-Control", "max-age=60", "Surrogate-Key", "cat")
			if tt.vary {
				h.Set("Vary", "Accept")
			}
			r := creq("GET", "/p/a", "Accept", "text/plain")
			mark := c.Mark()
			c.Purge(tt.e)
			if got := c.StoreSince(r, mark, 200, h, []byte("from before"), now); got != tt.stored {
				t.Fatalf("StoreSince = %v, want %v", got, tt.stored)
			}
			if _, f := c.Lookup(r, now); (f == Fresh) != tt.stored {
				t.Fatalf("Lookup: %v, want stored=%v", f, tt.stored)
			}
			// Asked after the purge, the origin's answer is kept.
			if !c.StoreSince(r, c.Mark(), 200, h, []byte("after"), now) {
				t.Fatal("a response asked for after the purge was not stored")
			}
			if e, f := c.Lookup(r, now); f != Fresh || string(e.Body) != "after" {
				t.Fatalf("Lookup after the purge: %v", f)
			}
		})
	}
}

func TestCorruptEntry(t *testing.T) {
	good, err := encodeEntry(200, time.Now(), time.Now().Add(time.Minute), 0, 0, hdrs("X-A", "b"), []byte("body"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		raw  []byte
	}{
		{"empty", []byte{}},
		{"unknown version", append([]byte{9}, good[1:]...)},
		{"truncated header", good[:entryHead+3]},
		{"short", good[:10]},
		{"bad marker", []byte{markerVersion, 1, 2}},
		{"marker without names", encodeMarker(1, nil)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, _ := newTestCache(t, CacheConfig{})
			if err := c.store.Set(cacheNS, "/bad", tt.raw, time.Minute); err != nil {
				t.Fatal(err)
			}
			if e, f := c.Lookup(creq("GET", "/bad"), time.Now()); e != nil || f != Miss {
				t.Fatalf("Lookup = %v, %v", e, f)
			}
			if st := c.Stats(); st.Corrupt != 1 || st.Misses != 1 {
				t.Fatalf("stats %+v", st)
			}
			if _, l := c.store.Get(cacheNS, "/bad"); l != cachenode.Miss {
				t.Fatal("corrupt entry not dropped")
			}
		})
	}
	t.Run("corrupt variant", func(t *testing.T) {
		c, _ := newTestCache(t, CacheConfig{})
		now := time.Now()
		r := creq("GET", "/cv", "Accept", "x")
		if !c.Store(r, 200, hdrs("Cache-Control", "max-age=60", "Vary", "Accept"), []byte("b"), now) {
			t.Fatal("not stored")
		}
		raw, _ := c.store.Get(cacheNS, "/cv")
		key, _ := variantKey("/cv", raw, r.Header)
		if err := c.store.Set(cacheNS, key, []byte{entryVersion, 0}, time.Minute); err != nil {
			t.Fatal(err)
		}
		if _, f := c.Lookup(r, now); f != Miss || c.Stats().Corrupt != 1 {
			t.Fatalf("%v, stats %+v", f, c.Stats())
		}
	})
}

func TestEntryRoundTrip(t *testing.T) {
	stored := time.Unix(1700000000, 123)
	fresh := stored.Add(time.Minute)
	h := hdrs("Content-Type", "text/html", "X-Empty", "", "Link", "</a>; rel=preload", "Link", "</b>; rel=preload")
	tests := []struct {
		name   string
		status int
		body   []byte
		want   http.Header
	}{
		{"with body", 200, []byte("<p>hi</p>"), http.Header{"Content-Type": {"text/html"}, "X-Empty": {""},
			"Link": {"</a>; rel=preload", "</b>; rel=preload"}, "Content-Length": {"9"}}},
		{"204 has no Content-Length", 204, nil, http.Header{"Content-Type": {"text/html"}, "X-Empty": {""},
			"Link": {"</a>; rel=preload", "</b>; rel=preload"}}},
		{"empty body", 404, []byte{}, http.Header{"Content-Type": {"text/html"}, "X-Empty": {""},
			"Link": {"</a>; rel=preload", "</b>; rel=preload"}, "Content-Length": {"0"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := encodeEntry(tt.status, stored, fresh, 5*time.Second, 7*time.Second, h, tt.body)
			if err != nil {
				t.Fatal(err)
			}
			e, err := decodeEntry(b)
			if err != nil {
				t.Fatal(err)
			}
			if e.Status != tt.status || !e.Stored.Equal(stored) || !e.FreshUntil.Equal(fresh) || e.SWR != 5*time.Second ||
				e.SIE != 7*time.Second || !bytes.Equal(e.Body, tt.body) {
				t.Fatalf("decoded %+v", e)
			}
			if got := e.Headers(); !equalHeader(got, tt.want) {
				t.Fatalf("header %v, want %v", got, tt.want)
			}
		})
	}
	t.Run("errors", func(t *testing.T) {
		if _, err := decodeEntry([]byte{1}); !errors.Is(err, errCorrupt) || !strings.HasPrefix(err.Error(), "lbgateway: ") {
			t.Fatalf("err %v", err)
		}
		if _, err := encodeEntry(200, stored, fresh, 0, 0, http.Header{"X-Big": {strings.Repeat("v", 10)}, strings.Repeat("n", 70000): {"v"}}, nil); err == nil {
			t.Fatal("a 70000-byte field name encoded")
		}
	})
}

func TestCacheStats(t *testing.T) {
	c, _ := newTestCache(t, CacheConfig{})
	now := time.Now()
	c.Store(creq("GET", "/s1"), 200, hdrs("Cache-Control", "max-age=60, stale-while-revalidate=60"), []byte("b"), now)
	c.Store(creq("GET", "/s2"), 200, hdrs("Cache-Control", "no-store"), []byte("b"), now)
	c.Lookup(creq("GET", "/s1"), now)                      // hit
	c.Lookup(creq("GET", "/s1"), now.Add(90*time.Second))  // revalidate
	c.Lookup(creq("GET", "/s1"), now.Add(200*time.Second)) // stale
	c.Lookup(creq("GET", "/s2"), now)                      // miss
	c.Purge(bus.Expire{Keys: []string{"/s3"}})
	st := c.Stats()
	want := CacheStats{Hits: 1, Revalidates: 1, Stales: 1, Misses: 1, Stored: 1, NotStored: 1, Purges: 1, Entries: st.Entries, Bytes: st.Bytes}
	if st != want || st.Entries != 1 || st.Bytes <= 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestFreshnessString(t *testing.T) {
	for f, want := range map[Freshness]string{Miss: "miss", Fresh: "fresh", Revalidate: "revalidate", Stale: "stale", 9: "miss"} {
		if f.String() != want {
			t.Errorf("%d: %q", f, f.String())
		}
	}
}

func TestCacheConcurrent(t *testing.T) {
	c, _ := newTestCache(t, CacheConfig{})
	now := time.Now()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 200 {
				uri := "/c/" + string(rune('a'+i%5))
				switch (g + i) % 4 {
				case 0:
					c.Store(creq("GET", uri, "Accept", "x"), 200, hdrs("Cache-Control", "max-age=60", "Vary", "Accept"), []byte(uri), now)
				case 1:
					c.Store(creq("GET", uri), 200, hdrs("Cache-Control", "max-age=60"), []byte(uri), now)
				case 2:
					c.Purge(bus.Expire{Keys: []string{uri}})
				default:
					r := creq("GET", uri, "Accept", "x")
					if e, f := c.Lookup(r, now); f == Fresh {
						if w := served(e, r, "HIT", now); w.Body.String() != uri {
							t.Errorf("%s served %q", uri, w.Body)
						}
					}
				}
			}
		})
	}
	wg.Wait()
}

func FuzzDecodeEntry(f *testing.F) {
	good, _ := encodeEntry(200, time.Unix(1700000000, 0), time.Unix(1700000060, 0), time.Second, time.Minute,
		hdrs("Etag", `"x"`, "Content-Type", "text/plain"), []byte("body"))
	f.Add(good)
	f.Add(encodeMarker(3, []string{"Accept"}))
	f.Fuzz(func(t *testing.T, b []byte) {
		// As a Vary marker: a key under the URI, or an error.
		if key, err := variantKey("/k", b, http.Header{"Accept": {"x"}}); err == nil && !strings.HasPrefix(key, "/k\x00") {
			t.Fatalf("variant key %q", key)
		} else if err != nil && !errors.Is(err, errCorrupt) {
			t.Fatalf("marker error %v", err)
		}
		_, _, _ = decodeMarker(b)

		e, err := decodeEntry(b)
		if err != nil {
			if e != nil || !errors.Is(err, errCorrupt) || !strings.HasPrefix(err.Error(), "lbgateway: ") {
				t.Fatalf("%v, %v", e, err)
			}
			return
		}
		now := time.Unix(1700000030, 0)
		for _, r := range []*http.Request{creq("GET", "/k"), creq("HEAD", "/k", "If-None-Match", `"x"`),
			creq("GET", "/k", "If-Modified-Since", "Mon, 02 Jan 2006 15:04:05 GMT")} {
			w := served(e, r, "HIT", now)
			if r.Method == "GET" && w.Code == e.Status && bodyAllowed(e.Status) && !bytes.Equal(w.Body.Bytes(), e.Body) {
				t.Fatalf("body %q, want %q", w.Body, e.Body)
			}
		}
		e.Age(now)
		e.UsableOnError(now)
		h := e.Headers()
		n := 0
		for _, v := range h {
			n += len(v)
		}
		if n > e.values {
			t.Fatalf("%d values decoded, %d announced", n, e.values)
		}
		// What decodes encodes again to the same status, times and body.
		b2, err := encodeEntry(e.Status, e.Stored, e.FreshUntil, e.SWR, e.SIE, h, e.Body)
		if err != nil {
			return
		}
		e2, err := decodeEntry(b2)
		if err != nil {
			t.Fatalf("re-encoded entry does not decode: %v", err)
		}
		if e2.Status != e.Status || !e2.Stored.Equal(e.Stored) || !e2.FreshUntil.Equal(e.FreshUntil) ||
			e2.SWR != e.SWR || e2.SIE != e.SIE || !bytes.Equal(e2.Body, e.Body) {
			t.Fatalf("round trip %+v -> %+v", e, e2)
		}
	})
}

// TestCacheOverHTTP serves through the cache with net/http on both sides,
// as the gateway does: what a client sees of hits, HEAD and 304.
func TestCacheOverHTTP(t *testing.T) {
	var originHits atomic.Int64
	origin := func(w http.ResponseWriter, r *http.Request) (int, http.Header, []byte) {
		originHits.Add(1)
		h := hdrs("Cache-Control", "max-age=60", "Etag", `"e1"`, "Content-Type", "text/plain",
			"Surrogate-Key", "page", "Surrogate-Control", "max-age=120")
		return 200, h, []byte("from origin " + r.URL.RequestURI())
	}
	c, _ := newTestCache(t, CacheConfig{Prefixes: []string{"/c/"}})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		now := time.Now()
		if c.Cacheable(r) {
			if e, f := c.Lookup(r, now); f == Fresh {
				e.Write(w, r, "HIT", now)
				return
			}
		}
		status, h, body := origin(w, r)
		c.Store(r, status, h, body, now)
		for k, v := range h {
			w.Header()[k] = v
		}
		w.Header().Set("X-Cache", "MISS")
		w.WriteHeader(status)
		if r.Method != "HEAD" {
			_, _ = w.Write(body)
		}
	}))
	t.Cleanup(srv.Close)
	do := func(method, path string, kv ...string) (*http.Response, string) {
		t.Helper()
		req, _ := http.NewRequest(method, srv.URL+path, nil)
		for i := 0; i+1 < len(kv); i += 2 {
			req.Header.Set(kv[i], kv[i+1])
		}
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b bytes.Buffer
		_, _ = b.ReadFrom(resp.Body)
		return resp, b.String()
	}
	tests := []struct {
		name, method, path string
		kv                 []string
		status             int
		xcache, body       string
		contentLength      int64
	}{
		{"first GET", "GET", "/c/a?x=1", nil, 200, "MISS", "from origin /c/a?x=1", 20},
		{"second GET", "GET", "/c/a?x=1", nil, 200, "HIT", "from origin /c/a?x=1", 20},
		{"HEAD", "HEAD", "/c/a?x=1", nil, 200, "HIT", "", 20},
		{"If-None-Match", "GET", "/c/a?x=1", []string{"If-None-Match", `W/"e1"`}, 304, "HIT", "", -1},
		{"other query", "GET", "/c/a?x=2", nil, 200, "MISS", "from origin /c/a?x=2", 20},
		{"not under the prefix", "GET", "/d/a", nil, 200, "MISS", "from origin /d/a", 16},
		{"not under the prefix again", "GET", "/d/a", nil, 200, "MISS", "from origin /d/a", 16},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := do(tt.method, tt.path, tt.kv...)
			if resp.StatusCode != tt.status || resp.Header.Get("X-Cache") != tt.xcache || body != tt.body {
				t.Fatalf("%d X-Cache %q %q, want %d %q %q", resp.StatusCode, resp.Header.Get("X-Cache"), body, tt.status, tt.xcache, tt.body)
			}
			if tt.status != 304 && resp.ContentLength != tt.contentLength {
				t.Fatalf("Content-Length %d, want %d", resp.ContentLength, tt.contentLength)
			}
			if tt.xcache == "HIT" {
				if resp.Header.Get("Age") == "" || resp.Header.Get("Surrogate-Key") != "" || resp.Header.Get("Surrogate-Control") != "" {
					t.Fatalf("hit headers %v", resp.Header)
				}
			}
		})
	}
	if n := originHits.Load(); n != 4 {
		t.Fatalf("origin asked %d times, want 4", n)
	}
	c.Purge(bus.Expire{Tags: []string{"page"}})
	if resp, _ := do("GET", "/c/a?x=1"); resp.Header.Get("X-Cache") != "MISS" {
		t.Fatalf("after the tag purge: X-Cache %q", resp.Header.Get("X-Cache"))
	}
}
