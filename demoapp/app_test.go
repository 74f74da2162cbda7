package demoapp

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/bus/bustest"
	"github.com/cachebus/cachebus/cachenode/server"
	"github.com/cachebus/cachebus/persistence"
)

// stack is one embedded NATS with a cache node and the apps a test
// starts on it, each on its own connection as separate processes are.
type stack struct {
	t   *testing.T
	url string
}

func newStack(t *testing.T) *stack {
	t.Helper()
	tg := bustest.Embedded(t)
	admin := bustest.Connect(t, tg.URL)
	bustest.EnsureEvents(t, admin, persistence.EventLogConfig{})
	bustest.OpenState(t, admin)
	cfg := server.Config{ID: "node1", MaxMB: 8, MaxValue: 8 << 10, RequestTimeout: time.Second}
	cfg.Interval, cfg.FailureTimeout = 100*time.Millisecond, 600*time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	node, err := server.Start(ctx, cfg, server.Options{Conn: bustest.Connect(t, tg.URL)})
	if err != nil {
		t.Fatalf("start node1: %v", err)
	}
	t.Cleanup(func() { node.Shutdown(context.Background()) })
	bustest.WaitFor(t, 20*time.Second, "node1 ready", func() bool { return node.Ready() == nil })
	return &stack{t: t, url: tg.URL}
}

func testConfig(id string) Config {
	cfg := Config{ID: id, DrainTimeout: 10 * time.Second, SessionNS: "sessions", SessionTTL: time.Minute,
		SessionIdle: time.Minute, PageNS: "demo-pages", PageTTL: time.Minute, ComputeDelay: time.Millisecond, DBReplicas: 1}
	cfg.Interval, cfg.FailureTimeout = 100*time.Millisecond, 600*time.Millisecond
	return cfg
}

// running is an app serving on a free port.
type running struct {
	*App
	base string
}

func (s *stack) start(cfg Config) *running {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	app, err := New(ctx, cfg, Options{Conn: bustest.Connect(s.t, s.url), Log: bustest.Logger(s.t)})
	if err != nil {
		s.t.Fatalf("start %s: %v", cfg.ID, err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		s.t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- app.Serve(ln) }()
	s.t.Cleanup(func() {
		app.Close(context.Background())
		if err := <-served; err != nil {
			s.t.Errorf("%s: Serve: %v", cfg.ID, err)
		}
	})
	return &running{App: app, base: "http://" + ln.Addr().String()}
}

// client is a browser: a cookie jar, no redirects followed.
func client(t *testing.T) *http.Client {
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Jar: jar, Timeout: 10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

type answer struct {
	code   int
	header http.Header
	body   string
}

func do(t *testing.T, c *http.Client, method, u string, form url.Values) answer {
	t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, u, body)
	if err != nil {
		t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return answer{resp.StatusCode, resp.Header, string(b)}
}

// sessionID is the session cookie c holds for base.
func sessionID(t *testing.T, c *http.Client, base string) string {
	t.Helper()
	u, _ := url.Parse(base)
	for _, k := range c.Jar.Cookies(u) {
		if k.Name == sessionCookie {
			return k.Value
		}
	}
	t.Fatalf("no %s cookie for %s", sessionCookie, base)
	return ""
}

// TestProductMemoizedAndFlushedEverywhere: a product page is computed
// once per app server and then served from memory; an update on one app
// server flushes it on the other too, which shows the new name.
func TestProductMemoizedAndFlushedEverywhere(t *testing.T) {
	s := newStack(t)
	a, b := s.start(testConfig("app1")), s.start(testConfig("app2"))
	c := client(t)
	first := do(t, c, "GET", b.base+"/products/7", nil)
	if first.code != 200 || !strings.Contains(first.body, "Product 7") || first.header.Get("Demo-App") != "app2" {
		t.Fatalf("GET /products/7 on app2 = %d %v, want 200 from app2 with the default name", first.code, first.header)
	}
	at := first.header.Get("Demo-Computed-At")
	if again := do(t, c, "GET", b.base+"/products/7", nil); again.header.Get("Demo-Computed-At") != at {
		t.Fatalf("second GET computed at %s, want the memoized %s", again.header.Get("Demo-Computed-At"), at)
	}
	up := do(t, c, "POST", a.base+"/products/7", url.Values{"name": {"Blue kettle"}})
	if up.code != http.StatusSeeOther || up.header.Get("Location") != "/products/7" {
		t.Fatalf("POST /products/7 on app1 = %d %v, want 303 to the page", up.code, up.header)
	}
	bustest.WaitFor(t, 5*time.Second, "app2 to recompute product 7 with its new name", func() bool {
		p := do(t, c, "GET", b.base+"/products/7", nil)
		return p.header.Get("Demo-Computed-At") != at && strings.Contains(p.body, "Blue kettle")
	})
}

// TestSessionLivesInTheCacheTier: a session started on one app server
// goes on, counter intact, on another (as when its first is drained);
// logout ends it everywhere.
func TestSessionLivesInTheCacheTier(t *testing.T) {
	s := newStack(t)
	a, b := s.start(testConfig("app1")), s.start(testConfig("app2"))
	c := client(t)
	if got := do(t, c, "POST", a.base+"/counter", nil); got.code != http.StatusUnauthorized {
		t.Fatalf("POST /counter with no session = %d, want 401", got.code)
	}
	login := do(t, c, "POST", a.base+"/login", url.Values{"user": {"alice"}})
	if login.code != http.StatusSeeOther || !strings.Contains(login.header.Get("Set-Cookie"), sessionCookie+"=") {
		t.Fatalf("POST /login = %d %v, want 303 setting %s", login.code, login.header, sessionCookie)
	}
	for want := 1; want <= 3; want++ {
		got := do(t, c, "POST", a.base+"/counter", nil)
		if got.code != 200 || got.header.Get("Demo-Counter") != string(rune('0'+want)) || got.header.Get("Demo-User") != "alice" {
			t.Fatalf("POST /counter #%d = %d %q, want counter %d for alice", want, got.code, got.body, want)
		}
	}
	if n := a.sessions.live(); n != 1 {
		t.Fatalf("app1 live sessions = %d, want 1", n)
	}
	id := sessionID(t, c, a.base)
	// The jar's cookies ignore ports, so app2 gets the same cookie, as
	// when the gateway moves a session to another app server.
	if got := do(t, c, "POST", b.base+"/counter", nil); got.body != "user=alice counter=4 app=app2\n" {
		t.Fatalf("POST /counter on app2 = %d %q, want the session to go on there", got.code, got.body)
	}
	if got := do(t, c, "POST", b.base+"/logout", nil); got.code != http.StatusSeeOther {
		t.Fatalf("POST /logout = %d, want 303", got.code)
	}
	u, _ := url.Parse(a.base)
	c.Jar.SetCookies(u, []*http.Cookie{{Name: sessionCookie, Value: id}}) // the old cookie, replayed
	if got := do(t, c, "GET", a.base+"/counter", nil); got.code != http.StatusUnauthorized {
		t.Fatalf("GET /counter on app1 after logout on app2 = %d %q, want 401", got.code, got.body)
	}
	if n := a.sessions.live(); n != 0 {
		t.Fatalf("app1 live sessions after logout = %d, want 0", n)
	}
}

// TestHeartbeatAndDrain: the app announces its URL and live sessions;
// draining, it says so, refuses new logins and ends when its sessions
// have idled out, or when a gateway marks it drained.
func TestHeartbeatAndDrain(t *testing.T) {
	s := newStack(t)
	watcher := bustest.Connect(t, s.url)
	members, err := bus.TrackMembers(watcher, time.Second, bus.MembershipEvents{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(members.Stop)
	member := func(id string) (bus.Member, bool) {
		for _, m := range members.Members(bus.RoleApp) {
			if m.ID == id {
				return m, true
			}
		}
		return bus.Member{}, false
	}

	t.Run("sessions end", func(t *testing.T) {
		cfg := testConfig("app1")
		cfg.SessionIdle = 500 * time.Millisecond
		a := s.start(cfg)
		c := client(t)
		do(t, c, "POST", a.base+"/login", url.Values{"user": {"bob"}})
		bustest.WaitFor(t, 5*time.Second, "app1 announced up at its URL with 1 session", func() bool {
			m, ok := member("app1")
			return ok && m.Addr == a.base && m.State == bus.StateUp && m.Sessions == 1
		})
		done := make(chan string, 1)
		go func() { done <- a.Drain(context.Background()) }()
		bustest.WaitFor(t, 5*time.Second, "app1 announced draining", func() bool {
			m, ok := member("app1")
			return ok && m.State == bus.StateDraining
		})
		if got := do(t, client(t), "POST", a.base+"/login", url.Values{"user": {"carol"}}); got.code != http.StatusServiceUnavailable {
			t.Fatalf("login on a draining app = %d, want 503", got.code)
		}
		if got := do(t, c, "POST", a.base+"/counter", nil); got.code != 200 {
			t.Fatalf("the draining app's own session: POST /counter = %d, want 200", got.code)
		}
		select {
		case why := <-done:
			if !strings.HasPrefix(why, "its sessions ended") {
				t.Fatalf("Drain = %q, want its sessions ended", why)
			}
		case <-time.After(cfg.DrainTimeout):
			t.Fatal("Drain did not end when the session idled out")
		}
	})

	t.Run("gateway drains it", func(t *testing.T) {
		a := s.start(testConfig("app2"))
		c := client(t)
		do(t, c, "POST", a.base+"/login", url.Values{"user": {"dave"}})
		done := make(chan string, 1)
		go func() { done <- a.Drain(context.Background()) }()
		state := bustest.OpenState(t, watcher)
		bustest.WaitFor(t, 5*time.Second, "the drain of app2 in the cluster state", func() bool {
			cs, err := state.Load(context.Background())
			_, on := cs.Draining(bus.RoleApp, "app2")
			return err == nil && on
		})
		if err := state.MarkDrained(context.Background(), bus.RoleApp, "app2"); err != nil {
			t.Fatal(err)
		}
		select {
		case why := <-done:
			if !strings.HasPrefix(why, "a gateway drained it") {
				t.Fatalf("Drain = %q, want a gateway drained it", why)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Drain did not end when the app was marked drained")
		}
	})
}

// TestBadInput: what a client sends wrong gets a 4xx and changes nothing.
func TestBadInput(t *testing.T) {
	s := newStack(t)
	a := s.start(testConfig("app1"))
	c := client(t)
	tests := []struct {
		name, method, path string
		form               url.Values
		want               int
	}{
		{"product id", "GET", "/products/a%2Fb", nil, 400},
		{"long product id", "GET", "/products/" + strings.Repeat("x", 33), nil, 400},
		{"update without name", "POST", "/products/1", url.Values{}, 400},
		{"update name too long", "POST", "/products/1", url.Values{"name": {strings.Repeat("n", 101)}}, 400},
		{"login without user", "POST", "/login", url.Values{}, 400},
		{"login with a bad user", "POST", "/login", url.Values{"user": {"<script>"}}, 400},
		{"counter without session", "GET", "/counter", nil, 401},
		{"unknown page", "GET", "/nope", nil, 404},
		{"wrong method", "DELETE", "/news", nil, 405},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := do(t, c, tc.method, a.base+tc.path, tc.form); got.code != tc.want {
				t.Fatalf("%s %s = %d %q, want %d", tc.method, tc.path, got.code, got.body, tc.want)
			}
		})
	}
	// A forged session cookie is no session.
	u, _ := url.Parse(a.base)
	c.Jar.SetCookies(u, []*http.Cookie{{Name: sessionCookie, Value: strings.Repeat("ab", 16)}})
	if got := do(t, c, "POST", a.base+"/counter", nil); got.code != http.StatusUnauthorized {
		t.Fatalf("POST /counter with a forged session = %d, want 401", got.code)
	}
	// Nothing above changed product 1.
	if p := do(t, c, "GET", a.base+"/products/1", nil); !strings.Contains(p.body, "Product 1") {
		t.Fatalf("product 1 changed by bad input: %q", p.body)
	}
}

// TestConfigCheck: a bad setting names its variable.
func TestConfigCheck(t *testing.T) {
	tests := []struct {
		name   string
		change func(*Config)
		want   string
	}{
		{"id", func(c *Config) { c.ID = "a b" }, "CACHEBUS_DEMO_ID"},
		{"session ns", func(c *Config) { c.SessionNS = "a.b" }, "CACHEBUS_DEMO_SESSION_NS"},
		{"url", func(c *Config) { c.AppURL = "ftp://x" }, "CACHEBUS_DEMO_URL"},
		{"replicas", func(c *Config) { c.DBReplicas = 0 }, "CACHEBUS_DEMO_DB_REPLICAS"},
		{"drain timeout", func(c *Config) { c.DrainTimeout = 0 }, "CACHEBUS_DEMO_DRAIN_TIMEOUT"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig("app1")
			tc.change(&cfg)
			if err := cfg.check(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("check() = %v, want an error naming %s", err, tc.want)
			}
		})
	}
	ok := testConfig("app1")
	ok.AppURL = "http://app1:3000/"
	if err := ok.check(); err != nil || ok.AppURL != "http://app1:3000" {
		t.Fatalf("check() = %v, URL %q; want nil and the URL without its slash", err, ok.AppURL)
	}
}
