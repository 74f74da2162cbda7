//go:build unix

package fault

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus/bustest"
	"github.com/cachebus/cachebus/e2e/harness"
)

// Settings of TestGatewayUnderFaults.
const (
	gwTimeout  = 2 * time.Minute // the whole test
	gwSessions = 15              // sticky sessions of the load
	// gwPhaseGets is how many more GETs the test waits to see sent in each
	// phase of a fault, so that each fault happens under load.
	gwPhaseGets = 300
	// gwRollingDrain is how long the sidecar of an app restarted in the
	// rolling restart waits for the gateway to drain it, its sticky
	// sessions running all along, before it withdraws the app.
	gwRollingDrain = 2 * time.Second
)

// gwCounts is a snapshot of a gateway load's counters.
type gwCounts struct{ gets, getsFailed, posts, posts5xx, moved int64 }

func countsOf(l *harness.GatewayLoad) gwCounts {
	return gwCounts{l.Gets.Load(), l.GetsFailed.Load(), l.Posts.Load(), l.Posts5xx.Load(), l.Moved.Load()}
}

func (c gwCounts) since(b gwCounts) gwCounts {
	return gwCounts{c.gets - b.gets, c.getsFailed - b.getsFailed, c.posts - b.posts, c.posts5xx - b.posts5xx, c.moved - b.moved}
}

func (c gwCounts) String() string {
	return fmt.Sprintf("%s GETs, %s POSTs", formatValue(c.gets), formatValue(c.posts))
}

// TestGatewayUnderFaults is item 3 of issue 9: a bounded load of sticky
// sessions (GETs, and POSTs that carry an id each app server logs) through
// a `cachebus gateway` in front of four app servers announced by `cachebus
// announce` sidecars, while b2 is drained (`cachebus drain app --wait`),
// b3 is SIGKILLed, and b1 then b4 are restarted one after the other the
// way a rolling deploy does it: SIGTERM to the sidecar, which drains the
// app for a while and withdraws it, then SIGTERM to the app, then both
// started again. The drain and the rolling restart must fail no request,
// the drain move no sticky session and land no new session on b2; the kill
// may fail only POSTs that may have reached b3 (never retried), no GET,
// and no POST may be served twice.
func TestGatewayUnderFaults(t *testing.T) {
	if harn == nil {
		t.Skip("skipped under -short: runs NATS, app servers and a gateway as processes")
	}
	began := time.Now()
	_, within := budget(t, gwTimeout)

	n := harn.StartNATS(t)
	apps := make([]*harness.App, 4)
	for i := range apps {
		apps[i] = harness.NewApp(t, n.URL, fmt.Sprintf("b%d", i+1))
		apps[i].DrainTimeout = gwRollingDrain
		harn.StartApp(t, apps[i])
	}
	gw, url := harn.StartGateway(t, n.URL, "gw1", nil)
	state := func(id string) string { return harness.BackendState(harness.GatewayStatus(t, url), id) }
	waitUp := func(ids ...string) {
		t.Helper()
		bustest.WaitFor(t, within(15*time.Second), strings.Join(ids, ", ")+" up in the gateway", func() bool {
			st := harness.GatewayStatus(t, url)
			for _, id := range ids {
				if harness.BackendState(st, id) != "up" {
					return false
				}
			}
			return true
		})
	}
	waitUp("b1", "b2", "b3", "b4")

	load := harness.StartGatewayLoad(url, gwSessions)
	defer load.Finish()
	bustest.WaitFor(t, within(15*time.Second), "sessions on every app", func() bool {
		seen := map[string]bool{}
		load.FirstOf.Range(func(_, v any) bool { seen[v.(string)] = true; return true })
		return len(seen) == 4
	})
	moreGets := func(what string) {
		t.Helper()
		from := load.Gets.Load()
		bustest.WaitFor(t, within(20*time.Second), what, func() bool { return load.Gets.Load() >= from+gwPhaseGets })
	}
	failures := func(c gwCounts) int64 { return c.getsFailed + c.posts5xx }

	// The drain of b2: its sessions go on while it drains, then end.
	start, before := time.Now(), countsOf(load)
	drained := make(chan string, 1)
	go func() {
		_, out := harn.Run(t, within(60*time.Second), map[string]string{"CACHEBUS_NATS_URL": n.URL,
			"CACHEBUS_FAILURE_TIMEOUT": harness.GatewayFailureTimeout.String()}, "drain", "app", "b2", "--wait", "--timeout", "60s")
		drained <- out
	}()
	bustest.WaitFor(t, within(10*time.Second), "b2 draining", func() bool { return state("b2") == "draining" })
	load.Watch("b2")
	moreGets("load while b2 drains")
	load.Quit("b2")
	var out string
	select {
	case out = <-drained:
	case <-time.After(within(60 * time.Second)):
		t.Fatal("cachebus drain app b2 --wait did not return")
	}
	if !strings.Contains(out, "drained") {
		t.Errorf("drain --wait output:\n%s", out)
	}
	drain := countsOf(load).since(before)
	Figure(t, "drain of b2: requests", drain, fmt.Sprintf("drain --wait returned after %s", time.Since(start).Round(100*time.Millisecond)))
	Check(t, "drain of b2: requests failed", failures(drain), "= 0", failures(drain) == 0)
	Check(t, "drain of b2: sticky sessions moved", drain.moved, "= 0", drain.moved == 0)
	Check(t, "drain of b2: new sessions on b2", load.NewCount("b2"), "= 0", load.NewCount("b2") == 0)
	load.Unwatch()

	// The kill of b3: its sessions move; GETs are retried elsewhere.
	start, before = time.Now(), countsOf(load)
	apps[2].App.Signal(syscall.SIGKILL)
	bustest.WaitFor(t, within(15*time.Second), "b3 out of the pool", func() bool {
		s := state("b3")
		return s == "absent" || s == "down" || s == "ejected"
	})
	out3 := time.Since(start)
	moreGets("load after the kill of b3")
	kill := countsOf(load).since(before)
	Figure(t, "SIGKILL of b3: requests", kill, fmt.Sprintf("b3 out of the pool after %s", out3.Round(time.Millisecond)))
	Check(t, "SIGKILL of b3: GETs failed", kill.getsFailed, "= 0 (retried on another app)", kill.getsFailed == 0)
	Figure(t, "SIGKILL of b3: POSTs failed", kill.posts5xx, "may have reached b3: never retried")
	Check(t, "SIGKILL of b3: sticky sessions moved", kill.moved, "> 0 (b3's)", kill.moved > 0)

	// The rolling restart of b1, then b4.
	for _, a := range []*harness.App{apps[0], apps[3]} {
		start, before = time.Now(), countsOf(load)
		took := a.Sidecar.Terminate(within(a.DrainTimeout + 15*time.Second))
		bustest.WaitFor(t, within(10*time.Second), a.ID+" withdrawn from the gateway", func() bool {
			s := state(a.ID)
			return s == "absent" || s == "down" || s == "gone"
		})
		withdrawn := time.Since(start)
		a.App.Terminate(within(10 * time.Second))
		harn.StartApp(t, a)
		restarted := time.Since(start)
		// Back in the pool: it takes new sessions, a share growing
		// through the slow start.
		bustest.WaitFor(t, within(15*time.Second), a.ID+" back in the gateway's pool", func() bool {
			s := state(a.ID)
			return s == "slow-start" || s == "up"
		})
		t.Logf("%s: withdrawn after %s, restarted after %s, back in the pool after %s", a.ID, withdrawn.Round(time.Millisecond),
			restarted.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
		moreGets("load after the restart of " + a.ID)
		roll := countsOf(load).since(before)
		Figure(t, "rolling restart of "+a.ID+": requests", roll,
			fmt.Sprintf("sidecar drained and withdrew it in %s, back in the pool after %s", took.Round(100*time.Millisecond), time.Since(start).Round(100*time.Millisecond)))
		Check(t, "rolling restart of "+a.ID+": requests failed", failures(roll), "= 0", failures(roll) == 0)
		Figure(t, "rolling restart of "+a.ID+": sticky sessions moved", roll.moved, "its sessions, once withdrawn")
	}

	load.Finish()
	twice := 0
	for id, times := range harness.Served(t, apps) {
		if times > 1 {
			twice++
			t.Errorf("POST %s served %d times", id, times)
		}
	}
	Check(t, "POSTs served twice", twice, "= 0", twice == 0)
	if failed := failures(countsOf(load)); failed > 0 {
		close(load.Failures)
		for f := range load.Failures {
			t.Log("failed:", f)
		}
	}
	gw.Terminate(within(15 * time.Second))
	Check(t, "duration", time.Since(began).Round(time.Millisecond), "≤ "+gwTimeout.String(), time.Since(began) <= gwTimeout)
}
