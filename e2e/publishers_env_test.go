//go:build unix

package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus/bustest"
	"github.com/cachebus/cachebus/cachenode/memo"
	"github.com/cachebus/cachebus/e2e/harness"
)

// The publisher tests run the examples of docs/examples as a user of
// another language would, against one `cachebus dev` each: an expire they
// publish must drop a value memoized by a memo client and a page cached by
// dev's gateway, and nothing else.

var (
	devGatewayRe = regexp.MustCompile(`^\s*gateway\s+(http://\S+)`)
	// ackSeqRe finds the sequence a publisher reports the log stored its
	// expire at: "stored at seq 12", cachebus's "seq=12", the admin API's
	// "seq": 12.
	ackSeqRe = regexp.MustCompile(`seq"?\s*[:= ]\s*(\d+)`)
)

// pubDev is a `cachebus dev` run for a publisher test.
type pubDev struct {
	p                                    *harness.Proc
	natsURL, adminURL, token, gatewayURL string
}

// startPubDev runs `cachebus dev` on free ports with no demo apps, and
// heartbeats fast enough that an app joins the gateway at once and the
// cache node is ready within a second.
func startPubDev(t *testing.T) *pubDev {
	t.Helper()
	env := map[string]string{
		// A dev killed at the end of a failed test leaves its store here,
		// removed with the test's directories.
		"TMPDIR":                      t.TempDir(),
		"CACHEBUS_HEARTBEAT_INTERVAL": harness.GatewayHeartbeat.String(),
		"CACHEBUS_FAILURE_TIMEOUT":    harness.GatewayFailureTimeout.String(),
	}
	d := &pubDev{p: harn.Start(t, "dev", env, "dev", "--nats-port", "-1", "--http", "127.0.0.1:0",
		"--gateway", "127.0.0.1:0", "--apps", "0")}
	d.natsURL = d.p.WaitLine(30*time.Second, devNATSRe)[1]
	d.adminURL = d.p.WaitLine(5*time.Second, devAdminRe)[1]
	d.token = d.p.WaitLine(5*time.Second, devTokenRe)[1]
	d.gatewayURL = d.p.WaitLine(5*time.Second, devGatewayRe)[1]
	bustest.WaitFor(t, 15*time.Second, "dev /readyz = 200", func() bool {
		code, _ := harness.HTTPGet(d.adminURL + "/readyz")
		return code == http.StatusOK
	})
	return d
}

// gateway is dev's gateway as a cacheGW, to fill and purge pages with.
func (d *pubDev) gateway() *cacheGW {
	return &cacheGW{name: "dev gateway", url: d.gatewayURL, fresh: map[string]string{}}
}

// admin sends a request to dev's admin API with its token.
func (d *pubDev) admin(method, path, body string) (int, string) {
	req, err := http.NewRequest(method, d.adminURL+path, strings.NewReader(body))
	if err != nil {
		return 0, err.Error()
	}
	req.Header.Set("Authorization", "Bearer "+d.token)
	return harness.HTTPDo(req)
}

// rejected is dev's count of expires rejected for reason (the field at
// fault), read from its /metrics.
func (d *pubDev) rejected(t *testing.T, reason string) int {
	t.Helper()
	code, body := harness.HTTPGet(d.adminURL + "/metrics")
	if code != http.StatusOK {
		t.Fatalf("dev GET /metrics = %d", code)
	}
	re := regexp.MustCompile(`(?m)^cachebus_bus_messages_rejected_total\{kind="expire",reason="` + regexp.QuoteMeta(reason) + `"\} (\d+)$`)
	m := re.FindStringSubmatch(body)
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// memoProbe is a memo client of the test's own, on dev's NATS: the
// in-memory cache of a Go app server that must drop what the publishers
// expire. Each value it computes is numbered, so a recomputed value shows.
type memoProbe struct {
	c        *memo.Client
	computed atomic.Int64
}

func newMemoProbe(t *testing.T, natsURL, ns string) *memoProbe {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, err := memo.New(ctx, harness.Connect(t, natsURL), memo.Options{Namespace: ns, ID: "e2e-memo", Log: harness.WarnLogger(t)})
	if err != nil {
		t.Fatalf("memo client on %s: %v", ns, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return &memoProbe{c: c}
}

// get returns key's memoized value, computing it when it is not cached.
func (m *memoProbe) get(t *testing.T, key string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// A TTL far beyond the test: only an expire makes a value go.
	v, err := m.c.Do(ctx, key, time.Hour, func(context.Context) ([]byte, error) {
		return fmt.Appendf(nil, "%s, computed #%d", key, m.computed.Add(1)), nil
	})
	if err != nil {
		t.Fatalf("memo Do %s: %v", key, err)
	}
	return string(v)
}

// fill computes each key's value and returns them.
func (m *memoProbe) fill(t *testing.T, keys ...string) map[string]string {
	t.Helper()
	vals := map[string]string{}
	for _, k := range keys {
		vals[k] = m.get(t, k)
		if again := m.get(t, k); again != vals[k] {
			t.Fatalf("memo: %s computed twice in a row (%q, then %q): not cached", k, vals[k], again)
		}
	}
	return vals
}

// waitRecomputed waits until key's value is no longer old: the memo
// client dropped it and computed it again.
func (m *memoProbe) waitRecomputed(t *testing.T, what, key, old string) {
	t.Helper()
	bustest.WaitFor(t, 10*time.Second, what+": memo value of "+key+" dropped", func() bool {
		return m.get(t, key) != old
	})
}

// kept requires key to still have value old: the expire was precise.
func (m *memoProbe) kept(t *testing.T, what, key, old string) {
	t.Helper()
	if got := m.get(t, key); got != old {
		t.Errorf("%s: memo value of %s changed from %q to %q: it was not expired", what, key, old, got)
	}
}

// publisher is how a test runs one example: it starts it publishing an
// expire of keys in namespace ns, and returns the running process.
type publisher func(t *testing.T, ns string, keys ...string) *harness.Proc

// checkPublisher runs publish twice against dev — an expire of users
// user:42, then one of the gateway's page /static/<page>-a — and requires
// each to exit 0 with the sequence the log stored it at, user:42 to be
// recomputed by the memo client and the page to be fetched fresh by the
// gateway, while user:7 and /static/<page>-b stay cached. Pages are named
// by page so that each call starts with pages never fetched.
func checkPublisher(t *testing.T, name, page string, memoc *memoProbe, gw *cacheGW, publish publisher) {
	t.Helper()
	pageA, pageB := "/static/"+page+"-a", "/static/"+page+"-b"
	vals := memoc.fill(t, "user:42", "user:7")
	fill(t, []*cacheGW{gw}, pageA, pageB)

	start := time.Now()
	p := publish(t, "users", "user:42")
	if code := p.Wait(30 * time.Second); code != 0 {
		t.Fatalf("%s users user:42 exited %d:\n%s", name, code, p.Output())
	}
	ran := time.Since(start)
	checkAckSeq(t, name, p.Output())
	memoc.waitRecomputed(t, name, "user:42", vals["user:42"])
	memoc.kept(t, name, "user:7", vals["user:7"])

	start = time.Now()
	p = publish(t, "http", pageA)
	seen, ranHTTP := waitPurged(t, name+" http "+pageA+": the gateway's copy purged", start, p, []*cacheGW{gw}, pageA)
	checkAckSeq(t, name, p.Output())
	hits(t, []*cacheGW{gw}, pageB)
	t.Logf("%s: expire of users user:42 acknowledged after %s; of http %s after %s, purged %s after it started",
		name, ran.Round(time.Millisecond), pageA, ranHTTP.Round(time.Millisecond), ms(seen))
}

// checkAckSeq requires a publisher's output to report the sequence the
// event log stored its expire at: it used the acknowledged path.
func checkAckSeq(t *testing.T, name, out string) {
	t.Helper()
	m := ackSeqRe.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("%s does not report the sequence the log stored its expire at:\n%s", name, out)
	}
	parseSeq(t, m[1])
}

// examplesDir is docs/examples of this repository.
func examplesDir(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs(filepath.Join("..", "docs", "examples"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("the examples: %v", err)
	}
	return dir
}

// needTool returns the path of a program a test needs. When it is absent
// the test is skipped, saying what to install — or fails, when
// CACHEBUS_REQUIRE_EXTERNAL is set, as CI sets it: there it must run.
func needTool(t *testing.T, name, install string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		missingToolchain(t, name, install, err)
	}
	return path
}

// noBytecode, as PYTHONDONTWRITEBYTECODE, keeps the Python examples from
// leaving a __pycache__ in the source tree.
const noBytecode = "1"

// needPython returns the python3 interpreter. The python3 on PATH may be
// a version manager's shim (pyenv's costs half a second a run): the
// interpreter it runs is the same program, without that cost.
func needPython(t *testing.T) string {
	t.Helper()
	python := needTool(t, "python3", "apt-get install python3")
	out, err := exec.Command(python, "-c", "import sys; print(sys.executable)").Output()
	if err != nil {
		t.Fatalf("%s: %v", python, err)
	}
	if exe := strings.TrimSpace(string(out)); exe != "" {
		return exe
	}
	return python
}

func missingToolchain(t *testing.T, what, install string, err error) {
	t.Helper()
	if os.Getenv("CACHEBUS_REQUIRE_EXTERNAL") != "" {
		t.Fatalf("%s required (CACHEBUS_REQUIRE_EXTERNAL is set) but missing: %v; %s", what, err, install)
	}
	t.Skipf("skipped: %s missing (%v); %s", what, err, install)
}
