package memo_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/bus/bustest"
	"github.com/cachebus/cachebus/cachenode/memo"
	"github.com/cachebus/cachebus/persistence"
	"github.com/nats-io/nats.go/jetstream"
)

// cluster is three memo clients (a, b, c) on one embedded NATS.
type cluster struct {
	url     string
	clients []*memo.Client
	conns   []*bus.Conn
	admin   *bus.Conn
}

func newCluster(t *testing.T, opts memo.Options, urls ...string) *cluster {
	t.Helper()
	tg := bustest.Embedded(t)
	cl := &cluster{url: tg.URL, admin: bustest.Connect(t, tg.URL)}
	bustest.EnsureEvents(t, cl.admin, persistence.EventLogConfig{})
	for i := range 3 {
		url := tg.URL
		if i < len(urls) && urls[i] != "" {
			url = urls[i]
		}
		cl.add(t, url, opts, fmt.Sprintf("memo-%c", 'a'+i))
	}
	return cl
}

func (cl *cluster) add(t *testing.T, url string, opts memo.Options, id string) *memo.Client {
	t.Helper()
	conn := bustest.Connect(t, url)
	opts.ID = id
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := memo.New(ctx, conn, opts)
	if err != nil {
		t.Fatalf("memo.New: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	cl.clients = append(cl.clients, c)
	cl.conns = append(cl.conns, conn)
	return c
}

// sync waits until every client applied all the log holds.
func (cl *cluster) sync(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, c := range cl.clients {
		if err := c.Sync(ctx); err != nil {
			t.Fatalf("sync %s: %v", c.ID(), err)
		}
	}
}

// source is a counting fn: it returns "<key>@<version>".
type source struct {
	mu      sync.Mutex
	version map[string]int
	calls   atomic.Int64
	fail    atomic.Bool
}

func newSource() *source { return &source{version: map[string]int{}} }

func (s *source) fn(key string) func(context.Context) ([]byte, error) {
	return func(context.Context) ([]byte, error) {
		s.calls.Add(1)
		if s.fail.Load() {
			return nil, errors.New("origin down")
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		return []byte(fmt.Sprintf("%s@%d", key, s.version[key])), nil
	}
}

func (s *source) bump(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.version[key]++
}

func do(t *testing.T, c *memo.Client, src *source, key string, opts ...memo.DoOption) string {
	t.Helper()
	v, err := c.Do(context.Background(), key, time.Minute, src.fn(key), opts...)
	if err != nil {
		t.Fatalf("Do(%s) on %s: %v", key, c.ID(), err)
	}
	return string(v)
}

func TestFlushReachesPeers(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name  string
		tags  []string
		flush func(c *memo.Client) error
		key   string
		kept  string // a key the flush must spare
	}{
		{"key", nil, func(c *memo.Client) error { return c.Flush(ctx, "user:1") }, "user:1", "user:2"},
		{"prefix", nil, func(c *memo.Client) error { return c.FlushPrefix(ctx, "user:1") }, "user:1", "user:2"},
		{"tag", []string{"t1"}, func(c *memo.Client) error { return c.FlushTag(ctx, "t1") }, "user:1", "user:2"},
		{"all", nil, func(c *memo.Client) error { return c.FlushAll(ctx) }, "user:1", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cl := newCluster(t, memo.Options{Namespace: "users"})
			src := newSource()
			for _, c := range cl.clients {
				var opts []memo.DoOption
				if tt.tags != nil {
					opts = append(opts, memo.Tags(tt.tags...))
				}
				do(t, c, src, tt.key, opts...)
				do(t, c, src, "user:2")
			}
			if n := src.calls.Load(); n != 6 {
				t.Fatalf("fn called %d times to fill 3 clients with 2 keys, want 6", n)
			}
			src.bump(tt.key)
			src.bump("user:2")
			if err := tt.flush(cl.clients[0]); err != nil {
				t.Fatal(err)
			}
			cl.sync(t)
			for _, c := range cl.clients {
				if got, want := do(t, c, src, tt.key), tt.key+"@1"; got != want {
					t.Errorf("%s: Do(%s) = %q after the flush, want %q", c.ID(), tt.key, got, want)
				}
				if tt.kept != "" {
					if got, want := do(t, c, src, tt.kept), tt.kept+"@0"; got != want {
						t.Errorf("%s: Do(%s) = %q, want the unflushed %q", c.ID(), tt.kept, got, want)
					}
				}
			}
		})
	}
}

// TestFlushWhileLoading: a client reads a key from the source, the source
// changes and a peer flushes the key while the read is still on its way
// back. The value read is returned, but not kept: the next Do reads the
// source again. (Kept, it would be served stale until its TTL.)
func TestFlushWhileLoading(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name  string
		flush func(c *memo.Client) error
	}{
		{"key", func(c *memo.Client) error { return c.Flush(ctx, "user:1") }},
		{"prefix", func(c *memo.Client) error { return c.FlushPrefix(ctx, "user:") }},
		{"tag", func(c *memo.Client) error { return c.FlushTag(ctx, "t") }},
		{"all", func(c *memo.Client) error { return c.FlushAll(ctx) }},
		{"seed", func(c *memo.Client) error { return c.Seed(ctx, "user:1", []byte("user:1@1"), time.Minute) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cl := newCluster(t, memo.Options{Namespace: "users"})
			a, b := cl.clients[0], cl.clients[1]
			src := newSource()
			read, release := make(chan struct{}), make(chan struct{})
			got := make(chan string, 1)
			go func() {
				v, err := a.Do(ctx, "user:1", time.Minute, func(ctx context.Context) ([]byte, error) {
					v, err := src.fn("user:1")(ctx)
					close(read)
					<-release
					return v, err
				}, memo.Tags("t"))
				if err != nil {
					t.Errorf("Do: %v", err)
				}
				got <- string(v)
			}()
			<-read
			src.bump("user:1")
			if err := tt.flush(b); err != nil {
				t.Fatal(err)
			}
			cl.sync(t)
			close(release)
			if v := <-got; v != "user:1@0" {
				t.Fatalf("Do returned %q, want the value it read, user:1@0", v)
			}
			if v := do(t, a, src, "user:1"); v != "user:1@1" {
				t.Fatalf("Do after the flush = %q, want user:1@1: the value read before the flush was kept", v)
			}
		})
	}
}

func TestSeedReachesPeers(t *testing.T) {
	cl := newCluster(t, memo.Options{Namespace: "users"})
	src := newSource()
	if err := cl.clients[0].Seed(context.Background(), "user:9", []byte("seeded"), time.Minute); err != nil {
		t.Fatal(err)
	}
	cl.sync(t)
	for _, c := range cl.clients {
		if got := do(t, c, src, "user:9"); got != "seeded" {
			t.Errorf("%s: Do = %q, want the seeded value", c.ID(), got)
		}
	}
	if n := src.calls.Load(); n != 0 {
		t.Fatalf("fn called %d times for a seeded key", n)
	}
	type profile struct{ Name string }
	if err := memo.SeedValue(context.Background(), cl.clients[1], "p", profile{"ada"}, time.Minute); err != nil {
		t.Fatal(err)
	}
	cl.sync(t)
	got, err := memo.Value(context.Background(), cl.clients[2], "p", time.Minute, func(context.Context) (profile, error) {
		return profile{}, errors.New("fn must not run")
	})
	if err != nil || got.Name != "ada" {
		t.Fatalf("Value = %+v, %v; want the seeded profile", got, err)
	}
}

func TestTTLExpiry(t *testing.T) {
	cl := newCluster(t, memo.Options{Namespace: "users"})
	src := newSource()
	c := cl.clients[0]
	if _, err := c.Do(context.Background(), "k", time.Millisecond, src.fn("k")); err != nil {
		t.Fatal(err)
	}
	bustest.WaitFor(t, 5*time.Second, "the entry to expire", func() bool {
		before := src.calls.Load()
		_, _ = c.Do(context.Background(), "k", time.Hour, src.fn("k"))
		return src.calls.Load() > before
	})
}

func TestFallbackServesStale(t *testing.T) {
	cl := newCluster(t, memo.Options{Namespace: "users", StaleGrace: time.Hour})
	src := newSource()
	c := cl.clients[1]
	ctx := context.Background()
	if _, err := c.Do(ctx, "k", time.Millisecond, src.fn("k")); err != nil {
		t.Fatal(err)
	}
	state, err := persistence.OpenState(ctx, cl.admin, persistence.StateConfig{})
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := bus.NewPublisher(cl.admin, "tester")
	if _, err := state.SetFallback(ctx, pub, bus.Fallback{On: true, Scope: "users"}); err != nil {
		t.Fatal(err)
	}
	bustest.WaitFor(t, 5*time.Second, "fallback to reach the client", c.Fallback)
	src.bump("k") // a call of fn would now return k@1
	calls := src.calls.Load()
	if got := do(t, c, src, "k"); got != "k@0" || src.calls.Load() != calls {
		t.Fatalf("during fallback Do = %q with %d calls of fn, want the stale k@0 and none",
			got, src.calls.Load()-calls)
	}
	// A true miss still calls fn.
	if got := do(t, c, src, "other"); got != "other@0" {
		t.Fatalf("miss during fallback = %q", got)
	}
	if _, err := state.SetFallback(ctx, pub, bus.Fallback{On: false, Scope: "users"}); err != nil {
		t.Fatal(err)
	}
	bustest.WaitFor(t, 5*time.Second, "fallback off to reach the client", func() bool { return !c.Fallback() })
	if got := do(t, c, src, "k"); got != "k@1" {
		t.Fatalf("after fallback off Do = %q, want a fresh k@1", got)
	}
}

func TestStaleIfError(t *testing.T) {
	cl := newCluster(t, memo.Options{Namespace: "users", StaleGrace: time.Hour})
	src := newSource()
	c := cl.clients[0]
	ctx := context.Background()
	if _, err := c.Do(ctx, "k", time.Millisecond, src.fn("k")); err != nil {
		t.Fatal(err)
	}
	src.fail.Store(true)
	bustest.WaitFor(t, 5*time.Second, "stale copy served on error", func() bool {
		calls := src.calls.Load()
		v, err := c.Do(ctx, "k", time.Minute, src.fn("k"))
		return err == nil && string(v) == "k@0" && src.calls.Load() == calls+1
	})
	if _, err := c.Do(ctx, "never-cached", time.Minute, src.fn("never-cached")); err == nil {
		t.Fatal("a failing fn with no stale copy must return its error")
	}
}

func TestSingleflight(t *testing.T) {
	cl := newCluster(t, memo.Options{Namespace: "users"})
	c := cl.clients[0]
	var calls atomic.Int64
	release := make(chan struct{})
	fn := func(context.Context) ([]byte, error) {
		calls.Add(1)
		<-release
		return []byte("v"), nil
	}
	var wg sync.WaitGroup
	var started sync.WaitGroup
	errs := make(chan error, 100)
	for range 100 {
		wg.Add(1)
		started.Add(1)
		go func() {
			defer wg.Done()
			started.Done()
			v, err := c.Do(context.Background(), "hot", time.Minute, fn)
			if err == nil && string(v) != "v" {
				err = fmt.Errorf("got %q", v)
			}
			errs <- err
		}()
	}
	started.Wait()
	bustest.WaitFor(t, 5*time.Second, "fn to be called", func() bool { return calls.Load() > 0 })
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("fn called %d times for 100 concurrent misses, want 1", n)
	}
}

// TestDisconnectedClientCatchesUp cuts client b off while a flushes, then
// checks it applies the flushes after it reconnects, without a full flush.
func TestDisconnectedClientCatchesUp(t *testing.T) {
	tg := bustest.Embedded(t)
	proxy := bustest.NewProxy(t, strings.TrimPrefix(tg.URL, "nats://"))
	cl := &cluster{url: tg.URL, admin: bustest.Connect(t, tg.URL)}
	bustest.EnsureEvents(t, cl.admin, persistence.EventLogConfig{})
	a := cl.add(t, tg.URL, memo.Options{Namespace: "users"}, "memo-a")
	b := cl.add(t, proxy.URL(), memo.Options{Namespace: "users"}, "memo-b")
	src := newSource()
	for i := range 20 {
		do(t, b, src, fmt.Sprintf("k%d", i))
	}
	proxy.Cut()
	bustest.WaitFor(t, 10*time.Second, "b disconnected", func() bool { return !cl.conns[1].NC.IsConnected() })
	for i := range 10 {
		src.bump(fmt.Sprintf("k%d", i))
		if err := a.Flush(context.Background(), fmt.Sprintf("k%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	proxy.Restore()
	cl.sync(t)
	calls := src.calls.Load()
	for i := range 20 {
		want := fmt.Sprintf("k%d@0", i)
		if i < 10 {
			want = fmt.Sprintf("k%d@1", i)
		}
		if got := do(t, b, src, fmt.Sprintf("k%d", i)); got != want {
			t.Errorf("after reconnect Do(k%d) = %q, want %q", i, got, want)
		}
	}
	if n := src.calls.Load() - calls; n != 10 {
		t.Fatalf("fn called %d times after reconnect, want 10 (only the flushed keys)", n)
	}
}

// TestGapFlushes purges the log while a client is cut off: it cannot know
// what it missed, so it drops everything.
func TestGapFlushes(t *testing.T) {
	tg := bustest.Embedded(t)
	proxy := bustest.NewProxy(t, strings.TrimPrefix(tg.URL, "nats://"))
	cl := &cluster{url: tg.URL, admin: bustest.Connect(t, tg.URL)}
	bustest.EnsureEvents(t, cl.admin, persistence.EventLogConfig{})
	a := cl.add(t, tg.URL, memo.Options{Namespace: "users"}, "memo-a")
	b := cl.add(t, proxy.URL(), memo.Options{Namespace: "users"}, "memo-b")
	src := newSource()
	do(t, b, src, "kept-or-not")
	if err := a.Flush(context.Background(), "x"); err != nil {
		t.Fatal(err)
	}
	cl.sync(t)
	proxy.Cut()
	bustest.WaitFor(t, 10*time.Second, "b disconnected", func() bool { return !cl.conns[1].NC.IsConnected() })
	for i := range 5 {
		if err := a.Flush(context.Background(), fmt.Sprintf("y%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	st, err := cl.admin.JS.Stream(context.Background(), cl.admin.Subjects.EventStream())
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Purge(context.Background(), jetstream.WithPurgeKeep(1)); err != nil {
		t.Fatal(err)
	}
	proxy.Restore()
	cl.sync(t)
	src.bump("kept-or-not")
	if got := do(t, b, src, "kept-or-not"); got != "kept-or-not@1" {
		t.Fatalf("after a gap Do = %q, want a fresh value (the namespace flushed)", got)
	}
}

func TestConcurrentDoFlushSeed(t *testing.T) {
	cl := newCluster(t, memo.Options{Namespace: "users"})
	src := newSource()
	ctx := context.Background()
	var wg sync.WaitGroup
	for w := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := cl.clients[w%3]
			for i := range 200 {
				key := fmt.Sprintf("k%d", i%10)
				switch i % 10 {
				case 3:
					_ = c.Flush(ctx, key)
				case 7:
					_ = c.Seed(ctx, key, []byte("s"), time.Minute)
				default:
					if _, err := c.Do(ctx, key, time.Minute, src.fn(key)); err != nil {
						t.Error(err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	// Quiesce: one last flush of everything; afterwards all agree with fn.
	if err := cl.clients[0].FlushAll(ctx); err != nil {
		t.Fatal(err)
	}
	cl.sync(t)
	for _, c := range cl.clients {
		if got := do(t, c, src, "k1"); got != "k1@0" {
			t.Fatalf("%s: Do = %q after FlushAll", c.ID(), got)
		}
	}
}
