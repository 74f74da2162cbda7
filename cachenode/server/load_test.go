package server_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cachebus/cachebus/cachenode"
)

// writeLoad writes increasing counters to its keys, each key by one
// goroutine, and remembers each key's last acknowledged value. A write
// that fails is not acknowledged: it may or may not have been stored, and
// the next write of the key supersedes it.
type writeLoad struct {
	client *cachenode.Client
	ns     string
	keys   []string

	mu      sync.Mutex
	acked   map[string]int
	errs    []error
	longest time.Duration // longest run of failed writes of one writer

	oks, failures atomic.Int64
	stop          chan struct{}
	wg            sync.WaitGroup
}

// startWrites starts writers goroutines over keys, which must hold an
// acknowledged "0" already.
func startWrites(client *cachenode.Client, ns string, keys []string, writers int) *writeLoad {
	w := &writeLoad{client: client, ns: ns, keys: keys, acked: map[string]int{}, stop: make(chan struct{})}
	for _, k := range keys {
		w.acked[k] = 0
	}
	for g := range writers {
		w.wg.Add(1)
		go w.run(g, writers)
	}
	return w
}

func (w *writeLoad) put(key string, n int, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	_, err := w.client.Put(ctx, w.ns, key, []byte(strconv.Itoa(n)), time.Minute)
	w.mu.Lock()
	defer w.mu.Unlock()
	if err != nil {
		w.failures.Add(1)
		if len(w.errs) < 5 {
			w.errs = append(w.errs, fmt.Errorf("put %s=%d: %w", key, n, err))
		}
		return err
	}
	w.oks.Add(1)
	w.acked[key] = n
	return nil
}

func (w *writeLoad) run(g, writers int) {
	defer w.wg.Done()
	n := 0
	var down time.Time
	for {
		for i := g; i < len(w.keys); i += writers {
			n++
			select {
			case <-w.stop:
				// End on an acknowledged write of every key, so that
				// the last value each holds is known.
				for j := g; j < len(w.keys); j += writers {
					n++
					deadline := time.Now().Add(10 * time.Second)
					for w.put(w.keys[j], n, time.Second) != nil && time.Now().Before(deadline) {
						n++
					}
				}
				return
			default:
			}
			start := time.Now()
			switch err := w.put(w.keys[i], n, 500*time.Millisecond); {
			case err != nil && down.IsZero():
				down = start
			case err == nil && !down.IsZero():
				w.mu.Lock()
				w.longest = max(w.longest, time.Since(down))
				w.mu.Unlock()
				down = time.Time{}
			}
		}
	}
}

// floor is the last acknowledged value of key: no read may return less.
func (w *writeLoad) floor(key string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.acked[key]
}

// finish stops the writers and returns every key's last acknowledged
// value.
func (w *writeLoad) finish(t *testing.T) map[string]int {
	t.Helper()
	close(w.stop)
	w.wg.Wait()
	w.mu.Lock()
	defer w.mu.Unlock()
	t.Logf("writes: %d acknowledged, %d failed (longest outage %s) %v", w.oks.Load(), w.failures.Load(), w.longest, w.errs)
	out := map[string]int{}
	for k, v := range w.acked {
		out[k] = v
	}
	return out
}

// waitAcked waits until n more writes have been acknowledged.
func (w *writeLoad) waitAcked(t *testing.T, n int64, what string) {
	t.Helper()
	target := w.oks.Load() + n
	deadline := time.Now().Add(20 * time.Second)
	for w.oks.Load() < target {
		if time.Now().After(deadline) {
			w.mu.Lock()
			errs := w.errs
			w.mu.Unlock()
			t.Fatalf("%s: %d of %d writes acknowledged in 20s, errors: %v", what, w.oks.Load()-(target-n), n, errs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// readAttempt bounds one read of a readLoad.
const readAttempt = 250 * time.Millisecond

// readLoad reads the keys of a writeLoad, checking that no read returns
// less than what was acknowledged before it started, and measures the
// longest time reads kept failing.
type readLoad struct {
	stop chan struct{}
	wg   sync.WaitGroup

	mu         sync.Mutex
	longest    time.Duration
	reads      int
	failures   int
	violations []string
	lastErr    error
}

func startReads(client *cachenode.Client, w *writeLoad, readers int) *readLoad {
	r := &readLoad{stop: make(chan struct{})}
	for range readers {
		r.wg.Add(1)
		go r.run(client, w)
	}
	return r
}

func (r *readLoad) run(client *cachenode.Client, w *writeLoad) {
	defer r.wg.Done()
	var down time.Time // when the current run of failures began
	for {
		select {
		case <-r.stop:
			return
		default:
		}
		key := w.keys[rand.IntN(len(w.keys))]
		floor := w.floor(key)
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), readAttempt)
		rec, err := client.Get(ctx, w.ns, key)
		cancel()
		r.mu.Lock()
		r.reads++
		switch {
		case errors.Is(err, cachenode.ErrNotFound):
			r.violations = append(r.violations, fmt.Sprintf("%s not found, %d acknowledged", key, floor))
		case err != nil:
			r.failures++
			r.lastErr = err
			if down.IsZero() {
				down = start
			}
		default:
			if !down.IsZero() {
				r.longest = max(r.longest, time.Since(down))
				down = time.Time{}
			}
			if v, _ := strconv.Atoi(string(rec.Value)); v < floor {
				r.violations = append(r.violations, fmt.Sprintf("%s read %d, %d acknowledged before the read", key, v, floor))
			}
		}
		r.mu.Unlock()
	}
}

// finish stops the readers and fails t on any read that lost a write.
func (r *readLoad) finish(t *testing.T) time.Duration {
	t.Helper()
	close(r.stop)
	r.wg.Wait()
	t.Logf("reads: %d, %d failed (last: %v), longest outage %s", r.reads, r.failures, r.lastErr, r.longest)
	if len(r.violations) > 0 {
		t.Errorf("%d reads lost acknowledged writes, first: %v", len(r.violations), r.violations[:min(5, len(r.violations))])
	}
	return r.longest
}

// preload writes "0" to every key.
func preload(t *testing.T, client *cachenode.Client, ns string, keys []string) {
	t.Helper()
	for _, k := range keys {
		if _, err := client.Put(context.Background(), ns, k, []byte("0"), time.Minute); err != nil {
			t.Fatalf("preload %s: %v", k, err)
		}
	}
}

// checkFinal fails t unless every path reads every key's last acknowledged
// value.
func checkFinal(t *testing.T, cl *cluster, ns string, want map[string]int, clients ...*cachenode.Client) {
	t.Helper()
	for _, r := range readers(cl, clients...) {
		for k, v := range want {
			if got, ok := r.get(t, ns, k); !ok || got != strconv.Itoa(v) {
				t.Errorf("%s: %s = %q (found %v), last acknowledged %d", r.name, k, got, ok, v)
			}
		}
	}
}

func numberedKeys(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = prefix + strconv.Itoa(i)
	}
	return out
}
