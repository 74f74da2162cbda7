//go:build unix

package fault

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/bus/bustest"
	"github.com/cachebus/cachebus/e2e/harness"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Settings of TestSecurity.
const (
	secFullUser        = "cachebus" // cachebus's own processes and the test's trusted clients
	secFullPassword    = "sec-full-password"
	secLimitedUser     = "limited" // an app: seeds, its heartbeat, records; no expire, fallback or drain
	secLimitedPassword = "sec-limited-password"
	secAdminToken      = "sec-admin-token-0123456789"
	secAdminAllow      = "127.0.0.2/32" // the only source the admin API accepts
	secMarkerNS        = "marker"       // the namespace of the trusted marker events
	secForbiddenNS     = "users"        // the namespace the limited user tries to expire
	secAdminNS         = "admin"        // the namespace of the admin API's expires
	// secCLITimeout is CACHEBUS_TIMEOUT of the commands the test runs: how
	// long `cachebus expire` waits for an acknowledgement that a refused
	// publish never gets.
	secCLITimeout = 2 * time.Second
)

// secAllowedSource is the loopback address inside secAdminAllow that the
// test's admin calls come from; the rest come from 127.0.0.1, outside it.
var secAllowedSource = net.IPv4(127, 0, 0, 2)

// TestSecurity is item 6 of issue 9: peer commands cannot be forged and
// what is stored or sent is protected. One `cachebus nats` with NATS users
// and permissions and an admin API behind a token and an allow-list serves
// the first four parts; the TLS part runs its own three-server cluster.
//
//   - permissions: a NATS user without publish permission on expire,
//     fallback and drain triggers none of them, visibly;
//   - admin: the HTTP admin API refuses a missing or wrong token and a
//     source outside the allow-list;
//   - sticky cookie: a forged, tampered or wrongly signed cookie does not
//     pin a request to the backend it names, a valid one does;
//   - records at rest: long-term records are sealed in JetStream, and a
//     node with the wrong key refuses them without crashing;
//   - tls: a NATS cluster with TLS on client and route connections, from
//     certificates made at run time, carries events; a client that does
//     not trust the CA, or has no certificate, is refused.
func TestSecurity(t *testing.T) {
	if harn == nil {
		t.Skip("skipped under -short: runs NATS servers, a gateway and a cache node as processes")
	}
	began := time.Now()
	b := startSecBus(t)
	t.Logf("NATS with users, permissions and an admin allow-list ready in %s", time.Since(began).Round(time.Millisecond))
	t.Run("permissions", func(t *testing.T) { testSecPermissions(t, b) })
	t.Run("admin", func(t *testing.T) { testSecAdmin(t, b) })
	t.Run("sticky cookie", func(t *testing.T) { testSecCookie(t, b) })
	t.Run("records at rest", func(t *testing.T) { testSecRecords(t, b) })
	t.Run("tls", testSecTLS)
	Figure(t, "duration", time.Since(began), "the five parts, processes started and stopped")
}

// secBus is the NATS server the first parts share: a `cachebus nats` with
// users and permissions from a configuration file, and its admin API
// behind secAdminToken and secAdminAllow.
type secBus struct {
	nats *harness.NATSNode
	full *bus.Conn // the test's trusted connection, as secFullUser
}

// startSecBus writes the NATS configuration, starts `cachebus nats` with
// it and connects as the trusted user.
func startSecBus(t *testing.T) *secBus {
	t.Helper()
	p := bus.DefaultPrefix
	conf := fmt.Sprintf(`# TestSecurity: cachebus's own user may do anything; the limited user is
# an app that may seed, announce itself and use the records, but neither
# expire, fall back nor drain.
authorization {
  users = [
    {user: %q, password: %q}
    {user: %q, password: %q, permissions: {
      publish: [%q, %q, %q, %q]
      subscribe: ["_INBOX.>"]
    }}
  ]
}
`, secFullUser, secFullPassword, secLimitedUser, secLimitedPassword,
		p+".seed.>", p+".hb.app."+secLimitedUser, p+".rec.any", p+".rec.node.*")
	path := filepath.Join(t.TempDir(), "nats.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	port, httpAddr := harness.FreePort(t), harness.FreeAddr(t)
	n := &harness.NATSNode{Name: "nats", URL: fmt.Sprintf("nats://127.0.0.1:%d", port), HTTPAddr: httpAddr}
	n.Env = map[string]string{
		"CACHEBUS_NATS_CONFIG":    path,
		"CACHEBUS_NATS_PORT":      fmt.Sprint(port),
		"CACHEBUS_NATS_STORE_DIR": t.TempDir(),
		"CACHEBUS_HTTP_ADDR":      httpAddr,
		"CACHEBUS_NATS_USER":      secFullUser,
		"CACHEBUS_NATS_PASSWORD":  secFullPassword,
		"CACHEBUS_ADMIN_TOKEN":    secAdminToken,
		"CACHEBUS_ADMIN_ALLOW":    secAdminAllow,
	}
	n.P = harn.Start(t, n.Name, n.Env, "nats")
	n.WaitReady(t, 30*time.Second)
	conn, err := secConnect(t, bus.ConnConfig{URL: n.URL, User: secFullUser, Password: secFullPassword}, 10*time.Second)
	if err != nil {
		t.Fatalf("connect as %s: %v", secFullUser, err)
	}
	return &secBus{nats: n, full: conn}
}

// env is the environment of a cachebus process connecting to b as the
// trusted user, plus extra.
func (b *secBus) env(extra map[string]string) map[string]string {
	env := map[string]string{
		"CACHEBUS_NATS_URL":      b.nats.URL,
		"CACHEBUS_NATS_USER":     secFullUser,
		"CACHEBUS_NATS_PASSWORD": secFullPassword,
	}
	for k, v := range extra {
		env[k] = v
	}
	return env
}

// secConnect connects the test to NATS as cfg says (credentials, TLS),
// trying for at most timeout, and closes the connection when the test
// ends. Unlike harness.Connect it takes credentials and returns the
// error, since some connections are meant to be refused.
func secConnect(t testing.TB, cfg bus.ConnConfig, timeout time.Duration, opts ...bus.Option) (*bus.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cfg.Prefix, cfg.Name = bus.DefaultPrefix, t.Name()
	c, err := bus.Connect(ctx, cfg, append([]bus.Option{bus.WithLogger(harness.WarnLogger(t))}, opts...)...)
	if err != nil {
		return nil, err
	}
	t.Cleanup(c.NC.Close)
	return c, nil
}

// secViolationRe finds the subject in a permissions violation NATS
// reports to a client.
var secViolationRe = regexp.MustCompile(`Publish to "([^"]+)"`)

// violations counts the permission violations NATS reports to a client,
// by the subject of the refused publish.
type violations struct {
	mu        sync.Mutex
	bySubject map[string]int
	last      string
}

// handler is the connection's asynchronous error handler: NATS reports a
// refused publish there, not as the publish's error.
func (v *violations) handler(_ *nats.Conn, _ *nats.Subscription, err error) {
	if !errors.Is(err, nats.ErrPermissionViolation) {
		return
	}
	m := secViolationRe.FindStringSubmatch(err.Error())
	if m == nil {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	v.bySubject[m[1]]++
	v.last = err.Error()
}

func (v *violations) count(subject string) int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.bySubject[subject]
}

// testSecPermissions has the limited user try to expire, fall back and
// drain by every path it has (core publishes, the acknowledged JetStream
// path of bus.Publisher, a forged copy of the event log's republication,
// the `cachebus expire` command), then sends markers by allowed paths and
// waits for a subscriber with full permission to apply them: the
// forbidden events, sent before, would have been applied before.
func testSecPermissions(t *testing.T, b *secBus) {
	subs := b.full.Subjects
	sub, rec := bustest.Subscribe(t, b.full, bus.SubscriberOptions{Name: "security"})
	viol := &violations{bySubject: map[string]int{}}
	limited, err := secConnect(t, bus.ConnConfig{URL: b.nats.URL, User: secLimitedUser, Password: secLimitedPassword},
		10*time.Second, bus.WithNATSOptions(nats.ErrorHandler(viol.handler)))
	if err != nil {
		t.Fatalf("connect as %s: %v", secLimitedUser, err)
	}

	// The command first, running while the test publishes.
	cli := harn.Start(t, "cachebus expire (limited)", map[string]string{
		"CACHEBUS_NATS_URL":      b.nats.URL,
		"CACHEBUS_NATS_USER":     secLimitedUser,
		"CACHEBUS_NATS_PASSWORD": secLimitedPassword,
		"CACHEBUS_TIMEOUT":       secCLITimeout.String(),
	}, "expire", secForbiddenNS, "forbidden-cli")

	expireSubj, fallbackSubj, drainSubj := subs.Expire(secForbiddenNS), subs.Fallback(), subs.Drain(bus.RoleNode, "c1")
	logSubj := subs.LogPrefix() + expireSubj
	forbidden := []string{expireSubj, fallbackSubj, drainSubj, logSubj}
	encode := func(data []byte, err error) []byte {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	core := map[string][]byte{
		expireSubj:   encode(bus.Expire{Keys: []string{"forbidden-core"}, Origin: secLimitedUser}.Encode()),
		fallbackSubj: encode(bus.Fallback{On: true, Scope: "*", Reason: "forbidden-core", Origin: secLimitedUser}.Encode()),
		drainSubj:    encode(bus.Drain{On: true, Origin: secLimitedUser}.Encode()),
	}
	for _, subj := range []string{expireSubj, fallbackSubj, drainSubj} {
		if err := limited.NC.Publish(subj, core[subj]); err != nil {
			t.Fatalf("core publish on %s: %v", subj, err)
		}
	}
	// A forged republication: what the subscriber takes for the log's
	// copy of the next stored event.
	forged := nats.NewMsg(logSubj)
	forged.Header.Set(jetstream.SequenceHeader, fmt.Sprint(bustest.LastSeq(t, b.full)+1))
	forged.Header.Set(jetstream.SubjectHeader, expireSubj)
	forged.Data = encode(bus.Expire{Keys: []string{"forbidden-log"}, Origin: secLimitedUser}.Encode())
	if err := limited.NC.PublishMsg(forged); err != nil {
		t.Fatalf("core publish on %s: %v", logSubj, err)
	}

	// The acknowledged path, as the Go API sends: never acknowledged.
	pub, err := bus.NewPublisher(limited, secLimitedUser)
	if err != nil {
		t.Fatal(err)
	}
	pub.AttemptTimeout = 200 * time.Millisecond
	acked := 0
	for _, attempt := range []struct {
		what string
		send func(context.Context) (uint64, error)
	}{
		{"expire", func(ctx context.Context) (uint64, error) {
			return pub.Expire(ctx, secForbiddenNS, bus.Expire{Keys: []string{"forbidden-js"}})
		}},
		{"fallback", func(ctx context.Context) (uint64, error) {
			return pub.Fallback(ctx, bus.Fallback{On: true, Scope: "*", Reason: "forbidden-js"})
		}},
		{"drain", func(ctx context.Context) (uint64, error) {
			return pub.Drain(ctx, bus.RoleNode, "c1", bus.Drain{On: true})
		}},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 600*time.Millisecond)
		seq, err := attempt.send(ctx)
		cancel()
		switch {
		case err == nil:
			acked++
			t.Errorf("the limited user's %s was acknowledged, seq %d", attempt.what, seq)
		case !errors.Is(err, bus.ErrNotAcked):
			t.Errorf("the limited user's %s: %v, want %v", attempt.what, err, bus.ErrNotAcked)
		}
	}
	cliCode := cli.Wait(secCLITimeout + 20*time.Second)
	cliOut := strings.TrimSpace(cli.Output())

	// The markers: the limited user's allowed seed, on the connection its
	// forbidden publishes went through (NATS handles one connection's
	// messages in order), then the trusted user's expire.
	seedSeq, err := pub.Seed(secCtx(t, 10*time.Second), secForbiddenNS, bus.Seed{Key: "allowed-seed", Value: []byte("v"), TTL: time.Minute})
	if err != nil {
		t.Fatalf("the limited user's allowed seed: %v", err)
	}
	fullPub, err := bus.NewPublisher(b.full, "security-test")
	if err != nil {
		t.Fatal(err)
	}
	markerSeq, err := fullPub.Expire(secCtx(t, 10*time.Second), secMarkerNS, bus.Expire{Keys: []string{"allowed-marker"}})
	if err != nil {
		t.Fatalf("the trusted marker: %v", err)
	}
	bustest.WaitSeq(t, sub, max(seedSeq, markerSeq))

	markers, others := 0, []string{}
	for _, e := range rec.Events() {
		switch {
		case e.Seed != nil && e.Seed.Key == "allowed-seed", e.Expire != nil && e.NS == secMarkerNS:
			markers++
		default:
			others = append(others, fmt.Sprintf("%s %s (origin %q, via %s)", e.Kind, e.Subject, e.Origin(), e.Via))
		}
	}
	Check(t, "markers applied after the forbidden attempts", markers, "= 2 (the limited user's seed, the trusted expire)", markers == 2)
	if !Check(t, "forbidden expire, fallback and drain applied", len(others), "= 0", len(others) == 0) {
		t.Logf("applied: %s", strings.Join(others, "; "))
	}
	flushes := len(rec.Flushed())
	Check(t, "flushes caused at the subscriber", flushes, "= 0 (the forged log copy caused no gap)", flushes == 0)
	stored := secStoredOn(t, b.full, expireSubj, fallbackSubj, subs.Prefix+".drain.>")
	Check(t, "forbidden events stored in the event log", stored, "= 0", stored == 0)
	Check(t, "forbidden JetStream publishes acknowledged", acked, "= 0 of 3 (expire, fallback, drain)", acked == 0)

	// The attempts are visible: to the client, and in the server's log.
	bustest.WaitFor(t, 5*time.Second, "a permissions violation reported to the limited client for each subject", func() bool {
		for _, s := range forbidden {
			if viol.count(s) == 0 {
				return false
			}
		}
		return true
	})
	var got []string
	for _, s := range forbidden {
		got = append(got, fmt.Sprintf("%s %d", s, viol.count(s)))
	}
	Check(t, "permissions violations reported to the client", strings.Join(got, ", "), "each ≥ 1", true)
	Figure(t, "the last one", viol.last, "")
	logged, logRe := map[string]int{}, map[string]*regexp.Regexp{}
	for _, s := range forbidden {
		logRe[s] = regexp.MustCompile(`Publish Violation - Subject \\?"` + regexp.QuoteMeta(s) + `\\?"`)
	}
	bustest.WaitFor(t, 5*time.Second, "the NATS server to log a publish violation for each subject", func() bool {
		out := b.nats.P.Output()
		for _, s := range forbidden {
			logged[s] = len(logRe[s].FindAllStringIndex(out, -1))
		}
		for _, s := range forbidden {
			if logged[s] == 0 {
				return false
			}
		}
		return true
	})
	got = got[:0]
	for _, s := range forbidden {
		got = append(got, fmt.Sprintf("%s %d", s, logged[s]))
	}
	Check(t, "publish violations in the NATS server's log", strings.Join(got, ", "), "each ≥ 1", true)
	// The refusal comes as a warning line of the command's log: the
	// command's error itself says only that the publish was not
	// acknowledged.
	violationRe := regexp.MustCompile(`Permissions Violation for Publish to \\?"` + regexp.QuoteMeta(expireSubj) + `\\?"`)
	saysWhy := cliCode != 0 && violationRe.MatchString(cliOut)
	if !Check(t, "cachebus expire as the limited user: exit code", cliCode, "≠ 0, saying Permissions Violation", saysWhy) {
		t.Logf("cachebus expire output:\n%s", cliOut)
	}
	Figure(t, "cachebus expire as the limited user says", secLastLine(cliOut), "its last line")
}

// secStoredOn is how many messages the event log holds on the subjects
// matching filters.
func secStoredOn(t *testing.T, c *bus.Conn, filters ...string) int {
	t.Helper()
	ctx := secCtx(t, 10*time.Second)
	st, err := c.JS.Stream(ctx, c.Subjects.EventStream())
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, f := range filters {
		info, err := st.Info(ctx, jetstream.WithSubjectFilter(f))
		if err != nil {
			t.Fatal(err)
		}
		for _, count := range info.State.Subjects {
			n += int(count)
		}
	}
	return n
}

// secCtx is a context that ends after d or with the test.
func secCtx(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// secLastLine is the last line of a command's output: its error, when it
// failed.
func secLastLine(out string) string {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	return lines[len(lines)-1]
}

// secClip shortens a log line for the figures table.
func secClip(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// testSecAdmin calls POST /v1/expire of the NATS daemon's admin API with
// no token, a wrong one, and the right one from outside the allow-list
// (with and without a forged X-Forwarded-For), then with the right one
// from inside it: only the last is accepted, and its expire, applied by a
// subscriber, is the only one of them that is.
func testSecAdmin(t *testing.T, b *secBus) {
	sub, rec := bustest.Subscribe(t, b.full, bus.SubscriberOptions{Name: "security-admin"})
	base := "http://" + b.nats.HTTPAddr
	outside := harness.HTTPClient // from 127.0.0.1
	inside := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: secAllowedSource}}).DialContext,
	}}
	cases := []struct {
		name   string
		client *http.Client
		method string
		token  string
		header map[string]string
		want   int
	}{
		{"no token", inside, http.MethodPost, "", nil, http.StatusUnauthorized},
		{"wrong token", inside, http.MethodPost, "wrong-" + secAdminToken, nil, http.StatusUnauthorized},
		{"right token from 127.0.0.1, outside the allow-list", outside, http.MethodPost, secAdminToken, nil, http.StatusForbidden},
		{"same, claiming 127.0.0.2 in X-Forwarded-For", outside, http.MethodPost, secAdminToken,
			map[string]string{"X-Forwarded-For": secAllowedSource.String(), "X-Real-IP": secAllowedSource.String()}, http.StatusForbidden},
		{"status read from outside the allow-list", outside, http.MethodGet, secAdminToken, nil, http.StatusForbidden},
		{"right token from 127.0.0.2, inside the allow-list", inside, http.MethodPost, secAdminToken, nil, http.StatusOK},
	}
	var acceptedSeq uint64
	for i, tc := range cases {
		path := "/v1/status"
		var body string
		if tc.method == http.MethodPost {
			path = "/v1/expire/" + secAdminNS
			body = fmt.Sprintf(`{"v":1,"keys":["admin-%d"]}`, i)
		}
		req, err := http.NewRequest(tc.method, base+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if tc.token != "" {
			req.Header.Set("Authorization", "Bearer "+tc.token)
		}
		for k, v := range tc.header {
			req.Header.Set(k, v)
		}
		resp, err := tc.client.Do(req)
		if err != nil {
			t.Fatalf("admin %s: %v", tc.name, err)
		}
		var answer struct {
			Seq   uint64 `json:"seq"`
			Error string `json:"error"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&answer)
		resp.Body.Close()
		Check(t, "admin "+tc.method+", "+tc.name, resp.StatusCode, fmt.Sprintf("= %d", tc.want), resp.StatusCode == tc.want)
		if answer.Error != "" {
			t.Logf("admin %s: %d %s", tc.name, resp.StatusCode, answer.Error)
		}
		if tc.want == http.StatusOK {
			acceptedSeq = answer.Seq
		}
	}
	if acceptedSeq == 0 {
		t.Fatal("the admin call from inside the allow-list with the right token was not accepted")
	}
	bustest.WaitSeq(t, sub, acceptedSeq)
	var applied []string
	for _, e := range rec.Events() {
		if e.Expire != nil {
			applied = append(applied, e.Expire.Keys...)
		}
	}
	want := fmt.Sprintf("admin-%d", len(cases)-1)
	Check(t, "admin expires applied", strings.Join(applied, ","), "= "+want+" (the accepted call's only)",
		len(applied) == 1 && applied[0] == want)
	refused := len(cases) - 1
	logged := 0
	bustest.WaitFor(t, 5*time.Second, fmt.Sprintf("%d refused admin calls in the daemon's log", refused), func() bool {
		logged = strings.Count(b.nats.P.Output(), "admin call refused")
		return logged >= refused
	})
	Check(t, "admin calls refused in the daemon's log", logged, fmt.Sprintf("= %d", refused), logged == refused)
}
