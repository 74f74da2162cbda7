package server_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	neturl "net/url"
	"slices"
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
)

// cluster is cache nodes on one embedded NATS server, each with its own
// connection, as separate processes would have.
type cluster struct {
	t     *testing.T
	url   string
	nodes map[string]*server.Server
	conns map[string]*bus.Conn
	// configure, when set, changes every node's Config before it starts.
	configure func(*server.Config)

	peer  *bus.Conn // the test's own connection, for raw requests and KV
	bound *persistence.Nodes
}

const (
	testInterval = 100 * time.Millisecond
	testFailure  = 600 * time.Millisecond
)

func newCluster(t *testing.T, ids ...string) *cluster {
	t.Helper()
	return newClusterWith(t, nil, ids...)
}

// newClusterWith starts nodes with configure applied to their configs. ids
// are baseline members as the command line writes them (ID[@DC][:WEIGHT]);
// every node starts with all of them as its first baseline.
func newClusterWith(t *testing.T, configure func(*server.Config), ids ...string) *cluster {
	t.Helper()
	tg := bustest.Embedded(t)
	cl := &cluster{t: t, url: tg.URL, nodes: map[string]*server.Server{}, conns: map[string]*bus.Conn{},
		configure: configure}
	for _, id := range ids {
		cl.start(id, ids)
	}
	return cl
}

func (cl *cluster) config(id string, baseline []string) server.Config {
	cfg := server.Config{ID: id, Baseline: baseline, Backups: 1, MaxMB: 8, MaxValue: 8 << 10}
	cfg.Interval, cfg.FailureTimeout = testInterval, testFailure
	cfg.RequestTimeout = time.Second
	return cfg
}

// start starts node spec (ID[@DC][:WEIGHT]) with baseline as the first
// baseline it sets when none exists yet.
func (cl *cluster) start(spec string, baseline []string) *server.Server {
	cl.t.Helper()
	return cl.startAt(spec, baseline, cl.url)
}

// startAt is start with the node connected to NATS through url, such as a
// proxy's.
func (cl *cluster) startAt(spec string, baseline []string, url string) *server.Server {
	cl.t.Helper()
	m, err := partition.ParseMember(spec)
	if err != nil {
		cl.t.Fatal(err)
	}
	id := m.ID
	cfg := cl.config(id, baseline)
	cfg.DC = m.DC
	if m.Weight > 0 {
		cfg.Weight = m.Weight
	}
	if cl.configure != nil {
		cl.configure(&cfg)
	}
	c := bustest.Connect(cl.t, url)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	s, err := server.Start(ctx, cfg, server.Options{Conn: c})
	if err != nil {
		cl.t.Fatalf("start %s: %v", id, err)
	}
	cl.t.Cleanup(func() { s.Shutdown(context.Background()) })
	cl.nodes[id], cl.conns[id] = s, c
	return s
}

// crash stops node id the way SIGKILL does: its connection drops, no
// "gone" heartbeat.
func (cl *cluster) crash(id string) {
	cl.conns[id].NC.Close()
	cl.nodes[id].Shutdown(context.Background())
	delete(cl.nodes, id)
}

// stop shuts node id down as a daemon does on SIGTERM: "gone" announced,
// then the connection drained.
func (cl *cluster) stop(id string) {
	cl.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl.nodes[id].Shutdown(ctx)
	if err := cl.conns[id].NC.Drain(); err != nil {
		cl.t.Logf("drain %s: %v", id, err)
	}
	delete(cl.nodes, id)
}

func (cl *cluster) waitReady() {
	cl.t.Helper()
	bustest.WaitFor(cl.t, 20*time.Second, "every node ready", func() bool {
		for _, s := range cl.nodes {
			if s.Ready() != nil {
				return false
			}
		}
		return true
	})
}

// waitSettled waits until every node is ready and every node's table has
// every partition served by its assignment's primary, held by every owner,
// over the same live nodes: no handover left anywhere.
func (cl *cluster) waitSettled() {
	cl.t.Helper()
	bustest.WaitFor(cl.t, 20*time.Second, "every partition held by its owners in every node's view", func() bool {
		live := slices.Sorted(maps.Keys(cl.nodes))
		for _, s := range cl.nodes {
			if s.Ready() != nil {
				return false
			}
			tab := s.Table()
			if !slices.Equal(slices.Sorted(maps.Keys(tab.Nodes)), live) {
				return false
			}
			for p := range partition.Partitions {
				owners := liveOwners(tab.Assignment.Owners[p], cl.nodes)
				if !slices.Equal(tab.Holders(p), owners) {
					return false
				}
			}
		}
		return true
	})
}

func liveOwners(owners []string, nodes map[string]*server.Server) []string {
	var out []string
	for _, id := range owners {
		if nodes[id] != nil {
			out = append(out, id)
		}
	}
	return out
}

func (cl *cluster) client() *cachenode.Client {
	cl.t.Helper()
	return cl.clientWith(cachenode.ClientOptions{})
}

func (cl *cluster) clientWith(opts cachenode.ClientOptions) *cachenode.Client {
	cl.t.Helper()
	c := bustest.Connect(cl.t, cl.url)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if opts.FailureTimeout == 0 {
		opts.FailureTimeout = testFailure
	}
	client, err := cachenode.NewClient(ctx, c, opts)
	if err != nil {
		cl.t.Fatal(err)
	}
	cl.t.Cleanup(client.Close)
	return client
}

// conn is the test's own connection to the cluster's NATS.
func (cl *cluster) conn() *bus.Conn {
	if cl.peer == nil {
		cl.peer = bustest.Connect(cl.t, cl.url)
	}
	return cl.peer
}

// baseline opens the nodes bucket, as `cachebus baseline` does.
func (cl *cluster) baseline() *persistence.Nodes {
	cl.t.Helper()
	if cl.bound == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		n, err := persistence.OpenOrBindNodes(ctx, cl.conn())
		if err != nil {
			cl.t.Fatal(err)
		}
		cl.bound = n
	}
	return cl.bound
}

// assignment reads the stored assignment.
func (cl *cluster) assignment() partition.Assignment {
	cl.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a, err := cl.baseline().Assignment(ctx)
	if err != nil {
		cl.t.Fatal(err)
	}
	return a
}

// raw sends payload to subject over NATS, as a client in another language
// would, and returns the reply's bytes.
func (cl *cluster) raw(subject string, payload []byte) []byte {
	cl.t.Helper()
	msg, err := cl.conn().NC.Request(subject, payload, 5*time.Second)
	if err != nil {
		cl.t.Fatalf("request %s %q: %v", subject, clipped(payload), err)
	}
	return msg.Data
}

// records counts the records every running node stores.
func (cl *cluster) records() int {
	n := 0
	for _, s := range cl.nodes {
		n += s.Status().Records
	}
	return n
}

// holders lists the running nodes that hold partition p, sorted.
func (cl *cluster) holders(p int) []string {
	var out []string
	for id, s := range cl.nodes {
		if s.Held(p) {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out
}

// localGet reads ns/key from node s's own copy; s must hold its partition.
func localGet(t *testing.T, s *server.Server, ns, key string) wire.Reply {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return s.Do(ctx, &wire.Request{Op: wire.OpGet, NS: ns, Key: key, Replica: true})
}

// pauseProxy is a TCP proxy that can hold every byte in both directions
// without closing the connections: a node that stalls (a long GC pause, a
// congested link) while NATS still sees it connected.
type pauseProxy struct {
	ln     net.Listener
	target string
	paused atomic.Bool
}

func newPauseProxy(t *testing.T, natsURL string) *pauseProxy {
	t.Helper()
	u, err := neturl.Parse(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &pauseProxy{ln: ln, target: u.Host}
	t.Cleanup(func() { p.paused.Store(false); _ = ln.Close() })
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
			go p.pipe(c, up)
			go p.pipe(up, c)
		}
	}()
	return p
}

func (p *pauseProxy) URL() string { return "nats://" + p.ln.Addr().String() }

func (p *pauseProxy) pipe(dst, src net.Conn) {
	defer func() { _ = dst.Close(); _ = src.Close() }()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		for p.paused.Load() {
			time.Sleep(5 * time.Millisecond)
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

func clipped(b []byte) string {
	if len(b) > 80 {
		return string(b[:80]) + "…"
	}
	return string(b)
}

func TestThreeNodesEveryKeyEverywhere(t *testing.T) {
	cl := newCluster(t, "n1", "n2", "n3")
	cl.waitReady()
	client := cl.client()
	ctx := context.Background()
	for i := range 300 {
		if _, err := client.Put(ctx, "sessions", fmt.Sprintf("k%d", i), []byte(fmt.Sprintf("v%d", i)), time.Minute); err != nil {
			t.Fatalf("put k%d: %v", i, err)
		}
	}
	for i := range 300 {
		r, err := client.Get(ctx, "sessions", fmt.Sprintf("k%d", i))
		if err != nil || string(r.Value) != fmt.Sprintf("v%d", i) {
			t.Fatalf("get k%d: %q %v", i, r.Value, err)
		}
	}
	if _, err := client.Get(ctx, "sessions", "absent"); !errors.Is(err, cachenode.ErrNotFound) {
		t.Fatalf("absent key: %v", err)
	}
	// Crash one: its backups serve within the failure timeout.
	cl.crash("n2")
	for i := range 300 {
		r, err := client.Get(ctx, "sessions", fmt.Sprintf("k%d", i))
		if err != nil || string(r.Value) != fmt.Sprintf("v%d", i) {
			t.Fatalf("after crash, get k%d: %q %v", i, r.Value, err)
		}
	}
	for i := range 300 {
		if _, err := client.Put(ctx, "sessions", fmt.Sprintf("k%d", i), []byte(fmt.Sprintf("w%d", i)), time.Minute); err != nil {
			t.Fatalf("put k%d while n2 is down: %v", i, err)
		}
	}
	cl.start("n2", nil)
	cl.waitReady()
	for i := range 300 {
		r, err := client.Get(ctx, "sessions", fmt.Sprintf("k%d", i))
		if err != nil || string(r.Value) != fmt.Sprintf("w%d", i) {
			t.Fatalf("after return, get k%d: %q %v", i, r.Value, err)
		}
	}
	t.Logf("n2 status: %+v", cl.nodes["n2"].Status())
}
