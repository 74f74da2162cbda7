//go:build unix

package e2e

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/bus/bustest"
)

// applied is one event a recorder was given.
type applied struct {
	key string // the first key of an expire
	seq uint64
	via string
}

// recorder is a bus.Handler that remembers, in order, what it applied and
// how often it was asked to flush.
type recorder struct {
	mu      sync.Mutex
	events  []applied
	flushes int
}

func (r *recorder) Apply(e bus.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	a := applied{seq: e.Seq, via: e.Via}
	if e.Expire != nil && len(e.Expire.Keys) > 0 {
		a.key = e.Expire.Keys[0]
	}
	r.events = append(r.events, a)
}

func (r *recorder) Flush([]string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.flushes++
}

func (r *recorder) snapshot() ([]applied, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]applied(nil), r.events...), r.flushes
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.events)
}

// checkApplied requires the recorder to have applied exactly the expires
// of want, once each, and never to have flushed. Each list of want is what
// one publisher sent, in order: the recorder must have applied each list in
// its order (the lists may interleave).
func checkApplied(t *testing.T, who string, r *recorder, want ...[]string) {
	t.Helper()
	got, flushes := r.snapshot()
	if flushes != 0 {
		t.Errorf("%s: flushed %d times, want none: nothing was missing from the log", who, flushes)
	}
	list := map[string]int{} // key -> index of its list in want
	total := 0
	for i, w := range want {
		for _, k := range w {
			list[k] = i
		}
		total += len(w)
	}
	seen := map[string]int{}
	dups := 0
	for i, a := range got {
		seen[a.key]++
		if seen[a.key] > 1 {
			if dups++; dups <= 10 {
				t.Errorf("%s: %s applied %d times: again as event %d (seq %d via %s)", who, a.key, seen[a.key], i, a.seq, a.via)
			}
		}
		if _, ok := list[a.key]; !ok {
			t.Errorf("%s: applied %q (seq %d via %s), which was not sent", who, a.key, a.seq, a.via)
		}
	}
	var missing []string
	for _, w := range want {
		for _, k := range w {
			if seen[k] == 0 {
				missing = append(missing, k)
			}
		}
	}
	if len(missing) > 0 {
		t.Errorf("%s: %d of %d expires never applied: %s", who, len(missing), total, abbrev(missing))
	}
	if len(got) != total {
		t.Errorf("%s: applied %d events, want %d", who, len(got), total)
		return
	}
	next := make([]int, len(want)) // position in each list
	for i, a := range got {
		l := list[a.key]
		if w := want[l]; w[next[l]] != a.key {
			t.Errorf("%s: event %d is %s (seq %d via %s), want %s: out of order", who, i, a.key, a.seq, a.via, w[next[l]])
			return
		}
		next[l]++
	}
}

func abbrev(s []string) string {
	if len(s) > 10 {
		return strings.Join(s[:10], " ") + fmt.Sprintf(" ... (%d more)", len(s)-10)
	}
	return strings.Join(s, " ")
}

// connect connects to NATS at urls (comma-separated) and logs only the
// bus's warnings, into the test log.
func connect(t *testing.T, urls string) *bus.Conn {
	t.Helper()
	return bustest.Connect(t, urls, bus.WithLogger(warnLogger(t)))
}

// warnLogger logs the bus clients' warnings into the test log, or
// everything with CACHEBUS_E2E_DEBUG set.
func warnLogger(t testing.TB) *slog.Logger {
	level := slog.LevelWarn
	if os.Getenv("CACHEBUS_E2E_DEBUG") != "" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(testLog{t}, &slog.HandlerOptions{Level: level}))
}

type testLog struct{ t testing.TB }

func (w testLog) Write(p []byte) (int, error) {
	defer func() { _ = recover() }() // a line logged after the test ended
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func subscribe(t *testing.T, c *bus.Conn, opts bus.SubscriberOptions) (*bus.Subscriber, *recorder) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rec := &recorder{}
	s, err := bus.Subscribe(ctx, c, rec, opts)
	if err != nil {
		t.Fatalf("subscribe %s: %v", opts.Name, err)
	}
	t.Cleanup(s.Close)
	return s, rec
}

// waitListening waits until addr (host:port) accepts TCP connections.
func waitListening(t testing.TB, timeout time.Duration, what, addr string, p *proc) {
	t.Helper()
	bustest.WaitFor(t, timeout, what+" listening on "+addr, func() bool {
		if p != nil && p.Exited() {
			t.Fatalf("%s exited (%s) before listening on %s", p.name, p.status(), addr)
		}
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err != nil {
			return false
		}
		_ = c.Close()
		return true
	})
}

// Ports handed out by freePort, never twice in one test binary.
var (
	portsMu sync.Mutex
	ports   = map[int]bool{}
)

// freePort returns a TCP port free on 127.0.0.1, below the kernel's
// ephemeral range (32768 and up on Linux). A port from that range, as
// bustest.FreePort gives, may be taken as the source port of an outgoing
// connection — the cluster's own routes — between the test choosing it and
// the daemon binding it, and then the daemon fails to start.
func freePort(t testing.TB) int {
	t.Helper()
	portsMu.Lock()
	defer portsMu.Unlock()
	for range 1000 {
		port := 20000 + rand.IntN(12000)
		if ports[port] {
			continue
		}
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		_ = ln.Close()
		ports[port] = true
		return port
	}
	t.Fatal("no free port in 20000-31999")
	return 0
}

func freeAddr(t testing.TB) string {
	return fmt.Sprintf("127.0.0.1:%d", freePort(t))
}

var httpClient = &http.Client{Timeout: 5 * time.Second}

// httpDo sends a request and returns the status and body; a transport
// error is status 0 with the error as body.
func httpDo(req *http.Request) (int, string) {
	resp, err := httpClient.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, string(body)
}

func httpGet(url string) (int, string) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return 0, err.Error()
	}
	return httpDo(req)
}
