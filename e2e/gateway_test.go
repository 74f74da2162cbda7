//go:build unix

package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/cookiejar"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus/bustest"
	"github.com/cachebus/cachebus/e2e/harness"
	"github.com/cachebus/cachebus/lbgateway"
)

// Settings of the gateway tests.
const (
	gwHeartbeat      = 100 * time.Millisecond
	gwFailureTimeout = time.Second
	gwDrainIdle      = time.Second
	gwSecret         = "e2e-gateway-secret-0123456789"
)

// appProc is an app server process with its announce sidecar.
type appProc struct {
	id, addr, log string
	app, sidecar  *harness.Proc
}

// startApps starts one app server per id, each announced by a
// `cachebus announce` sidecar with a health check.
func startApps(t *testing.T, natsURL string, ids ...string) []*appProc {
	t.Helper()
	dir := t.TempDir()
	var apps []*appProc
	for _, id := range ids {
		a := &appProc{id: id, addr: harness.FreeAddr(t), log: filepath.Join(dir, id+".log")}
		a.app = harness.StartBinary(t, os.Args[0], id, map[string]string{appServerEnv: a.addr, "E2E_APP_ID": id, "E2E_APP_LOG": a.log})
		harness.WaitListening(t, 10*time.Second, id, a.addr, a.app)
		a.sidecar = harn.Start(t, id+"-announce", map[string]string{
			"CACHEBUS_NATS_URL":               natsURL,
			"CACHEBUS_HEARTBEAT_INTERVAL":     gwHeartbeat.String(),
			"CACHEBUS_FAILURE_TIMEOUT":        gwFailureTimeout.String(),
			"CACHEBUS_HEALTH_INTERVAL":        "100ms",
			"CACHEBUS_HEALTH_FALL":            "2",
			"CACHEBUS_ANNOUNCE_DRAIN_TIMEOUT": "30s",
		}, "announce", "--id", id, "--addr", "http://"+a.addr, "--health", "/healthz")
		apps = append(apps, a)
	}
	return apps
}

var gatewayURLRe = regexp.MustCompile(`gateway \S+: (http://\S+)`)

// startGatewayProc starts `cachebus gateway` and returns its URL.
func startGatewayProc(t *testing.T, natsURL, id string, extra map[string]string) (*harness.Proc, string) {
	t.Helper()
	env := map[string]string{
		"CACHEBUS_NATS_URL":            natsURL,
		"CACHEBUS_GATEWAY_SECRET":      gwSecret,
		"CACHEBUS_GATEWAY_COOKIE_MODE": "insert",
		"CACHEBUS_GATEWAY_DRAIN_IDLE":  gwDrainIdle.String(),
		"CACHEBUS_HEARTBEAT_INTERVAL":  gwHeartbeat.String(),
		"CACHEBUS_FAILURE_TIMEOUT":     gwFailureTimeout.String(),
	}
	for k, v := range extra {
		env[k] = v
	}
	p := harn.Start(t, id, env, "gateway", "--id", id, "--addr", "127.0.0.1:0", "--http", "127.0.0.1:0")
	url := p.WaitLine(30*time.Second, gatewayURLRe)[1]
	return p, url
}

// gatewayStatus reads the gateway's status.json.
func gatewayStatus(t *testing.T, url string) lbgateway.Status {
	t.Helper()
	code, body := harness.HTTPGet(url + "/_cachebus/status.json")
	if code != http.StatusOK {
		t.Fatalf("status.json: %d %s", code, body)
	}
	var st lbgateway.Status
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatalf("status.json: %v", err)
	}
	return st
}

func stateOf(st lbgateway.Status, id string) string {
	for _, b := range st.Backends {
		if b.ID == id {
			return b.State
		}
	}
	return "absent"
}

// gwLoad is sticky sessions and new ones through a gateway, with POSTs
// carrying ids so that double delivery can be counted.
type gwLoad struct {
	url                    string
	stop                   chan struct{}
	wg                     sync.WaitGroup
	gets, getsFailed       atomic.Int64
	posts, posts5xx, postN atomic.Int64
	moved                  atomic.Int64
	newOn                  sync.Map // backend id → *atomic.Int64: new sessions, counted while watched
	watch                  atomic.Pointer[watched]
	firstOf                sync.Map // client → backend
	quit                   sync.Map // backend id → chan struct{}: its sessions end
	failures               chan string
}

// watched is a backend whose new sessions are counted: those of requests
// sent after since.
type watched struct {
	id    string
	since time.Time
}

func startGWLoad(t *testing.T, url string, clients int) *gwLoad {
	l := &gwLoad{url: url, stop: make(chan struct{}), failures: make(chan string, 100)}
	for i := range clients {
		l.wg.Add(1)
		go l.session(i)
	}
	l.wg.Add(1)
	go l.newSessions()
	return l
}

func (l *gwLoad) fail(msg string) {
	select {
	case l.failures <- msg:
	default:
	}
}

func (l *gwLoad) session(i int) {
	defer l.wg.Done()
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, Timeout: 10 * time.Second}
	first := ""
	for n := 0; ; n++ {
		select {
		case <-l.stop:
			return
		default:
		}
		if first != "" {
			if q, ok := l.quit.Load(first); ok {
				select {
				case <-q.(chan struct{}):
					return
				default:
				}
			}
		}
		if n%5 == 4 {
			l.post(c)
			continue
		}
		sent := time.Now()
		resp, err := c.Get(fmt.Sprintf("%s/app/%d/%d", l.url, i, n))
		l.gets.Add(1)
		if err != nil {
			l.getsFailed.Add(1)
			l.fail(err.Error())
			continue
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			l.getsFailed.Add(1)
			l.fail(fmt.Sprintf("GET: %d", resp.StatusCode))
			continue
		}
		at := resp.Header.Get("X-Backend")
		switch {
		case first == "":
			first = at
			l.countNew(at, sent)
		case at != first:
			l.moved.Add(1)
			first = at
		}
		l.firstOf.Store(i, first)
	}
}

func (l *gwLoad) post(c *http.Client) {
	id := fmt.Sprintf("req-%d", l.postN.Add(1))
	req, _ := http.NewRequest(http.MethodPost, l.url+"/order", bytes.NewReader([]byte("item=1")))
	req.Header.Set("X-Req", id)
	resp, err := c.Do(req)
	l.posts.Add(1)
	if err != nil {
		l.posts5xx.Add(1)
		return
	}
	resp.Body.Close()
	if resp.StatusCode >= 500 {
		l.posts5xx.Add(1)
	}
}

func (l *gwLoad) newSessions() {
	defer l.wg.Done()
	for {
		select {
		case <-l.stop:
			return
		case <-time.After(10 * time.Millisecond):
		}
		sent := time.Now()
		resp, err := http.Get(l.url + "/new")
		if err != nil || resp.StatusCode != 200 {
			l.getsFailed.Add(1)
			if err == nil {
				resp.Body.Close()
			}
			continue
		}
		resp.Body.Close()
		l.countNew(resp.Header.Get("X-Backend"), sent)
	}
}

// countNew counts a new session on at, sent at sent, when at is watched.
func (l *gwLoad) countNew(at string, sent time.Time) {
	if w := l.watch.Load(); w != nil && w.id == at && sent.After(w.since) {
		v, _ := l.newOn.LoadOrStore(at, &atomic.Int64{})
		v.(*atomic.Int64).Add(1)
	}
}

func (l *gwLoad) newCount(id string) int64 {
	v, ok := l.newOn.Load(id)
	if !ok {
		return 0
	}
	return v.(*atomic.Int64).Load()
}

func (l *gwLoad) finish() {
	close(l.stop)
	l.wg.Wait()
}

// served counts, across the app servers' logs, how often each POST was
// served.
func served(t *testing.T, apps []*appProc) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, a := range apps {
		f, err := os.Open(a.log)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			out[strings.TrimSpace(sc.Text())]++
		}
		f.Close()
	}
	return out
}

// TestGatewayDrainAndKill runs real processes: NATS, three app servers
// announced by sidecars, and a gateway. Under a load of sticky sessions:
// `cachebus drain app b2 --wait` fails no request, moves no session and
// lands no new session on b2, and returns once b2 is drained; then b3 is
// SIGKILLed: its sessions move, GETs are retried and succeed, and no POST
// is served twice. Last, the gateway stops cleanly on SIGTERM.
func TestGatewayDrainAndKill(t *testing.T) {
	n := harn.StartNATS(t)
	apps := startApps(t, n.URL, "b1", "b2", "b3")
	gw, url := startGatewayProc(t, n.URL, "gw1", nil)
	bustest.WaitFor(t, 15*time.Second, "three apps up in the gateway", func() bool {
		st := gatewayStatus(t, url)
		return stateOf(st, "b1") == "up" && stateOf(st, "b2") == "up" && stateOf(st, "b3") == "up"
	})

	load := startGWLoad(t, url, 15)
	bustest.WaitFor(t, 10*time.Second, "sessions on every app", func() bool {
		seen := map[string]bool{}
		load.firstOf.Range(func(_, v any) bool { seen[v.(string)] = true; return true })
		return len(seen) == 3
	})

	// Drain b2.
	drained := make(chan string, 1)
	start := time.Now()
	go func() {
		_, out := harn.Run(t, 60*time.Second, map[string]string{"CACHEBUS_NATS_URL": n.URL,
			"CACHEBUS_FAILURE_TIMEOUT": gwFailureTimeout.String()}, "drain", "app", "b2", "--wait", "--timeout", "60s")
		drained <- out
	}()
	bustest.WaitFor(t, 10*time.Second, "b2 draining", func() bool { return stateOf(gatewayStatus(t, url), "b2") == "draining" })
	// From now on no new session may land on b2.
	load.watch.Store(&watched{id: "b2", since: time.Now()})
	// Its sessions go on for a while, then end.
	before := load.gets.Load()
	bustest.WaitFor(t, 10*time.Second, "load during the drain", func() bool { return load.gets.Load() > before+300 })
	if st := stateOf(gatewayStatus(t, url), "b2"); st != "draining" {
		t.Fatalf("b2 is %s while its sessions run, want draining", st)
	}
	q := make(chan struct{})
	load.quit.Store("b2", q)
	close(q)
	var out string
	select {
	case out = <-drained:
	case <-time.After(60 * time.Second):
		t.Fatal("cachebus drain --wait did not return")
	}
	if !strings.Contains(out, "drained") {
		t.Fatalf("drain --wait output:\n%s", out)
	}
	t.Logf("drain --wait returned after %s", time.Since(start).Round(100*time.Millisecond))
	if n := load.getsFailed.Load(); n != 0 {
		t.Errorf("%d GETs failed during the drain, want 0", n)
	}
	if n := load.moved.Load(); n != 0 {
		t.Errorf("%d sticky sessions moved during the drain, want 0", n)
	}
	if n := load.newCount("b2"); n != 0 {
		t.Errorf("%d new sessions on the draining b2, want 0", n)
	}
	if n := load.posts5xx.Load(); n != 0 {
		t.Errorf("%d POSTs failed during the drain, want 0", n)
	}

	// Kill b3 under load.
	load.watch.Store(nil)
	before = load.gets.Load()
	apps[2].app.Signal(syscall.SIGKILL)
	killed := time.Now()
	bustest.WaitFor(t, 15*time.Second, "b3 out of the pool", func() bool {
		st := stateOf(gatewayStatus(t, url), "b3")
		return st == "absent" || st == "down" || st == "ejected"
	})
	bustest.WaitFor(t, 10*time.Second, "load after the kill", func() bool { return load.gets.Load() > before+500 })
	load.finish()
	t.Logf("b3 out of the pool %s after SIGKILL; %d GETs, %d POSTs (%d answered 5xx), %d sessions moved",
		time.Since(killed).Round(100*time.Millisecond), load.gets.Load(), load.posts.Load(), load.posts5xx.Load(), load.moved.Load())
	if n := load.getsFailed.Load(); n != 0 {
		t.Errorf("%d GETs failed: an idempotent request must be retried on another app", n)
		close(load.failures)
		for f := range load.failures {
			t.Log(f)
		}
	}
	for id, times := range served(t, apps) {
		if times > 1 {
			t.Errorf("POST %s served %d times", id, times)
		}
	}
	if load.moved.Load() == 0 {
		t.Error("no session moved off the killed app: did it have any?")
	}

	took := gw.Terminate(15 * time.Second)
	t.Logf("gateway exited 0 %s after SIGTERM", took.Round(time.Millisecond))
}
