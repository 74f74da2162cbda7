package bustest

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus"
)

// Recorder is a bus.Handler that remembers what it was given.
type Recorder struct {
	mu      sync.Mutex
	events  []bus.Event
	flushes [][]string
}

// Apply records e.
func (r *Recorder) Apply(e bus.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, e)
}

// Flush records the namespaces flushed.
func (r *Recorder) Flush(ns []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.flushes = append(r.flushes, ns)
}

// Snapshot returns the events applied so far and the number of flushes.
func (r *Recorder) Snapshot() ([]bus.Event, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]bus.Event(nil), r.events...), len(r.flushes)
}

// Events returns the events applied so far.
func (r *Recorder) Events() []bus.Event {
	evs, _ := r.Snapshot()
	return evs
}

// Flushed returns the namespaces of every flush so far, in order.
func (r *Recorder) Flushed() [][]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([][]string(nil), r.flushes...)
}

// Keys lists the first key of every expire applied, in order.
func (r *Recorder) Keys() []string {
	var out []string
	for _, e := range r.Events() {
		if e.Expire != nil && len(e.Expire.Keys) > 0 {
			out = append(out, e.Expire.Keys[0])
		}
	}
	return out
}

// Subscribe starts a bus.Subscriber on c that records into a Recorder; it
// is closed when the test ends.
func Subscribe(t testing.TB, c *bus.Conn, opts bus.SubscriberOptions) (*bus.Subscriber, *Recorder) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rec := &Recorder{}
	s, err := bus.Subscribe(ctx, c, rec, opts)
	if err != nil {
		t.Fatalf("subscribe: %v", err)
	}
	t.Cleanup(s.Close)
	return s, rec
}

// LastSeq is the last sequence of the event log c's hierarchy.
func LastSeq(t testing.TB, c *bus.Conn) uint64 {
	t.Helper()
	st, err := c.JS.Stream(context.Background(), c.Subjects.EventStream())
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.LastSeq
}

// WaitSeq waits until s has processed sequence seq of the log.
func WaitSeq(t testing.TB, s *bus.Subscriber, seq uint64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := s.WaitSeq(ctx, seq); err != nil {
		t.Fatal(err)
	}
}
