//go:build unix

package e2e

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus"
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
