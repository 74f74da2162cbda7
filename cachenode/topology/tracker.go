package topology

import (
	"context"
	"fmt"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/cachenode/partition"
	"github.com/cachebus/cachebus/persistence"
)

// Tracker keeps the current Table from the assignment's watch and the
// cache nodes' heartbeats.
type Tracker struct {
	c        *bus.Conn
	onChange func(*Table)

	table atomic.Pointer[Table]

	mu       sync.Mutex
	assign   *partition.Assignment
	baseline partition.Baseline
	nodes    map[string]*Node

	members *bus.Membership
	watch   *persistence.Watcher
	cancel  context.CancelFunc // the watch's context
}

// Track starts tracking. ctx bounds the start (the first read of the
// assignment) only: tracking goes on until Stop. onChange, when not nil,
// is called with every new table, from one goroutine at a time; it must
// not block for long. failureTimeout is how long a silent node stays live.
func Track(ctx context.Context, c *bus.Conn, nodes *persistence.Nodes, failureTimeout time.Duration, onChange func(*Table)) (*Tracker, error) {
	t := &Tracker{c: c, onChange: onChange, assign: &partition.Assignment{}, nodes: map[string]*Node{}}
	t.table.Store(Build(t.assign, map[string]*Node{}))
	m, err := bus.TrackMembers(c, failureTimeout, bus.MembershipEvents{
		Beat:  t.beat,
		Leave: t.leave,
	})
	if err != nil {
		return nil, err
	}
	t.members = m
	// The watch ends with its context: give it one that ctx cancels only
	// until the first read is done.
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	detach := context.AfterFunc(ctx, cancel)
	w, err := nodes.Watch(wctx, func(b partition.Baseline, a partition.Assignment) {
		t.mu.Lock()
		t.baseline, t.assign = b, &a
		t.mu.Unlock()
		t.rebuild()
	})
	if err == nil && !detach() {
		w.Stop()
		err = ctx.Err()
	}
	if err != nil {
		cancel()
		m.Stop()
		return nil, fmt.Errorf("topology: %w", err)
	}
	t.watch, t.cancel = w, cancel
	return t, nil
}

// Table returns the current table.
func (t *Tracker) Table() *Table { return t.table.Load() }

// Baseline returns the baseline the current assignment comes from.
func (t *Tracker) Baseline() partition.Baseline {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.baseline
}

// Members is the tracker's membership of every role.
func (t *Tracker) Members() *bus.Membership { return t.members }

func (t *Tracker) beat(m bus.Member) {
	if m.Role != "node" {
		return
	}
	n := &Node{ID: m.ID, DC: m.DC, Draining: m.State == bus.StateDraining}
	if m.Holds != "" {
		h, err := bus.DecodeHolds(m.Holds)
		if err != nil {
			return // Validate let it through decoded once; cannot happen
		}
		n.Holds = h
	}
	t.mu.Lock()
	old := t.nodes[m.ID]
	if old != nil && *old == *n {
		t.mu.Unlock()
		return
	}
	t.nodes[m.ID] = n
	t.mu.Unlock()
	t.rebuild()
}

func (t *Tracker) leave(m bus.Member, _ string) {
	if m.Role != "node" {
		return
	}
	t.mu.Lock()
	_, known := t.nodes[m.ID]
	delete(t.nodes, m.ID)
	t.mu.Unlock()
	if known {
		t.rebuild()
	}
}

// rebuild publishes a new table. Calls come from the membership's callback
// goroutine and the watch's; the lock orders them so the last state wins.
func (t *Tracker) rebuild() {
	t.mu.Lock()
	defer t.mu.Unlock()
	tab := Build(t.assign, maps.Clone(t.nodes))
	t.table.Store(tab)
	if t.onChange != nil {
		t.onChange(tab)
	}
}

// Stop ends tracking.
func (t *Tracker) Stop() {
	t.watch.Stop()
	t.cancel()
	t.members.Stop()
}
