//go:build unix

package e2e

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus/bustest"
	"github.com/cachebus/cachebus/e2e/harness"
)

// TestGatewayDrainAndKill runs real processes: NATS, three app servers
// announced by sidecars, and a gateway. Under a load of sticky sessions:
// `cachebus drain app b2 --wait` fails no request, moves no session and
// lands no new session on b2, and returns once b2 is drained; then b3 is
// SIGKILLed: its sessions move, GETs are retried and succeed, and no POST
// is served twice. Last, the gateway stops cleanly on SIGTERM.
func TestGatewayDrainAndKill(t *testing.T) {
	n := harn.StartNATS(t)
	apps := harn.StartApps(t, n.URL, "b1", "b2", "b3")
	gw, url := harn.StartGateway(t, n.URL, "gw1", nil)
	bustest.WaitFor(t, 15*time.Second, "three apps up in the gateway", func() bool {
		st := harness.GatewayStatus(t, url)
		return harness.BackendState(st, "b1") == "up" && harness.BackendState(st, "b2") == "up" && harness.BackendState(st, "b3") == "up"
	})

	load := harness.StartGatewayLoad(url, 15)
	bustest.WaitFor(t, 10*time.Second, "sessions on every app", func() bool {
		seen := map[string]bool{}
		load.FirstOf.Range(func(_, v any) bool { seen[v.(string)] = true; return true })
		return len(seen) == 3
	})

	// Drain b2.
	drained := make(chan string, 1)
	start := time.Now()
	go func() {
		_, out := harn.Run(t, 60*time.Second, map[string]string{"CACHEBUS_NATS_URL": n.URL,
			"CACHEBUS_FAILURE_TIMEOUT": harness.GatewayFailureTimeout.String()}, "drain", "app", "b2", "--wait", "--timeout", "60s")
		drained <- out
	}()
	bustest.WaitFor(t, 10*time.Second, "b2 draining", func() bool { return harness.BackendState(harness.GatewayStatus(t, url), "b2") == "draining" })
	// From now on no new session may land on b2.
	load.Watch("b2")
	// Its sessions go on for a while, then end.
	before := load.Gets.Load()
	bustest.WaitFor(t, 10*time.Second, "load during the drain", func() bool { return load.Gets.Load() > before+300 })
	if st := harness.BackendState(harness.GatewayStatus(t, url), "b2"); st != "draining" {
		t.Fatalf("b2 is %s while its sessions run, want draining", st)
	}
	load.Quit("b2")
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
	if n := load.GetsFailed.Load(); n != 0 {
		t.Errorf("%d GETs failed during the drain, want 0", n)
	}
	if n := load.Moved.Load(); n != 0 {
		t.Errorf("%d sticky sessions moved during the drain, want 0", n)
	}
	if n := load.NewCount("b2"); n != 0 {
		t.Errorf("%d new sessions on the draining b2, want 0", n)
	}
	if n := load.Posts5xx.Load(); n != 0 {
		t.Errorf("%d POSTs failed during the drain, want 0", n)
	}

	// Kill b3 under load.
	load.Unwatch()
	before = load.Gets.Load()
	apps[2].App.Signal(syscall.SIGKILL)
	killed := time.Now()
	bustest.WaitFor(t, 15*time.Second, "b3 out of the pool", func() bool {
		st := harness.BackendState(harness.GatewayStatus(t, url), "b3")
		return st == "absent" || st == "down" || st == "ejected"
	})
	bustest.WaitFor(t, 10*time.Second, "load after the kill", func() bool { return load.Gets.Load() > before+500 })
	load.Finish()
	t.Logf("b3 out of the pool %s after SIGKILL; %d GETs, %d POSTs (%d answered 5xx), %d sessions moved",
		time.Since(killed).Round(100*time.Millisecond), load.Gets.Load(), load.Posts.Load(), load.Posts5xx.Load(), load.Moved.Load())
	if n := load.GetsFailed.Load(); n != 0 {
		t.Errorf("%d GETs failed: an idempotent request must be retried on another app", n)
		close(load.Failures)
		for f := range load.Failures {
			t.Log(f)
		}
	}
	for id, times := range harness.Served(t, apps) {
		if times > 1 {
			t.Errorf("POST %s served %d times", id, times)
		}
	}
	if load.Moved.Load() == 0 {
		t.Error("no session moved off the killed app: did it have any?")
	}

	took := gw.Terminate(15 * time.Second)
	t.Logf("gateway exited 0 %s after SIGTERM", took.Round(time.Millisecond))
}
