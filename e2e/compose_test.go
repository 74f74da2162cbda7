//go:build unix

package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cachebus/cachebus/e2e/harness"
	"github.com/cachebus/cachebus/lbgateway"
)

// TestCompose runs compose/docker-compose.yml as a user does, where a
// Docker engine answers: it builds the image with no registry and no
// network (compose/local-image.sh: a Go base image from this machine's
// toolchain, and a copy of the repository with its modules vendored), runs
// `up -d` under a project name and host ports of its own, waits for every
// service to be healthy, and then, through the two gateways and with the
// cachebus binary on the host as an operator would:
//   - nats1's admin API answers the host and lists every member up, and
//     the event log is on the three NATS servers;
//   - a logged-in user sticks to one app, through either gateway, and its
//     counter grows;
//   - a memoized page is computed once, then again after `cachebus expire`;
//   - a cached page is purged from both gateways by one expire of its tag;
//   - `cachebus fallback on` reaches both gateways, which serve the cached
//     page and refuse the rest at once, until `fallback off`;
//   - `cachebus drain app --wait` on the user's app keeps the user there
//     and sends new logins elsewhere; once the app is stopped the session
//     goes on, counter intact, on another app: it lives in the cache tier;
//   - a cache node stopped and started again loses no session.
//
// It skips, saying why, where no engine or no Compose answers, unless
// CACHEBUS_REQUIRE_DOCKER=1. A failed check prints the logs of the
// services concerned; the stack, its volumes and the images tagged for
// the run are removed at the end (the Go base image is kept: its tag names
// its content, so the next run reuses it).
func TestCompose(t *testing.T) {
	tool := requireDocker(t)
	begin := time.Now()
	s := newComposeStack(t, tool)
	goImage := s.prepare()
	t.Cleanup(s.cleanup)
	buildStart := time.Now()
	s.build(goImage)
	buildTook := time.Since(buildStart)

	upStart := time.Now()
	s.mustCompose(5*time.Minute, nil, "up", "-d", "--no-build")
	s.waitHealthy(3*time.Minute, composeServices...)
	t.Logf("%d services up and healthy in %s", len(composeServices), time.Since(upStart).Round(time.Millisecond))

	checks := time.Now()
	composeAdmin(t, s)
	alice := newComposeUser(t, s, "alice")
	home := composeSticky(t, s, alice)
	composeMemo(t, s, alice, home)
	anon := newComposeUser(t, s, "anonymous")
	composePurge(t, s, anon)
	composeFallback(t, s, alice, anon, home)
	others := composeDrain(t, s, alice, home)
	composeNodeRestart(t, s, append(others, alice))
	t.Logf("checks took %s; the whole test %s, of which the image build %s",
		time.Since(checks).Round(time.Millisecond), time.Since(begin).Round(time.Second), buildTook.Round(time.Second))
}

// composeAdmin checks nats1's admin API from the host, as published: the
// host is an allowed source, its status lists every member up, and a verb
// without the token is refused.
func composeAdmin(t *testing.T, s *composeStack) {
	t.Helper()
	admin := fmt.Sprintf("http://127.0.0.1:%d", s.ports.admin)
	want := []string{"node/node1", "node/node2", "node/node3", "app/app1", "app/app2", "app/app3", "gateway/gw1", "gateway/gw2"}
	var up []string
	s.waitFor(30*time.Second, "nats1's /v1/status to list every member up", []string{"nats1"}, func() bool {
		req, err := http.NewRequest(http.MethodGet, admin+"/v1/status", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+composeToken)
		code, body := harness.HTTPDo(req)
		if code != http.StatusOK {
			t.Logf("GET /v1/status: %d %s", code, body)
			return false
		}
		var st struct {
			Members []struct{ ID, Role, State string }
		}
		if err := json.Unmarshal([]byte(body), &st); err != nil {
			s.fatalf([]string{"nats1"}, "GET /v1/status: %v: %s", err, body)
		}
		up = up[:0]
		for _, m := range st.Members {
			if m.State == "up" {
				up = append(up, m.Role+"/"+m.ID)
			}
		}
		for _, w := range want {
			if !slices.Contains(up, w) {
				return false
			}
		}
		return true
	})
	req, err := http.NewRequest(http.MethodPost, admin+"/v1/fallback", strings.NewReader(`{"v":1,"on":true}`))
	if err != nil {
		t.Fatal(err)
	}
	if code, body := harness.HTTPDo(req); code != http.StatusUnauthorized {
		s.fatalf([]string{"nats1"}, "POST /v1/fallback without the token: %d %s, want 401", code, body)
	}
	t.Logf("admin: nats1's API answers the host on port %d; members up: %v", s.ports.admin, up)

	// The event log is replicated on the three NATS servers.
	out := s.cachebus(30*time.Second, []string{"nats1", "nats2", "nats3"}, "status")
	if !composeEventLogR3.MatchString(out) {
		s.fatalf([]string{"nats1", "nats2", "nats3"}, "cachebus status does not show the event log on 3 replicas:\n%s", out)
	}
}

// composeEventLogR3 is the event log's line of `cachebus status` on three
// replicas.
var composeEventLogR3 = regexp.MustCompile(`(?m)^EVENT LOG\s+CACHEBUS_EVENTS\s.*\sR3$`)

// composeSticky logs alice in and checks that her requests stay on the
// app that started her session, through either gateway (they share the
// cookie's key), with her counter growing. It returns that app.
func composeSticky(t *testing.T, s *composeStack, alice *composeUser) string {
	t.Helper()
	login := alice.must(http.MethodPost, s.gw1(), "/login", url.Values{"user": {"alice"}}, http.StatusSeeOther)
	home := login.app
	if home == "" {
		s.fatalf([]string{"gw1"}, "login answered without Demo-App: %+v", login)
	}
	if !alice.hasCookie("demo_session") || !alice.hasCookie("cbroute") {
		s.fatalf([]string{"gw1", home}, "after login, cookies %v: want demo_session and the gateway's cbroute", alice.jar.Cookies(alice.base))
	}
	for i := 1; i <= 6; i++ {
		gw := []string{s.gw1(), s.gw2()}[i%2]
		alice.counter(http.MethodPost, gw, home, i)
	}
	t.Logf("sticky: alice's session on %s, 6 counts through gw1 and gw2", home)
	return home
}

// composeMemo checks that a product page is memoized on alice's app, and
// recomputed after an expire sent from the host.
func composeMemo(t *testing.T, s *composeStack, alice *composeUser, home string) {
	t.Helper()
	computedAt := func() string {
		a := alice.must(http.MethodGet, s.gw1(), "/products/1", nil, http.StatusOK)
		if a.app != home {
			s.fatalf([]string{"gw1", home, a.app}, "GET /products/1 answered by %s, want alice's app %s", a.app, home)
		}
		return a.header(s, "Demo-Computed-At")
	}
	first := computedAt()
	if again := computedAt(); again != first {
		s.fatalf([]string{home}, "product 1 computed at %s, then at %s: not memoized", first, again)
	}
	s.cachebus(30*time.Second, []string{home}, "expire", "demo-pages", "product:1")
	var second string
	s.waitFor(15*time.Second, "product 1 recomputed on "+home+" after the expire", []string{home}, func() bool {
		second = computedAt()
		return second != first
	})
	if again := computedAt(); again != second {
		s.fatalf([]string{home}, "product 1 recomputed at %s, then at %s: not memoized again", second, again)
	}
	t.Logf("memo: product 1 computed at %s, and again at %s after the expire", first, second)
}

// composePurge fills both gateways' caches with /news and purges both
// with one expire of its Surrogate-Key.
func composePurge(t *testing.T, s *composeStack, anon *composeUser) {
	t.Helper()
	cached := map[string]string{}
	for _, gw := range s.gateways() {
		s.waitFor(15*time.Second, gw.name+" to answer /news from its cache", []string{gw.name}, func() bool {
			a := anon.must(http.MethodGet, gw.url, "/news", nil, http.StatusOK)
			cached[gw.name] = a.header(s, "Demo-Rendered-At")
			return a.h.Get("X-Cache") == "HIT"
		})
		a := anon.must(http.MethodGet, gw.url, "/news", nil, http.StatusOK)
		if at := a.header(s, "Demo-Rendered-At"); a.h.Get("X-Cache") != "HIT" || at != cached[gw.name] {
			s.fatalf([]string{gw.name}, "%s: /news %s rendered at %s, want a HIT of the copy rendered at %s", gw.name, a.h.Get("X-Cache"), at, cached[gw.name])
		}
	}
	s.cachebus(30*time.Second, []string{"gw1", "gw2"}, "expire", "http", "--tag", "news")
	for _, gw := range s.gateways() {
		s.waitFor(15*time.Second, gw.name+" to purge /news", []string{gw.name}, func() bool {
			a := anon.must(http.MethodGet, gw.url, "/news", nil, http.StatusOK)
			return a.header(s, "Demo-Rendered-At") != cached[gw.name]
		})
		// The new copy is stored once its body has gone out: wait for it,
		// for the fallback check that follows.
		s.waitFor(15*time.Second, gw.name+" to cache /news again", []string{gw.name}, func() bool {
			return anon.must(http.MethodGet, gw.url, "/news", nil, http.StatusOK).h.Get("X-Cache") == "HIT"
		})
	}
	t.Logf("purge: /news cached on gw1 (%s) and gw2 (%s), both purged by one expire of the tag", cached["gw1"], cached["gw2"])
}

// composeFallback turns fallback on and off from the host and checks what
// both gateways report and serve meanwhile.
func composeFallback(t *testing.T, s *composeStack, alice, anon *composeUser, home string) {
	t.Helper()
	s.cachebus(30*time.Second, []string{"gw1", "gw2"}, "fallback", "on", "--reason", "e2e compose")
	s.waitGateways(15*time.Second, "fallback on", func(st lbgateway.Status) bool {
		return st.Fallback.On && !st.Fallback.Auto && st.Fallback.Reason == "e2e compose"
	})
	for _, gw := range s.gateways() {
		// The cached page is served, however stale; the rest is refused at
		// once rather than sent to the apps.
		a := anon.must(http.MethodGet, gw.url, "/news", nil, http.StatusOK)
		if xc := a.h.Get("X-Cache"); xc != "HIT" && xc != "STALE" {
			s.fatalf([]string{gw.name}, "%s in fallback: /news X-Cache %q, want a cached copy", gw.name, xc)
		}
		a = alice.must(http.MethodGet, gw.url, "/products/1", nil, http.StatusServiceUnavailable)
		if a.h.Get("Retry-After") == "" {
			s.fatalf([]string{gw.name}, "%s in fallback: 503 without Retry-After", gw.name)
		}
	}
	s.cachebus(30*time.Second, []string{"gw1", "gw2"}, "fallback", "off")
	s.waitGateways(15*time.Second, "fallback off", func(st lbgateway.Status) bool { return !st.Fallback.On })
	for _, gw := range s.gateways() {
		if a := alice.must(http.MethodGet, gw.url, "/products/1", nil, http.StatusOK); a.app != home {
			s.fatalf([]string{gw.name, home}, "after fallback: /products/1 through %s answered by %s, want %s", gw.name, a.app, home)
		}
	}
	t.Logf("fallback: on and off on both gateways; the cached page served meanwhile, the rest refused")
}

// composeDrain drains alice's app while she goes on using it, logs new
// users in elsewhere, then stops the app: alice's session continues on
// another app with its counter. It returns the new users.
func composeDrain(t *testing.T, s *composeStack, alice *composeUser, home string) []*composeUser {
	t.Helper()
	drain := harn.Start(t, "cachebus drain app "+home, map[string]string{"CACHEBUS_NATS_URL": s.natsURL()},
		"drain", "app", home, "--deadline", "10s", "--wait", "--timeout", "90s")
	s.waitGateways(15*time.Second, home+" draining", func(st lbgateway.Status) bool {
		state := harness.BackendState(st, home)
		return state == "draining" || state == "drained"
	})
	n := alice.count
	alice.counter(http.MethodPost, s.gw1(), home, n+1)
	alice.counter(http.MethodPost, s.gw2(), home, n+2)

	var others []*composeUser
	placed := map[string]int{}
	for i := range 6 {
		gw := []string{s.gw1(), s.gw2()}[i%2]
		u := newComposeUser(t, s, fmt.Sprintf("user%d", i))
		a := u.must(http.MethodPost, gw, "/login", url.Values{"user": {u.name}}, http.StatusSeeOther)
		if a.app == home {
			s.fatalf([]string{"gw1", "gw2", home}, "%s logged in on %s, which is draining", u.name, home)
		}
		u.counter(http.MethodPost, gw, a.app, 1)
		placed[a.app]++
		others = append(others, u)
	}
	// The drain ends at its deadline: alice's session is still live.
	if code := drain.Wait(s.clip(60 * time.Second)); code != 0 || !strings.Contains(drain.Output(), "app/"+home+" drained") {
		s.fatalf([]string{"gw1", "gw2", home}, "drain --wait: exit %d, want 0 and %q drained:\n%s", code, "app/"+home, drain.Output())
	}

	stop := time.Now()
	s.mustCompose(2*time.Minute, []string{home}, "stop", home)
	t.Logf("drain: alice stayed on %s, new sessions went to %v; %s stopped in %s",
		home, placed, home, time.Since(stop).Round(time.Millisecond))
	// The first requests after the stop may still be sent to it: a GET is
	// retried on another app.
	var moved string
	s.waitFor(30*time.Second, "alice's session to move off "+home, []string{"gw1", home}, func() bool {
		a, err := alice.do(http.MethodGet, s.gw1(), "/counter", nil)
		moved = a.app
		return err == nil && a.code == http.StatusOK && a.app != home
	})
	n = alice.count
	alice.counter(http.MethodPost, s.gw1(), moved, n+1)
	alice.counter(http.MethodPost, s.gw2(), moved, n+2)
	t.Logf("drain: with %s stopped, alice's session goes on on %s at count %d", home, moved, alice.count)
	alice.app = moved
	return others
}

// composeNodeRestart stops a cache node and starts it again: every
// session keeps its counter while it is away and once it is back.
func composeNodeRestart(t *testing.T, s *composeStack, users []*composeUser) {
	t.Helper()
	check := func(when string) {
		for _, u := range users {
			// A session read may meet a partition changing hands for a
			// moment (503): wait for an answer, then require its count.
			var a composeAnswer
			s.waitFor(30*time.Second, u.name+"'s session "+when, []string{"node1", "node2", "node3", u.app}, func() bool {
				var err error
				a, err = u.do(http.MethodGet, s.gw1(), "/counter", nil)
				return err == nil && a.code == http.StatusOK
			})
			if got := a.h.Get("Demo-Counter"); got != strconv.Itoa(u.count) {
				s.fatalf([]string{"node1", "node2", "node3", a.app}, "%s: %s's counter %s, want %d (%s)", when, u.name, got, u.count, a.body)
			}
		}
	}
	s.mustCompose(2*time.Minute, []string{"node2"}, "stop", "node2")
	check("with node2 stopped")
	s.mustCompose(2*time.Minute, []string{"node2"}, "start", "node2")
	s.waitHealthy(2*time.Minute, "node2")
	check("with node2 back")
	for _, u := range users {
		u.counter(http.MethodPost, s.gw2(), u.app, u.count+1)
	}
	t.Logf("node2 stopped and started: %d sessions kept their counters", len(users))
}

// composeUser is one browser of the demo: one cookie jar for both
// gateways (a browser keeps cookies by host, not port), no redirect
// followed. It remembers its app and its counter.
type composeUser struct {
	t     *testing.T
	s     *composeStack
	name  string
	jar   *cookiejar.Jar
	base  *url.URL
	c     *http.Client
	app   string
	count int
}

func newComposeUser(t *testing.T, s *composeStack, name string) *composeUser {
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	base, _ := url.Parse(s.gw1())
	return &composeUser{t: t, s: s, name: name, jar: jar, base: base, c: &http.Client{Jar: jar, Timeout: 15 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

// composeAnswer is what the demo answered through a gateway.
type composeAnswer struct {
	code int
	app  string // Demo-App
	h    http.Header
	body string
}

// header returns a header the answer must have.
func (a composeAnswer) header(s *composeStack, name string) string {
	s.t.Helper()
	v := a.h.Get(name)
	if v == "" {
		s.fatalf([]string{"gw1", "gw2", a.app}, "answer without %s: %d %v %q", name, a.code, a.h, a.body)
	}
	return v
}

func (u *composeUser) hasCookie(name string) bool {
	for _, c := range u.jar.Cookies(u.base) {
		if c.Name == name {
			return true
		}
	}
	return false
}

// do sends one request; form, when not nil, is its url-encoded body.
func (u *composeUser) do(method, gw, path string, form url.Values) (composeAnswer, error) {
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, gw+path, body)
	if err != nil {
		return composeAnswer{}, err
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	resp, err := u.c.Do(req)
	if err != nil {
		return composeAnswer{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return composeAnswer{}, fmt.Errorf("%s %s: read body: %w", method, gw+path, err)
	}
	return composeAnswer{code: resp.StatusCode, app: resp.Header.Get("Demo-App"), h: resp.Header, body: string(b)}, nil
}

// must is do that requires status want.
func (u *composeUser) must(method, gw, path string, form url.Values, want int) composeAnswer {
	u.t.Helper()
	a, err := u.do(method, gw, path, form)
	gwName := u.s.gatewayName(gw)
	if err != nil {
		u.s.fatalf([]string{gwName}, "%s: %s %s through %s: %v", u.name, method, path, gwName, err)
	}
	if a.code != want {
		u.s.fatalf([]string{gwName, a.app}, "%s: %s %s through %s: %d from app %q, want %d: %s",
			u.name, method, path, gwName, a.code, a.app, want, strings.TrimSpace(a.body))
	}
	return a
}

// counter sends a request to /counter (a POST counts one more) and
// requires the answer from app with count n.
func (u *composeUser) counter(method, gw, app string, n int) {
	u.t.Helper()
	a := u.must(method, gw, "/counter", nil, http.StatusOK)
	gwName := u.s.gatewayName(gw)
	if a.app != app || a.h.Get("Demo-Counter") != strconv.Itoa(n) || a.h.Get("Demo-User") != u.name {
		u.s.fatalf([]string{gwName, app, a.app}, "%s: %s /counter through %s: user %q count %q from %s, want %s count %d from %s",
			u.name, method, gwName, a.h.Get("Demo-User"), a.h.Get("Demo-Counter"), a.app, u.name, n, app)
	}
	u.app, u.count = app, n
}

// gateways are the stack's two gateways by service name.
func (s *composeStack) gateways() []struct{ name, url string } {
	return []struct{ name, url string }{{"gw1", s.gw1()}, {"gw2", s.gw2()}}
}

func (s *composeStack) gatewayName(url string) string {
	for _, gw := range s.gateways() {
		if gw.url == url {
			return gw.name
		}
	}
	return url
}
