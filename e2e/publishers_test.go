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
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus/bustest"
	"github.com/cachebus/cachebus/e2e/harness"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TestPublisherPython runs the standard-library Python examples, which
// speak the NATS text protocol over a bare socket: app.py announces
// itself by heartbeat and dev's gateway routes to it and caches its
// pages; expire.py's expires drop a memoized value and a cached page;
// record.py puts and gets records through <p>.rec.any, agreeing with the
// admin API's view of them; on SIGTERM app.py says "gone" and leaves the
// gateway's pool.
func TestPublisherPython(t *testing.T) {
	python := needPython(t)
	dir := filepath.Join(examplesDir(t), "python")
	dev := startPubDev(t)
	env := map[string]string{"CACHEBUS_NATS_URL": dev.natsURL, "PYTHONDONTWRITEBYTECODE": noBytecode}
	py := func(name string, args ...string) *harness.Proc {
		return harness.StartBinary(t, python, name, env, append([]string{filepath.Join(dir, name)}, args...)...)
	}

	// The app: the gateway learns of it from its heartbeats alone.
	appAddr := harness.FreeAddr(t)
	app := py("app.py", "--id", "py-app", "--listen", appAddr, "--interval", fmt.Sprint(harness.GatewayHeartbeat.Seconds()))
	app.WaitLine(10*time.Second, regexp.MustCompile(`^app py-app serving`))
	bustest.WaitFor(t, 10*time.Second, "the gateway to route to the Python app", func() bool {
		if app.Exited() {
			t.Fatalf("app.py exited (%s):\n%s", app.Status(), app.Output())
		}
		a := fetch(t, http.MethodGet, dev.gatewayURL+"/hello", nil)
		return a.code == http.StatusOK && a.body == "hello from py-app\n" && a.h.Get("X-Backend") == "py-app"
	})

	memoc := newMemoProbe(t, dev.natsURL, "users")
	checkPublisher(t, "expire.py", "py", memoc, dev.gateway(), func(t *testing.T, ns string, keys ...string) *harness.Proc {
		return py("expire.py", append([]string{ns}, keys...)...)
	})

	// Records through the any-node subject, by the text protocol.
	record := func(args ...string) (int, string) {
		p := py("record.py", args...)
		return p.Wait(15 * time.Second), p.Output()
	}
	value := "hello from python\nline two" // a value may hold newlines
	if code, out := record("put", "sessions", "py-s1", value, "--ttl-ms", "600000"); code != 0 {
		t.Fatalf("record.py put exited %d:\n%s", code, out)
	}
	if code, out := record("get", "sessions", "py-s1"); code != 0 || out != value {
		t.Errorf("record.py get after put: exit %d, %q; want 0, %q", code, out, value)
	}
	if code, body := dev.admin(http.MethodGet, "/v1/records/sessions/py-s1", ""); code != http.StatusOK || body != value {
		t.Errorf("GET /v1/records/sessions/py-s1 after record.py put: %d %q, want 200 %q", code, body, value)
	}
	if code, body := dev.admin(http.MethodPut, "/v1/records/sessions/py-s2?ttl=10m", "from http"); code != http.StatusNoContent {
		t.Fatalf("PUT /v1/records/sessions/py-s2: %d %s", code, body)
	}
	if code, out := record("get", "sessions", "py-s2"); code != 0 || out != "from http" {
		t.Errorf("record.py get of a record put over HTTP: exit %d, %q; want 0, %q", code, out, "from http")
	}
	if code, out := record("del", "sessions", "py-s1"); code != 0 {
		t.Errorf("record.py del exited %d:\n%s", code, out)
	}
	if code, out := record("get", "sessions", "py-s1"); code != 3 || !strings.Contains(out, "not found") {
		t.Errorf("record.py get after del: exit %d, %q; want 3, not found", code, out)
	}
	if code, out := record("get", "sessions", "bad\x01key"); code != 1 || !strings.Contains(out, "ERR bad_request") {
		t.Errorf("record.py get of a key with a control byte: exit %d, %q; want 1, ERR bad_request", code, out)
	}

	// SIGTERM: the app announces "gone", and the gateway drops it.
	app.Signal(syscall.SIGTERM)
	if code := app.Wait(10 * time.Second); code != 0 {
		t.Fatalf("app.py exited %d after SIGTERM:\n%s", code, app.Output())
	}
	dev.p.WaitLine(10*time.Second, regexp.MustCompile(`member left.*role=app member=py-app reason=gone`))
	bustest.WaitFor(t, 10*time.Second, "the gateway to drop the Python app", func() bool {
		return fetch(t, http.MethodGet, dev.gatewayURL+"/hello", nil).code == http.StatusServiceUnavailable
	})
}

// TestPublisherC builds the C example with gcc and Debian's libnats-dev
// (the official NATS C client) and runs it as the publisher.
func TestPublisherC(t *testing.T) {
	gcc := needTool(t, "gcc", "apt-get install gcc libnats-dev")
	// The header is what the package brings; without it the toolchain is
	// absent, which is not the example failing to build.
	probe := exec.Command(gcc, "-E", "-x", "c", "-o", os.DevNull, "-")
	probe.Stdin = strings.NewReader("#include <nats/nats.h>\n")
	if out, err := probe.CombinedOutput(); err != nil {
		missingToolchain(t, "nats.h", "apt-get install libnats-dev", fmt.Errorf("%v: %s", err, out))
	}
	bin := filepath.Join(t.TempDir(), "expire")
	src := filepath.Join(examplesDir(t), "c", "expire.c")
	if out, err := exec.Command(gcc, "-Wall", "-Wextra", "-Werror", "-o", bin, src, "-lnats").CombinedOutput(); err != nil {
		t.Fatalf("gcc %s: %v\n%s", src, err, out)
	}
	dev := startPubDev(t)
	app := harn.StartApps(t, dev.natsURL, "c-app")[0]
	waitApp(t, dev, app.ID)
	checkPublisher(t, "expire.c", "c", newMemoProbe(t, dev.natsURL, "users"), dev.gateway(), func(t *testing.T, ns string, keys ...string) *harness.Proc {
		return harness.StartBinary(t, bin, "expire.c", map[string]string{"CACHEBUS_NATS_URL": dev.natsURL}, append([]string{ns}, keys...)...)
	})
}

// TestPublisherShell runs the shell examples: curl against the HTTP admin
// API with the token, and `cachebus expire`. With curl, a refused call
// shows the admin API's answer and exits non-zero.
func TestPublisherShell(t *testing.T) {
	sh := needTool(t, "sh", "a POSIX shell")
	dir := filepath.Join(examplesDir(t), "shell")
	dev := startPubDev(t)
	app := harn.StartApps(t, dev.natsURL, "sh-app")[0]
	waitApp(t, dev, app.ID)
	memoc := newMemoProbe(t, dev.natsURL, "users")
	binDir := filepath.Dir(harn.Binaries().Cachebus)

	tests := []struct {
		name, script, page string
		env                map[string]string
		tool               string
	}{
		{"curl", "expire-curl.sh", "curl", map[string]string{"CACHEBUS_ADMIN_URL": dev.adminURL, "CACHEBUS_ADMIN_TOKEN": dev.token}, "curl"},
		// The script runs `cachebus` from PATH, as a cron job would.
		{"cachebus expire", "expire-cli.sh", "cli", map[string]string{"CACHEBUS_NATS_URL": dev.natsURL,
			"PATH": binDir + string(os.PathListSeparator) + os.Getenv("PATH")}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.tool != "" {
				needTool(t, tc.tool, "apt-get install "+tc.tool)
			}
			run := func(env map[string]string, args ...string) *harness.Proc {
				return harness.StartBinary(t, sh, tc.script, env, append([]string{filepath.Join(dir, tc.script)}, args...)...)
			}
			checkPublisher(t, tc.script, tc.page, memoc, dev.gateway(), func(t *testing.T, ns string, keys ...string) *harness.Proc {
				return run(tc.env, append([]string{ns}, keys...)...)
			})
			if tc.tool != "curl" {
				return
			}
			refused := []struct {
				what string
				env  map[string]string
				args []string
				say  string
			}{
				{"a wrong token", map[string]string{"CACHEBUS_ADMIN_URL": dev.adminURL, "CACHEBUS_ADMIN_TOKEN": "not-" + dev.token},
					[]string{"users", "user:42"}, "wrong admin token"},
				{"a bad namespace", tc.env, []string{"bad.ns", "user:42"}, `"field": "ns"`},
			}
			for _, r := range refused {
				p := run(r.env, r.args...)
				if code := p.Wait(15 * time.Second); code == 0 || !strings.Contains(p.Output(), r.say) {
					t.Errorf("%s with %s: exit %d, want non-zero saying %q:\n%s", tc.script, r.what, code, r.say, p.Output())
				}
			}
		})
	}
}

// TestPublisherGo builds the Go example, which imports nats.go and no
// cachebus package, and runs it as the publisher. Then it shows what a
// publisher of a payload receivers reject sees: the log stores it and
// acknowledges it, nothing is applied, and dev's rejection counter names
// the field.
func TestPublisherGo(t *testing.T) {
	goTool := needTool(t, "go", "the Go toolchain")
	bin := filepath.Join(t.TempDir(), "go-expire")
	build := exec.Command(goTool, "build", "-o", bin, "github.com/cachebus/cachebus/docs/examples/go")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build docs/examples/go: %v\n%s", err, out)
	}
	list := exec.Command(goTool, "list", "-deps", "github.com/cachebus/cachebus/docs/examples/go")
	out, err := list.Output()
	if err != nil {
		t.Fatalf("go list -deps docs/examples/go: %v", err)
	}
	for _, dep := range strings.Fields(string(out)) {
		if strings.HasPrefix(dep, "github.com/cachebus/cachebus/") && dep != "github.com/cachebus/cachebus/docs/examples/go" {
			t.Errorf("the Go example imports %s: it must need nothing but nats.go", dep)
		}
	}

	dev := startPubDev(t)
	app := harn.StartApps(t, dev.natsURL, "go-app")[0]
	waitApp(t, dev, app.ID)
	memoc := newMemoProbe(t, dev.natsURL, "users")
	checkPublisher(t, "go-expire", "go", memoc, dev.gateway(), func(t *testing.T, ns string, keys ...string) *harness.Proc {
		return harness.StartBinary(t, bin, "go-expire", map[string]string{"CACHEBUS_NATS_URL": dev.natsURL}, append([]string{ns}, keys...)...)
	})

	// A payload of a version no receiver speaks.
	nc, err := nats.Connect(dev.natsURL)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	old := memoc.get(t, "user:42")
	fenceVal := memoc.get(t, "fence")
	before := dev.rejected(t, "v")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ack, err := js.Publish(ctx, "cachebus.expire.users", []byte(`{"v":2,"keys":["user:42"]}`))
	if err != nil {
		t.Fatalf("JetStream publish of a v2 expire: %v: the log stores what receivers reject", err)
	}
	bustest.WaitFor(t, 10*time.Second, "dev to count the v2 expire as rejected (field v)", func() bool {
		return dev.rejected(t, "v") > before
	})
	// A valid expire published after it, once applied, shows the v2 one
	// was not: the memo client applies events in log order.
	fence, err := js.Publish(ctx, "cachebus.expire.users", []byte(`{"v":1,"keys":["fence"]}`))
	if err != nil {
		t.Fatal(err)
	}
	memoc.waitRecomputed(t, "the fence expire", "fence", fenceVal)
	memoc.kept(t, "the v2 expire", "user:42", old)
	t.Logf("a v2 expire: stored at seq %d and acknowledged, rejected by every receiver; the fence after it at seq %d", ack.Sequence, fence.Sequence)
}

// waitApp waits until dev's gateway routes to app id.
func waitApp(t *testing.T, dev *pubDev, id string) {
	t.Helper()
	bustest.WaitFor(t, 15*time.Second, "the gateway to route to "+id, func() bool {
		a := fetch(t, http.MethodGet, dev.gatewayURL+"/hello", nil)
		return a.code == http.StatusOK && a.h.Get("X-Backend") == id
	})
}

// TestPublisherPermissions runs `cachebus nats` with the NATS users of
// docs/examples/permissions/nats.conf, the configuration PROTOCOL.md
// shows, and a cache node as the cachebus user: the cron user's expires
// of its namespaces are acknowledged and others refused; the shop user
// reads and writes records and announces app shop-1, but cannot expire;
// a wrong password is refused.
func TestPublisherPermissions(t *testing.T) {
	python := needPython(t)
	dir := examplesDir(t)
	conf := filepath.Join(dir, "permissions", "nats.conf")
	confText, err := os.ReadFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile(filepath.Join(dir, "..", "PROTOCOL.md"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(doc), string(confText)) {
		t.Errorf("docs/PROTOCOL.md does not show %s as it is", conf)
	}

	// The daemons connect as the cachebus user, the embedded server's own
	// client included.
	port, natsHTTP, nodeHTTP := harness.FreePort(t), harness.FreeAddr(t), harness.FreeAddr(t)
	n := &harness.NATSNode{Name: "nats", URL: fmt.Sprintf("nats://127.0.0.1:%d", port), HTTPAddr: natsHTTP, Env: map[string]string{
		"CACHEBUS_NATS_CONFIG":    conf,
		"CACHEBUS_NATS_PORT":      fmt.Sprint(port),
		"CACHEBUS_NATS_STORE_DIR": t.TempDir(),
		"CACHEBUS_HTTP_ADDR":      natsHTTP,
		"CACHEBUS_NATS_USER":      "cachebus",
		"CACHEBUS_NATS_PASSWORD":  "change-me-cachebus",
	}}
	n.P = harn.Start(t, n.Name, n.Env, "nats")
	n.WaitReady(t, 30*time.Second)
	node := harn.NewCacheNode("n1", nodeHTTP, map[string]string{
		"CACHEBUS_NODE_ID":            "n1",
		"CACHEBUS_NATS_URL":           n.URL,
		"CACHEBUS_NATS_USER":          "cachebus",
		"CACHEBUS_NATS_PASSWORD":      "change-me-cachebus",
		"CACHEBUS_HTTP_ADDR":          nodeHTTP,
		"CACHEBUS_ADMIN_TOKEN":        harness.NodeAdminToken,
		"CACHEBUS_BASELINE":           "n1",
		"CACHEBUS_HEARTBEAT_INTERVAL": harness.NodeHeartbeat.String(),
		"CACHEBUS_FAILURE_TIMEOUT":    harness.NodeFailureTimeout.String(),
	})
	node.Start(t)
	node.WaitReady(t, 30*time.Second)

	as := func(user, password string) map[string]string {
		return map[string]string{"CACHEBUS_NATS_URL": n.URL, "CACHEBUS_NATS_USER": user, "CACHEBUS_NATS_PASSWORD": password,
			"PYTHONDONTWRITEBYTECODE": noBytecode}
	}
	cron, shop := as("cron", "change-me-cron"), as("shop", "change-me-shop")
	tests := []struct {
		name string
		env  map[string]string
		args []string
		code int
		say  string
	}{
		{"cron expires users", cron, []string{"expire.py", "users", "user:42"}, 0, "stored at seq"},
		{"cron expires http", cron, []string{"expire.py", "http", "/static/a"}, 0, "stored at seq"},
		{"cron may not expire other", cron, []string{"expire.py", "other", "k"}, 1, `Permissions Violation for Publish to "cachebus.expire.other"`},
		{"cron may not read records", cron, []string{"record.py", "get", "sessions", "s1"}, 1, `Permissions Violation for Publish to "cachebus.rec.any"`},
		{"shop puts a record", shop, []string{"record.py", "put", "sessions", "s1", "hello"}, 0, "put sessions/s1: version"},
		{"shop gets it", shop, []string{"record.py", "get", "sessions", "s1"}, 0, "hello"},
		{"shop may not expire", shop, []string{"expire.py", "users", "user:42"}, 1, "Permissions Violation"},
		{"a wrong password", as("shop", "wrong"), []string{"record.py", "get", "sessions", "s1"}, 1, "Authorization Violation"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{filepath.Join(dir, "python", tc.args[0])}, tc.args[1:]...)
			p := harness.StartBinary(t, python, tc.args[0], tc.env, args...)
			if code := p.Wait(15 * time.Second); code != tc.code || !strings.Contains(p.Output(), tc.say) {
				t.Errorf("%s: exit %d, want %d saying %q:\n%s", strings.Join(tc.args, " "), code, tc.code, tc.say, p.Output())
			}
		})
	}

	// The shop's app announces itself on its own heartbeat subject.
	app := harness.StartBinary(t, python, "app.py", shop, filepath.Join(dir, "python", "app.py"),
		"--id", "shop-1", "--listen", harness.FreeAddr(t), "--interval", fmt.Sprint(harness.NodeHeartbeat.Seconds()))
	bustest.WaitFor(t, 10*time.Second, "the cache node to see app shop-1", func() bool {
		if app.Exited() {
			t.Fatalf("app.py exited (%s):\n%s", app.Status(), app.Output())
		}
		req, _ := http.NewRequest(http.MethodGet, "http://"+node.HTTPAddr+"/v1/status", nil)
		req.Header.Set("Authorization", "Bearer "+harness.NodeAdminToken)
		code, body := harness.HTTPDo(req)
		return code == http.StatusOK && strings.Contains(body, `"id": "shop-1"`)
	})
	app.Terminate(10 * time.Second)
}
