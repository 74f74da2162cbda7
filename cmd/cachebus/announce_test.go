package main

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/bus/bustest"
	"github.com/cachebus/cachebus/persistence"
	"github.com/nats-io/nats.go"
)

// hbLog records the heartbeats of one member, in order.
type hbLog struct {
	mu  sync.Mutex
	hbs []bus.Heartbeat
}

func watchHeartbeats(t *testing.T, conn *bus.Conn, role, id string) *hbLog {
	t.Helper()
	l := &hbLog{}
	sub, err := conn.NC.Subscribe(conn.Subjects.Heartbeat(role, id), func(m *nats.Msg) {
		hb, err := bus.DecodeHeartbeat(m.Data)
		if err != nil {
			t.Errorf("bad heartbeat %q: %v", m.Data, err)
			return
		}
		l.mu.Lock()
		l.hbs = append(l.hbs, hb)
		l.mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := conn.NC.Flush(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return l
}

func (l *hbLog) all() []bus.Heartbeat {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]bus.Heartbeat(nil), l.hbs...)
}

// last is the latest heartbeat, or the zero one.
func (l *hbLog) last() bus.Heartbeat {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.hbs) == 0 {
		return bus.Heartbeat{}
	}
	return l.hbs[len(l.hbs)-1]
}

// waitState waits until the latest heartbeat says state and returns it.
func (l *hbLog) waitState(t *testing.T, b *cmdBackground, state string) bus.Heartbeat {
	t.Helper()
	bustest.WaitFor(t, 10*time.Second, "a heartbeat with state "+state, func() bool {
		if b != nil {
			select {
			case code := <-b.done:
				b.done <- code
				if state != bus.StateGone {
					t.Fatalf("announce exited %d before state %s\nstdout:\n%s\nstderr:\n%s", code, state, b.out.String(), b.err.String())
				}
			default:
			}
		}
		return l.last().State == state
	})
	return l.last()
}

// fastAnnounce makes announce beat, check and fail fast.
func fastAnnounce(t *testing.T) {
	t.Setenv("CACHEBUS_HEARTBEAT_INTERVAL", "50ms")
	t.Setenv("CACHEBUS_FAILURE_TIMEOUT", "300ms")
	t.Setenv("CACHEBUS_HEALTH_INTERVAL", "30ms")
	t.Setenv("CACHEBUS_HEALTH_TIMEOUT", "500ms")
	t.Setenv("CACHEBUS_HEALTH_RISE", "2")
	t.Setenv("CACHEBUS_HEALTH_FALL", "2")
	t.Setenv("CACHEBUS_ANNOUNCE_DRAIN_TIMEOUT", "30s")
}

// waitDrainRecorded waits until the state bucket holds a drain of app/id
// that is on and began after since.
func waitDrainRecorded(t *testing.T, state *persistence.State, id string, since time.Time) persistence.DrainState {
	t.Helper()
	var ds persistence.DrainState
	bustest.WaitFor(t, 10*time.Second, "a drain of app/"+id+" in the state bucket", func() bool {
		cs, err := state.Load(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		var on bool
		ds, on = cs.Draining(bus.RoleApp, id)
		return on && ds.Since.After(since)
	})
	return ds
}

// TestAnnounce runs announce without a health check: it beats "up" with
// its address, follows an operator's drain and its end, and on SIGTERM
// (its context cancelled) drains itself until marked drained, then says
// it is gone and exits 0.
func TestAnnounce(t *testing.T) {
	_, conn, state := cmdBus(t)
	fastAnnounce(t)
	hbs := watchHeartbeats(t, conn, bus.RoleApp, "web1")
	started := time.Now().UTC()
	a := cmdStart(t, "announce", "--id", "web1", "--addr", "http://127.0.0.1:8080/", "--dc", "dc1")

	hb := hbs.waitState(t, a, bus.StateUp)
	if hb.ID != "web1" || hb.Role != bus.RoleApp || hb.Addr != "http://127.0.0.1:8080" || hb.DC != "dc1" {
		t.Fatalf("heartbeat %+v", hb)
	}
	a.waitOutput(t, "announcing", regexp.MustCompile(`app/web1 announcing http://127\.0\.0\.1:8080 state=up\n`))

	// An operator drains it, then puts it back.
	if code, out, errs := cmdRun(t, "", "drain", "app", "web1"); code != 0 {
		t.Fatalf("drain: %d %s%s", code, out, errs)
	}
	hbs.waitState(t, a, bus.StateDraining)
	a.waitOutput(t, "the operator's drain", regexp.MustCompile(`app/web1 drain on \(by client-\S+\)`))
	if code, out, errs := cmdRun(t, "", "drain", "app", "web1", "--off"); code != 0 {
		t.Fatalf("drain --off: %d %s%s", code, out, errs)
	}
	hbs.waitState(t, a, bus.StateUp)
	a.waitOutput(t, "the drain off", regexp.MustCompile(`app/web1 drain off\n`))

	// SIGTERM: it drains itself.
	stopped := time.Now().UTC()
	a.cancel()
	hbs.waitState(t, a, bus.StateDraining)
	ds := waitDrainRecorded(t, state, "web1", stopped)
	if ds.Origin != "web1" || ds.Deadline.Before(stopped.Add(29*time.Second)) || ds.Deadline.After(time.Now().Add(31*time.Second)) {
		t.Fatalf("drain recorded %+v, want origin web1 and a deadline 30s on", ds)
	}
	a.waitOutput(t, "draining", regexp.MustCompile(`app/web1 draining: waiting up to 30s`))
	if err := state.MarkDrained(context.Background(), bus.RoleApp, "web1"); err != nil {
		t.Fatal(err)
	}
	if code := a.exited(t, 10*time.Second); code != 0 {
		t.Fatalf("announce exited %d\n%s%s", code, a.out.String(), a.err.String())
	}
	hbs.waitState(t, nil, bus.StateGone)
	if out := a.out.String(); !regexp.MustCompile(`(?s)drained after \S+\napp/web1 gone\n$`).MatchString(out) {
		t.Fatalf("stdout does not end drained, gone:\n%s", out)
	}
	for _, hb := range hbs.all() {
		if hb.Started.Before(started.Add(-time.Second)) {
			t.Fatalf("heartbeat started %s, before the command", hb.Started)
		}
	}

	// A restart clears the drain its previous run left, and is up. (Its
	// own drain at the end of the test times out at once.)
	t.Setenv("CACHEBUS_ANNOUNCE_DRAIN_TIMEOUT", "100ms")
	hbs2 := watchHeartbeats(t, conn, bus.RoleApp, "web1")
	b := cmdStart(t, "announce", "--id", "web1", "--addr", "http://127.0.0.1:8080")
	b.waitOutput(t, "the leftover drain cleared", regexp.MustCompile(`app/web1 cleared the drain its previous run left`))
	hbs2.waitState(t, b, bus.StateUp)
	cs, err := state.Load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, on := cs.Draining(bus.RoleApp, "web1"); on {
		t.Fatalf("the leftover drain is still on: %+v", cs.Drains)
	}
}

// TestAnnounceIgnoresOlderDrain checks that an operator's drain set
// before announce started does not drain it, and is left as it is.
func TestAnnounceIgnoresOlderDrain(t *testing.T) {
	_, conn, state := cmdBus(t)
	fastAnnounce(t)
	t.Setenv("CACHEBUS_ANNOUNCE_DRAIN_TIMEOUT", "100ms")
	if code, out, errs := cmdRun(t, "", "drain", "app", "web2"); code != 0 {
		t.Fatalf("drain: %d %s%s", code, out, errs)
	}
	hbs := watchHeartbeats(t, conn, bus.RoleApp, "web2")
	a := cmdStart(t, "announce", "--id", "web2", "--addr", "https://app.example:8443")
	if hb := hbs.waitState(t, a, bus.StateUp); hb.Addr != "https://app.example:8443" {
		t.Fatalf("heartbeat %+v", hb)
	}
	cs, err := state.Load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if ds, on := cs.Draining(bus.RoleApp, "web2"); !on || ds.Origin == "web2" {
		t.Fatalf("the operator's drain was changed: %+v", cs.Drains)
	}
}

// flipServer is an app whose health check answers code, which a test
// flips.
type flipServer struct {
	*httptest.Server
	code   atomic.Int32
	checks atomic.Int32
}

func newFlipServer(t *testing.T, code int) *flipServer {
	t.Helper()
	s := &flipServer{}
	s.code.Store(int32(code))
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" || r.Method != http.MethodGet {
			http.NotFound(w, r)
			return
		}
		s.checks.Add(1)
		w.WriteHeader(int(s.code.Load()))
	}))
	t.Cleanup(s.Close)
	return s
}

// TestAnnounceHealth checks the active health check: nothing is announced
// before the app passes, it leaves with "gone" after failing checks, comes
// back after passing ones, and a 3xx passes.
func TestAnnounceHealth(t *testing.T) {
	_, conn, _ := cmdBus(t)
	fastAnnounce(t)
	app := newFlipServer(t, http.StatusServiceUnavailable)
	hbs := watchHeartbeats(t, conn, bus.RoleApp, "web3")
	a := cmdStart(t, "announce", "--id", "web3", "--addr", app.URL, "--health", "/healthz")
	a.waitOutput(t, "waiting for health", regexp.MustCompile(`app/web3 waiting for GET `+regexp.QuoteMeta(app.URL)+`/healthz to pass 2 checks`))
	bustest.WaitFor(t, 10*time.Second, "failing checks", func() bool { return app.checks.Load() >= 4 })
	if got := hbs.all(); len(got) != 0 {
		t.Fatalf("announced while failing its checks: %+v", got)
	}

	app.code.Store(http.StatusOK)
	hb := hbs.waitState(t, a, bus.StateUp)
	if hb.Addr != app.URL || hb.Role != bus.RoleApp {
		t.Fatalf("heartbeat %+v", hb)
	}
	a.waitOutput(t, "healthy", regexp.MustCompile(`app/web3 healthy \(status 200 OK\)\napp/web3 announcing`))

	app.code.Store(http.StatusInternalServerError)
	hbs.waitState(t, a, bus.StateGone)
	a.waitOutput(t, "unhealthy", regexp.MustCompile(`app/web3 unhealthy \(status 500 Internal Server Error\): withdrawn\napp/web3 gone\n`))
	if !strings.Contains(a.err.String(), "app unhealthy") {
		t.Errorf("the transition is not logged:\n%s", a.err.String())
	}

	app.code.Store(http.StatusFound)
	hbs.waitState(t, a, bus.StateUp)
	a.waitOutput(t, "healthy again", regexp.MustCompile(`app/web3 healthy \(status 302 Found\)`))

	// Unreachable: it leaves, with the error as the reason.
	app.Close()
	hbs.waitState(t, a, bus.StateGone)
	a.waitOutput(t, "unreachable", regexp.MustCompile(`app/web3 unhealthy \(Get "[^"]+": dial tcp .*\): withdrawn`))

	// Stopped while withdrawn: nothing to drain.
	if code := a.stop(t); code != 0 || !strings.Contains(a.out.String(), "app/web3 not announced: nothing to drain") {
		t.Fatalf("exit %d\n%s%s", code, a.out.String(), a.err.String())
	}
}

// TestAnnounceDrainEnds covers the other ways a drain on SIGTERM ends:
// the timeout, a second signal, and the app failing its checks.
func TestAnnounceDrainEnds(t *testing.T) {
	_, conn, state := cmdBus(t)
	fastAnnounce(t)

	t.Run("timeout", func(t *testing.T) {
		t.Setenv("CACHEBUS_ANNOUNCE_DRAIN_TIMEOUT", "700ms")
		hbs := watchHeartbeats(t, conn, bus.RoleApp, "t1")
		a := cmdStart(t, "announce", "--id", "t1", "--addr", "http://127.0.0.1:8080")
		hbs.waitState(t, a, bus.StateUp)
		stopped := time.Now().UTC()
		a.cancel()
		hbs.waitState(t, a, bus.StateDraining)
		waitDrainRecorded(t, state, "t1", stopped)
		if code := a.exited(t, 10*time.Second); code != 0 {
			t.Fatalf("exit %d\n%s%s", code, a.out.String(), a.err.String())
		}
		if took := time.Since(stopped); took < 700*time.Millisecond {
			t.Errorf("exited after %s, before the drain timeout", took)
		}
		hbs.waitState(t, nil, bus.StateGone)
		if out := a.out.String(); !strings.Contains(out, "app/t1 drain timeout after 700ms\napp/t1 gone\n") {
			t.Fatalf("stdout:\n%s", out)
		}
	})

	t.Run("second signal", func(t *testing.T) {
		hbs := watchHeartbeats(t, conn, bus.RoleApp, "t2")
		a := cmdStart(t, "announce", "--id", "t2", "--addr", "http://127.0.0.1:8080")
		hbs.waitState(t, a, bus.StateUp)
		a.cancel()
		// The line is printed once its handler is in place; a signal before
		// it would stop the test binary.
		a.waitOutput(t, "draining", regexp.MustCompile(`app/t2 draining: waiting up to 30s`))
		self, err := os.FindProcess(os.Getpid())
		if err != nil {
			t.Fatal(err)
		}
		if err := self.Signal(os.Interrupt); err != nil {
			t.Skipf("cannot signal this process: %v", err)
		}
		if code := a.exited(t, 5*time.Second); code != 0 {
			t.Fatalf("exit %d\n%s%s", code, a.out.String(), a.err.String())
		}
		hbs.waitState(t, nil, bus.StateGone)
		if out := a.out.String(); !strings.Contains(out, "app/t2 second signal: stopped waiting") {
			t.Fatalf("stdout:\n%s", out)
		}
	})

	t.Run("unhealthy", func(t *testing.T) {
		app := newFlipServer(t, http.StatusOK)
		hbs := watchHeartbeats(t, conn, bus.RoleApp, "t3")
		a := cmdStart(t, "announce", "--id", "t3", "--addr", app.URL, "--health", "/healthz")
		hbs.waitState(t, a, bus.StateUp)
		a.cancel()
		hbs.waitState(t, a, bus.StateDraining)
		app.code.Store(http.StatusBadGateway)
		if code := a.exited(t, 10*time.Second); code != 0 {
			t.Fatalf("exit %d\n%s%s", code, a.out.String(), a.err.String())
		}
		hbs.waitState(t, nil, bus.StateGone)
		if out := a.out.String(); !strings.Contains(out, "app/t3 unhealthy while draining (status 502 Bad Gateway)") {
			t.Fatalf("stdout:\n%s", out)
		}
	})
}

// TestAnnounceUsage checks that bad flags and variables exit 2 naming
// what to fix, before anything connects.
func TestAnnounceUsage(t *testing.T) {
	t.Setenv("CACHEBUS_NATS_URL", fmt.Sprintf("nats://127.0.0.1:%d", bustest.FreePort(t)))
	ok := []string{"announce", "--id", "web1", "--addr", "http://127.0.0.1:8080"}
	cases := []usageCase{
		{nil, []string{"announce", "--addr", "http://127.0.0.1:8080"}, `--id / CACHEBUS_APP_ID: must match [A-Za-z0-9_-]{1,64}, got ""`},
		{nil, []string{"announce", "--id", "a.b", "--addr", "http://127.0.0.1:8080"}, "--id / CACHEBUS_APP_ID: must match"},
		{nil, []string{"announce", "--id", "web1"}, "--addr / CACHEBUS_APP_ADDR: want an absolute http or https URL"},
		{nil, []string{"announce", "--id", "web1", "--addr", "127.0.0.1:8080"}, "--addr / CACHEBUS_APP_ADDR"},
		{nil, []string{"announce", "--id", "web1", "--addr", "ftp://host:21"}, "--addr / CACHEBUS_APP_ADDR"},
		{nil, []string{"announce", "--id", "web1", "--addr", "http://user:pw@host:80"}, "--addr / CACHEBUS_APP_ADDR"},
		{nil, []string{"announce", "--id", "web1", "--addr", "http://host:80/app?x=1"}, "--addr / CACHEBUS_APP_ADDR"},
		{nil, append(ok, "--health", "healthz"), "--health / CACHEBUS_APP_HEALTH: want a path starting with /"},
		{nil, append(ok, "--dc", "dc 1"), "--dc / CACHEBUS_DC: must match"},
		{nil, append(ok, "extra"), "unexpected arguments"},
		{nil, append(ok, "--bogus"), "flag provided but not defined: -bogus"},
		{map[string]string{"CACHEBUS_HEARTBEAT_INTERVAL": "5s", "CACHEBUS_FAILURE_TIMEOUT": "5s"}, ok,
			"CACHEBUS_FAILURE_TIMEOUT (5s) must be longer than CACHEBUS_HEARTBEAT_INTERVAL (5s)"},
		{map[string]string{"CACHEBUS_HEALTH_INTERVAL": "0s"}, ok, "CACHEBUS_HEALTH_INTERVAL: must be positive"},
		{map[string]string{"CACHEBUS_HEALTH_TIMEOUT": "0s"}, ok, "CACHEBUS_HEALTH_TIMEOUT: must be positive"},
		{map[string]string{"CACHEBUS_HEALTH_RISE": "0"}, ok, "CACHEBUS_HEALTH_RISE: must be at least 1"},
		{map[string]string{"CACHEBUS_HEALTH_FALL": "0"}, ok, "CACHEBUS_HEALTH_FALL: must be at least 1"},
		{map[string]string{"CACHEBUS_ANNOUNCE_DRAIN_TIMEOUT": "0s"}, ok, "CACHEBUS_ANNOUNCE_DRAIN_TIMEOUT: must be positive"},
		{map[string]string{"CACHEBUS_APP_ID": "from-env", "CACHEBUS_APP_ADDR": "nope"}, []string{"announce"}, "--addr / CACHEBUS_APP_ADDR"},
		// A flag wins over its variable.
		{map[string]string{"CACHEBUS_APP_ID": "ok-id"}, []string{"announce", "--id", "bad.id", "--addr", "http://h:1"}, `got "bad.id"`},
	}
	checkUsage(t, cases)
}

// TestAnnounceHelp checks that -h lists its flags and variables.
func TestAnnounceHelp(t *testing.T) {
	code, _, stderr := cmdRun(t, "", "announce", "-h")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, w := range []string{"Usage: cachebus announce --id ID --addr URL", "-id", "-addr", "-health", "-dc",
		"CACHEBUS_APP_ID", "CACHEBUS_APP_ADDR", "CACHEBUS_APP_HEALTH", "CACHEBUS_HEALTH_INTERVAL (default 2s)",
		"CACHEBUS_HEALTH_TIMEOUT (default 1s)", "CACHEBUS_HEALTH_RISE (default 2)", "CACHEBUS_HEALTH_FALL (default 3)",
		"CACHEBUS_ANNOUNCE_DRAIN_TIMEOUT (default 5m)", "CACHEBUS_DC", "CACHEBUS_NATS_URL", "CACHEBUS_HEARTBEAT_INTERVAL (default 1s)",
		"CACHEBUS_FAILURE_TIMEOUT (default 5s)"} {
		if !strings.Contains(stderr, w) {
			t.Errorf("-h does not list %q:\n%s", w, stderr)
		}
	}
}

// TestAnnounceHealthGate checks rise and fall on sequences of results.
func TestAnnounceHealthGate(t *testing.T) {
	for _, tc := range []struct {
		results string // p: pass, f: fail
		want    string // the state after each result: U up, D down
	}{
		{"ppp", "DUU"},
		{"pfpp", "DDDU"},
		{"ppfpfff", "DUUUUUD"},
		{"ppffpfff", "DUUUUUUD"},
		{"ppfffpp", "DUUUDDU"},
	} {
		g := healthGate{rise: 2, fall: 3}
		var got strings.Builder
		for _, r := range tc.results {
			was := g.healthy
			if changed := g.observe(r == 'p'); changed != (was != g.healthy) {
				t.Fatalf("%s: observe said changed=%v, healthy went %v -> %v", tc.results, changed, was, g.healthy)
			}
			if g.healthy {
				got.WriteByte('U')
			} else {
				got.WriteByte('D')
			}
		}
		if got.String() != tc.want {
			t.Errorf("%s: %s, want %s", tc.results, got.String(), tc.want)
		}
	}
}
