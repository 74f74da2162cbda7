//go:build unix

package e2e

import (
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus/bustest"
	"github.com/cachebus/cachebus/e2e/harness"
)

// browser is one user of the demo through the gateway: its cookies, no
// redirects followed.
type browser struct {
	t *testing.T
	c *http.Client
}

func newBrowser(t *testing.T) *browser {
	jar, _ := cookiejar.New(nil)
	return &browser{t: t, c: &http.Client{Jar: jar, Timeout: 10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

// post sends a form and returns the status, the answering app and the
// body.
func (b *browser) post(u string, form url.Values) (int, string, string) {
	b.t.Helper()
	resp, err := b.c.PostForm(u, form)
	if err != nil {
		b.t.Fatalf("POST %s: %v", u, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("Demo-App"), string(body)
}

// TestDemoAppDrainsOnSIGTERM runs demo apps as their own processes behind
// dev's gateway: on SIGTERM an app announces draining, keeps serving its
// sticky session while new logins go to the other app, exits 0 once its
// session has idled out, and the session goes on on the other app with
// its counter intact, since it lives in the cache tier.
func TestDemoAppDrainsOnSIGTERM(t *testing.T) {
	bin := harn.Demoapp(t)
	timing := map[string]string{"CACHEBUS_HEARTBEAT_INTERVAL": "100ms", "CACHEBUS_FAILURE_TIMEOUT": "1s"}
	devEnv := map[string]string{"CACHEBUS_GATEWAY_DRAIN_IDLE": "30s"}
	for k, v := range timing {
		devEnv[k] = v
	}
	dev := harn.Start(t, "dev", devEnv, "dev", "--nats-port", "-1", "--http", "127.0.0.1:0", "--gateway", "127.0.0.1:0", "--apps", "0")
	natsURL := dev.WaitLine(30*time.Second, devNATSRe)[1]
	gw := dev.WaitLine(10*time.Second, devGatewayRe)[1]

	startApp := func(id string) *harness.Proc {
		env := map[string]string{"CACHEBUS_NATS_URL": natsURL, "CACHEBUS_DEMO_ID": id, "CACHEBUS_DEMO_LISTEN": harness.FreeAddr(t),
			"CACHEBUS_DEMO_SESSION_IDLE": "1s", "CACHEBUS_DEMO_DRAIN_TIMEOUT": "30s", "CACHEBUS_DEMO_COMPUTE_DELAY": "0s"}
		for k, v := range timing {
			env[k] = v
		}
		p := harness.StartBinary(t, bin, id, env)
		p.WaitLine(30*time.Second, regexp.MustCompile(`^`+id+` serving on `))
		return p
	}
	app1 := startApp("app1")
	alice := newBrowser(t)
	bustest.WaitFor(t, 15*time.Second, "a login through the gateway to app1", func() bool {
		code, app, _ := alice.post(gw+"/login", url.Values{"user": {"alice"}})
		return code == http.StatusSeeOther && app == "app1"
	})
	for i := 1; i <= 2; i++ {
		if code, app, body := alice.post(gw+"/counter", nil); code != 200 || app != "app1" {
			t.Fatalf("POST /counter #%d = %d from %s %q, want 200 from app1", i, code, app, body)
		}
	}
	app2 := startApp("app2")
	bustest.WaitFor(t, 15*time.Second, "a new login through the gateway to app2", func() bool {
		code, app, _ := newBrowser(t).post(gw+"/login", url.Values{"user": {"bob"}})
		return code == http.StatusSeeOther && app == "app2"
	})

	app1.Signal(syscall.SIGTERM)
	app1.WaitLine(10*time.Second, regexp.MustCompile(`^app1 draining`))
	// Once the gateway has the drain, every new login goes to app2, while
	// alice's session stays on app1.
	bustest.WaitFor(t, 10*time.Second, "new logins to go to app2 only", func() bool {
		for range 5 {
			if code, app, _ := newBrowser(t).post(gw+"/login", url.Values{"user": {"carol"}}); code != http.StatusSeeOther || app != "app2" {
				return false
			}
		}
		return true
	})
	if code, app, body := alice.post(gw+"/counter", nil); code != 200 || app != "app1" || !strings.Contains(body, "counter=3") {
		t.Fatalf("alice's POST /counter while app1 drains = %d from %s %q, want counter=3 from app1", code, app, body)
	}
	// Alice pauses; her session idles out on app1, which exits.
	if code := app1.Wait(20 * time.Second); code != 0 {
		t.Fatalf("app1 exited %d after SIGTERM, want 0:\n%s", code, app1.Output())
	}
	for _, want := range []string{"app1 drained: its sessions ended", "app1 gone"} {
		if !strings.Contains(app1.Output(), want) {
			t.Errorf("app1 did not print %q:\n%s", want, app1.Output())
		}
	}
	code, app, body := alice.post(gw+"/counter", nil)
	if code != 200 || app != "app2" || body != "user=alice counter=4 app=app2\n" {
		t.Fatalf("alice's POST /counter after app1 left = %d from %s %q, want counter=4 from app2", code, app, body)
	}
	app2.Terminate(20 * time.Second)
}
