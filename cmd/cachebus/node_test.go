package main

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/cachebus/cachebus/admin"
	"github.com/cachebus/cachebus/bus/bustest"
	"github.com/cachebus/cachebus/cachenode"
	"github.com/cachebus/cachebus/cachenode/server"
	"github.com/cachebus/cachebus/cachenode/topology"
)

// fastTier makes the cache nodes started by a test beat and fail fast.
func fastTier(t *testing.T) {
	t.Setenv("CACHEBUS_HEARTBEAT_INTERVAL", "100ms")
	t.Setenv("CACHEBUS_FAILURE_TIMEOUT", "600ms")
}

// TestNodeDaemon runs two `cachebus node` daemons on one NATS: both get
// ready, a record put through one is read through the other, writes need
// the token, status has the node's section, and a node stopped says it is
// gone.
func TestNodeDaemon(t *testing.T) {
	tg, _, _ := cmdBus(t)
	fastTier(t)
	t.Setenv("CACHEBUS_HTTP_ADDR", "127.0.0.1:0")
	t.Setenv("CACHEBUS_ADMIN_TOKEN", "node-token")
	t.Setenv("CACHEBUS_BASELINE", "n1,n2")
	urlRE := func(id string) *regexp.Regexp { return regexp.MustCompile(`node ` + id + `: (http://\S+)\n`) }
	n1 := cmdStart(t, "node", "--id", "n1")
	url1 := n1.waitOutput(t, "n1's URL", urlRE("n1"))[1]
	n2 := cmdStart(t, "node", "--id", "n2")
	url2 := n2.waitOutput(t, "n2's URL", urlRE("n2"))[1]
	for _, u := range []string{url1, url2} {
		bustest.WaitFor(t, 20*time.Second, u+" ready", func() bool {
			code, _ := httpDo(t, "GET", u+"/readyz", "", "")
			return code == 200
		})
	}

	for i := range 20 {
		if code, body := httpDo(t, "PUT", fmt.Sprintf("%s/v1/records/sessions/k%d?ttl=1m", url1, i), "node-token", fmt.Sprintf("v%d", i)); code != 204 {
			t.Fatalf("PUT k%d on n1 = %d %s", i, code, body)
		}
	}
	for i := range 20 {
		if code, body := httpDo(t, "GET", fmt.Sprintf("%s/v1/records/sessions/k%d", url2, i), "node-token", ""); code != 200 || body != fmt.Sprintf("v%d", i) {
			t.Fatalf("GET k%d on n2 = %d %q", i, code, body)
		}
	}
	if code, _ := httpDo(t, "PUT", url2+"/v1/records/sessions/k0", "", "x"); code != 401 {
		t.Fatalf("PUT without the token = %d, want 401", code)
	}
	if code, _ := httpDo(t, "GET", url2+"/v1/records/sessions/k0", "", ""); code != 401 {
		t.Fatalf("GET without the token = %d, want 401 (a token is set)", code)
	}

	code, body := httpDo(t, "GET", url1+"/v1/status", "node-token", "")
	var st struct {
		Sections struct{ Node server.Status } `json:"sections"`
	}
	if err := json.Unmarshal([]byte(body), &st); code != 200 || err != nil {
		t.Fatalf("status = %d %v: %s", code, err, body)
	}
	if n := st.Sections.Node; n.ID != "n1" || !n.InBaseline || n.Held != 1024 || len(n.Nodes) != 2 {
		t.Fatalf("node section %+v", n)
	}

	t.Setenv("CACHEBUS_NATS_URL", tg.URL)
	if code := n2.stop(t); code != 0 {
		t.Fatalf("n2 exited %d:\n%s", code, n2.err.String())
	}
	if !strings.Contains(n2.err.String(), "cache node stopped") {
		t.Errorf("n2 did not stop its node:\n%s", n2.err.String())
	}
	bustest.WaitFor(t, 5*time.Second, "n1 sees n2 gone", func() bool {
		return strings.Contains(n1.err.String(), "member=n2 reason=gone")
	})
	// n1 holds every partition (one backup of two nodes): still ready.
	if code, body := httpDo(t, "GET", url1+"/readyz", "", ""); code != 200 {
		t.Fatalf("n1 /readyz after n2 left = %d %s", code, body)
	}
	if code := n1.stop(t); code != 0 {
		t.Fatalf("n1 exited %d:\n%s", code, n1.err.String())
	}
}

// TestDevNodes runs `cachebus dev --nodes 3`: it is ready, a record put
// over HTTP is read back over HTTP and by the Go client, and status shows
// the cache tier.
func TestDevNodes(t *testing.T) {
	t.Setenv("CACHEBUS_ADMIN_TOKEN", "")
	fastTier(t)
	d := cmdStart(t, "dev", "--nats-port", "-1", "--http", "127.0.0.1:0", "--gateway", "127.0.0.1:0", "--nodes", "3")
	banner, natsURL, adminURL, token := devBanner(t, d)
	for _, w := range []string{
		"node1 node2 node3",
		"curl -X PUT -H 'Authorization: Bearer " + token[1] + "' --data-binary 'hello' '" + adminURL[1] + "/v1/records/sessions/s1?ttl=10m'",
		"curl -H 'Authorization: Bearer " + token[1] + "' " + adminURL[1] + "/v1/records/sessions/s1",
	} {
		if !strings.Contains(banner, w) {
			t.Errorf("banner lacks %q:\n%s", w, banner)
		}
	}
	bustest.WaitFor(t, 20*time.Second, "dev ready", func() bool {
		code, _ := httpDo(t, "GET", adminURL[1]+"/readyz", "", "")
		return code == 200
	})

	// Keys spread over the three nodes: node1 forwards most.
	for i := range 30 {
		url := fmt.Sprintf("%s/v1/records/sessions/s%d?ttl=10m", adminURL[1], i)
		if code, body := httpDo(t, "PUT", url, token[1], fmt.Sprintf("hello %d", i)); code != 204 {
			t.Fatalf("PUT s%d = %d %s", i, code, body)
		}
	}
	for i := range 30 {
		url := fmt.Sprintf("%s/v1/records/sessions/s%d", adminURL[1], i)
		if code, body := httpDo(t, "GET", url, token[1], ""); code != 200 || body != fmt.Sprintf("hello %d", i) {
			t.Fatalf("GET s%d = %d %q", i, code, body)
		}
	}
	if code, _ := httpDo(t, "DELETE", adminURL[1]+"/v1/records/sessions/s0", token[1], ""); code != 204 {
		t.Fatalf("DELETE s0 = %d", code)
	}
	if code, _ := httpDo(t, "GET", adminURL[1]+"/v1/records/sessions/s0", token[1], ""); code != 404 {
		t.Fatalf("GET s0 after DELETE = %d, want 404", code)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client, err := cachenode.NewClient(ctx, bustest.Connect(t, natsURL[1]), cachenode.ClientOptions{FailureTimeout: 600 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(client.Close)
	if r, err := client.Get(ctx, "sessions", "s7"); err != nil || string(r.Value) != "hello 7" {
		t.Fatalf("Go client: %q %v", r.Value, err)
	}

	var st struct {
		Members  []json.RawMessage `json:"members"`
		Sections struct {
			Nodes []server.Status `json:"nodes"`
		} `json:"sections"`
	}
	_, body := httpDo(t, "GET", adminURL[1]+"/v1/status", token[1], "")
	if err := json.Unmarshal([]byte(body), &st); err != nil || len(st.Sections.Nodes) != 3 || st.Sections.Nodes[2].ID != "node3" {
		t.Fatalf("status nodes section (%v): %s", err, body)
	}

	t.Setenv("CACHEBUS_NATS_URL", natsURL[1])
	code, stdout, stderr := cmdRun(t, "", "status")
	if code != 0 {
		t.Fatalf("status: exit %d\n%s%s", code, stdout, stderr)
	}
	for _, w := range []*regexp.Regexp{
		regexp.MustCompile(`CACHE TIER +ready +baseline v1 +assignment v1 +1 backup`),
		regexp.MustCompile(`(?m)^ +node1 +- +yes +up +\d+ +\d+ +\d+ +\d+ +0$`),
		regexp.MustCompile(`(?m)^ +node3 +- +yes +up `),
	} {
		if !w.MatchString(stdout) {
			t.Errorf("status does not match %s:\n%s", w, stdout)
		}
	}

	if code := d.stop(t); code != 0 {
		t.Fatalf("dev exited %d after cancel:\n%s", code, d.err.String())
	}
	if n := strings.Count(d.err.String(), "cache node stopped"); n != 3 {
		t.Errorf("%d cache nodes stopped, want 3:\n%s", n, d.err.String())
	}
}

// TestStatusCacheTier checks the cache tier in status with a baseline
// member down: its backups serve, so the tier is ready, and the member is
// listed down with everything it owns missing.
func TestStatusCacheTier(t *testing.T) {
	tg, _, _ := cmdBus(t)
	fastTier(t)
	cfg := server.Config{ID: "n1", Baseline: []string{"n1", "n2"}, Backups: 1, MaxMB: 8, MaxValue: 8 << 10}
	cfg.Interval, cfg.FailureTimeout = 100*time.Millisecond, 600*time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	s, err := server.Start(ctx, cfg, server.Options{Conn: bustest.Connect(t, tg.URL)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Shutdown(context.Background()) })
	bustest.WaitFor(t, 20*time.Second, "n1 ready", func() bool { return s.Ready() == nil })

	code, stdout, stderr := cmdRun(t, "", "status", "--json")
	if code != 0 {
		t.Fatalf("status --json: exit %d\n%s%s", code, stdout, stderr)
	}
	var st struct {
		admin.Status
		Sections struct {
			Cache topology.Summary `json:"cache"`
		} `json:"sections"`
	}
	if err := json.Unmarshal([]byte(stdout), &st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, stdout)
	}
	c := st.Sections.Cache
	if !c.Ready || c.BaselineVersion != 1 || len(c.Nodes) != 2 || c.Uncovered != 0 {
		t.Fatalf("cache section %+v", c)
	}
	if n1, n2 := c.Nodes[0], c.Nodes[1]; !n1.Live || n1.Held != 1024 || n1.Serving != 1024 ||
		n2.Live || n2.Missing != n2.Primary+n2.Backup || n2.Missing == 0 {
		t.Fatalf("nodes %+v", c.Nodes)
	}

	code, stdout, stderr = cmdRun(t, "", "status")
	if code != 0 {
		t.Fatalf("status: exit %d\n%s%s", code, stdout, stderr)
	}
	for _, w := range []*regexp.Regexp{
		regexp.MustCompile(`CACHE TIER +ready +baseline v1`),
		regexp.MustCompile(`(?m)^ +n1 +- +yes +up +\d+ +\d+ +1024 +1024 +0$`),
		regexp.MustCompile(`(?m)^ +n2 +- +yes +down +\d+ +\d+ +0 +0 +1024$`),
	} {
		if !w.MatchString(stdout) {
			t.Errorf("status does not match %s:\n%s", w, stdout)
		}
	}
}
