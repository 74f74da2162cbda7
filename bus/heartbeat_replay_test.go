package bus_test

import (
	"context"
	"math"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/bus/bustest"
)

// TestDecodeHeartbeatReplay: the replay progress of a cache node's
// heartbeat is optional, so heartbeats without it (every heartbeat before
// it existed) still decode, and a replay that is there is checked field by
// field, naming the field it rejects.
func TestDecodeHeartbeatReplay(t *testing.T) {
	const node = `{"v":1,"id":"n1","role":"node","state":"up"`
	full := &bus.HeartbeatReplay{NS: "sessions", Partitions: 512, Records: 120000, Bytes: 9600000, Percent: 42.5, Rate: 250000}
	tests := []struct {
		name  string
		in    string
		want  *bus.HeartbeatReplay
		field string
	}{
		{name: "old heartbeat, no replay", in: node + `}`},
		{name: "old heartbeat with holds", in: node + `,"holds":"` + strings.Repeat("A", 171) + `="}`},
		{name: "null replay", in: node + `,"replay":null}`},
		{name: "every field", in: node + `,"replay":{"ns":"sessions","partitions":512,"records":120000,"bytes":9600000,"percent":42.5,"rate":250000}}`, want: full},
		{name: "only ns", in: node + `,"replay":{"ns":"tokens"}}`, want: &bus.HeartbeatReplay{NS: "tokens"}},
		{name: "bounds", in: node + `,"replay":{"ns":"s","partitions":1024,"percent":100,"rate":0}}`, want: &bus.HeartbeatReplay{NS: "s", Partitions: 1024, Percent: 100}},
		{name: "unknown field ignored", in: node + `,"replay":{"ns":"s","eta":"3s"}}`, want: &bus.HeartbeatReplay{NS: "s"}},
		{name: "from another role", in: `{"v":1,"id":"a","role":"app","state":"up","replay":{"ns":"s","percent":1}}`, want: &bus.HeartbeatReplay{NS: "s", Percent: 1}},

		{name: "empty replay", in: node + `,"replay":{}}`, field: "replay.ns"},
		{name: "bad ns", in: node + `,"replay":{"ns":"a.b"}}`, field: "replay.ns"},
		{name: "negative partitions", in: node + `,"replay":{"ns":"s","partitions":-1}}`, field: "replay.partitions"},
		{name: "too many partitions", in: node + `,"replay":{"ns":"s","partitions":1025}}`, field: "replay.partitions"},
		{name: "negative records", in: node + `,"replay":{"ns":"s","records":-5}}`, field: "replay.records"},
		{name: "negative bytes", in: node + `,"replay":{"ns":"s","bytes":-1}}`, field: "replay.bytes"},
		{name: "percent below 0", in: node + `,"replay":{"ns":"s","percent":-0.5}}`, field: "replay.percent"},
		{name: "percent above 100", in: node + `,"replay":{"ns":"s","percent":100.01}}`, field: "replay.percent"},
		{name: "negative rate", in: node + `,"replay":{"ns":"s","rate":-1}}`, field: "replay.rate"},
		{name: "records as string", in: node + `,"replay":{"ns":"s","records":"many"}}`, field: "replay.records"},
		{name: "records fractional", in: node + `,"replay":{"ns":"s","records":1.5}}`, field: "replay.records"},
		{name: "percent as string", in: node + `,"replay":{"ns":"s","percent":"42%"}}`, field: "replay.percent"},
		{name: "replay as string", in: node + `,"replay":"sessions"}`, field: "replay"},
		{name: "replay as array", in: node + `,"replay":[]}`, field: "replay"},
		{name: "rate overflows", in: node + `,"replay":{"ns":"s","rate":1e400}}`, field: "replay.rate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := bus.DecodeHeartbeat([]byte(tt.in))
			if tt.field != "" {
				wantField(t, err, tt.field)
				return
			}
			if err != nil {
				t.Fatalf("rejected: %v", err)
			}
			if !reflect.DeepEqual(got.Replay, tt.want) {
				t.Fatalf("replay %+v, want %+v", got.Replay, tt.want)
			}
			data, err := got.Encode()
			if err != nil {
				t.Fatalf("encode: %v", err)
			}
			if tt.want == nil && strings.Contains(string(data), `"replay"`) {
				t.Fatalf("encoded %s: a heartbeat without a replay must not name one", data)
			}
			back, err := bus.DecodeHeartbeat(data)
			if err != nil {
				t.Fatalf("decode of encoded %s: %v", data, err)
			}
			if !reflect.DeepEqual(normHeartbeat(back), normHeartbeat(got)) {
				t.Fatalf("round trip changed %+v into %+v", got, back)
			}
		})
	}
}

// TestEncodeHeartbeatReplayRejects: what no JSON can carry (NaN, infinity)
// or what a receiver would refuse is refused before it is sent, naming the
// field.
func TestEncodeHeartbeatReplayRejects(t *testing.T) {
	for _, tt := range []struct {
		name   string
		replay bus.HeartbeatReplay
		field  string
	}{
		{"no ns", bus.HeartbeatReplay{}, "replay.ns"},
		{"percent NaN", bus.HeartbeatReplay{NS: "s", Percent: math.NaN()}, "replay.percent"},
		{"percent over", bus.HeartbeatReplay{NS: "s", Percent: 250}, "replay.percent"},
		{"rate NaN", bus.HeartbeatReplay{NS: "s", Rate: math.NaN()}, "replay.rate"},
		{"rate infinite", bus.HeartbeatReplay{NS: "s", Rate: math.Inf(1)}, "replay.rate"},
		{"negative records", bus.HeartbeatReplay{NS: "s", Records: -1}, "replay.records"},
		{"negative bytes", bus.HeartbeatReplay{NS: "s", Bytes: -1}, "replay.bytes"},
		{"partitions over", bus.HeartbeatReplay{NS: "s", Partitions: bus.MaxReplayPartitions + 1}, "replay.partitions"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := tt.replay
			_, err := bus.Heartbeat{ID: "n1", Role: bus.RoleNode, State: bus.StateUp, Replay: &r}.Encode()
			wantField(t, err, tt.field)
			wantField(t, r.Validate(), tt.field)
		})
	}
}

// TestMembershipHeartbeatReplay: over a real NATS, a member's replay
// progress reaches trackers with each beat and goes when the replay ends;
// a heartbeat whose replay is garbage is rejected whole, counted under
// the replay's field, and the member stays as its last good beat left it.
func TestMembershipHeartbeatReplay(t *testing.T) {
	forEachTarget(t, func(t *testing.T, tg *bustest.Target) {
		tracker := bustest.Connect(t, tg.URL)
		m, _ := track(t, tracker)
		c := bustest.Connect(t, tg.URL)

		var mu sync.Mutex
		var cur *bus.HeartbeatReplay
		hb, err := bus.StartHeartbeat(c, bus.Heartbeat{ID: "n1", Role: bus.RoleNode}, hbInterval, func(h *bus.Heartbeat) {
			mu.Lock()
			defer mu.Unlock()
			h.Replay = nil
			if cur != nil {
				r := *cur
				h.Replay = &r
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { hb.Stop(context.Background()) })
		replayOf := func() *bus.HeartbeatReplay {
			mem, ok := m.Get(bus.RoleNode, "n1")
			if !ok {
				return nil
			}
			return mem.Replay
		}
		set := func(r *bus.HeartbeatReplay) {
			mu.Lock()
			cur = r
			mu.Unlock()
			hb.Announce()
		}

		for _, step := range []*bus.HeartbeatReplay{
			{NS: "sessions", Partitions: 1024, Records: 1000, Bytes: 80000, Percent: 10, Rate: 50000},
			{NS: "sessions", Partitions: 1024, Records: 9000, Bytes: 720000, Percent: 90, Rate: 60000},
			{NS: "tokens", Partitions: 3, Percent: 0},
		} {
			set(step)
			bustest.WaitFor(t, 5*time.Second, "the tracker to see "+step.NS+" replayed", func() bool {
				r := replayOf()
				return r != nil && *r == *step
			})
		}
		set(nil)
		bustest.WaitFor(t, 5*time.Second, "the replay to end in the tracker", func() bool {
			_, ok := m.Get(bus.RoleNode, "n1")
			return ok && replayOf() == nil
		})

		// Garbage from another member: rejected, counted, never a member.
		pub := bustest.Connect(t, tg.URL)
		bad := []struct{ payload, reason string }{
			{`{"v":1,"id":"x","role":"node","state":"up","replay":{"ns":"s","percent":142}}`, "replay.percent"},
			{`{"v":1,"id":"x","role":"node","state":"up","replay":{"ns":"s","records":-3}}`, "replay.records"},
			{`{"v":1,"id":"x","role":"node","state":"up","replay":{"percent":3}}`, "replay.ns"},
		}
		for _, b := range bad {
			if err := pub.NC.Publish("cachebus.hb.node.x", []byte(b.payload)); err != nil {
				t.Fatal(err)
			}
		}
		// One subscription delivers in order: once this one is seen, all
		// of the above have been judged.
		if err := pub.NC.Publish("cachebus.hb.node.y", []byte(`{"v":1,"id":"y","role":"node","state":"up","replay":{"ns":"s","percent":5}}`)); err != nil {
			t.Fatal(err)
		}
		bustest.WaitFor(t, 5*time.Second, "y to join with its replay", func() bool {
			mem, ok := m.Get(bus.RoleNode, "y")
			return ok && mem.Replay != nil && mem.Replay.Percent == 5
		})
		for _, b := range bad {
			if got := counterSum(t, tracker.Metrics.Rejected, map[string]string{"kind": bus.KindHeartbeat, "reason": b.reason}); got != 1 {
				t.Errorf("rejected for %q %v times, want 1", b.reason, got)
			}
		}
		if _, ok := m.Get(bus.RoleNode, "x"); ok {
			t.Errorf("x became a member with a garbage replay")
		}
	})
}
