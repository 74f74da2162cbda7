//go:build unix

package e2e

import (
	"io"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus/bustest"
	"github.com/cachebus/cachebus/e2e/harness"
	"github.com/cachebus/cachebus/lbgateway"
)

// answer is what a gateway answered to one request.
type answer struct {
	code  int
	cache string // X-Cache
	body  string
	h     http.Header
	took  time.Duration
}

// fetch sends one request; a transport error fails the test.
func fetch(t *testing.T, method, url string, h http.Header) answer {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range h {
		req.Header[k] = v
	}
	start := time.Now()
	resp, err := harness.HTTPClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, url, err)
	}
	return answer{code: resp.StatusCode, cache: resp.Header.Get("X-Cache"), body: string(body), h: resp.Header, took: time.Since(start)}
}

// cacheGW is a gateway under test, with the body each cacheable path
// last got fresh from the app through it: what a cached answer must be.
type cacheGW struct {
	name, url string
	fresh     map[string]string
	races     int // MISSes while waiting for a copy just fetched to be stored
}

// get asks the gateway for a cacheable path of the app and checks what
// every such answer must be: 200; a MISS with a body never served before
// (the app counts its requests into it); a HIT or STALE with the body of
// the last MISS, an Age and no cookie; never the Surrogate-Key.
func (g *cacheGW) get(t *testing.T, path string, h http.Header) answer {
	t.Helper()
	a := fetch(t, http.MethodGet, g.url+path, h)
	if a.code != http.StatusOK {
		t.Fatalf("%s: GET %s: %d %s", g.name, path, a.code, a.body)
	}
	if sk := a.h.Values("Surrogate-Key"); len(sk) > 0 {
		t.Errorf("%s: GET %s (%s): the client got Surrogate-Key %q", g.name, path, a.cache, sk)
	}
	name := strings.TrimPrefix(path, "/static/")
	if !strings.HasPrefix(a.body, "static "+name+",") {
		t.Fatalf("%s: GET %s (%s): body %q", g.name, path, a.cache, a.body)
	}
	switch a.cache {
	case "MISS":
		if a.body == g.fresh[path] {
			t.Errorf("%s: GET %s: a MISS answered %q again, as the last fresh fetch", g.name, path, a.body)
		}
		g.fresh[path] = a.body
	case "HIT", "STALE":
		if want := g.fresh[path]; a.body != want {
			t.Errorf("%s: GET %s: %s answered %q, want the copy fetched last: %q", g.name, path, a.cache, a.body, want)
		}
		if _, err := strconv.Atoi(a.h.Get("Age")); err != nil {
			t.Errorf("%s: GET %s: %s with Age %q", g.name, path, a.cache, a.h.Get("Age"))
		}
		if c := a.h.Values("Set-Cookie"); len(c) > 0 {
			t.Errorf("%s: GET %s: %s sets a cookie: %q", g.name, path, a.cache, c)
		}
	default:
		t.Fatalf("%s: GET %s: X-Cache %q", g.name, path, a.cache)
	}
	return a
}

// want requires the next answer for path to be of kind xcache.
func (g *cacheGW) want(t *testing.T, path, xcache string) answer {
	t.Helper()
	a := g.get(t, path, nil)
	if a.cache != xcache {
		t.Fatalf("%s: GET %s: X-Cache %s, want %s", g.name, path, a.cache, xcache)
	}
	return a
}

// refill waits for path, just fetched fresh, to be answered from the
// cache. The copy is stored once its body has gone to the client, so a
// request right after may still miss (and fetch again): it is counted.
func (g *cacheGW) refill(t *testing.T, path string) {
	t.Helper()
	bustest.WaitFor(t, 5*time.Second, g.name+" to answer "+path+" from its cache", func() bool {
		if g.get(t, path, nil).cache == "HIT" {
			return true
		}
		g.races++
		return false
	})
}

// fill requires path to miss on every gateway, then to be answered from
// the cache.
func fill(t *testing.T, gws []*cacheGW, paths ...string) {
	t.Helper()
	for _, g := range gws {
		for _, p := range paths {
			g.want(t, p, "MISS")
			g.refill(t, p)
		}
	}
}

// hits requires every path to be answered from the cache on every
// gateway.
func hits(t *testing.T, gws []*cacheGW, paths ...string) {
	t.Helper()
	for _, g := range gws {
		for _, p := range paths {
			g.want(t, p, "HIT")
		}
	}
}

// waitPurged polls every path on every gateway, each answered HIT until
// it answers MISS (a fresh fetch, stored again), while cmd, when not nil,
// runs to completion. It returns, per gateway, how long after since its
// last path was seen purged, and how long cmd took to exit (a binary
// built with -race sleeps a second before it exits).
func waitPurged(t *testing.T, what string, since time.Time, cmd *harness.Proc, gws []*cacheGW, paths ...string) ([]time.Duration, time.Duration) {
	t.Helper()
	seen := make([]time.Duration, len(gws))
	left := make([]map[string]bool, len(gws))
	for i := range gws {
		left[i] = map[string]bool{}
		for _, p := range paths {
			left[i][p] = true
		}
	}
	var ran time.Duration
	bustest.WaitFor(t, 15*time.Second, what, func() bool {
		done := true
		if cmd != nil && ran == 0 {
			if cmd.Exited() {
				ran = time.Since(since)
			} else {
				done = false
			}
		}
		for i, g := range gws {
			for p := range left[i] {
				a := g.get(t, p, nil)
				if a.cache != "MISS" {
					if a.cache != "HIT" {
						t.Fatalf("%s: GET %s: %s while waiting for its purge, want HIT then MISS", g.name, p, a.cache)
					}
					done = false
					continue
				}
				delete(left[i], p)
				if len(left[i]) == 0 {
					seen[i] = time.Since(since)
				}
			}
		}
		return done
	})
	if cmd != nil {
		if code := cmd.Wait(time.Second); code != 0 {
			t.Fatalf("%s exited %d:\n%s", cmd.Name(), code, cmd.Output())
		}
	}
	for _, g := range gws {
		for _, p := range paths {
			g.refill(t, p)
		}
	}
	return seen, ran
}

// waitGateways polls cond on the status of every gateway and returns,
// per gateway, how long after since it first held.
func waitGateways(t *testing.T, what string, since time.Time, gws []*cacheGW, cond func(lbgateway.Status) bool) []time.Duration {
	t.Helper()
	seen := make([]time.Duration, len(gws))
	bustest.WaitFor(t, 15*time.Second, what, func() bool {
		done := true
		for i, g := range gws {
			if seen[i] != 0 {
				continue
			}
			if cond(harness.GatewayStatus(t, g.url)) {
				seen[i] = time.Since(since)
			} else {
				done = false
			}
		}
		return done
	})
	return seen
}

// appServed is how many requests the app has served, asked of it
// directly.
func appServed(t *testing.T, addr string) int {
	t.Helper()
	code, body := harness.HTTPGet("http://" + addr + "/_e2e/served")
	if code != http.StatusOK {
		t.Fatalf("app %s: /_e2e/served: %d %s", addr, code, body)
	}
	n, err := strconv.Atoi(body)
	if err != nil {
		t.Fatalf("app %s: /_e2e/served: %q", addr, body)
	}
	return n
}

// unavailable requires GET path to be answered at once with the
// fallback's 503 and its Retry-After.
func unavailable(t *testing.T, g *cacheGW, path string) answer {
	t.Helper()
	a := fetch(t, http.MethodGet, g.url+path, nil)
	if a.code != http.StatusServiceUnavailable {
		t.Fatalf("%s: GET %s in fallback: %d %q, want 503", g.name, path, a.code, a.body)
	}
	if s, err := strconv.Atoi(a.h.Get("Retry-After")); err != nil || s <= 0 {
		t.Errorf("%s: GET %s in fallback: Retry-After %q", g.name, path, a.h.Get("Retry-After"))
	}
	if a.took > time.Second {
		t.Errorf("%s: GET %s in fallback took %s: it must not wait on the origin", g.name, path, a.took)
	}
	return a
}

func ms(ds []time.Duration) string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.Round(time.Millisecond).String()
	}
	return strings.Join(out, ", ")
}

// TestGatewayCacheCLI runs real processes: NATS, an app server announced
// by a sidecar, and two gateways caching /static/. Pages cached on both
// are purged on both by `cachebus expire` (a URI, a Surrogate-Key tag, a
// prefix) and by an app's Cachebus-Expire answer through one gateway;
// `cachebus fallback on` makes both answer cached pages and an immediate
// 503 for the rest, without asking the app; when the app is SIGKILLed,
// the gateways fall back by themselves.
func TestGatewayCacheCLI(t *testing.T) {
	n := harn.StartNATS(t)
	apps := harn.StartApps(t, n.URL, "c1")
	app := apps[0]
	env := map[string]string{"CACHEBUS_GATEWAY_CACHE": "/static/"}
	var gws []*cacheGW
	for _, id := range []string{"gwc1", "gwc2"} {
		_, url := harn.StartGateway(t, n.URL, id, env)
		gws = append(gws, &cacheGW{name: id, url: url, fresh: map[string]string{}})
	}
	waitGateways(t, "c1 up in both gateways", time.Now(), gws, func(st lbgateway.Status) bool {
		s := harness.BackendState(st, "c1")
		return s == "up" || s == "slow-start"
	})
	cli := func(args ...string) *harness.Proc {
		return harn.Start(t, "cachebus "+strings.Join(args, " "), map[string]string{"CACHEBUS_NATS_URL": n.URL}, args...)
	}

	// 1. Each gateway fetches a page once, then answers it from its cache.
	fill(t, gws, "/static/a", "/static/b")
	hits(t, gws, "/static/a", "/static/b")

	// 2. A URI purged purges that page alone.
	start := time.Now()
	seen, ran := waitPurged(t, "expire http /static/a on both gateways", start, cli("expire", "http", "/static/a"), gws, "/static/a")
	t.Logf("expire by URI: cachebus expire exited after %s; /static/a purged on the gateways %s after it started", ran.Round(time.Millisecond), ms(seen))
	hits(t, gws, "/static/b")

	// 3. By tag: the Surrogate-Key the app gave.
	start = time.Now()
	seen, ran = waitPurged(t, "expire http --tag page-b on both gateways", start, cli("expire", "http", "--tag", "page-b"), gws, "/static/b")
	t.Logf("expire by tag: cachebus expire exited after %s; /static/b purged on the gateways %s after it started", ran.Round(time.Millisecond), ms(seen))
	hits(t, gws, "/static/a")

	// 4. By prefix.
	start = time.Now()
	seen, ran = waitPurged(t, "expire http --prefix /static/ on both gateways", start, cli("expire", "http", "--prefix", "/static/"), gws, "/static/a", "/static/b")
	t.Logf("expire by prefix: cachebus expire exited after %s; /static/ purged on the gateways %s after it started", ran.Round(time.Millisecond), ms(seen))

	// 5. By the app's answer through one gateway: that gateway has purged
	// before the client has the answer, the other follows; the header is
	// for the gateway alone.
	before := appServed(t, app.Addr)
	start = time.Now()
	post := fetch(t, http.MethodPost, gws[0].url+"/publish/a", nil)
	answered := time.Since(start)
	if post.code != http.StatusOK || post.body != "published a\n" {
		t.Fatalf("POST /publish/a: %d %q", post.code, post.body)
	}
	if ex := post.h.Values("Cachebus-Expire"); len(ex) > 0 {
		t.Errorf("POST /publish/a: the client got Cachebus-Expire %q", ex)
	}
	if got := appServed(t, app.Addr); got != before+1 {
		t.Errorf("the app served %d requests for one POST", got-before)
	}
	gws[0].want(t, "/static/a", "MISS")
	gws[0].refill(t, "/static/a")
	seen, _ = waitPurged(t, "Cachebus-Expire from gwc1 on gwc2", start, nil, gws[1:], "/static/a")
	t.Logf("Cachebus-Expire: POST answered through gwc1 in %s, gwc1 purged before answering; gwc2 purged %s after the POST was sent",
		answered.Round(time.Millisecond), ms(seen))
	hits(t, gws, "/static/a", "/static/b")

	// 6. Fallback by command: cached pages from the cache, however the
	// client asks; anything else an immediate 503; nothing reaches the
	// app.
	start = time.Now()
	on := cli("fallback", "on", "--scope", "http", "--reason", "e2e")
	seen = waitGateways(t, "fallback on in both gateways", start, gws, func(st lbgateway.Status) bool {
		return st.Fallback.On && !st.Fallback.Auto && st.Fallback.Reason == "e2e"
	})
	if code := on.Wait(10 * time.Second); code != 0 {
		t.Fatalf("cachebus fallback on exited %d:\n%s", code, on.Output())
	}
	t.Logf("fallback on: seen by the gateways %s after cachebus fallback started", ms(seen))
	before = appServed(t, app.Addr)
	for _, g := range gws {
		for _, p := range []string{"/static/a", "/static/b"} {
			if a := g.get(t, p, nil); a.cache != "HIT" && a.cache != "STALE" {
				t.Errorf("%s: GET %s in fallback: %s, want the cached copy", g.name, p, a.cache)
			}
		}
		if a := g.get(t, "/static/a", http.Header{"Cache-Control": {"no-cache"}}); a.cache != "STALE" {
			t.Errorf("%s: GET /static/a with no-cache in fallback: %s, want STALE", g.name, a.cache)
		}
		a := unavailable(t, g, "/app/x")
		t.Logf("%s in fallback: GET /app/x answered 503 (Retry-After %s) in %s", g.name, a.h.Get("Retry-After"), a.took.Round(time.Microsecond))
		unavailable(t, g, "/static/never-fetched")
	}
	if got := appServed(t, app.Addr); got != before {
		t.Errorf("the app served %d requests while the gateways were in fallback, want 0", got-before)
	}
	start = time.Now()
	off := cli("fallback", "off", "--scope", "http")
	seen = waitGateways(t, "fallback off in both gateways", start, gws, func(st lbgateway.Status) bool { return !st.Fallback.On })
	if code := off.Wait(10 * time.Second); code != 0 {
		t.Fatalf("cachebus fallback off exited %d:\n%s", code, off.Output())
	}
	t.Logf("fallback off: seen by the gateways %s after cachebus fallback started", ms(seen))
	for _, g := range gws {
		if a := fetch(t, http.MethodGet, g.url+"/app/x", nil); a.code != http.StatusOK || a.body != "hello from c1\n" {
			t.Errorf("%s: GET /app/x after fallback off: %d %q", g.name, a.code, a.body)
		}
		// The 503 was not kept.
		g.want(t, "/static/never-fetched", "MISS")
	}

	// 7. The app dies: the gateways fall back by themselves.
	app.App.Signal(syscall.SIGKILL)
	killed := time.Now()
	seen = waitGateways(t, "c1 out of both gateways' pools", killed, gws, func(st lbgateway.Status) bool {
		s := harness.BackendState(st, "c1")
		return s == "absent" || s == "down"
	})
	for i, g := range gws {
		st := harness.GatewayStatus(t, g.url)
		t.Logf("%s: c1 %s %s after SIGKILL; fallback %+v", g.name, harness.BackendState(st, "c1"), seen[i].Round(time.Millisecond), st.Fallback)
		if !st.Fallback.On || !st.Fallback.Auto {
			t.Errorf("%s: fallback %+v with no app up, want on, automatic", g.name, st.Fallback)
		}
		for _, p := range []string{"/static/a", "/static/b"} {
			if a := g.get(t, p, nil); a.cache != "HIT" && a.cache != "STALE" {
				t.Errorf("%s: GET %s with no app: %s, want the cached copy", g.name, p, a.cache)
			}
		}
		a := unavailable(t, g, "/app/x")
		t.Logf("%s with no app: GET /app/x answered 503 (Retry-After %s) in %s", g.name, a.h.Get("Retry-After"), a.took.Round(time.Microsecond))
		unavailable(t, g, "/static/never-fetched-either")
	}
	for _, g := range gws {
		if g.races > 0 {
			t.Logf("%s: %d times a page just fetched was not yet stored for the next request", g.name, g.races)
		}
	}
}
