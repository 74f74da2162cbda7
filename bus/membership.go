package bus

import (
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// Member is one member as the tracker knows it.
type Member struct {
	Heartbeat
	// LastSeen is when its last heartbeat arrived.
	LastSeen time.Time `json:"last_seen"`
}

// Key is "role/id", unique in a cluster.
func (m Member) Key() string { return m.Role + "/" + m.ID }

// MembershipEvents are the callbacks of a Membership; any may be nil. They
// are called from one goroutine, never with the tracker's lock held.
type MembershipEvents struct {
	Join   func(Member)
	Leave  func(m Member, reason string) // reason: "gone" or "dead"
	Change func(old, cur Member)         // state changed (up, draining)
	// Beat is called with every heartbeat of a live member, after Join or
	// Change when the beat caused one: for trackers of fields other than
	// the state (a cache node's Holds).
	Beat func(Member)
}

// Membership tracks the members of the cluster from their heartbeats: a
// member joins with its first heartbeat, leaves at once with state "gone",
// and is dead after the failure timeout without one.
type Membership struct {
	c       *Conn
	timeout time.Duration
	ev      MembershipEvents
	sub     *nats.Subscription

	mu      sync.Mutex
	members map[string]Member

	calls   chan func()
	done    chan struct{}
	stopped sync.WaitGroup
}

// TrackMembers subscribes to every heartbeat of the hierarchy.
func TrackMembers(c *Conn, failureTimeout time.Duration, ev MembershipEvents) (*Membership, error) {
	if failureTimeout <= 0 {
		failureTimeout = 5 * time.Second
	}
	m := &Membership{c: c, timeout: failureTimeout, ev: ev, members: map[string]Member{},
		calls: make(chan func(), 1024), done: make(chan struct{})}
	sub, err := c.NC.Subscribe(c.Subjects.AllHeartbeats(), m.onHeartbeat)
	if err != nil {
		return nil, fmt.Errorf("bus: subscribe heartbeats: %w", err)
	}
	m.sub = sub
	m.stopped.Add(2)
	go m.reap()
	go m.callbacks()
	return m, nil
}

func (m *Membership) onHeartbeat(msg *nats.Msg) {
	t, err := m.c.Subjects.Parse(msg.Subject)
	var hb Heartbeat
	if err == nil {
		hb, err = DecodeHeartbeat(msg.Data)
	}
	if err == nil && (hb.Role != t.Role || hb.ID != t.ID) {
		err = fieldErr("id", "heartbeat for %s/%s on subject of %s/%s", hb.Role, hb.ID, t.Role, t.ID)
	}
	if err != nil {
		m.c.Metrics.Rejected.WithLabelValues(KindHeartbeat, Reason(err)).Inc()
		m.c.Log.Warn("rejected heartbeat", "subject", msg.Subject, "err", err)
		return
	}
	now := time.Now()
	cur := Member{Heartbeat: hb, LastSeen: now}
	m.mu.Lock()
	old, known := m.members[cur.Key()]
	if hb.State == StateGone {
		delete(m.members, cur.Key())
	} else {
		m.members[cur.Key()] = cur
	}
	m.updateGauge()
	m.mu.Unlock()
	switch {
	case hb.State == StateGone && known:
		m.c.Log.Info("member left", "role", hb.Role, "member", hb.ID, "reason", "gone")
		m.call(func() {
			if m.ev.Leave != nil {
				m.ev.Leave(cur, StateGone)
			}
		})
	case hb.State == StateGone:
	case !known:
		m.c.Log.Info("member joined", "role", hb.Role, "member", hb.ID, "addr", hb.Addr, "state", hb.State)
		m.call(func() {
			if m.ev.Join != nil {
				m.ev.Join(cur)
			}
		})
	case old.State != hb.State:
		m.c.Log.Info("member changed state", "role", hb.Role, "member", hb.ID, "from", old.State, "to", hb.State)
		m.call(func() {
			if m.ev.Change != nil {
				m.ev.Change(old, cur)
			}
		})
	}
	if hb.State != StateGone && m.ev.Beat != nil {
		m.call(func() { m.ev.Beat(cur) })
	}
}

func (m *Membership) call(fn func()) {
	select {
	case m.calls <- fn:
	case <-m.done:
	}
}

func (m *Membership) callbacks() {
	defer m.stopped.Done()
	for {
		select {
		case fn := <-m.calls:
			fn()
		case <-m.done:
			return
		}
	}
}

func (m *Membership) reap() {
	defer m.stopped.Done()
	t := time.NewTicker(max(m.timeout/10, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-m.done:
			return
		case now := <-t.C:
			m.mu.Lock()
			var dead []Member
			for k, mem := range m.members {
				if now.Sub(mem.LastSeen) > m.timeout {
					delete(m.members, k)
					dead = append(dead, mem)
				}
			}
			if len(dead) > 0 {
				m.updateGauge()
			}
			m.mu.Unlock()
			for _, mem := range dead {
				m.c.Log.Warn("member dead", "role", mem.Role, "member", mem.ID,
					"silent_for", now.Sub(mem.LastSeen).Round(time.Millisecond))
				m.call(func() {
					if m.ev.Leave != nil {
						m.ev.Leave(mem, "dead")
					}
				})
			}
		}
	}
}

// updateGauge is called with m.mu held.
func (m *Membership) updateGauge() {
	m.c.Metrics.Members.Reset()
	for _, mem := range m.members {
		m.c.Metrics.Members.WithLabelValues(mem.Role, mem.State).Inc()
	}
}

// Members lists the live members, sorted by role and id; role "" lists all.
func (m *Membership) Members(role string) []Member {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Member, 0, len(m.members))
	for _, mem := range m.members {
		if role == "" || mem.Role == role {
			out = append(out, mem)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key() < out[j].Key() })
	return out
}

// Get returns member role/id when it is live.
func (m *Membership) Get(role, id string) (Member, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	mem, ok := m.members[role+"/"+id]
	return mem, ok
}

// Stop ends tracking.
func (m *Membership) Stop() {
	select {
	case <-m.done:
		return
	default:
	}
	_ = m.sub.Unsubscribe()
	close(m.done)
	m.stopped.Wait()
}
