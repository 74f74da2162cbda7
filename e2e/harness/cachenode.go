//go:build unix

package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus/bustest"
	"github.com/cachebus/cachebus/cachenode"
	"github.com/cachebus/cachebus/cachenode/server"
)

// Settings of the cache nodes StartCacheNodes starts, and of NodeClient.
const (
	NodeHeartbeat      = 100 * time.Millisecond // CACHEBUS_HEARTBEAT_INTERVAL
	NodeFailureTimeout = time.Second            // CACHEBUS_FAILURE_TIMEOUT, and the client's
	NodeAdminToken     = "e2e-node-token"       // CACHEBUS_ADMIN_TOKEN
	RecordsNS          = "sessions"             // the namespace of CacheNode.Record
)

// CacheNode is one `cachebus node` process.
type CacheNode struct {
	ID       string            // CACHEBUS_NODE_ID
	HTTPAddr string            // CACHEBUS_HTTP_ADDR: /readyz, /v1/status, /v1/records/
	Env      map[string]string // its CACHEBUS_* variables, for a restart
	P        *Proc             // the running (or last) process, once started

	h *Harness
}

// NewCacheNode returns a cache node with id, listening on httpAddr, run
// with the variables of env; CacheNode.Start starts it.
func (h *Harness) NewCacheNode(id, httpAddr string, env map[string]string) *CacheNode {
	return &CacheNode{ID: id, HTTPAddr: httpAddr, Env: env, h: h}
}

// StartCacheNodes starts one `cachebus node` per id on the NATS server at
// natsURL, the ids being the first baseline, each with its own admin port.
func (h *Harness) StartCacheNodes(t testing.TB, natsURL string, ids ...string) []*CacheNode {
	t.Helper()
	return h.StartCacheNodesWith(t, natsURL, nil, ids...)
}

// StartCacheNodesWith is StartCacheNodes with the variables of extra added
// to every node's environment.
func (h *Harness) StartCacheNodesWith(t testing.TB, natsURL string, extra map[string]string, ids ...string) []*CacheNode {
	t.Helper()
	nodes := make([]*CacheNode, len(ids))
	for i, id := range ids {
		addr := FreeAddr(t)
		n := h.NewCacheNode(id, addr, map[string]string{
			"CACHEBUS_NODE_ID":            id,
			"CACHEBUS_NATS_URL":           natsURL,
			"CACHEBUS_HTTP_ADDR":          addr,
			"CACHEBUS_ADMIN_TOKEN":        NodeAdminToken,
			"CACHEBUS_BASELINE":           strings.Join(ids, ","),
			"CACHEBUS_BACKUPS":            "1",
			"CACHEBUS_HEARTBEAT_INTERVAL": NodeHeartbeat.String(),
			"CACHEBUS_FAILURE_TIMEOUT":    NodeFailureTimeout.String(),
		})
		for k, v := range extra {
			n.Env[k] = v
		}
		n.Start(t)
		nodes[i] = n
	}
	return nodes
}

// Start starts (or restarts, with the same id and ports) node n.
func (n *CacheNode) Start(t testing.TB) {
	t.Helper()
	n.P = n.h.Start(t, n.ID, n.Env, "node")
}

// WaitReady waits until the node answers 200 on /readyz: it holds every
// partition it owns and every partition has a live holder.
func (n *CacheNode) WaitReady(t testing.TB, timeout time.Duration) {
	t.Helper()
	var code int
	var body string
	bustest.WaitFor(t, timeout, n.ID+" /readyz = 200", func() bool {
		if n.P.Exited() {
			t.Fatalf("%s exited (%s) before it was ready", n.ID, n.P.Status())
		}
		code, body = HTTPGet("http://" + n.HTTPAddr + "/readyz")
		return code == http.StatusOK
	})
	if code != http.StatusOK {
		t.Logf("%s: last GET /readyz = %d %s", n.ID, code, body)
	}
}

// Status returns the node section of the node's GET /v1/status (asked with
// NodeAdminToken): the section whose id is the node's.
func (n *CacheNode) Status(t testing.TB) server.Status {
	t.Helper()
	st, err := n.TryStatus()
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// TryStatus is Status for a caller that polls: it returns the error
// rather than fail the test.
func (n *CacheNode) TryStatus() (server.Status, error) {
	req, err := http.NewRequest(http.MethodGet, "http://"+n.HTTPAddr+"/v1/status", nil)
	if err != nil {
		return server.Status{}, err
	}
	req.Header.Set("Authorization", "Bearer "+NodeAdminToken)
	code, body := HTTPDo(req)
	if code != http.StatusOK {
		return server.Status{}, fmt.Errorf("%s: GET /v1/status = %d %s", n.ID, code, body)
	}
	var st struct {
		Sections map[string]json.RawMessage `json:"sections"`
	}
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		return server.Status{}, fmt.Errorf("%s: GET /v1/status: %w\n%s", n.ID, err, body)
	}
	for _, raw := range st.Sections {
		var ns server.Status
		if json.Unmarshal(raw, &ns) == nil && ns.ID == n.ID {
			return ns, nil
		}
	}
	return server.Status{}, fmt.Errorf("%s: GET /v1/status has no section with the node's own status (id %q):\n%s", n.ID, n.ID, body)
}

// Record sends a request of the records API for key of namespace RecordsNS
// to node n and returns the status, the record's version
// (Cachebus-Version) and the body. A token is sent when not empty.
func (n *CacheNode) Record(method, key, value, token string) (code int, version, body string) {
	var rd io.Reader
	if method == http.MethodPut {
		rd = strings.NewReader(value)
	}
	req, err := http.NewRequest(method, "http://"+n.HTTPAddr+server.RecordsPattern+RecordsNS+"/"+url.PathEscape(key), rd)
	if err != nil {
		return 0, "", err.Error()
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := HTTPClient.Do(req)
	if err != nil {
		return 0, "", err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, resp.Header.Get(server.HeaderVersion), string(b)
}

// NodeClient is a cache tier client on its own connection to natsURL,
// with NodeFailureTimeout, closed when the test ends.
func NodeClient(t testing.TB, natsURL string) *cachenode.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl, err := cachenode.NewClient(ctx, Connect(t, natsURL), cachenode.ClientOptions{FailureTimeout: NodeFailureTimeout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cl
}

// ServesAll reports whether client cl sees every node of nodes live and
// every partition served, with no handover under way.
func ServesAll(cl *cachenode.Client, nodes []*CacheNode) bool {
	tab := cl.Table()
	if tab.Assignment == nil || tab.Assignment.Version == 0 {
		return false
	}
	for _, n := range nodes {
		if !tab.Live(n.ID) {
			return false
		}
	}
	un, moving := tab.Coverage()
	return un == 0 && moving == 0
}

// Parallel runs op for 0..n-1 on 32 goroutines and fails the test on the
// first error.
func Parallel(ctx context.Context, t testing.TB, n int, op func(i int) error) {
	t.Helper()
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	next := make(chan int)
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := op(i); err != nil {
					mu.Lock()
					if first == nil {
						first = fmt.Errorf("op %d: %w", i, err)
					}
					mu.Unlock()
				}
			}
		}()
	}
	for i := 0; i < n; i++ {
		mu.Lock()
		failed := first != nil
		mu.Unlock()
		if failed || ctx.Err() != nil {
			break
		}
		next <- i
	}
	close(next)
	wg.Wait()
	if first == nil && ctx.Err() != nil {
		first = ctx.Err()
	}
	if first != nil {
		t.Fatal(first)
	}
}
