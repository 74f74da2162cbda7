package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/bus/bustest"
	"github.com/cachebus/cachebus/cachenode/partition"
	"github.com/cachebus/cachebus/cachenode/server"
	"github.com/cachebus/cachebus/cachenode/wire"
	"github.com/cachebus/cachebus/persistence"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
)

// longTerm makes the cluster's namespace "sessions" long-term.
func longTerm(c *server.Config) {
	c.LongTerm = []string{"sessions"}
	c.TombstoneTTL = time.Minute
}

// recordLog opens the record log of cl's NATS the way a tool would, to
// write behind the nodes' backs.
func recordLog(t *testing.T, c *bus.Conn) *persistence.RecordLog {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l, err := persistence.BindRecordLog(ctx, c, persistence.RecordLogConfig{LongTerm: []string{"sessions"}, TombstoneTTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// askReplay publishes req on the replay subject and collects the replies
// of want nodes, failing after 30s.
func askReplay(t *testing.T, c *bus.Conn, req []byte, want int) map[string]server.ReplayReply {
	t.Helper()
	inbox := c.NC.NewInbox()
	ch := make(chan []byte, 16)
	sub, err := c.NC.Subscribe(inbox, func(m *nats.Msg) { ch <- m.Data })
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := c.NC.PublishRequest(c.Subjects.RecordReplay(), inbox, req); err != nil {
		t.Fatal(err)
	}
	out := map[string]server.ReplayReply{}
	deadline := time.After(30 * time.Second)
	for len(out) < want {
		select {
		case data := <-ch:
			var rep server.ReplayReply
			if err := json.Unmarshal(data, &rep); err != nil {
				t.Fatalf("replay reply %q: %v", data, err)
			}
			if _, dup := out[rep.Node]; dup {
				t.Fatalf("%s answered twice", rep.Node)
			}
			out[rep.Node] = rep
		case <-deadline:
			t.Fatalf("%d of %d nodes answered the replay request %s: %+v", len(out), want, req, out)
		}
	}
	return out
}

func replayReq(t *testing.T, req server.ReplayRequest) []byte {
	t.Helper()
	req.V = 1
	data, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// localValue reads ns/key from node s's own copy: its value, or found
// false for no record or a tombstone.
func localValue(t *testing.T, s *server.Server, ns, key string) (string, bool) {
	t.Helper()
	return replyValue(t, localGet(t, s, ns, key))
}

// want is what a node's own copy of a key should read.
type want struct {
	value string
	found bool
}

// distinctKeys returns one key per name, prefixed by name, each in a
// partition of its own.
func distinctKeys(names ...string) map[string]string {
	out := map[string]string{}
	used := map[int]bool{}
	for _, n := range names {
		for i := 0; ; i++ {
			k := fmt.Sprintf("%s-%d", n, i)
			if p := partition.PartitionOf(k); !used[p] {
				used[p] = true
				out[n] = k
				break
			}
		}
	}
	return out
}

// TestReplayOnDemand: records changed in the record log behind the nodes'
// backs are read back by every node holding their partitions (primary and
// backup alike) when a replay is asked for: a newer version in the log
// replaces the one in memory, an older one does not, a newer tombstone
// deletes the key, an older one does not, a key only in the log appears;
// partitions outside the request are left alone until a replay of all.
func TestReplayOnDemand(t *testing.T) {
	cl := newClusterWith(t, longTerm, "n1", "n2")
	cl.waitSettled()
	client := cl.client()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	keys := distinctKeys("newer", "older", "tombNewer", "tombOlder", "fresh", "outside")
	versions := map[string]uint64{}
	for _, name := range []string{"newer", "older", "tombNewer", "tombOlder", "outside"} {
		rec, err := client.Put(ctx, "sessions", keys[name], []byte("node "+name), time.Hour)
		if err != nil {
			t.Fatalf("put %s: %v", name, err)
		}
		versions[name] = rec.Version
	}

	l := recordLog(t, cl.conn())
	exp := time.Now().Add(time.Hour)
	for _, r := range []persistence.Record{
		{Key: keys["newer"], Version: versions["newer"] + 1000, Value: []byte("log newer"), Expires: exp},
		{Key: keys["older"], Version: versions["older"] - 1, Value: []byte("log older"), Expires: exp},
		{Key: keys["tombNewer"], Version: versions["tombNewer"] + 1000, Deleted: true},
		{Key: keys["tombOlder"], Version: versions["tombOlder"] - 1, Deleted: true},
		{Key: keys["fresh"], Version: 42, Value: []byte("log fresh"), Expires: exp},
		{Key: keys["outside"], Version: versions["outside"] + 1000, Value: []byte("log outside"), Expires: exp},
	} {
		r.NS, r.Partition = "sessions", partition.PartitionOf(r.Key)
		if _, err := l.Write(ctx, r); err != nil {
			t.Fatalf("write %s to the log: %v", r.Key, err)
		}
	}

	check := func(step string, wants map[string]want) {
		t.Helper()
		for id, s := range cl.nodes {
			for name, w := range wants {
				v, found := localValue(t, s, "sessions", keys[name])
				if found != w.found || v != w.value {
					t.Errorf("%s: %s on %s = %q found %v, want %q found %v", step, name, id, v, found, w.value, w.found)
				}
			}
		}
	}
	before := map[string]want{"newer": {"node newer", true}, "older": {"node older", true}, "tombNewer": {"node tombNewer", true},
		"tombOlder": {"node tombOlder", true}, "fresh": {"", false}, "outside": {"node outside", true}}
	check("before the replay", before)

	var filter []int
	for _, name := range []string{"newer", "older", "tombNewer", "tombOlder", "fresh"} {
		filter = append(filter, partition.PartitionOf(keys[name]))
	}
	after := map[string]want{"newer": {"log newer", true}, "older": {"node older", true}, "tombNewer": {"", false},
		"tombOlder": {"node tombOlder", true}, "fresh": {"log fresh", true}, "outside": {"node outside", true}}
	for _, step := range []struct {
		name       string
		partitions []int
		wantParts  int
		records    int64
		applied    int64
		deleted    int64
		older      int64
		after      map[string]want
	}{
		{"partitions", filter, len(filter), 5, 3, 1, 2, after},
		{"again", filter, len(filter), 5, 0, 0, 5, after},
		{"all", nil, partition.Partitions, 6, 1, 0, 5, func() map[string]want {
			a := maps.Clone(after)
			a["outside"] = want{"log outside", true}
			return a
		}()},
	} {
		reps := askReplay(t, cl.conn(), replayReq(t, server.ReplayRequest{NS: "sessions", Partitions: step.partitions, Origin: "test"}), len(cl.nodes))
		for id, rep := range reps {
			if err := rep.Err(); err != nil {
				t.Fatalf("%s: %s refused: %v", step.name, id, err)
			}
			if rep.NS != "sessions" || rep.Partitions != step.wantParts || rep.Records != step.records || rep.Applied != step.applied ||
				rep.Deleted != step.deleted || rep.Older != step.older || rep.Failed != 0 || rep.Rejected != 0 {
				t.Errorf("%s: %s answered %+v, want %d partitions, %d records: %d applied (%d deletes), %d older",
					step.name, id, rep, step.wantParts, step.records, step.applied, step.deleted, step.older)
			}
			if d, err := time.ParseDuration(rep.Took); err != nil || d < 0 {
				t.Errorf("%s: %s took %q: %v", step.name, id, rep.Took, err)
			}
		}
		check(step.name, step.after)
	}
	for id, s := range cl.nodes {
		if st := s.Status(); st.Replay != nil {
			t.Errorf("%s still reports a replay once answered: %+v", id, st.Replay)
		}
	}
	// An older write arriving late is refused by the tombstone the replay
	// stored, as it is by one a delete stored.
	rep := parseReply(t, cl.raw(cl.conn().Subjects.RecordNode("n1"), []byte("get sessions "+keys["tombNewer"])), wire.OpGet)
	if rep.Status != wire.StatusNotFound {
		t.Fatalf("deleted by the replay, then read through n1: %+v", rep)
	}
}

// TestReplayRequestRefused: a malformed request, or one for a namespace
// that is not long-term, is answered with bad_request, logged, counted in
// cachebus_node_rejected_total{kind="replay"}, and changes nothing; a node
// without any long-term namespace says it has no record log.
func TestReplayRequestRefused(t *testing.T) {
	tg := bustest.Embedded(t)
	reg := prometheus.NewPedanticRegistry()
	cfg := server.Config{ID: "n1", Backups: 1, MaxMB: 8, MaxValue: 8 << 10, RequestTimeout: time.Second}
	cfg.Interval, cfg.FailureTimeout = testInterval, testFailure
	longTerm(&cfg)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := server.Start(ctx, cfg, server.Options{Conn: bustest.Connect(t, tg.URL), Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Shutdown(context.Background()) })
	bustest.WaitFor(t, 20*time.Second, "n1 ready", func() bool { return s.Ready() == nil })
	peer := bustest.Connect(t, tg.URL)
	put := parseReply(t, request(t, peer, peer.Subjects.RecordNode("n1"), []byte("put sessions k1 ttl=60000\nnode")), wire.OpPut)
	if put.Status != wire.StatusOK {
		t.Fatalf("put: %+v", put)
	}
	l := recordLog(t, peer)
	if _, err := l.Write(ctx, persistence.Record{NS: "sessions", Partition: partition.PartitionOf("k1"), Key: "k1",
		Version: put.Item.Version + 1000, Value: []byte("log"), Expires: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}

	for i, tc := range []struct {
		name, payload, want string
	}{
		{"not JSON", `replay sessions`, "malformed replay request"},
		{"empty", ``, "malformed replay request"},
		{"no version", `{"ns":"sessions"}`, "v must be 1"},
		{"version 2", `{"v":2,"ns":"sessions"}`, "v must be 1"},
		{"bad namespace", `{"v":1,"ns":"a.b"}`, "ns"},
		{"no namespace", `{"v":1}`, "ns"},
		{"partition too high", `{"v":1,"ns":"sessions","partitions":[0,1024]}`, "partition 1024 out of range"},
		{"negative partition", `{"v":1,"ns":"sessions","partitions":[-1]}`, "partition -1 out of range"},
		{"partitions as text", `{"v":1,"ns":"sessions","partitions":"0-99"}`, "malformed replay request"},
		{"fractional partition", `{"v":1,"ns":"sessions","partitions":[1.5]}`, "malformed replay request"},
		{"bad origin", `{"v":1,"ns":"sessions","origin":"a b"}`, "origin"},
		{"not long-term", `{"v":1,"ns":"cache"}`, "namespace cache is not long-term on n1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reps := askReplay(t, peer, []byte(tc.payload), 1)
			rep := reps["n1"]
			if rep.Code != string(wire.CodeBadRequest) || !strings.Contains(rep.Error, tc.want) {
				t.Fatalf("answer %+v, want bad_request saying %q", rep, tc.want)
			}
			if rep.Records != 0 || rep.Applied != 0 || rep.Partitions != 0 {
				t.Fatalf("refused, yet replayed: %+v", rep)
			}
			if got := rejectedReplays(t, reg); got != float64(i+1) {
				t.Fatalf("cachebus_node_rejected_total{kind=replay} = %v, want %d", got, i+1)
			}
			if v, _ := localValue(t, s, "sessions", "k1"); v != "node" {
				t.Fatalf("k1 = %q after a refused replay, want the node's value", v)
			}
		})
	}
	// The same request well formed does replay.
	rep := askReplay(t, peer, replayReq(t, server.ReplayRequest{NS: "sessions"}), 1)["n1"]
	if rep.Err() != nil || rep.Applied != 1 {
		t.Fatalf("well-formed replay: %+v", rep)
	}
	if v, _ := localValue(t, s, "sessions", "k1"); v != "log" {
		t.Fatalf("k1 = %q after the replay, want the log's newer value", v)
	}

	// A node without long-term namespaces has no record log.
	plain := newCluster(t, "p1")
	plain.waitReady()
	rep = askReplay(t, plain.conn(), replayReq(t, server.ReplayRequest{NS: "sessions"}), 1)["p1"]
	if rep.Code != string(wire.CodeBadRequest) || !strings.Contains(rep.Error, "no record log") {
		t.Fatalf("node without long-term namespaces answered %+v, want bad_request: no record log", rep)
	}
}

func request(t *testing.T, c *bus.Conn, subject string, payload []byte) []byte {
	t.Helper()
	msg, err := c.NC.Request(subject, payload, 5*time.Second)
	if err != nil {
		t.Fatalf("request %s: %v", subject, err)
	}
	return msg.Data
}

// rejectedReplays reads cachebus_node_rejected_total{kind="replay"} from
// reg.
func rejectedReplays(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range families {
		if mf.GetName() != "cachebus_node_rejected_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "kind" && lp.GetValue() == "replay" {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// TestReplayOnDemandProgress: while a replay asked for runs, the node
// reports it in its status and its heartbeat (namespace, partitions,
// records, percent), and stops reporting it once it has answered.
func TestReplayOnDemandProgress(t *testing.T) {
	cl := newClusterWith(t, longTerm, "n1")
	cl.waitReady()
	s := cl.nodes["n1"]
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const n = 20000
	recs := make([]persistence.Record, n)
	exp := time.Now().Add(time.Hour)
	for i := range recs {
		k := fmt.Sprintf("p%d", i)
		recs[i] = persistence.Record{NS: "sessions", Partition: partition.PartitionOf(k), Key: k, Version: 1, Value: []byte("v"), Expires: exp}
	}
	if err := recordLog(t, cl.conn()).WriteAll(ctx, recs); err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	var beats []bus.HeartbeatReplay
	members, err := bus.TrackMembers(cl.conn(), testFailure, bus.MembershipEvents{Beat: func(m bus.Member) {
		if m.ID == "n1" && m.Replay != nil {
			mu.Lock()
			beats = append(beats, *m.Replay)
			mu.Unlock()
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(members.Stop)

	// Watch the status as fast as it can be read until the answer comes.
	var answered atomic.Bool
	var seen []server.ReplayStatus
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for !answered.Load() {
			if r := s.Status().Replay; r != nil {
				seen = append(seen, *r)
			}
		}
	}()
	rep := askReplay(t, cl.conn(), replayReq(t, server.ReplayRequest{NS: "sessions"}), 1)["n1"]
	answered.Store(true)
	<-watched
	if rep.Err() != nil || rep.Records != n || rep.Partitions != partition.Partitions {
		t.Fatalf("replay answered %+v, want %d records of every partition", rep, n)
	}
	if len(seen) == 0 {
		t.Fatal("no replay in the node's status while it ran")
	}
	for _, r := range seen {
		if r.NS != "sessions" || r.Partitions != partition.Partitions || r.Records < 0 || r.Records > n || r.Percent < 0 || r.Percent > 100 {
			t.Fatalf("status during the replay: %+v", r)
		}
	}
	if st := s.Status(); st.Replay != nil {
		t.Fatalf("status after the answer still has a replay: %+v", st.Replay)
	}
	// The heartbeat sent when the replay started carries it.
	bustest.WaitFor(t, 5*time.Second, "a heartbeat of n1 with its replay", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return slices.ContainsFunc(beats, func(r bus.HeartbeatReplay) bool {
			return r.NS == "sessions" && r.Partitions == partition.Partitions
		})
	})
	bustest.WaitFor(t, 5*time.Second, "a heartbeat of n1 without a replay", func() bool {
		m, ok := members.Get(bus.RoleNode, "n1")
		return ok && m.Replay == nil
	})
}
