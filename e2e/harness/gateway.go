//go:build unix

package harness

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
	"testing"
	"time"

	"github.com/cachebus/cachebus/lbgateway"
)

// Settings of the gateways StartGateway starts and of the app servers
// StartApps announces.
const (
	GatewayHeartbeat      = 100 * time.Millisecond // CACHEBUS_HEARTBEAT_INTERVAL
	GatewayFailureTimeout = time.Second            // CACHEBUS_FAILURE_TIMEOUT
	GatewayDrainIdle      = time.Second            // CACHEBUS_GATEWAY_DRAIN_IDLE
	GatewaySecret         = "e2e-gateway-secret-0123456789"
)

// App is an app server process with its announce sidecar.
type App struct {
	ID, Addr string
	Log      string // where it appends the X-Req of each POST it serves
	App      *Proc
	Sidecar  *Proc

	// DrainTimeout is the sidecar's CACHEBUS_ANNOUNCE_DRAIN_TIMEOUT: how
	// long it waits, on SIGTERM, for the gateways to drain the app.
	DrainTimeout time.Duration
	natsURL      string
}

// StartApps starts one app server per id, each announced by a
// `cachebus announce` sidecar with a health check and a drain timeout
// of 30s. The app servers are the running test binary itself, whose
// TestMain must run RunAppServer when AppServerEnv is set.
func (h *Harness) StartApps(t testing.TB, natsURL string, ids ...string) []*App {
	t.Helper()
	var apps []*App
	for _, id := range ids {
		a := NewApp(t, natsURL, id)
		h.StartApp(t, a)
		apps = append(apps, a)
	}
	return apps
}

// NewApp returns app id, not started, announced on natsURL with the
// settings StartApps gives, on a free address.
func NewApp(t testing.TB, natsURL, id string) *App {
	t.Helper()
	return &App{ID: id, Addr: FreeAddr(t), Log: filepath.Join(t.TempDir(), id+".log"), DrainTimeout: 30 * time.Second, natsURL: natsURL}
}

// StartApp starts (or starts again, on the same address and log, once
// both have exited) app a and its sidecar.
func (h *Harness) StartApp(t testing.TB, a *App) {
	t.Helper()
	a.App = StartBinary(t, os.Args[0], a.ID, map[string]string{AppServerEnv: a.Addr, "E2E_APP_ID": a.ID, "E2E_APP_LOG": a.Log})
	WaitListening(t, 10*time.Second, a.ID, a.Addr, a.App)
	a.Sidecar = h.Start(t, a.ID+"-announce", map[string]string{
		"CACHEBUS_NATS_URL":               a.natsURL,
		"CACHEBUS_HEARTBEAT_INTERVAL":     GatewayHeartbeat.String(),
		"CACHEBUS_FAILURE_TIMEOUT":        GatewayFailureTimeout.String(),
		"CACHEBUS_HEALTH_INTERVAL":        "100ms",
		"CACHEBUS_HEALTH_FALL":            "2",
		"CACHEBUS_ANNOUNCE_DRAIN_TIMEOUT": a.DrainTimeout.String(),
	}, "announce", "--id", a.ID, "--addr", "http://"+a.Addr, "--health", "/healthz")
}

var gatewayURLRe = regexp.MustCompile(`gateway \S+: (http://\S+)`)

// StartGateway starts `cachebus gateway` in insert cookie mode, with
// extra variables, and returns it and its URL.
func (h *Harness) StartGateway(t testing.TB, natsURL, id string, extra map[string]string) (*Proc, string) {
	t.Helper()
	env := map[string]string{
		"CACHEBUS_NATS_URL":            natsURL,
		"CACHEBUS_GATEWAY_SECRET":      GatewaySecret,
		"CACHEBUS_GATEWAY_COOKIE_MODE": "insert",
		"CACHEBUS_GATEWAY_DRAIN_IDLE":  GatewayDrainIdle.String(),
		"CACHEBUS_HEARTBEAT_INTERVAL":  GatewayHeartbeat.String(),
		"CACHEBUS_FAILURE_TIMEOUT":     GatewayFailureTimeout.String(),
	}
	for k, v := range extra {
		env[k] = v
	}
	p := h.Start(t, id, env, "gateway", "--id", id, "--addr", "127.0.0.1:0", "--http", "127.0.0.1:0")
	url := p.WaitLine(30*time.Second, gatewayURLRe)[1]
	return p, url
}

// GatewayStatus reads the gateway's status.json.
func GatewayStatus(t testing.TB, url string) lbgateway.Status {
	t.Helper()
	code, body := HTTPGet(url + "/_cachebus/status.json")
	if code != http.StatusOK {
		t.Fatalf("status.json: %d %s", code, body)
	}
	var st lbgateway.Status
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatalf("status.json: %v", err)
	}
	return st
}

// BackendState is the state of backend id in st, or "absent".
func BackendState(st lbgateway.Status, id string) string {
	for _, b := range st.Backends {
		if b.ID == id {
			return b.State
		}
	}
	return "absent"
}

// GatewayLoad is sticky sessions and new ones through a gateway, with
// POSTs carrying ids (X-Req) so that double delivery can be counted (see
// Served). Its counters are what it sent and what failed.
type GatewayLoad struct {
	url                    string
	stop                   chan struct{}
	wg                     sync.WaitGroup
	Gets, GetsFailed       atomic.Int64
	Posts, Posts5xx, postN atomic.Int64
	Moved                  atomic.Int64 // sessions answered by another backend than before
	newOn                  sync.Map     // backend id → *atomic.Int64: new sessions, counted while watched
	watch                  atomic.Pointer[watched]
	FirstOf                sync.Map    // client → backend
	quit                   sync.Map    // backend id → chan struct{}: its sessions end
	Failures               chan string // the first 100 failures
	finish                 sync.Once
}

// watched is a backend whose new sessions are counted: those of requests
// sent after since.
type watched struct {
	id    string
	since time.Time
}

// StartGatewayLoad starts clients sticky sessions against the gateway at
// url, each a GET after another with a POST every fifth request, and a
// stream of new sessions.
func StartGatewayLoad(url string, clients int) *GatewayLoad {
	l := &GatewayLoad{url: url, stop: make(chan struct{}), Failures: make(chan string, 100)}
	for i := range clients {
		l.wg.Add(1)
		go l.session(i)
	}
	l.wg.Add(1)
	go l.newSessions()
	return l
}

func (l *GatewayLoad) fail(msg string) {
	select {
	case l.Failures <- msg:
	default:
	}
}

func (l *GatewayLoad) session(i int) {
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
		l.Gets.Add(1)
		if err != nil {
			l.GetsFailed.Add(1)
			l.fail(err.Error())
			continue
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			l.GetsFailed.Add(1)
			l.fail(fmt.Sprintf("GET: %d", resp.StatusCode))
			continue
		}
		at := resp.Header.Get("X-Backend")
		switch {
		case first == "":
			first = at
			l.countNew(at, sent)
		case at != first:
			l.Moved.Add(1)
			first = at
		}
		l.FirstOf.Store(i, first)
	}
}

func (l *GatewayLoad) post(c *http.Client) {
	id := fmt.Sprintf("req-%d", l.postN.Add(1))
	req, _ := http.NewRequest(http.MethodPost, l.url+"/order", bytes.NewReader([]byte("item=1")))
	req.Header.Set("X-Req", id)
	resp, err := c.Do(req)
	l.Posts.Add(1)
	if err != nil {
		l.Posts5xx.Add(1)
		return
	}
	resp.Body.Close()
	if resp.StatusCode >= 500 {
		l.Posts5xx.Add(1)
	}
}

func (l *GatewayLoad) newSessions() {
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
			l.GetsFailed.Add(1)
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
func (l *GatewayLoad) countNew(at string, sent time.Time) {
	if w := l.watch.Load(); w != nil && w.id == at && sent.After(w.since) {
		v, _ := l.newOn.LoadOrStore(at, &atomic.Int64{})
		v.(*atomic.Int64).Add(1)
	}
}

// Watch counts, from now on, the new sessions that land on backend id.
func (l *GatewayLoad) Watch(id string) { l.watch.Store(&watched{id: id, since: time.Now()}) }

// Unwatch stops counting new sessions.
func (l *GatewayLoad) Unwatch() { l.watch.Store(nil) }

// Quit ends the sessions sticky to backend id: they send nothing more.
func (l *GatewayLoad) Quit(id string) {
	q := make(chan struct{})
	close(q)
	l.quit.Store(id, q)
}

// NewCount is how many new sessions landed on backend id while watched.
func (l *GatewayLoad) NewCount(id string) int64 {
	v, ok := l.newOn.Load(id)
	if !ok {
		return 0
	}
	return v.(*atomic.Int64).Load()
}

// Finish stops the load and waits for its requests to end; it may be
// called again.
func (l *GatewayLoad) Finish() {
	l.finish.Do(func() { close(l.stop) })
	l.wg.Wait()
}

// Served counts, across the app servers' logs, how often each POST was
// served.
func Served(t testing.TB, apps []*App) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, a := range apps {
		f, err := os.Open(a.Log)
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
