package lbgateway

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/bus/bustest"
	"github.com/cachebus/cachebus/persistence"
)

// testSecret signs the cookies of the test gateways.
const testSecret = "test-secret-0123456789"

// cluster is an embedded NATS with the event log and the state bucket,
// what a gateway on the bus needs.
type cluster struct {
	url   string
	conn  *bus.Conn
	state *persistence.State
	pub   *bus.Publisher
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	tg := bustest.Embedded(t)
	conn := bustest.Connect(t, tg.URL)
	bustest.EnsureEvents(t, conn, persistence.EventLogConfig{})
	state := bustest.OpenState(t, conn)
	pub, err := bus.NewPublisher(conn, "test")
	if err != nil {
		t.Fatal(err)
	}
	return &cluster{url: tg.URL, conn: conn, state: state, pub: pub}
}

// backend is an app server under test: it answers with its id, counts
// what it serves, and can be told to fail or hang.
type backend struct {
	id  string
	srv *httptest.Server

	hits      atomic.Int64
	sawCookie atomic.Int64 // requests that still carried the sticky cookie
	mu        sync.Mutex
	seen      map[string]int // X-Req header → times served
	// handle, when set, answers instead of the default page.
	handle atomic.Pointer[http.HandlerFunc]
}

func newBackend(t *testing.T, id string) *backend {
	t.Helper()
	b := &backend{id: id, seen: map[string]int{}}
	b.srv = httptest.NewServer(http.HandlerFunc(b.serve))
	t.Cleanup(b.srv.Close)
	return b
}

func (b *backend) serve(w http.ResponseWriter, r *http.Request) {
	b.hits.Add(1)
	if c, err := r.Cookie("cbroute"); err == nil && c != nil {
		b.sawCookie.Add(1)
	}
	if id := r.Header.Get("X-Req"); id != "" {
		b.mu.Lock()
		b.seen[id]++
		b.mu.Unlock()
	}
	w.Header().Set("X-Backend", b.id)
	if h := b.handle.Load(); h != nil {
		(*h)(w, r)
		return
	}
	_, _ = io.Copy(io.Discard, r.Body)
	fmt.Fprintf(w, "hello from %s\n", b.id)
}

func (b *backend) setHandler(h http.HandlerFunc) { b.handle.Store(&h) }

func (b *backend) served(req string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.seen[req]
}

// entry is b as a GATEWAY_BACKENDS entry.
func (b *backend) entry() string { return b.id + "=" + b.srv.URL }

// testConfig is a gateway config with short timings for tests.
func testConfig(backends ...*backend) Config {
	cfg := Config{ID: "gw-test", Secret: testSecret, CookieMode: ModeInsert, Heartbeats: true,
		Retries: 2, RetryBodyMax: 64 << 10, EjectAfter: 3, AutoFallback: true}
	cfg.Interval, cfg.FailureTimeout = 100*time.Millisecond, 600*time.Millisecond
	for _, b := range backends {
		cfg.Backends = append(cfg.Backends, b.entry())
	}
	return cfg
}

// running is a gateway serving on a real listener.
type running struct {
	*Gateway
	url  string
	stop func() error
}

// startGateway starts a gateway with cfg, on the bus when c is not nil.
func startGateway(t *testing.T, c *cluster, cfg Config) *running {
	t.Helper()
	opts := Options{Log: bustest.Logger(t)}
	if c != nil {
		opts.Conn = bustest.Connect(t, c.url)
		opts.State = c.state
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	g, err := New(ctx, cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sctx, stop := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- g.Serve(sctx, ln) }()
	var once sync.Once
	var serr error
	r := &running{Gateway: g, url: "http://" + ln.Addr().String()}
	r.stop = func() error {
		once.Do(func() {
			stop()
			serr = <-served
			g.Close()
		})
		return serr
	}
	t.Cleanup(func() { _ = r.stop() })
	return r
}

// client is a browser: it keeps the cookies it is given.
func newClient(t *testing.T) *http.Client {
	t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Jar: jar, Timeout: 10 * time.Second,
		Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
}

// get sends a GET and returns status, serving backend and body.
func get(t *testing.T, c *http.Client, url string, hdr ...string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	body, err := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if err != nil {
		t.Fatalf("GET %s: body: %v", url, err)
	}
	return resp, string(body)
}

// routeCookie returns the sticky cookie a response sets, or "".
func routeCookie(resp *http.Response) string {
	for _, c := range resp.Cookies() {
		if c.Name == "cbroute" {
			return c.Value
		}
	}
	return ""
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	bustest.WaitFor(t, timeout, what, cond)
}

// backendState returns the state of backend id in the gateway's status.
func backendState(g *Gateway, id string) string {
	for _, b := range g.Status().Backends {
		if b.ID == id {
			return b.State
		}
	}
	return "absent"
}
