package lbgateway

import (
	"context"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/nats-io/nats.go"
)

// staticHandler answers /static/* as a cacheable page tagged "static",
// /vary by language, /swr with a one-second life and a long
// stale-while-revalidate, and /update with a Cachebus-Expire of
// /static/a.
func staticHandler(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	switch {
	case strings.HasPrefix(r.URL.Path, "/static/"):
		h.Set("Cache-Control", "public, max-age=300")
		h.Set("Surrogate-Key", "static page-"+strings.TrimPrefix(r.URL.Path, "/static/"))
	case r.URL.Path == "/vary":
		h.Set("Cache-Control", "max-age=300")
		h.Set("Vary", "Accept-Language")
		_, _ = w.Write([]byte("lang=" + r.Header.Get("Accept-Language")))
		return
	case r.URL.Path == "/swr":
		h.Set("Cache-Control", "max-age=1, stale-while-revalidate=60")
	case r.URL.Path == "/update":
		h.Set(ExpireHeader, "http /static/a")
		h.Add(ExpireHeader, "users user:1 cart:1:*")
	}
	_, _ = w.Write([]byte("page " + r.URL.Path + " at " + time.Now().Format(time.RFC3339Nano)))
}

func cachingConfig(bs ...*backend) Config {
	cfg := testConfig(bs...)
	cfg.Cache = []string{"/static/", "/vary", "/swr", "/update", "/page"}
	return cfg
}

// TestCacheThroughGateway: miss then hit, Age, tags and surrogate headers
// kept from the client, Vary, stale-while-revalidate.
func TestCacheThroughGateway(t *testing.T) {
	c := newCluster(t)
	b := newBackend(t, "b1")
	b.setHandler(staticHandler)
	g := startGateway(t, c, cachingConfig(b))

	resp, first := get(t, http.DefaultClient, g.url+"/static/a")
	if x := resp.Header.Get("X-Cache"); x != "MISS" {
		t.Fatalf("first GET: X-Cache %q, want MISS", x)
	}
	for _, h := range []string{"Surrogate-Key", "Surrogate-Control"} {
		if v := resp.Header.Get(h); v != "" {
			t.Errorf("%s %q reached the client", h, v)
		}
	}
	hits := b.hits.Load()
	resp, again := get(t, http.DefaultClient, g.url+"/static/a")
	if x := resp.Header.Get("X-Cache"); x != "HIT" || again != first || resp.Header.Get("Age") == "" {
		t.Fatalf("second GET: X-Cache %q Age %q, same body %v; want HIT from the first", x, resp.Header.Get("Age"), again == first)
	}
	if b.hits.Load() != hits {
		t.Fatal("a hit reached the backend")
	}
	if cs := g.Status().Cache; cs.Hits != 1 || cs.Misses != 1 || cs.HitRatio != 0.5 {
		t.Errorf("status counts hits %d misses %d ratio %v, want 1, 1, 0.5", cs.Hits, cs.Misses, cs.HitRatio)
	}

	t.Run("vary", func(t *testing.T) {
		for range 2 {
			for _, lang := range []string{"en", "fr"} {
				_, body := get(t, http.DefaultClient, g.url+"/vary", "Accept-Language", lang)
				if body != "lang="+lang {
					t.Fatalf("Accept-Language %s got %q", lang, body)
				}
			}
		}
	})

	t.Run("stale-while-revalidate", func(t *testing.T) {
		_, v1 := get(t, http.DefaultClient, g.url+"/swr")
		waitFor(t, 10*time.Second, "served stale", func() bool {
			resp, body := get(t, http.DefaultClient, g.url+"/swr")
			return resp.Header.Get("X-Cache") == "STALE" && body == v1
		})
		waitFor(t, 10*time.Second, "refreshed in the background", func() bool {
			resp, body := get(t, http.DefaultClient, g.url+"/swr")
			return resp.Header.Get("X-Cache") == "HIT" && body != v1
		})
	})
}

// TestPurge: expires from the bus purge by URL, prefix and tag; a
// backend's Cachebus-Expire reaches a second gateway and other
// namespaces.
func TestPurge(t *testing.T) {
	c := newCluster(t)
	b := newBackend(t, "b1")
	b.setHandler(staticHandler)
	cfgA, cfgB := cachingConfig(b), cachingConfig(b)
	cfgA.ID, cfgB.ID = "gw-a", "gw-b"
	a, gb := startGateway(t, c, cfgA), startGateway(t, c, cfgB)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	cached := func(g *running, path string) bool {
		resp, _ := get(t, http.DefaultClient, g.url+path)
		return resp.Header.Get("X-Cache") == "HIT"
	}
	warm := func(g *running, paths ...string) {
		for _, p := range paths {
			waitFor(t, 5*time.Second, "cached "+p, func() bool { return cached(g, p) })
		}
	}
	expectPurged := func(g *running, path string) {
		t.Helper()
		waitFor(t, 5*time.Second, "purged "+path, func() bool {
			resp, _ := get(t, http.DefaultClient, g.url+path)
			return resp.Header.Get("X-Cache") == "MISS"
		})
	}

	cases := []struct {
		name    string
		expire  bus.Expire
		purged  []string
		survive []string
	}{
		{"by URL", bus.Expire{Keys: []string{"/static/a"}}, []string{"/static/a"}, []string{"/static/b"}},
		{"by prefix", bus.Expire{Prefixes: []string{"/static/"}}, []string{"/static/a", "/static/b"}, []string{"/vary"}},
		{"by tag", bus.Expire{Tags: []string{"page-b"}}, []string{"/static/b"}, []string{"/static/a"}},
		{"all", bus.Expire{All: true}, []string{"/static/a", "/vary"}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			paths := append(append([]string{}, tc.purged...), tc.survive...)
			warm(gb, paths...)
			if _, err := c.pub.Expire(ctx, "http", tc.expire); err != nil {
				t.Fatal(err)
			}
			for _, p := range tc.purged {
				expectPurged(gb, p)
			}
			for _, p := range tc.survive {
				if !cached(gb, p) {
					t.Errorf("%s was purged too", p)
				}
			}
		})
	}

	t.Run("Cachebus-Expire from a backend reaches the other gateway", func(t *testing.T) {
		warm(gb, "/static/a")
		warm(a, "/static/a")
		users := make(chan bus.Expire, 1)
		sub, err := c.conn.NC.Subscribe(c.conn.Subjects.Expire("users"), func(m *nats.Msg) {
			if e, err := bus.DecodeExpire(m.Data); err == nil {
				users <- e
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Unsubscribe()
		req, _ := http.NewRequest(http.MethodPost, a.url+"/update", strings.NewReader("x"))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if v := resp.Header.Get(ExpireHeader); v != "" {
			t.Errorf("%s %q reached the client", ExpireHeader, v)
		}
		// The acknowledged publish is done before the answer: the sender's
		// own cache is already purged.
		if cached(a, "/static/a") {
			t.Error("the gateway that got the header still has /static/a")
		}
		expectPurged(gb, "/static/a")
		select {
		case e := <-users:
			if !reflect.DeepEqual(e.Keys, []string{"user:1"}) || !reflect.DeepEqual(e.Prefixes, []string{"cart:1:"}) || e.Origin != "gw-a" {
				t.Errorf("users expire = %+v", e)
			}
		case <-time.After(5 * time.Second):
			t.Error("no expire published for namespace users")
		}
	})
}

// TestParseExpireHeader: the header's grammar and what it refuses.
func TestParseExpireHeader(t *testing.T) {
	cases := []struct {
		in      []string
		want    map[string]bus.Expire
		wantErr string
	}{
		{[]string{"http /a /b*"}, map[string]bus.Expire{"http": {Keys: []string{"/a"}, Prefixes: []string{"/b"}}}, ""},
		{[]string{"http /a", "http /c", "users u:1"}, map[string]bus.Expire{"http": {Keys: []string{"/a", "/c"}}, "users": {Keys: []string{"u:1"}}}, ""},
		{[]string{"  "}, map[string]bus.Expire{}, ""},
		{[]string{"http"}, nil, "no key"},
		{[]string{"bad/ns /a"}, nil, "invalid ns"},
	}
	for _, tc := range cases {
		got, err := ParseExpireHeader(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%q: err %v, want %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.in, err)
			continue
		}
		flat := map[string]bus.Expire{}
		for ns, e := range got {
			flat[ns] = *e
		}
		if !reflect.DeepEqual(flat, tc.want) {
			t.Errorf("%q = %+v, want %+v", tc.in, flat, tc.want)
		}
	}
}

// FuzzParseExpireHeader: no header line a backend sends makes the parser
// panic, and what it accepts is a valid expire of a valid namespace.
func FuzzParseExpireHeader(f *testing.F) {
	for _, s := range []string{"http /a /b*", "users u:1\nhttp /x", "http", "bad/ns /a", " http  /a ", "http *", "http /\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := ParseExpireHeader(strings.Split(s, "\n"))
		if err != nil {
			return
		}
		for ns, e := range got {
			if bus.CheckNamespace(ns) != nil || e.Validate() != nil {
				t.Fatalf("%q accepted as %s %+v", s, ns, e)
			}
		}
	})
}
