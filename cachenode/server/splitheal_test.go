package server_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	neturl "net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/bus/bustest"
	"github.com/cachebus/cachebus/cachenode"
	"github.com/cachebus/cachebus/cachenode/partition"
	"github.com/cachebus/cachebus/cachenode/server"
	"github.com/cachebus/cachebus/cachenode/wire"
	"github.com/cachebus/cachebus/persistence"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// refusedMetric is the counter of long-term writes refused for want of
// the record log.
const refusedMetric = "cachebus_node_longterm_refused_total"

// refusedMsg starts the message of such a refusal.
const refusedMsg = "long-term write refused: the record log (JetStream) is unreachable or has no quorum from "

// startObserved starts node id connected through url, its metrics in
// reg, as cluster.startAt does otherwise.
func (cl *cluster) startObserved(id string, baseline []string, url string, reg prometheus.Registerer) *server.Server {
	cl.t.Helper()
	cfg := cl.config(id, baseline)
	if cl.configure != nil {
		cl.configure(&cfg)
	}
	c := bustest.Connect(cl.t, url)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	s, err := server.Start(ctx, cfg, server.Options{Conn: c, Registerer: reg})
	if err != nil {
		cl.t.Fatalf("start %s: %v", id, err)
	}
	cl.t.Cleanup(func() { s.Shutdown(context.Background()) })
	cl.nodes[id], cl.conns[id] = s, c
	return s
}

// counterSum sums the samples of counter name in reg, every node's.
func counterSum(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

// doPut writes ns/key through node s's Do, as a request it serves.
func doPut(s *server.Server, ns, key, value string) (wire.Reply, time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	rep := s.Do(ctx, &wire.Request{Op: wire.OpPut, NS: ns, Key: key, Value: []byte(value), TTL: time.Hour})
	return rep, time.Since(start)
}

// wantRefused fails unless rep refuses a long-term write for want of the
// record log.
func wantRefused(t *testing.T, what string, rep wire.Reply) {
	t.Helper()
	if rep.Status != wire.StatusError || rep.Err.Code != wire.CodeUnavailable || !strings.HasPrefix(rep.Err.Message, refusedMsg) {
		t.Fatalf("%s: got %+v (err %v), want a refusal %q…", what, rep, rep.Err, refusedMsg)
	}
}

// logLast reads the record log's last message of ns/key, decoded: found
// false when there is none.
func logLast(t *testing.T, cl *cluster, ns, key string) (persistence.Record, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := cl.conn()
	codec, err := persistence.NewRecordCodec(c.Subjects, "", "")
	if err != nil {
		t.Fatal(err)
	}
	st, err := c.JS.Stream(ctx, persistence.RecordStreamConfig(c.Subjects, persistence.RecordLogConfig{}, true).Name)
	if err != nil {
		t.Fatal(err)
	}
	m, err := st.GetLastMsgForSubject(ctx, codec.Subject(ns, partition.PartitionOf(key), key))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return persistence.Record{}, false
	}
	if err != nil {
		t.Fatalf("last message of %s/%s: %v", ns, key, err)
	}
	r, err := codec.Decode(m.Subject, m.Header, m.Data)
	if err != nil {
		t.Fatalf("last message of %s/%s: %v", ns, key, err)
	}
	return r, true
}

// logValues replays namespace ns from the record log: the value of every
// live record by key.
func logValues(t *testing.T, cl *cluster, ns string) map[string]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l, err := persistence.BindRecordLog(ctx, cl.conn(), persistence.RecordLogConfig{LongTerm: []string{ns}})
	if err != nil {
		t.Fatal(err)
	}
	all := make([]int, partition.Partitions)
	for p := range all {
		all[p] = p
	}
	out := map[string]string{}
	if _, err := l.Replay(ctx, ns, all, func(r persistence.Record) error {
		if r.Deleted {
			delete(out, r.Key)
		} else {
			out[r.Key] = string(r.Value)
		}
		return nil
	}, nil); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestLongTermRefusedWhileLogGone: with the record log's stream gone, a
// long-term write is refused with a clear error and changes nothing,
// neither on the primary nor on its backup; the writes after it are
// refused at once, without being sent, and counted; reads and a namespace
// that is not long-term go on. Once the stream is back, long-term writes
// are accepted again without anything else being done.
func TestLongTermRefusedWhileLogGone(t *testing.T) {
	reg := prometheus.NewRegistry()
	tg := bustest.Embedded(t)
	cl := &cluster{t: t, url: tg.URL, nodes: map[string]*server.Server{}, conns: map[string]*bus.Conn{},
		configure: func(c *server.Config) { c.LongTerm = []string{"sessions"} }}
	ids := []string{"n1", "n2"}
	for _, id := range ids {
		cl.startObserved(id, ids, cl.url, reg)
	}
	cl.waitSettled()
	client := cl.client()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	const key = "acked"
	acked, err := client.Put(ctx, "sessions", key, []byte("v1"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	p := partition.PartitionOf(key)
	holders := cl.nodes["n1"].Table().Holders(p)
	if len(holders) != 2 {
		t.Fatalf("partition %d held by %v, want a primary and a backup", p, holders)
	}
	tab := cl.nodes["n1"].Table()
	primary := cl.nodes[tab.Primary(p)]
	// New keys served by the same primary, whose gate the first refusal
	// closes.
	var fresh []string
	for i := 0; len(fresh) < 3; i++ {
		if k := fmt.Sprintf("refused-%d", i); tab.Primary(partition.PartitionOf(k)) == primary.ID() {
			fresh = append(fresh, k)
		}
	}

	name := persistence.RecordStreamConfig(cl.conn().Subjects, persistence.RecordLogConfig{}, true).Name
	if err := cl.conn().JS.DeleteStream(ctx, name); err != nil {
		t.Fatal(err)
	}

	rep, first := doPut(primary, "sessions", key, "refused")
	wantRefused(t, "overwrite with the stream gone", rep)
	t.Logf("first refusal after %s: %s", first.Round(time.Microsecond), rep.Err.Message)
	fastest := time.Hour
	for i, k := range append(slices.Clone(fresh), key) {
		start := time.Now()
		_, err := client.Put(ctx, "sessions", k, []byte("refused"), time.Hour)
		took := time.Since(start)
		if !errors.Is(err, cachenode.ErrUnavailable) || !strings.Contains(err.Error(), refusedMsg) {
			t.Fatalf("client put %s: %v, want cachenode.ErrUnavailable with %q", k, err, refusedMsg)
		}
		fastest = min(fastest, took)
		t.Logf("refusal %d after %s: %v", i+2, took.Round(time.Microsecond), err)
	}
	// Not a tight bound: the point is that no refusal waits for a timeout.
	if fastest >= time.Second/2 {
		t.Fatalf("fastest later refusal took %s; refusals should not wait for JetStream once it is known unreachable", fastest)
	}
	if got, want := counterSum(t, reg, refusedMetric), 5.0; got != want {
		t.Fatalf("%s = %v, want %v", refusedMetric, got, want)
	}

	// Nothing of a refused write anywhere: the primary and the backup
	// keep the acknowledged version, and the new keys are on neither.
	for _, id := range holders {
		rep := localGet(t, cl.nodes[id], "sessions", key)
		if rep.Status != wire.StatusOK || string(rep.Item.Value) != "v1" || rep.Item.Version != acked.Version {
			t.Fatalf("%s's copy of %s after refusals: %+v, want v1 at version %d", id, key, rep, acked.Version)
		}
	}
	for id, s := range cl.nodes {
		for _, k := range fresh {
			if p := partition.PartitionOf(k); s.Held(p) {
				if rep := localGet(t, s, "sessions", k); rep.Status != wire.StatusNotFound {
					t.Fatalf("%s holds refused %s: %+v", id, k, rep)
				}
			}
		}
	}
	if r, err := client.Get(ctx, "sessions", key); err != nil || string(r.Value) != "v1" {
		t.Fatalf("read of %s with the record log gone: %v %q", key, err, r.Value)
	}
	if _, err := client.Put(ctx, "cache", "c1", []byte("x"), time.Hour); err != nil {
		t.Fatalf("write of a namespace that is not long-term with the record log gone: %v", err)
	}
	if r, err := client.Get(ctx, "cache", "c1"); err != nil || string(r.Value) != "x" {
		t.Fatalf("read of a namespace that is not long-term: %v %q", err, r.Value)
	}

	// The stream is back (empty, as an operator would restore it): the
	// probe finds it and long-term writes go through again.
	if _, err := persistence.OpenRecordLog(ctx, cl.conn(), persistence.RecordLogConfig{LongTerm: []string{"sessions"}}); err != nil {
		t.Fatal(err)
	}
	healed := time.Now()
	bustest.WaitFor(t, 10*time.Second, "long-term writes accepted again", func() bool {
		_, err := client.Put(ctx, "sessions", key, []byte("v2"), time.Hour)
		return err == nil
	})
	t.Logf("long-term writes accepted by %s %s after the stream came back", primary.ID(), time.Since(healed).Round(time.Millisecond))
	if _, err := client.Put(ctx, "sessions", "after", []byte("v"), time.Hour); err != nil {
		t.Fatal(err)
	}
	for _, id := range holders {
		if rep := localGet(t, cl.nodes[id], "sessions", key); string(rep.Item.Value) != "v2" {
			t.Fatalf("%s's copy of %s after the heal: %+v, want v2", id, key, rep)
		}
	}
	got := logValues(t, cl, "sessions")
	if len(got) != 2 || got["after"] != "v" || got[key] != "v2" {
		t.Fatalf("record log after the heal: %v, want after=v and %s=v2 only", got, key)
	}
}

// holdProxy is a TCP proxy to a NATS server that can hold what the server
// sends while it passes on what the client sends: a write reaches
// JetStream and is stored, and its acknowledgement does not come back,
// as when the link breaks after the request went out.
type holdProxy struct {
	ln     net.Listener
	target string
	held   atomic.Bool
	mu     sync.Mutex
	resume *sync.Cond
}

func newHoldProxy(t *testing.T, natsURL string) *holdProxy {
	t.Helper()
	u, err := neturl.Parse(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &holdProxy{ln: ln, target: u.Host}
	p.resume = sync.NewCond(&p.mu)
	t.Cleanup(func() { p.release(); _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", p.target)
			if err != nil {
				_ = c.Close()
				continue
			}
			go p.pipe(up, c, false)
			go p.pipe(c, up, true)
		}
	}()
	return p
}

func (p *holdProxy) URL() string { return "nats://" + p.ln.Addr().String() }

// hold stops passing on what the server sends; release resumes it.
func (p *holdProxy) hold() { p.held.Store(true) }

func (p *holdProxy) release() {
	p.mu.Lock()
	p.held.Store(false)
	p.resume.Broadcast()
	p.mu.Unlock()
}

// pipe copies src to dst; from the server (fromServer) it waits while
// held.
func (p *holdProxy) pipe(dst, src net.Conn, fromServer bool) {
	defer func() { _ = dst.Close(); _ = src.Close() }()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if fromServer {
			p.mu.Lock()
			for p.held.Load() {
				p.resume.Wait()
			}
			p.mu.Unlock()
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// TestLongTermWriteInDoubtUndone: writes whose acknowledgement from
// JetStream never comes back are refused, although the record log did
// keep them; nothing of them is stored on the node, the writes after them
// are refused at once, and once JetStream answers again the log is set
// back to what the node holds (the acknowledged value of a key it had,
// a tombstone for a key it had not) before long-term writes are accepted
// again. After a crash and a replay from the log none of the refused
// writes is there, and every acknowledged one is.
func TestLongTermWriteInDoubtUndone(t *testing.T) {
	reg := prometheus.NewRegistry()
	tg := bustest.Embedded(t)
	cl := &cluster{t: t, url: tg.URL, nodes: map[string]*server.Server{}, conns: map[string]*bus.Conn{},
		configure: func(c *server.Config) {
			c.LongTerm = []string{"sessions"}
			// The node hears nothing while the proxy holds, its own
			// heartbeats included: it must not give its partitions up
			// meanwhile.
			c.FailureTimeout = 4 * time.Second
		}}
	proxy := newHoldProxy(t, tg.URL)
	s := cl.startObserved("n1", []string{"n1"}, proxy.URL(), reg)
	t.Cleanup(proxy.release) // before the node shuts down, should the test fail while held
	cl.waitReady()

	if rep, _ := doPut(s, "sessions", "had", "acked"); rep.Status != wire.StatusOK {
		t.Fatalf("put before the hold: %+v %v", rep, rep.Err)
	}
	acked := localGet(t, s, "sessions", "had").Item

	// Two writes at once, so that both are sent before either times out.
	proxy.hold()
	held := time.Now()
	var wg sync.WaitGroup
	reps := map[string]wire.Reply{}
	var mu sync.Mutex
	for _, k := range []string{"had", "new"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rep, took := doPut(s, "sessions", k, "refused")
			mu.Lock()
			reps[k] = rep
			mu.Unlock()
			t.Logf("write of %s in doubt refused after %s", k, took.Round(time.Millisecond))
		}()
	}
	wg.Wait()
	for k, rep := range reps {
		wantRefused(t, "write of "+k+" without an acknowledgement", rep)
		if !strings.Contains(rep.Err.Message, "undone") {
			t.Fatalf("refusal of %s in doubt does not say it is undone: %s", k, rep.Err.Message)
		}
	}
	rep, took := doPut(s, "sessions", "later", "refused")
	wantRefused(t, "write after the timeouts", rep)
	t.Logf("the next write refused after %s: %s", took.Round(time.Microsecond), rep.Err.Message)
	if took >= time.Second/2 {
		t.Fatalf("write after the timeouts refused after %s; it should not wait for JetStream once it is known unreachable", took)
	}

	// JetStream did keep both: this is what must be undone.
	for _, k := range []string{"had", "new"} {
		if r, ok := logLast(t, cl, "sessions", k); !ok || string(r.Value) != "refused" {
			t.Fatalf("record log's %s while held: %+v %v; want the refused write, which JetStream stored", k, r, ok)
		}
	}
	// Nothing of them on the node.
	if got := localGet(t, s, "sessions", "had"); got.Status != wire.StatusOK || string(got.Item.Value) != "acked" || got.Item.Version != acked.Version {
		t.Fatalf("node's had after the refusal: %+v, want the acknowledged write", got)
	}
	for _, k := range []string{"new", "later"} {
		if got := localGet(t, s, "sessions", k); got.Status != wire.StatusNotFound {
			t.Fatalf("node holds refused %s: %+v", k, got)
		}
	}
	if rep, _ := doPut(s, "cache", "c1", "x"); rep.Status != wire.StatusOK {
		t.Fatalf("write of a namespace that is not long-term while held: %+v %v", rep, rep.Err)
	}

	if got, want := counterSum(t, reg, refusedMetric), 3.0; got != want {
		t.Fatalf("%s = %v, want %v", refusedMetric, got, want)
	}

	proxy.release()
	t.Logf("released after %s", time.Since(held).Round(time.Millisecond))
	bustest.WaitFor(t, 15*time.Second, "long-term writes accepted again", func() bool {
		rep, _ := doPut(s, "sessions", "after", "v")
		return rep.Status == wire.StatusOK
	})
	if r, ok := logLast(t, cl, "sessions", "had"); !ok || r.Deleted || string(r.Value) != "acked" || r.Version != acked.Version {
		t.Fatalf("record log's had after the heal: %+v %v; want the acknowledged write at version %d", r, ok, acked.Version)
	}
	if r, ok := logLast(t, cl, "sessions", "new"); ok && !r.Deleted {
		t.Fatalf("record log's new after the heal: %+v; want a tombstone or nothing", r)
	}

	cl.crash("n1")
	s = cl.start("n1", []string{"n1"})
	cl.waitReady()
	want := map[string]string{"had": "acked", "after": "v"}
	if got := logValues(t, cl, "sessions"); len(got) != len(want) || got["had"] != "acked" || got["after"] != "v" {
		t.Fatalf("record log after the heal: %v, want %v", got, want)
	}
	for k, v := range want {
		if got := localGet(t, s, "sessions", k); string(got.Item.Value) != v {
			t.Fatalf("%s after a restart: %+v, want %q", k, got, v)
		}
	}
	for _, k := range []string{"new", "later"} {
		if got := localGet(t, s, "sessions", k); got.Status != wire.StatusNotFound {
			t.Fatalf("refused %s after a restart: %+v", k, got)
		}
	}
}
