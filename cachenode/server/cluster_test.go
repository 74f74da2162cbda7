package server_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/bus/bustest"
	"github.com/cachebus/cachebus/cachenode"
	"github.com/cachebus/cachebus/cachenode/server"
)

// cluster is cache nodes on one embedded NATS server, each with its own
// connection, as separate processes would have.
type cluster struct {
	t     *testing.T
	url   string
	nodes map[string]*server.Server
	conns map[string]*bus.Conn
}

const (
	testInterval = 100 * time.Millisecond
	testFailure  = 600 * time.Millisecond
)

func newCluster(t *testing.T, ids ...string) *cluster {
	t.Helper()
	tg := bustest.Embedded(t)
	cl := &cluster{t: t, url: tg.URL, nodes: map[string]*server.Server{}, conns: map[string]*bus.Conn{}}
	for _, id := range ids {
		cl.start(id, ids)
	}
	return cl
}

func (cl *cluster) config(id string, baseline []string) server.Config {
	cfg := server.Config{ID: id, Baseline: baseline, Backups: 1, MaxMB: 8}
	cfg.Interval, cfg.FailureTimeout = testInterval, testFailure
	cfg.RequestTimeout = time.Second
	return cfg
}

func (cl *cluster) start(id string, baseline []string) *server.Server {
	cl.t.Helper()
	c := bustest.Connect(cl.t, cl.url)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	s, err := server.Start(ctx, cl.config(id, baseline), server.Options{Conn: c})
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

func (cl *cluster) client() *cachenode.Client {
	cl.t.Helper()
	c := bustest.Connect(cl.t, cl.url)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	client, err := cachenode.NewClient(ctx, c, cachenode.ClientOptions{FailureTimeout: testFailure})
	if err != nil {
		cl.t.Fatal(err)
	}
	cl.t.Cleanup(client.Close)
	return client
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
