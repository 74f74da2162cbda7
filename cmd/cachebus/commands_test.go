package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cachebus/cachebus/admin"
	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/bus/bustest"
	"github.com/cachebus/cachebus/persistence"
)

// cmdBuffer is an output buffer safe to read while a command writes it.
type cmdBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (c *cmdBuffer) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.b.Write(p)
}

func (c *cmdBuffer) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.b.String()
}

// cmdRun runs one command in-process to its end.
func cmdRun(t *testing.T, stdin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var out, errb cmdBuffer
	code = runContext(ctx, args, strings.NewReader(stdin), &out, &errb)
	return code, out.String(), errb.String()
}

// cmdBackground runs a command until stop is called; stop returns its
// exit code.
type cmdBackground struct {
	out, err cmdBuffer
	cancel   context.CancelFunc
	done     chan int
}

func cmdStart(t *testing.T, args ...string) *cmdBackground {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	b := &cmdBackground{cancel: cancel, done: make(chan int, 1)}
	go func() { b.done <- runContext(ctx, args, strings.NewReader(""), &b.out, &b.err) }()
	t.Cleanup(func() { b.stop(t) })
	return b
}

// waitOutput waits until stdout matches re and returns the submatches; it
// fails at once if the command ends first.
func (b *cmdBackground) waitOutput(t *testing.T, what string, re *regexp.Regexp) []string {
	t.Helper()
	var m []string
	bustest.WaitFor(t, 30*time.Second, what, func() bool {
		select {
		case code := <-b.done:
			b.done <- code
			t.Fatalf("command exited %d before %s\nstdout:\n%s\nstderr:\n%s", code, what, b.out.String(), b.err.String())
		default:
		}
		m = re.FindStringSubmatch(b.out.String())
		return m != nil
	})
	return m
}

// exited waits for the command to end by itself.
func (b *cmdBackground) exited(t *testing.T, within time.Duration) int {
	t.Helper()
	select {
	case code := <-b.done:
		b.done <- code
		return code
	case <-time.After(within):
		t.Fatalf("command still running after %s\nstdout:\n%s\nstderr:\n%s", within, b.out.String(), b.err.String())
		return -1
	}
}

func (b *cmdBackground) stop(t *testing.T) int {
	t.Helper()
	b.cancel()
	return b.exited(t, 20*time.Second)
}

func cmdSubscribe(t *testing.T, url string) (*bus.Subscriber, *bustest.Recorder) {
	t.Helper()
	return bustest.Subscribe(t, bustest.Connect(t, url), bus.SubscriberOptions{Name: "cmd-test"})
}

// cmdBus starts an embedded NATS with the event log and the state bucket,
// as a daemon would have left them, and points the commands at it.
func cmdBus(t *testing.T) (*bustest.Target, *bus.Conn, *persistence.State) {
	t.Helper()
	tg := bustest.Embedded(t)
	conn := bustest.Connect(t, tg.URL)
	bustest.EnsureEvents(t, conn, persistence.EventLogConfig{})
	st := bustest.OpenState(t, conn)
	t.Setenv("CACHEBUS_NATS_URL", tg.URL)
	t.Setenv("CACHEBUS_PREFIX", "cachebus")
	return tg, conn, st
}

var seqRE = regexp.MustCompile(`seq=(\d+)`)

// TestCommandsReachSubscriber runs expire, seed, fallback and drain and
// checks a subscriber applies each once, as sent.
func TestCommandsReachSubscriber(t *testing.T) {
	tg, conn, state := cmdBus(t)
	sub, rec := cmdSubscribe(t, tg.URL)
	host, _ := os.Hostname()
	origin := sanitizeID("client-" + host)

	steps := []struct {
		stdin string
		args  []string
		check func(bus.Event) bool
	}{
		{"", []string{"expire", "users", "k1", "k2", "--prefix", "p:", "--prefix", "q:", "--tag", "t1"}, func(e bus.Event) bool {
			x := e.Expire
			return e.NS == "users" && strings.Join(x.Keys, ",") == "k1,k2" && strings.Join(x.Prefixes, ",") == "p:,q:" &&
				strings.Join(x.Tags, ",") == "t1" && !x.All && x.Origin == origin
		}},
		{"a\n b \n\nc\n", []string{"expire", "users", "-", "k9"}, func(e bus.Event) bool {
			return strings.Join(e.Expire.Keys, ",") == "a,b,c,k9"
		}},
		{"", []string{"expire", "--all", "pages"}, func(e bus.Event) bool { return e.NS == "pages" && e.Expire.All }},
		{"", []string{"seed", "users", "k", "v1", "--ttl", "30s"}, func(e bus.Event) bool {
			return e.Seed != nil && e.Seed.Key == "k" && string(e.Seed.Value) == "v1" && e.Seed.TTL == 30*time.Second
		}},
		{"bin\x00ary\n", []string{"seed", "users", "k2", "-"}, func(e bus.Event) bool {
			return e.Seed != nil && string(e.Seed.Value) == "bin\x00ary\n" && e.Seed.TTL == 0
		}},
		{"", []string{"fallback", "on", "--scope", "users", "--reason", "db down", "--until", "10m"}, func(e bus.Event) bool {
			f := e.Fallback
			return f != nil && f.On && f.Scope == "users" && f.Reason == "db down" &&
				f.Until.After(time.Now().Add(9*time.Minute)) && f.Until.Before(time.Now().Add(11*time.Minute))
		}},
		{"", []string{"fallback", "off"}, func(e bus.Event) bool { return e.Fallback != nil && !e.Fallback.On && e.Fallback.Scope == "*" }},
		{"", []string{"drain", "node", "n1", "--deadline", "2030-01-02T03:04:05Z"}, func(e bus.Event) bool {
			return e.Drain != nil && e.Role == "node" && e.ID == "n1" && e.Drain.On &&
				e.Drain.Deadline.Equal(time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC))
		}},
		{"", []string{"drain", "gateway", "g1"}, func(e bus.Event) bool { return e.Drain != nil && e.ID == "g1" && e.Drain.On }},
		{"", []string{"drain", "node", "n1", "--off"}, func(e bus.Event) bool { return e.Drain != nil && e.ID == "n1" && !e.Drain.On }},
	}
	for i, s := range steps {
		code, stdout, stderr := cmdRun(t, s.stdin, s.args...)
		if code != 0 {
			t.Fatalf("cachebus %s: exit %d\n%s%s", strings.Join(s.args, " "), code, stdout, stderr)
		}
		m := seqRE.FindStringSubmatch(stdout)
		if m == nil || m[1] != strconv.Itoa(i+1) || !strings.HasPrefix(stdout, "sent "+s.args[0]) {
			t.Fatalf("cachebus %s printed %q, want what it sent with seq=%d", strings.Join(s.args, " "), stdout, i+1)
		}
		if strings.Contains(stderr, "level=") {
			t.Errorf("cachebus %s logged at the default level: %s", s.args[0], stderr)
		}
		if strings.Join(s.args, " ") == "fallback off" && !strings.Contains(stdout, "fallback is still on for scope users") {
			t.Errorf("fallback off for * did not say that users is still on:\n%s", stdout)
		}
	}
	bustest.WaitSeq(t, sub, uint64(len(steps)))
	evs := rec.Events()
	if len(evs) != len(steps) {
		t.Fatalf("applied %d events, want %d: %+v", len(evs), len(steps), evs)
	}
	for i, s := range steps {
		if !s.check(evs[i]) {
			t.Errorf("cachebus %s applied as %+v (expire %+v seed %+v fallback %+v drain %+v)", strings.Join(s.args, " "),
				evs[i], evs[i].Expire, evs[i].Seed, evs[i].Fallback, evs[i].Drain)
		}
	}

	cs, err := state.Load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !cs.FallbackActive("users", time.Now()) || cs.FallbackActive("pages", time.Now()) {
		t.Errorf("state fallbacks %+v, want users on and * off", cs.Fallbacks)
	}
	if _, on := cs.Draining("node", "n1"); on {
		t.Errorf("node/n1 still draining after --off")
	}
	if _, on := cs.Draining("gateway", "g1"); !on {
		t.Errorf("gateway/g1 not draining")
	}
	_ = conn
}

// TestExpireBatchesLongKeyLists sends more keys than one expire may hold.
func TestExpireBatchesLongKeyLists(t *testing.T) {
	tg, _, _ := cmdBus(t)
	sub, rec := cmdSubscribe(t, tg.URL)
	var in strings.Builder
	for i := range 12000 {
		fmt.Fprintf(&in, "user:%d\n", i)
	}
	code, stdout, stderr := cmdRun(t, in.String(), "expire", "users", "-", "--prefix", "cart:")
	if code != 0 {
		t.Fatalf("exit %d: %s%s", code, stdout, stderr)
	}
	if n := strings.Count(stdout, "sent expire"); n != 3 {
		t.Fatalf("sent %d expires, want 3:\n%s", n, stdout)
	}
	bustest.WaitSeq(t, sub, 3)
	// Distinct keys: a publish retried under load (a slow acknowledgement
	// of a large payload) reaches core subscribers twice, which this test
	// is not about.
	keys, prefixes := map[string]bool{}, map[string]bool{}
	for _, e := range rec.Events() {
		for _, k := range e.Expire.Keys {
			keys[k] = true
		}
		for _, p := range e.Expire.Prefixes {
			prefixes[p] = true
		}
	}
	if len(keys) != 12000 || len(prefixes) != 1 {
		t.Fatalf("applied %d keys and %d prefixes, want 12000 and 1", len(keys), len(prefixes))
	}
}

// TestUsageErrors checks that a bad argument, flag or variable exits 2
// and says why, before anything is sent.
func TestUsageErrors(t *testing.T) {
	// Nothing listens here: a command that got past its checks would fail
	// with exit 1, not 2.
	t.Setenv("CACHEBUS_NATS_URL", fmt.Sprintf("nats://127.0.0.1:%d", bustest.FreePort(t)))
	t.Setenv("CACHEBUS_TIMEOUT", "2s")
	cases := []usageCase{
		{nil, []string{"expire"}, "missing namespace"},
		{nil, []string{"expire", "bad.ns", "k"}, "ns: must match"},
		{nil, []string{"expire", "users"}, "nothing to expire"},
		{nil, []string{"expire", "users", "k", "--bogus"}, "flag provided but not defined: -bogus"},
		{nil, []string{"seed", "users", "k"}, "want <ns> <key> <value>"},
		{nil, []string{"seed", "users", "k", "v", "--ttl", "soon"}, `invalid value "soon" for flag -ttl`},
		{nil, []string{"seed", "users", "", "v"}, "key: must not be empty"},
		{nil, []string{"fallback"}, "missing on or off"},
		{nil, []string{"fallback", "maybe"}, `want on or off, got "maybe"`},
		{nil, []string{"fallback", "on", "--until", "tomorrow"}, "--until: want an RFC 3339 time or a duration"},
		{nil, []string{"fallback", "on", "--scope", "a b"}, "scope: must be"},
		{nil, []string{"fallback", "off", "--until", "10m"}, "--until applies to fallback on only"},
		{nil, []string{"drain", "db", "n1"}, "role: must be node, gateway, app or client"},
		{nil, []string{"drain", "node"}, "want <role> <id>"},
		{nil, []string{"drain", "node", "n1", "--off", "--wait"}, "--wait and --deadline apply to a drain"},
		{nil, []string{"drain", "node", "n1", "--deadline", "someday"}, "--deadline: want an RFC 3339 time"},
		{nil, []string{"watch", "--from", "x"}, `invalid value "x" for flag -from`},
		{nil, []string{"watch", "--ns", "a.b"}, "ns: must match"},
		{nil, []string{"status", "extra"}, "unexpected arguments"},
		{nil, []string{"dev", "--nats-port", "70000"}, "--nats-port: want a port"},
		{nil, []string{"nats", "extra"}, "unexpected arguments"},
		{nil, []string{"node", "extra"}, "unexpected arguments"},
		{nil, []string{"node", "--id", "a.b"}, "--id / CACHEBUS_NODE_ID: must match"},
		{map[string]string{"CACHEBUS_BASELINE": "n1,n1"}, []string{"node", "--id", "n1"}, "CACHEBUS_BASELINE"},
		{map[string]string{"CACHEBUS_FAILURE_TIMEOUT": "1s", "CACHEBUS_HEARTBEAT_INTERVAL": "2s"}, []string{"node"}, "must be longer than CACHEBUS_HEARTBEAT_INTERVAL"},
		{nil, []string{"dev", "--nodes", "-1"}, "--nodes: want 0 or more"},
		{map[string]string{"CACHEBUS_TIMEOUT": "soon"}, []string{"expire", "users", "k"}, "CACHEBUS_TIMEOUT"},
		{map[string]string{"CACHEBUS_ORIGIN": "a b"}, []string{"expire", "users", "k"}, "CACHEBUS_ORIGIN: must match"},
		{map[string]string{"CACHEBUS_HEARTBEAT_INTERVAL": "often"}, []string{"status"}, "CACHEBUS_HEARTBEAT_INTERVAL"},
		{map[string]string{"CACHEBUS_ADMIN_ALLOW": "everyone"}, []string{"dev", "--nats-port", "-1", "--http", "127.0.0.1:0", "--gateway", "127.0.0.1:0"}, "CACHEBUS_ADMIN_ALLOW"},
		{map[string]string{"CACHEBUS_ADMIN_ALLOW": "10.0.0.0/99"}, []string{"nats"}, "CACHEBUS_ADMIN_ALLOW"},
	}
	checkUsage(t, cases)
}

// usageCase is a bad invocation and what its error must say.
type usageCase struct {
	env  map[string]string
	args []string
	want string
}

// checkUsage runs each case: exit 2, stderr naming what to fix, nothing
// sent.
func checkUsage(t *testing.T, cases []usageCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(strings.Join(tc.args, "_"), func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			code, stdout, stderr := cmdRun(t, "", tc.args...)
			if code != exitUsage {
				t.Fatalf("exit %d, want %d\n%s%s", code, exitUsage, stdout, stderr)
			}
			if !strings.Contains(stderr, tc.want) {
				t.Fatalf("stderr does not say %q:\n%s", tc.want, stderr)
			}
			if strings.Contains(stdout, "sent ") {
				t.Fatalf("sent something: %s", stdout)
			}
		})
	}
}

// TestHelpListsVariables checks -h of every command of this issue.
func TestHelpListsVariables(t *testing.T) {
	for _, tc := range []struct {
		name string
		want []string
	}{
		{"expire", []string{"-prefix", "-tag", "-all", "CACHEBUS_NATS_URL (default nats://127.0.0.1:4222)", "CACHEBUS_TIMEOUT (default 10s)", "CACHEBUS_ORIGIN"}},
		{"seed", []string{"-ttl", "CACHEBUS_NATS_URL", "CACHEBUS_NATS_CREDS"}},
		{"fallback", []string{"-scope", "-reason", "-until", "CACHEBUS_NATS_URL"}},
		{"drain", []string{"-off", "-deadline", "-wait", "-timeout", "CACHEBUS_FAILURE_TIMEOUT (default 5s)"}},
		{"status", []string{"-json", "CACHEBUS_HEARTBEAT_INTERVAL (default 1s)", "CACHEBUS_NATS_URL"}},
		{"watch", []string{"-from", "-ns", "CACHEBUS_NATS_URL"}},
		{"dev", []string{"-data", "-nats-port", "-http", "-nodes", "CACHEBUS_HTTP_ADDR (default 127.0.0.1:7380)", "CACHEBUS_ADMIN_TOKEN",
			"CACHEBUS_ADMIN_ALLOW (default 127.0.0.1/32,::1/128)", "CACHEBUS_EVENTS_MAX_AGE"}},
		{"nats", []string{"CACHEBUS_NATS_PORT (default 4222)", "CACHEBUS_HTTP_ADDR", "CACHEBUS_ADMIN_TOKEN", "CACHEBUS_STATE_REPLICAS"}},
		{"node", []string{"-id", "-http", "CACHEBUS_NODE_ID", "CACHEBUS_NATS_URL (default nats://127.0.0.1:4222)", "CACHEBUS_NATS_CREDS",
			"CACHEBUS_HTTP_ADDR (default 127.0.0.1:7380)", "CACHEBUS_ADMIN_TOKEN", "CACHEBUS_ADMIN_ALLOW", "CACHEBUS_BASELINE", "CACHEBUS_DC",
			"CACHEBUS_BACKUPS (default 1)", "CACHEBUS_RECORD_MAX_VALUE (default 262144)", "CACHEBUS_FAILURE_TIMEOUT (default 5s)"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := cmdRun(t, "", tc.name, "-h")
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			for _, w := range append(tc.want, "Usage: cachebus "+tc.name, "CACHEBUS_LOG_LEVEL") {
				if !strings.Contains(stderr, w) {
					t.Errorf("-h does not list %q:\n%s", w, stderr)
				}
			}
		})
	}
}

// TestStatus checks status as JSON and as a table.
func TestStatus(t *testing.T) {
	_, conn, _ := cmdBus(t)
	t.Setenv("CACHEBUS_HEARTBEAT_INTERVAL", "200ms")
	hb, err := bus.StartHeartbeat(conn, bus.Heartbeat{ID: "n1", Role: bus.RoleNode, Addr: "http://10.0.0.1:7380"}, 50*time.Millisecond, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hb.Stop(context.Background()) })
	if code, out, errs := cmdRun(t, "", "fallback", "on", "--reason", "maintenance"); code != 0 {
		t.Fatalf("fallback: %d %s%s", code, out, errs)
	}

	code, stdout, stderr := cmdRun(t, "", "status", "--json")
	if code != 0 {
		t.Fatalf("status --json: exit %d\n%s%s", code, stdout, stderr)
	}
	var st admin.Status
	if err := json.Unmarshal([]byte(stdout), &st); err != nil {
		t.Fatalf("status --json is not JSON: %v\n%s", err, stdout)
	}
	if len(st.Members) != 1 || st.Members[0].Key() != "node/n1" {
		t.Errorf("members %+v, want node/n1", st.Members)
	}
	if st.EventLog == nil || st.EventLog.LastSeq != 1 || st.EventLog.Messages != 1 {
		t.Errorf("event log %+v, want 1 event", st.EventLog)
	}
	if len(st.Fallbacks) != 1 || !st.Fallbacks[0].Active || st.Fallbacks[0].Reason != "maintenance" {
		t.Errorf("fallbacks %+v", st.Fallbacks)
	}

	code, stdout, stderr = cmdRun(t, "", "status")
	if code != 0 {
		t.Fatalf("status: exit %d\n%s%s", code, stdout, stderr)
	}
	for _, w := range []string{"EVENT LOG", "seq 1..1", "maintenance", "MEMBERS", "node", "n1", "http://10.0.0.1:7380"} {
		if !strings.Contains(stdout, w) {
			t.Errorf("status table lacks %q:\n%s", w, stdout)
		}
	}
}

// TestStatusWithoutDaemon checks status on a NATS no daemon has set up:
// it prints what it has and exits 1 naming what is missing.
func TestStatusWithoutDaemon(t *testing.T) {
	tg := bustest.Embedded(t)
	t.Setenv("CACHEBUS_NATS_URL", tg.URL)
	t.Setenv("CACHEBUS_HEARTBEAT_INTERVAL", "50ms")
	code, stdout, stderr := cmdRun(t, "", "status")
	if code != 1 || !strings.Contains(stderr, "CACHEBUS_EVENTS") || !strings.Contains(stdout, "MEMBERS") {
		t.Fatalf("exit %d, want 1 naming the event log\n%s%s", code, stdout, stderr)
	}
	code, stdout, stderr = cmdRun(t, "", "fallback", "on")
	if code != 1 || !strings.Contains(stderr, "start a cachebus daemon") {
		t.Fatalf("fallback without a state bucket: exit %d\n%s%s", code, stdout, stderr)
	}
}

// TestWatch tails the log: events from the CLI, a core publish and a
// malformed one each get a line.
func TestWatch(t *testing.T) {
	_, conn, _ := cmdBus(t)
	if code, out, errs := cmdRun(t, "", "expire", "users", "before"); code != 0 {
		t.Fatalf("expire: %d %s%s", code, out, errs)
	}
	w := cmdStart(t, "watch", "--from", "1")
	other := cmdStart(t, "watch", "--ns", "pages")
	bustest.WaitFor(t, 10*time.Second, "both watching", func() bool {
		return strings.Contains(w.err.String(), "watching") && strings.Contains(other.err.String(), "watching")
	})
	if code, out, errs := cmdRun(t, "", "seed", "pages", "home", "<html>"); code != 0 {
		t.Fatalf("seed: %d %s%s", code, out, errs)
	}
	for _, p := range []string{"core:1\ncore:2", "{not json"} {
		if err := conn.NC.Publish("cachebus.expire.users", []byte(p)); err != nil {
			t.Fatal(err)
		}
	}
	w.waitOutput(t, "four events", regexp.MustCompile(`(?s)^1 .*\n2 .*\n3 .*\n4 .*\n$`))
	lines := strings.Split(strings.TrimSpace(w.out.String()), "\n")
	for i, want := range []*regexp.Regexp{
		regexp.MustCompile(`^1 +\S+Z +expire +cachebus\.expire\.users +client-\S+ +keys=before$`),
		regexp.MustCompile(`^2 +\S+ +seed +cachebus\.seed\.pages +client-\S+ +key=home bytes=6$`),
		regexp.MustCompile(`^3 +\S+ +expire +cachebus\.expire\.users +- +keys=core:1,core:2$`),
		regexp.MustCompile(`^4 +\S+ +invalid +cachebus\.expire\.users +- +bus: invalid payload: malformed JSON`),
	} {
		if !want.MatchString(lines[i]) {
			t.Errorf("line %d = %q, want %s", i+1, lines[i], want)
		}
	}
	other.waitOutput(t, "the pages seed", regexp.MustCompile(`seed +cachebus\.seed\.pages`))
	if code := w.stop(t); code != 0 {
		t.Fatalf("watch exited %d after cancel: %s", code, w.err.String())
	}
	if code := other.stop(t); code != 0 || strings.Contains(other.out.String(), "users") {
		t.Fatalf("watch --ns pages exited %d, printed:\n%s", code, other.out.String())
	}
}

// TestDrainWait covers the ways `drain --wait` ends.
func TestDrainWait(t *testing.T) {
	_, conn, state := cmdBus(t)
	t.Setenv("CACHEBUS_FAILURE_TIMEOUT", "1s")
	member := func(id string) *bus.Heartbeater {
		hb, err := bus.StartHeartbeat(conn, bus.Heartbeat{ID: id, Role: bus.RoleNode}, 50*time.Millisecond, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { hb.Stop(context.Background()) })
		return hb
	}
	sent := regexp.MustCompile(`sent drain .* seq=\d+`)

	t.Run("drained", func(t *testing.T) {
		member("n1")
		d := cmdStart(t, "drain", "node", "n1", "--wait")
		d.waitOutput(t, "the drain sent", sent)
		d.waitOutput(t, "the member seen", regexp.MustCompile(`node/n1 state=up partitions_held=0`))
		if err := state.MarkDrained(context.Background(), "node", "n1"); err != nil {
			t.Fatal(err)
		}
		if code := d.exited(t, 10*time.Second); code != 0 || !strings.Contains(d.out.String(), "node/n1 drained") {
			t.Fatalf("exit %d\n%s%s", code, d.out.String(), d.err.String())
		}
	})
	t.Run("gone", func(t *testing.T) {
		hb := member("n2")
		d := cmdStart(t, "drain", "node", "n2", "--wait")
		d.waitOutput(t, "the member seen", regexp.MustCompile(`node/n2 state=up`))
		hb.SetState(bus.StateDraining)
		d.waitOutput(t, "the member draining", regexp.MustCompile(`node/n2 state=draining`))
		hb.Stop(context.Background())
		if code := d.exited(t, 10*time.Second); code != 0 || !strings.Contains(d.out.String(), "node/n2 left (gone)") {
			t.Fatalf("exit %d\n%s%s", code, d.out.String(), d.err.String())
		}
	})
	t.Run("not alive", func(t *testing.T) {
		d := cmdStart(t, "drain", "node", "ghost", "--wait")
		if code := d.exited(t, 10*time.Second); code != 0 || !strings.Contains(d.out.String(), "node/ghost is not alive") {
			t.Fatalf("exit %d\n%s%s", code, d.out.String(), d.err.String())
		}
	})
	t.Run("timeout", func(t *testing.T) {
		member("n3")
		d := cmdStart(t, "drain", "node", "n3", "--wait", "--timeout", "1500ms")
		if code := d.exited(t, 10*time.Second); code != 1 || !strings.Contains(d.err.String(), "node/n3 still draining after 1.5s") {
			t.Fatalf("exit %d\n%s%s", code, d.out.String(), d.err.String())
		}
	})
}

var (
	natsURLRE  = regexp.MustCompile(`(?m)NATS URL +(nats://127\.0\.0\.1:\d+)`)
	adminURLRE = regexp.MustCompile(`(?m)admin URL +(http://127\.0\.0\.1:\d+)`)
	tokenRE    = regexp.MustCompile(`(?m)token +([0-9a-f]{32})$`)
)

func httpDo(t *testing.T, method, url, token, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestDev starts `cachebus dev`, checks what it prints and serves, sends
// an expire through its admin API and through `cachebus expire`, and stops
// it cleanly.
func TestDev(t *testing.T) {
	t.Setenv("CACHEBUS_ADMIN_TOKEN", "")
	t.Setenv("CACHEBUS_HEARTBEAT_INTERVAL", "100ms")
	t.Setenv("CACHEBUS_FAILURE_TIMEOUT", "600ms")
	d := cmdStart(t, "dev", "--nats-port", "-1", "--http", "127.0.0.1:0", "--gateway", "127.0.0.1:0")
	banner, natsURL, adminURL, token := devBanner(t, d)
	for _, w := range []string{
		"cachebus expire users user:42",
		"curl -H 'Authorization: Bearer " + token[1] + "' --data-binary 'user:42' " + adminURL[1] + "/v1/expire/users",
		"nats -s " + natsURL[1] + " pub cachebus.expire.users user:42",
	} {
		if !strings.Contains(banner, w) {
			t.Errorf("banner lacks %q:\n%s", w, banner)
		}
	}
	if code, body := httpDo(t, "GET", adminURL[1]+"/healthz", "", ""); code != 200 || body != "ok\n" {
		t.Fatalf("/healthz = %d %q", code, body)
	}
	if code, body := httpDo(t, "GET", adminURL[1]+"/readyz", "", ""); code != 200 {
		t.Fatalf("/readyz = %d %q", code, body)
	}

	sub, rec := cmdSubscribe(t, natsURL[1])
	code, body := httpDo(t, "POST", adminURL[1]+"/v1/expire/users", token[1], "user:42")
	if code != 200 || !strings.Contains(body, `"seq": 1`) {
		t.Fatalf("POST /v1/expire/users = %d %s", code, body)
	}
	t.Setenv("CACHEBUS_NATS_URL", natsURL[1])
	if code, out, errs := cmdRun(t, "", "expire", "users", "user:43"); code != 0 {
		t.Fatalf("expire against dev: %d %s%s", code, out, errs)
	}
	bustest.WaitSeq(t, sub, 2)
	evs := rec.Events()
	if len(evs) != 2 || evs[0].Expire.Keys[0] != "user:42" || evs[0].Expire.Origin != "dev" || evs[1].Expire.Keys[0] != "user:43" {
		t.Fatalf("applied %+v", evs)
	}

	var st admin.Status
	bustest.WaitFor(t, 10*time.Second, "dev, its gateway, its cache node and its three apps in its own status", func() bool {
		_, body := httpDo(t, "GET", adminURL[1]+"/v1/status", token[1], "")
		if err := json.Unmarshal([]byte(body), &st); err != nil {
			t.Fatalf("status: %v: %s", err, body)
		}
		var keys []string
		for _, m := range st.Members {
			keys = append(keys, m.Key())
		}
		return slices.Equal(keys, []string{"app/app1", "app/app2", "app/app3", "client/dev", "gateway/gw1", "node/node1"})
	})
	if st.EventLog == nil || st.EventLog.LastSeq != 2 {
		t.Fatalf("status event log %+v", st.EventLog)
	}
	gw := regexp.MustCompile(`gateway +(http://\S+)`).FindStringSubmatch(banner)
	if gw == nil {
		t.Fatalf("banner has no gateway line:\n%s", banner)
	}
	if code, body := httpDo(t, "GET", gw[1]+"/_cachebus/status.json", token[1], ""); code != 200 || !strings.Contains(body, `"id": "gw1"`) {
		t.Fatalf("gateway status = %d %s", code, body)
	}
	checkDevDemo(t, gw[1], banner)
	if code := d.stop(t); code != 0 {
		t.Fatalf("dev exited %d after cancel:\n%s", code, d.err.String())
	}
	if !strings.Contains(d.err.String(), "member left") {
		t.Errorf("dev did not announce itself gone:\n%s", d.err.String())
	}
	if _, err := http.Get(adminURL[1] + "/healthz"); err == nil {
		t.Fatal("admin API still answers after dev stopped")
	}
}

// checkDevDemo walks the README's demo through dev's gateway: a product
// page memoized, then recomputed after `cachebus expire`; a login whose
// counter stays on one app server; /news cached, then purged by its tag.
func checkDevDemo(t *testing.T, gw, banner string) {
	t.Helper()
	for _, w := range []string{"apps       app1 http://", "cachebus expire demo-pages product:1", "cachebus drain app app1 --wait"} {
		if !strings.Contains(banner, w) {
			t.Errorf("banner lacks %q:\n%s", w, banner)
		}
	}
	jar, _ := cookiejar.New(nil)
	browser := &http.Client{Jar: jar, Timeout: 10 * time.Second}
	get := func(method, path string, form url.Values) *http.Response {
		t.Helper()
		var resp *http.Response
		var err error
		if form != nil {
			resp, err = browser.PostForm(gw+path, form)
		} else {
			req, _ := http.NewRequest(method, gw+path, nil)
			resp, err = browser.Do(req)
		}
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("%s %s = %d, want 200", method, path, resp.StatusCode)
		}
		return resp
	}
	// Logged in, the browser sticks to one app server, which memoizes.
	get("POST", "/login", url.Values{"user": {"alice"}})
	at := get("GET", "/products/1", nil).Header.Get("Demo-Computed-At")
	app := ""
	for i := 1; i <= 3; i++ {
		r := get("POST", "/counter", nil)
		if app == "" {
			app = r.Header.Get("Demo-App")
		}
		if r.Header.Get("Demo-App") != app || r.Header.Get("Demo-Counter") != strconv.Itoa(i) {
			t.Fatalf("POST /counter #%d from %s counter %s, want %s counter %d", i, r.Header.Get("Demo-App"), r.Header.Get("Demo-Counter"), app, i)
		}
	}
	if again := get("GET", "/products/1", nil).Header.Get("Demo-Computed-At"); again != at || at == "" {
		t.Fatalf("product 1 computed at %q then %q, want it memoized", at, again)
	}
	if code, out, errs := cmdRun(t, "", "expire", "demo-pages", "product:1"); code != 0 {
		t.Fatalf("expire demo-pages: %d %s%s", code, out, errs)
	}
	bustest.WaitFor(t, 5*time.Second, "product 1 recomputed after the expire", func() bool {
		return get("GET", "/products/1", nil).Header.Get("Demo-Computed-At") != at
	})
	news := get("GET", "/news", nil).Header.Get("Demo-Rendered-At")
	if r := get("GET", "/news", nil); r.Header.Get("Demo-Rendered-At") != news || r.Header.Get("X-Cache") != "HIT" {
		t.Fatalf("second GET /news rendered at %s (%s), want the gateway's cached copy of %s", r.Header.Get("Demo-Rendered-At"), r.Header.Get("X-Cache"), news)
	}
	if code, out, errs := cmdRun(t, "", "expire", "http", "--tag", "news"); code != 0 {
		t.Fatalf("expire http --tag news: %d %s%s", code, out, errs)
	}
	bustest.WaitFor(t, 5*time.Second, "/news purged from the gateway", func() bool {
		return get("GET", "/news", nil).Header.Get("Demo-Rendered-At") != news
	})
}

// TestNATSDaemon runs `cachebus nats` with its admin API: it becomes
// ready once it has created the event log and the state bucket, takes
// admin verbs, and stops on cancel.
func TestNATSDaemon(t *testing.T) {
	t.Setenv("CACHEBUS_NATS_PORT", "-1")
	t.Setenv("CACHEBUS_NATS_STORE_DIR", t.TempDir())
	t.Setenv("CACHEBUS_HTTP_ADDR", "127.0.0.1:0")
	t.Setenv("CACHEBUS_ADMIN_TOKEN", "node-token")
	d := cmdStart(t, "nats")
	m := d.waitOutput(t, "the URLs", regexp.MustCompile(`(?s)nats: (nats://\S+)\nadmin: (http://\S+)\n`))
	natsURL, adminURL := m[1], m[2]
	bustest.WaitFor(t, 20*time.Second, "nats ready", func() bool {
		code, _ := httpDo(t, "GET", adminURL+"/readyz", "", "")
		return code == 200
	})
	conn := bustest.Connect(t, natsURL)
	sub, rec := cmdSubscribe(t, natsURL)
	code, body := httpDo(t, "POST", adminURL+"/v1/fallback", "node-token", `{"v":1,"on":true,"reason":"test"}`)
	if code != 200 {
		t.Fatalf("POST /v1/fallback = %d %s", code, body)
	}
	t.Setenv("CACHEBUS_NATS_URL", natsURL)
	if code, out, errs := cmdRun(t, "", "expire", "users", "k"); code != 0 {
		t.Fatalf("expire: %d %s%s", code, out, errs)
	}
	bustest.WaitSeq(t, sub, 2)
	if evs := rec.Events(); len(evs) != 2 || evs[0].Fallback == nil || evs[1].Expire == nil {
		t.Fatalf("applied %+v", evs)
	}
	st, err := persistence.BindState(context.Background(), conn)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := st.Load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !cs.FallbackActive("any", time.Now()) {
		t.Fatalf("fallback not recorded: %+v", cs)
	}
	if code := d.stop(t); code != 0 {
		t.Fatalf("nats exited %d:\n%s", code, d.err.String())
	}
}

// devBanner waits for the banner of a dev process and returns it with the
// NATS URL, admin URL and token it prints, each as its regexp submatch.
func devBanner(t *testing.T, d *cmdBackground) (banner string, natsURL, adminURL, token []string) {
	t.Helper()
	d.waitOutput(t, "the banner", regexp.MustCompile(`Watch the event log`))
	banner = d.out.String()
	natsURL = natsURLRE.FindStringSubmatch(banner)
	adminURL = adminURLRE.FindStringSubmatch(banner)
	token = tokenRE.FindStringSubmatch(banner)
	if natsURL == nil || adminURL == nil || token == nil {
		t.Fatalf("banner lacks the NATS URL, admin URL or token:\n%s", banner)
	}
	return banner, natsURL, adminURL, token
}
