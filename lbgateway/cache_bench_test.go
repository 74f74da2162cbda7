package lbgateway

import (
	"bytes"
	"net/http"
	"strconv"
	"testing"
	"time"
)

// nopWriter is the least a ResponseWriter can be.
type nopWriter struct {
	h      http.Header
	status int
	n      int
}

func (w *nopWriter) Header() http.Header { return w.h }

func (w *nopWriter) WriteHeader(status int) { w.status = status }

func (w *nopWriter) Write(b []byte) (int, error) {
	w.n += len(b)
	return len(b), nil
}

// benchCache returns a cache holding n typical 1 KiB responses under
// /static/<i>, with Vary when vary is set.
func benchCache(b *testing.B, n int, vary bool) (*Cache, time.Time) {
	b.Helper()
	c, err := NewCache(CacheConfig{Prefixes: []string{"/static/"}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(c.Close)
	now := time.Now()
	body := bytes.Repeat([]byte("x"), 1024)
	for i := range n {
		h := hdrs("Content-Type", "application/javascript", "Cache-Control", "public, max-age=3600",
			"Etag", `"`+strconv.Itoa(i)+`"`, "Last-Modified", "Mon, 02 Jan 2006 15:04:05 GMT",
			"Date", now.UTC().Format(http.TimeFormat), "Server", "app", "X-Content-Type-Options", "nosniff")
		if vary {
			h.Set("Vary", "Accept-Encoding")
		}
		if !c.Store(creq("GET", "/static/"+strconv.Itoa(i)+".js", "Accept-Encoding", "gzip"), 200, h, body, now) {
			b.Fatal("not stored")
		}
	}
	return c, now
}

// hit looks r up and writes the answer into w, as the gateway does.
func hit(b *testing.B, c *Cache, w *nopWriter, r *http.Request, now time.Time) {
	e, f := c.Lookup(r, now)
	if f != Fresh {
		b.Fatalf("%s: %v", r.URL, f)
	}
	e.Write(w, r, "HIT", now)
	if w.n == 0 {
		b.Fatal("no body")
	}
}

// BenchmarkCacheHit is Lookup and Write of a fresh 1 KiB response with
// seven header fields, into a writer whose header map is reused (net/http
// makes a new one per request: see BenchmarkCacheHitNewHeader).
func BenchmarkCacheHit(b *testing.B) {
	c, now := benchCache(b, 1, false)
	r := creq("GET", "/static/0.js", "Accept-Encoding", "gzip")
	w := &nopWriter{h: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		clear(w.h)
		w.n = 0
		hit(b, c, w, r, now)
	}
}

// BenchmarkCacheHitStoreGet is the store's part of BenchmarkCacheHit:
// the one Get of the entry, which bigcache copies out.
func BenchmarkCacheHitStoreGet(b *testing.B) {
	c, _ := benchCache(b, 1, false)
	b.ReportAllocs()
	for b.Loop() {
		if v, _ := c.store.Get(cacheNS, "/static/0.js"); len(v) == 0 {
			b.Fatal("miss")
		}
	}
}

// BenchmarkCacheHitNewHeader is BenchmarkCacheHit with a new header map
// per request, as net/http gives a handler.
func BenchmarkCacheHitNewHeader(b *testing.B) {
	c, now := benchCache(b, 1, false)
	r := creq("GET", "/static/0.js")
	b.ReportAllocs()
	for b.Loop() {
		hit(b, c, &nopWriter{h: http.Header{}}, r, now)
	}
}

// BenchmarkCacheHitVary is a hit through a Vary marker: two store gets.
func BenchmarkCacheHitVary(b *testing.B) {
	c, now := benchCache(b, 1, true)
	r := creq("GET", "/static/0.js", "Accept-Encoding", "gzip")
	w := &nopWriter{h: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		clear(w.h)
		w.n = 0
		hit(b, c, w, r, now)
	}
}

// BenchmarkCacheHitParallel spreads hits over 1024 URIs and every CPU.
func BenchmarkCacheHitParallel(b *testing.B) {
	const n = 1024
	c, now := benchCache(b, n, false)
	reqs := make([]*http.Request, n)
	for i := range reqs {
		reqs[i] = creq("GET", "/static/"+strconv.Itoa(i)+".js")
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		w := &nopWriter{h: http.Header{}}
		i := 0
		for pb.Next() {
			clear(w.h)
			w.n = 0
			hit(b, c, w, reqs[i%n], now)
			i++
		}
	})
}

// BenchmarkCacheStore is the miss path's Store of a 1 KiB response.
func BenchmarkCacheStore(b *testing.B) {
	c, now := benchCache(b, 0, false)
	r := creq("GET", "/static/s.js")
	h := hdrs("Content-Type", "application/javascript", "Cache-Control", "public, max-age=3600", "Etag", `"1"`,
		"Surrogate-Key", "js static")
	body := bytes.Repeat([]byte("x"), 1024)
	b.ReportAllocs()
	for b.Loop() {
		if !c.Store(r, 200, h, body, now) {
			b.Fatal("not stored")
		}
	}
}

func BenchmarkParseCacheControl(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		ParseCacheControl(`public, max-age=3600, s-maxage=7200, stale-while-revalidate=60, no-cache="Set-Cookie"`)
	}
}
