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
	// lost holds the start time of each node declared dead, and returned
	// when a node came back as the same process (the same start time): its
	// holdings are not believed until then (see beat).
	lost     map[string]time.Time
	returned map[string]time.Time
	timeout  time.Duration

	members *bus.Membership
	watch   *persistence.Watcher
	cancel  context.CancelFunc // the watch's context
}

// Track starts tracking. ctx bounds the start (the first read of the
// assignment) only: tracking goes on until Stop. onChange, when not nil,
// is called with every new table, from one goroutine at a time; it must
// not block for long. failureTimeout is how long a silent node stays live.
func Track(ctx context.Context, c *bus.Conn, nodes *persistence.Nodes, failureTimeout time.Duration, onChange func(*Table)) (*Tracker, error) {
	t := &Tracker{c: c, onChange: onChange, assign: &partition.Assignment{}, nodes: map[string]*Node{},
		lost: map[string]time.Time{}, returned: map[string]time.Time{}, timeout: failureTimeout}
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
	// A node declared dead that comes back as the same process was cut off
	// or stalled, not restarted: the heartbeats it sent meanwhile may come
	// late, in a burst, when a partition heals (its NATS server kept them
	// for the route), claiming partitions the others have written to
	// since. What it holds is not believed for a failure timeout, by which
	// time it has announced what it holds now (it suspects what it held).
	if started, ok := t.lost[m.ID]; ok {
		delete(t.lost, m.ID)
		if started.Equal(m.Started) && !started.IsZero() {
			t.returned[m.ID] = time.Now()
		}
	}
	believed := false // its holdings are believed again: the table changes
	if at, ok := t.returned[m.ID]; ok {
		if time.Since(at) < t.timeout {
			n.Holds = Holds{}
		} else {
			delete(t.returned, m.ID)
			believed = true
		}
	}
	old := t.nodes[m.ID]
	if old != nil && *old == *n && !believed {
		t.mu.Unlock()
		return
	}
	t.nodes[m.ID] = n
	t.mu.Unlock()
	t.rebuild()
}

func (t *Tracker) leave(m bus.Member, reason string) {
	if m.Role != "node" {
		return
	}
	t.mu.Lock()
	_, known := t.nodes[m.ID]
	delete(t.nodes, m.ID)
	delete(t.returned, m.ID)
	if reason == "dead" {
		t.lost[m.ID] = m.Started
	} else {
		delete(t.lost, m.ID)
	}
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
	for id, at := range t.returned {
		if time.Since(at) < t.timeout && tab.Nodes[id] != nil {
			if tab.Returning == nil {
				tab.Returning = map[string]bool{}
			}
			tab.Returning[id] = true
		}
	}
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
