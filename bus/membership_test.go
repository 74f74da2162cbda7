package bus_test

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/bus/bustest"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

const (
	hbInterval = 50 * time.Millisecond
	hbTimeout  = 500 * time.Millisecond
	// hbMargin bounds how late past the failure timeout a dead member may
	// be reported: the reaper's tick (timeout/10) plus scheduling.
	hbMargin = 300 * time.Millisecond
)

// memberEvent is one membership callback, with when it came.
type memberEvent struct {
	kind     string // join, change, leave
	old, cur bus.Member
	reason   string
	at       time.Time
}

type memberLog struct {
	mu     sync.Mutex
	events []memberEvent
}

func (l *memberLog) add(e memberEvent) {
	e.at = time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, e)
}

func (l *memberLog) callbacks() bus.MembershipEvents {
	return bus.MembershipEvents{
		Join:   func(m bus.Member) { l.add(memberEvent{kind: "join", cur: m}) },
		Change: func(old, cur bus.Member) { l.add(memberEvent{kind: "change", old: old, cur: cur}) },
		Leave:  func(m bus.Member, reason string) { l.add(memberEvent{kind: "leave", cur: m, reason: reason}) },
	}
}

// find returns the first event of kind about member id.
func (l *memberLog) find(kind, id string) (memberEvent, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range l.events {
		if e.kind == kind && e.cur.ID == id {
			return e, true
		}
	}
	return memberEvent{}, false
}

func (l *memberLog) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.events)
}

func track(t *testing.T, c *bus.Conn) (*bus.Membership, *memberLog) {
	t.Helper()
	log := &memberLog{}
	m, err := bus.TrackMembers(c, hbTimeout, log.callbacks())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Stop)
	return m, log
}

func startHeartbeat(t *testing.T, c *bus.Conn, hb bus.Heartbeat, status func(*bus.Heartbeat)) *bus.Heartbeater {
	t.Helper()
	h, err := bus.StartHeartbeat(c, hb, hbInterval, status)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Short: the connection may be cut, and then the flush cannot finish.
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		h.Stop(ctx)
	})
	return h
}

func waitEvent(t *testing.T, log *memberLog, kind, id string, timeout time.Duration) memberEvent {
	t.Helper()
	var ev memberEvent
	bustest.WaitFor(t, timeout, kind+" of "+id, func() bool {
		var ok bool
		ev, ok = log.find(kind, id)
		return ok
	})
	return ev
}

// TestMembershipLifecycle follows one member from its first heartbeat
// through draining to a clean stop.
func TestMembershipLifecycle(t *testing.T) {
	forEachTarget(t, func(t *testing.T, tg *bustest.Target) {
		tracker := bustest.Connect(t, tg.URL)
		m, log := track(t, tracker)
		var sessions atomic.Int64
		sessions.Store(3)
		hb := startHeartbeat(t, bustest.Connect(t, tg.URL),
			bus.Heartbeat{ID: "n1", Role: bus.RoleNode, Addr: "http://127.0.0.1:9001", DC: "dc1", Version: "test"},
			func(h *bus.Heartbeat) { h.Sessions = int(sessions.Load()) })

		join := waitEvent(t, log, "join", "n1", 5*time.Second)
		if c := join.cur; c.Role != bus.RoleNode || c.State != bus.StateUp || c.Addr != "http://127.0.0.1:9001" ||
			c.DC != "dc1" || c.Version != "test" || c.Sessions != 3 || c.Started.IsZero() || c.LastSeen.IsZero() {
			t.Fatalf("joined as %+v", c)
		}
		if got := m.Members(""); len(got) != 1 || got[0].Key() != "node/n1" {
			t.Fatalf("members %+v", got)
		}
		if got := m.Members(bus.RoleApp); len(got) != 0 {
			t.Fatalf("app members %+v, want none", got)
		}
		if _, ok := m.Get(bus.RoleNode, "n1"); !ok {
			t.Fatal("Get(node, n1) finds nothing")
		}
		sessions.Store(7) // fields other than state change without a callback
		bustest.WaitFor(t, 5*time.Second, "sessions refreshed", func() bool {
			mem, _ := m.Get(bus.RoleNode, "n1")
			return mem.Sessions == 7
		})

		hb.SetState(bus.StateDraining)
		ch := waitEvent(t, log, "change", "n1", 5*time.Second)
		if ch.old.State != bus.StateUp || ch.cur.State != bus.StateDraining {
			t.Fatalf("change from %q to %q, want up to draining", ch.old.State, ch.cur.State)
		}
		if mem, _ := m.Get(bus.RoleNode, "n1"); mem.State != bus.StateDraining {
			t.Fatalf("member state %q, want draining", mem.State)
		}
		if n := testutil.ToFloat64(tracker.Metrics.Members.WithLabelValues(bus.RoleNode, bus.StateDraining)); n != 1 {
			t.Fatalf("members gauge node/draining = %v, want 1", n)
		}

		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		stopped := time.Now()
		hb.Stop(ctx)
		leave := waitEvent(t, log, "leave", "n1", hbTimeout)
		if leave.reason != bus.StateGone {
			t.Fatalf("left for %q, want gone", leave.reason)
		}
		if took := leave.at.Sub(stopped); took > hbTimeout/2 {
			t.Fatalf("clean stop reported after %s, want at once (well before the %s failure timeout)", took, hbTimeout)
		} else {
			t.Logf("clean stop reported gone after %s", took)
		}
		if got := m.Members(""); len(got) != 0 {
			t.Fatalf("members after a clean stop: %+v", got)
		}
		if n := testutil.ToFloat64(tracker.Metrics.Members.WithLabelValues(bus.RoleNode, bus.StateDraining)); n != 0 {
			t.Fatalf("members gauge node/draining = %v after stop, want 0", n)
		}
		hb.Stop(ctx) // a second Stop is harmless
	})
}

// TestMembershipDead kills a member's connection without a clean stop,
// by closing it and by cutting the network under it, and checks it is
// reported dead once the failure timeout has passed since its last
// heartbeat, and not much later.
func TestMembershipDead(t *testing.T) {
	forEachTarget(t, func(t *testing.T, tg *bustest.Target) {
		for _, how := range []string{"closed", "cut"} {
			t.Run(how, func(t *testing.T) {
				m, log := track(t, bustest.Connect(t, tg.URL))
				var member *bus.Conn
				var proxy *bustest.Proxy
				if how == "cut" {
					proxy = bustest.NewProxy(t, strings.TrimPrefix(tg.URL, "nats://"))
					member = bustest.Connect(t, proxy.URL())
				} else {
					member = bustest.Connect(t, tg.URL)
				}
				startHeartbeat(t, member, bus.Heartbeat{ID: "victim", Role: bus.RoleApp}, nil)
				startHeartbeat(t, bustest.Connect(t, tg.URL), bus.Heartbeat{ID: "bystander", Role: bus.RoleApp}, nil)
				waitEvent(t, log, "join", "victim", 5*time.Second)
				waitEvent(t, log, "join", "bystander", 5*time.Second)
				// Let a few heartbeats pass, so a member is not judged on its first.
				joined := time.Now()
				bustest.WaitFor(t, 5*time.Second, "a later heartbeat", func() bool {
					mem, _ := m.Get(bus.RoleApp, "victim")
					return mem.LastSeen.After(joined.Add(2 * hbInterval))
				})

				killed := time.Now()
				if how == "cut" {
					proxy.Cut()
				} else {
					member.NC.Close()
				}
				leave := waitEvent(t, log, "leave", "victim", hbTimeout+hbMargin+2*time.Second)
				took := leave.at.Sub(killed)
				t.Logf("%s member reported %s %s after the kill (silent %s)", how, leave.reason, took, leave.at.Sub(leave.cur.LastSeen))
				if leave.reason != "dead" {
					t.Fatalf("left for %q, want dead", leave.reason)
				}
				if silent := leave.at.Sub(leave.cur.LastSeen); silent < hbTimeout {
					t.Fatalf("reported dead after %s of silence, before the %s failure timeout", silent, hbTimeout)
				}
				if took > hbTimeout+hbMargin {
					t.Fatalf("reported dead %s after the kill, want at most %s", took, hbTimeout+hbMargin)
				}
				if _, ok := m.Get(bus.RoleApp, "victim"); ok {
					t.Fatal("dead member still listed")
				}
				if _, ok := m.Get(bus.RoleApp, "bystander"); !ok {
					t.Fatal("the member still beating was dropped too")
				}
				if _, gone := log.find("leave", "bystander"); gone {
					t.Fatal("the member still beating was reported leaving")
				}
			})
		}
	})
}

// TestMembershipRejectsBadHeartbeats publishes malformed heartbeats, then a
// good one: every bad one is counted once under its field, none becomes a
// member, and the good one still joins.
func TestMembershipRejectsBadHeartbeats(t *testing.T) {
	forEachTarget(t, func(t *testing.T, tg *bustest.Target) {
		tracker := bustest.Connect(t, tg.URL)
		m, log := track(t, tracker)
		pub := bustest.Connect(t, tg.URL)
		bad := []struct{ subject, payload, reason string }{
			{"cachebus.hb.node.x", `{"v":1,"id":"x"`, "payload"},
			{"cachebus.hb.node.x", strings.Repeat(" ", bus.MaxPayload+1), "payload"},
			{"cachebus.hb.node.x", `{"v":2,"id":"x","role":"node","state":"up"}`, "v"},
			{"cachebus.hb.node.x", `{"id":"x","role":"node","state":"up"}`, "v"},
			{"cachebus.hb.node.x", `{"v":1,"id":"x","role":"node"}`, "state"},
			{"cachebus.hb.node.x", `{"v":1,"id":"x","role":"node","state":"dying"}`, "state"},
			{"cachebus.hb.node.x", `{"v":1,"id":"x","role":"node","state":"up","sessions":"many"}`, "sessions"},
			{"cachebus.hb.node.x", `{"v":1,"id":"impostor","role":"node","state":"up"}`, "id"},
			{"cachebus.hb.app.x", `{"v":1,"id":"x","role":"node","state":"up"}`, "id"},
			{"cachebus.hb.bogus.x", `{"v":1,"id":"x","role":"bogus","state":"up"}`, "role"},
			{"cachebus.hb.node.x!", `{"v":1,"id":"x!","role":"node","state":"up"}`, "id"},
			{"cachebus.hb.node", `{"v":1,"id":"x","role":"node","state":"up"}`, "subject"},
		}
		want := map[string]float64{}
		for _, b := range bad {
			want[b.reason]++
			if err := pub.NC.Publish(b.subject, []byte(b.payload)); err != nil {
				t.Fatal(err)
			}
		}
		// A "gone" from a member never seen is no event.
		if err := pub.NC.Publish("cachebus.hb.node.ghost", []byte(`{"v":1,"id":"ghost","role":"node","state":"gone"}`)); err != nil {
			t.Fatal(err)
		}
		// One subscription delivers in order: once this joins, all the
		// above have been judged.
		if err := pub.NC.Publish("cachebus.hb.node.good", []byte(`{"v":1,"id":"good","role":"node","state":"up"}`)); err != nil {
			t.Fatal(err)
		}
		waitEvent(t, log, "join", "good", 5*time.Second)

		rejected := tracker.Metrics.Rejected
		if got := counterSum(t, rejected, nil); got != float64(len(bad)) {
			t.Errorf("rejected %v heartbeats, want %d", got, len(bad))
		}
		if got := counterSum(t, rejected, map[string]string{"kind": bus.KindHeartbeat}); got != float64(len(bad)) {
			t.Errorf("rejected %v under kind hb, want %d", got, len(bad))
		}
		for reason, n := range want {
			if got := counterSum(t, rejected, map[string]string{"kind": bus.KindHeartbeat, "reason": reason}); got != n {
				t.Errorf("rejected for %q %v times, want %v", reason, got, n)
			}
		}
		if got := m.Members(""); len(got) != 1 || got[0].ID != "good" {
			t.Errorf("members %+v, want only good", got)
		}
		if n := log.count(); n != 1 {
			t.Errorf("%d membership events, want the one join", n)
		}
	})
}
