//go:build unix

package harness

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/bus/bustest"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// NATSNode is one `cachebus nats` process: a lone server or a node of a
// NATSCluster.
type NATSNode struct {
	Name     string            // the server's name: "nats" alone, n1, n2… in a cluster
	URL      string            // nats://127.0.0.1:port
	HTTPAddr string            // CACHEBUS_HTTP_ADDR: /healthz, /readyz, /metrics
	Env      map[string]string // its CACHEBUS_* variables, for a restart
	P        *Proc             // the running (or last) process
}

// StartNATS runs a single `cachebus nats` on free ports with its own store
// and waits until it is ready.
func (h *Harness) StartNATS(t testing.TB) *NATSNode {
	t.Helper()
	port := FreePort(t)
	n := &NATSNode{Name: "nats", URL: fmt.Sprintf("nats://127.0.0.1:%d", port), HTTPAddr: FreeAddr(t)}
	n.Env = map[string]string{
		"CACHEBUS_NATS_PORT":      fmt.Sprint(port),
		"CACHEBUS_NATS_STORE_DIR": t.TempDir(),
		"CACHEBUS_HTTP_ADDR":      n.HTTPAddr,
	}
	n.P = h.Start(t, n.Name, n.Env, "nats")
	n.WaitReady(t, 30*time.Second)
	return n
}

// WaitReady waits until the node answers 200 on /readyz: its server is up
// and the event log and the state bucket exist.
func (n *NATSNode) WaitReady(t testing.TB, timeout time.Duration) {
	t.Helper()
	var code int
	var body string
	defer func() {
		if code != 200 {
			t.Logf("%s: last GET /readyz = %d %s", n.Name, code, body)
		}
	}()
	bustest.WaitFor(t, timeout, n.Name+" /readyz = 200", func() bool {
		if n.P.Exited() {
			t.Fatalf("%s exited (%s) before it was ready", n.Name, n.P.Status())
		}
		code, body = HTTPGet("http://" + n.HTTPAddr + "/readyz")
		return code == 200
	})
}

// NATSCluster is a NATS cluster of `cachebus nats` processes with
// JetStream replicas 3, each on free ports with its own store directory.
type NATSCluster struct {
	Nodes []*NATSNode // n1, n2…

	t testing.TB
	h *Harness
}

// StartCluster starts a cluster of size `cachebus nats` processes named
// n1, n2… and waits until each listens for clients (not until it is
// ready: see NATSNode.WaitReady and EventLog).
func (h *Harness) StartCluster(t testing.TB, size int) *NATSCluster {
	t.Helper()
	return h.StartClusterWith(t, size, nil)
}

// StartClusterWith is StartCluster with the variables of extra added to
// every node's (TLS certificates, say).
func (h *Harness) StartClusterWith(t testing.TB, size int, extra map[string]string) *NATSCluster {
	t.Helper()
	c := &NATSCluster{t: t, h: h}
	routes := make([]string, size)
	for i := range size {
		routes[i] = "nats://" + FreeAddr(t)
	}
	for i := range size {
		n := &NATSNode{Name: fmt.Sprintf("n%d", i+1), HTTPAddr: FreeAddr(t)}
		port := FreePort(t)
		n.URL = fmt.Sprintf("nats://127.0.0.1:%d", port)
		var peers []string
		for j, r := range routes {
			if j != i {
				peers = append(peers, r)
			}
		}
		n.Env = map[string]string{
			"CACHEBUS_NATS_HOST":           "127.0.0.1",
			"CACHEBUS_NATS_PORT":           fmt.Sprint(port),
			"CACHEBUS_NATS_SERVER_NAME":    n.Name,
			"CACHEBUS_NATS_STORE_DIR":      t.TempDir(),
			"CACHEBUS_NATS_CLUSTER_NAME":   "e2e",
			"CACHEBUS_NATS_CLUSTER_LISTEN": strings.TrimPrefix(routes[i], "nats://"),
			"CACHEBUS_NATS_ROUTES":         strings.Join(peers, ","),
			"CACHEBUS_EVENTS_REPLICAS":     "3",
			"CACHEBUS_STATE_REPLICAS":      "3",
			"CACHEBUS_NODES_REPLICAS":      "3",
			"CACHEBUS_HTTP_ADDR":           n.HTTPAddr,
		}
		for k, v := range extra {
			n.Env[k] = v
		}
		c.Nodes = append(c.Nodes, n)
	}
	for _, n := range c.Nodes {
		c.Start(n)
	}
	for _, n := range c.Nodes {
		WaitListening(t, 30*time.Second, n.Name, strings.TrimPrefix(n.URL, "nats://"), n.P)
	}
	return c
}

// Start starts (or restarts, with the same ports and store) node n.
func (c *NATSCluster) Start(n *NATSNode) {
	c.t.Helper()
	n.P = c.h.Start(c.t, n.Name, n.Env, "nats")
}

// URLs is the comma-separated client URL list of every node.
func (c *NATSCluster) URLs() string {
	urls := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		urls[i] = n.URL
	}
	return strings.Join(urls, ",")
}

// Node returns the node named name, failing the test when there is none.
func (c *NATSCluster) Node(name string) *NATSNode {
	c.t.Helper()
	for _, n := range c.Nodes {
		if n.Name == name {
			return n
		}
	}
	c.t.Fatalf("no node named %q in the cluster", name)
	return nil
}

// ConnectFirst connects to n, and to the other nodes only when n is gone.
func (c *NATSCluster) ConnectFirst(t testing.TB, n *NATSNode) *bus.Conn {
	t.Helper()
	urls := []string{n.URL}
	for _, m := range Without(c.Nodes, n) {
		urls = append(urls, m.URL)
	}
	conn := bustest.Connect(t, strings.Join(urls, ","), bus.WithLogger(WarnLogger(t)),
		bus.WithNATSOptions(nats.DontRandomize()))
	if got := conn.NC.ConnectedServerName(); got != n.Name {
		t.Fatalf("connected to %s, want %s", got, n.Name)
	}
	return conn
}

// EventLog waits until every node is ready, which means the cluster has a
// JetStream meta leader and the nodes have created the event log and the
// state bucket, checks that both have three replicas, and returns the
// event log.
func (c *NATSCluster) EventLog(conn *bus.Conn) jetstream.Stream {
	t := c.t
	t.Helper()
	for _, n := range c.Nodes {
		n.WaitReady(t, 60*time.Second)
		if code, body := HTTPGet("http://" + n.HTTPAddr + "/healthz"); code != 200 {
			t.Errorf("%s: GET /healthz = %d %q, want 200", n.Name, code, body)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := conn.JS.Stream(ctx, conn.Subjects.EventStream())
	if err != nil {
		t.Fatalf("event log after every node is ready: %v", err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatalf("event log info: %v", err)
	}
	if info.Config.Replicas != 3 {
		t.Errorf("event log has %d replicas, want 3 (CACHEBUS_EVENTS_REPLICAS=3)", info.Config.Replicas)
	}
	kv, err := conn.JS.KeyValue(ctx, conn.Subjects.StateBucket())
	if err != nil {
		t.Fatalf("state bucket after every node is ready: %v", err)
	}
	status, err := kv.Status(ctx)
	if err != nil {
		t.Fatalf("state bucket status: %v", err)
	}
	if r := status.(*jetstream.KeyValueBucketStatus).StreamInfo().Config.Replicas; r != 3 {
		t.Errorf("state bucket has %d replicas, want 3 (CACHEBUS_STATE_REPLICAS=3)", r)
	}
	return st
}

// ClusterInfo returns a stream's cluster view, retrying through leader
// elections for at most 10s.
func ClusterInfo(t testing.TB, st jetstream.Stream) *jetstream.ClusterInfo {
	t.Helper()
	var ci *jetstream.ClusterInfo
	bustest.WaitFor(t, 10*time.Second, "event log info", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		info, err := st.Info(ctx)
		if err != nil || info.Cluster == nil || info.Cluster.Leader == "" {
			return false
		}
		ci = info.Cluster
		return true
	})
	return ci
}

// AllCurrent reports whether a stream has a leader and replicas that are
// online and current, the leader and the replicas being the servers names.
func AllCurrent(ci *jetstream.ClusterInfo, names ...string) bool {
	if ci == nil || ci.Leader == "" || len(ci.Replicas) != len(names)-1 {
		return false
	}
	seen := map[string]bool{ci.Leader: true}
	for _, r := range ci.Replicas {
		if !r.Current || r.Offline {
			return false
		}
		seen[r.Name] = true
	}
	for _, n := range names {
		if !seen[n] {
			return false
		}
	}
	return true
}

// Describe sums up a stream's cluster view for a log line: its leader and
// the state of each replica.
func Describe(ci *jetstream.ClusterInfo) string {
	if ci == nil {
		return "no cluster info"
	}
	parts := []string{"leader " + ci.Leader}
	for _, r := range ci.Replicas {
		parts = append(parts, fmt.Sprintf("%s current=%v offline=%v lag=%d active=%s",
			r.Name, r.Current, r.Offline, r.Lag, r.Active.Round(time.Millisecond)))
	}
	return strings.Join(parts, "; ")
}

// Without returns nodes without n.
func Without(nodes []*NATSNode, n *NATSNode) []*NATSNode {
	var out []*NATSNode
	for _, m := range nodes {
		if m != n {
			out = append(out, m)
		}
	}
	return out
}
