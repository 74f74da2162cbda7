package admin_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cachebus/cachebus/admin"
	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/bus/bustest"
	"github.com/cachebus/cachebus/persistence"
	"github.com/prometheus/client_golang/prometheus"
)

const testToken = "s3cret-token"

// fixture is an admin server on a real embedded NATS with the event log
// and the state bucket in place.
type fixture struct {
	tg    *bustest.Target
	conn  *bus.Conn
	pub   *bus.Publisher
	state *persistence.State
	srv   *admin.Server
}

func newFixture(t *testing.T, cfg admin.Config, adjust func(*admin.Options)) *fixture {
	t.Helper()
	tg := bustest.Embedded(t)
	conn := bustest.Connect(t, tg.URL)
	bustest.EnsureEvents(t, conn, persistence.EventLogConfig{})
	state := bustest.OpenState(t, conn)
	pub, err := bus.NewPublisher(conn, "admin-test")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Allow == nil {
		cfg.Allow = []string{"127.0.0.1/32", "::1/128"}
	}
	opts := admin.Options{Conn: conn, Publisher: pub, State: state, Gatherer: prometheus.NewRegistry()}
	if adjust != nil {
		adjust(&opts)
	}
	srv, err := admin.New(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{tg: tg, conn: conn, pub: pub, state: state, srv: srv}
}

// do sends a request straight to the handler from remote.
func (f *fixture) do(t *testing.T, method, path, remote, token string, body []byte) (int, http.Header, string) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	r := httptest.NewRequest(method, path, rd)
	r.RemoteAddr = remote
	if token != "" {
		r.Header.Set("Authorization", "Bearer "+token)
	}
	w := httptest.NewRecorder()
	f.srv.ServeHTTP(w, r)
	return w.Code, w.Header(), w.Body.String()
}

func subscribe(t *testing.T, url, name string) (*bus.Subscriber, *bustest.Recorder) {
	t.Helper()
	return bustest.Subscribe(t, bustest.Connect(t, url), bus.SubscriberOptions{Name: name})
}

type answer struct {
	OK    bool   `json:"ok"`
	Seq   uint64 `json:"seq"`
	Error string `json:"error"`
	Field string `json:"field"`
}

func decodeAnswer(t *testing.T, body string) answer {
	t.Helper()
	var a answer
	if err := json.Unmarshal([]byte(body), &a); err != nil {
		t.Fatalf("answer %q is not JSON: %v", body, err)
	}
	return a
}

// TestVerbsAppliedOnce is issue 2's HTTP admin path: each verb posted over
// real HTTP is applied exactly once by each of 5 subscribers.
func TestVerbsAppliedOnce(t *testing.T) {
	f := newFixture(t, admin.Config{Token: testToken}, nil)
	hs := httptest.NewServer(f.srv)
	t.Cleanup(hs.Close)
	var subs []*bus.Subscriber
	var recs []*bustest.Recorder
	for i := range 5 {
		s, r := subscribe(t, f.tg.URL, fmt.Sprintf("s%d", i))
		subs, recs = append(subs, s), append(recs, r)
	}

	posts := []struct {
		path, body string
		check      func(bus.Event) bool
	}{
		{"/v1/expire/users", `{"v":1,"keys":["user:1"],"prefixes":["cart:1:"]}`, func(e bus.Event) bool {
			return e.Kind == bus.KindExpire && e.NS == "users" && strings.Join(e.Expire.Keys, ",") == "user:1" &&
				strings.Join(e.Expire.Prefixes, ",") == "cart:1:" && e.Expire.Origin == "admin-test"
		}},
		{"/v1/expire/users", "user:2\nuser:3\n", func(e bus.Event) bool {
			return e.Kind == bus.KindExpire && strings.Join(e.Expire.Keys, ",") == "user:2,user:3"
		}},
		{"/v1/expire/pages", `{"v":1,"tags":["home"],"origin":"cms"}`, func(e bus.Event) bool {
			return e.NS == "pages" && strings.Join(e.Expire.Tags, ",") == "home" && e.Expire.Origin == "cms"
		}},
		{"/v1/seed/users", `{"v":1,"key":"user:4","value":"aGVsbG8=","ttl":"30s"}`, func(e bus.Event) bool {
			return e.Kind == bus.KindSeed && e.Seed.Key == "user:4" && string(e.Seed.Value) == "hello" && e.Seed.TTL == 30*time.Second
		}},
		{"/v1/fallback", `{"v":1,"on":true,"scope":"users","reason":"db down"}`, func(e bus.Event) bool {
			return e.Kind == bus.KindFallback && e.Fallback.On && e.Fallback.Scope == "users" && e.Fallback.Reason == "db down"
		}},
		{"/v1/drain/node/n1", "", func(e bus.Event) bool {
			return e.Kind == bus.KindDrain && e.Role == "node" && e.ID == "n1" && e.Drain.On
		}},
		{"/v1/drain/node/n1", `{"v":1,"on":false}`, func(e bus.Event) bool {
			return e.Kind == bus.KindDrain && e.ID == "n1" && !e.Drain.On
		}},
	}
	var last uint64
	for _, p := range posts {
		req, _ := http.NewRequest(http.MethodPost, hs.URL+p.path, strings.NewReader(p.body))
		req.Header.Set("Authorization", "Bearer "+testToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		a := decodeAnswer(t, string(body))
		if resp.StatusCode != http.StatusOK || !a.OK || a.Seq != last+1 {
			t.Fatalf("POST %s: %d %s, want 200 with seq %d", p.path, resp.StatusCode, body, last+1)
		}
		last = a.Seq
	}
	for i, s := range subs {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		if err := s.WaitSeq(ctx, last); err != nil {
			cancel()
			t.Fatal(err)
		}
		cancel()
		evs, flushes := recs[i].Snapshot()
		if len(evs) != len(posts) || flushes != 0 {
			t.Fatalf("subscriber %d applied %d events and %d flushes, want %d and 0: %+v", i, len(evs), flushes, len(posts), evs)
		}
		for j, p := range posts {
			if !p.check(evs[j]) {
				t.Errorf("subscriber %d event %d from POST %s = %+v", i, j, p.path, evs[j])
			}
		}
	}
}

// TestAccess covers the allow-list and the token on every kind of route.
func TestAccess(t *testing.T) {
	withToken := newFixture(t, admin.Config{Token: testToken}, nil)
	noToken := newFixture(t, admin.Config{}, nil)
	expire := []byte("k1")
	cases := []struct {
		name       string
		f          *fixture
		method     string
		path       string
		remote     string
		token      string
		header     map[string]string
		wantStatus int
		wantErr    string
	}{
		{"right token", withToken, "POST", "/v1/expire/users", "127.0.0.1:5000", testToken, nil, 200, ""},
		{"ipv6 loopback", withToken, "POST", "/v1/expire/users", "[::1]:5000", testToken, nil, 200, ""},
		{"wrong token", withToken, "POST", "/v1/expire/users", "127.0.0.1:5000", "guess", nil, 401, "wrong admin token"},
		{"no Authorization", withToken, "POST", "/v1/expire/users", "127.0.0.1:5000", "", nil, 401, "Authorization: Bearer"},
		{"status needs the token", withToken, "GET", "/v1/status", "127.0.0.1:5000", "", nil, 401, "Authorization: Bearer"},
		{"basic auth is not a token", withToken, "POST", "/v1/expire/users", "127.0.0.1:5000", "",
			map[string]string{"Authorization": "Basic " + testToken}, 401, "Authorization: Bearer"},
		{"outside the allow-list", withToken, "POST", "/v1/expire/users", "203.0.113.9:5000", testToken, nil, 403,
			"source 203.0.113.9 not in CACHEBUS_ADMIN_ALLOW"},
		{"X-Forwarded-For is ignored", withToken, "POST", "/v1/expire/users", "203.0.113.9:5000", testToken,
			map[string]string{"X-Forwarded-For": "127.0.0.1", "X-Real-IP": "127.0.0.1"}, 403, "source 203.0.113.9 not in"},
		{"status outside the allow-list", withToken, "GET", "/v1/status", "203.0.113.9:5000", testToken, nil, 403, "not in CACHEBUS_ADMIN_ALLOW"},
		{"token not configured", noToken, "POST", "/v1/expire/users", "127.0.0.1:5000", "anything", nil, 403,
			"admin token not configured (set CACHEBUS_ADMIN_TOKEN)"},
		{"token not configured, status readable", noToken, "GET", "/v1/status", "127.0.0.1:5000", "", nil, 200, ""},
		{"token not configured, outside", noToken, "GET", "/v1/status", "203.0.113.9:5000", "", nil, 403, "not in CACHEBUS_ADMIN_ALLOW"},
		{"healthz needs nothing", withToken, "GET", "/healthz", "203.0.113.9:5000", "", nil, 200, ""},
		{"readyz needs nothing", withToken, "GET", "/readyz", "203.0.113.9:5000", "", nil, 200, ""},
		{"metrics needs nothing", withToken, "GET", "/metrics", "203.0.113.9:5000", "", nil, 200, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := bustest.LastSeq(t, tc.f.conn)
			var body []byte
			if tc.method == "POST" {
				body = expire
			}
			r := httptest.NewRequest(tc.method, tc.path, bytes.NewReader(body))
			r.RemoteAddr = tc.remote
			if tc.token != "" {
				r.Header.Set("Authorization", "Bearer "+tc.token)
			}
			for k, v := range tc.header {
				r.Header.Set(k, v)
			}
			w := httptest.NewRecorder()
			tc.f.srv.ServeHTTP(w, r)
			if w.Code != tc.wantStatus {
				t.Fatalf("status %d (%s), want %d", w.Code, w.Body, tc.wantStatus)
			}
			after := bustest.LastSeq(t, tc.f.conn)
			if tc.wantErr != "" {
				a := decodeAnswer(t, w.Body.String())
				if !strings.Contains(a.Error, tc.wantErr) {
					t.Fatalf("error %q, want it to contain %q", a.Error, tc.wantErr)
				}
				if after != before {
					t.Fatalf("refused call published: log at %d, was %d", after, before)
				}
			}
			if tc.wantStatus == 401 && w.Header().Get("WWW-Authenticate") == "" {
				t.Errorf("401 without WWW-Authenticate")
			}
			if tc.method == "POST" && tc.wantStatus == 200 && after != before+1 {
				t.Fatalf("accepted call: log at %d, want %d", after, before+1)
			}
		})
	}
}

// TestRejected checks that bad input gets the right status, names the
// field, and publishes nothing.
func TestRejected(t *testing.T) {
	f := newFixture(t, admin.Config{Token: testToken}, nil)
	big := bytes.Repeat([]byte("k\n"), bus.MaxPayload/2+1)
	cases := []struct {
		name, method, path string
		body               []byte
		wantStatus         int
		wantField          string
	}{
		{"malformed JSON", "POST", "/v1/expire/users", []byte(`{"v":1,"keys":[`), 400, "payload"},
		{"wrong v", "POST", "/v1/expire/users", []byte(`{"v":2,"keys":["a"]}`), 400, "v"},
		{"missing v", "POST", "/v1/seed/users", []byte(`{"key":"a","value":""}`), 400, "v"},
		{"wrong type", "POST", "/v1/expire/users", []byte(`{"v":1,"keys":"a"}`), 400, "keys"},
		{"nothing to expire", "POST", "/v1/expire/users", []byte(`{"v":1}`), 400, "keys"},
		{"empty expire", "POST", "/v1/expire/users", nil, 400, "payload"},
		{"bad ns", "POST", "/v1/expire/bad.ns", []byte("k"), 400, "ns"},
		{"bad seed ns", "POST", "/v1/seed/" + strings.Repeat("n", 65), []byte(`{"v":1,"key":"a","value":""}`), 400, "ns"},
		{"seed without value", "POST", "/v1/seed/users", []byte(`{"v":1,"key":"a"}`), 400, "value"},
		{"seed bad ttl", "POST", "/v1/seed/users", []byte(`{"v":1,"key":"a","value":"","ttl":"soon"}`), 400, "ttl"},
		{"fallback empty", "POST", "/v1/fallback", nil, 400, "payload"},
		{"fallback without on", "POST", "/v1/fallback", []byte(`{"v":1}`), 400, "on"},
		{"fallback bad scope", "POST", "/v1/fallback", []byte(`{"v":1,"on":true,"scope":"a b"}`), 400, "scope"},
		{"fallback bad until", "POST", "/v1/fallback", []byte(`{"v":1,"on":true,"until":"tomorrow"}`), 400, "until"},
		{"unknown role", "POST", "/v1/drain/db/n1", nil, 400, "role"},
		{"bad id", "POST", "/v1/drain/node/n.1", nil, 400, "id"},
		{"drain bad deadline", "POST", "/v1/drain/node/n1", []byte(`{"v":1,"on":true,"deadline":"x"}`), 400, "deadline"},
		{"bad origin", "POST", "/v1/expire/users", []byte(`{"v":1,"all":true,"origin":"a b"}`), 400, "origin"},
		{"oversize", "POST", "/v1/expire/users", big, 413, "payload"},
		{"unknown route", "GET", "/nope", nil, 404, ""},
		{"unknown v1 route", "POST", "/v1/nope", nil, 404, ""},
		{"GET on a verb", "GET", "/v1/expire/users", nil, 405, ""},
		{"POST on status", "POST", "/v1/status", nil, 405, ""},
		{"POST on healthz", "POST", "/healthz", nil, 405, ""},
	}
	before := bustest.LastSeq(t, f.conn)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, hdr, body := f.do(t, tc.method, tc.path, "127.0.0.1:4000", testToken, tc.body)
			if code != tc.wantStatus {
				t.Fatalf("status %d (%s), want %d", code, body, tc.wantStatus)
			}
			a := decodeAnswer(t, body)
			if a.Error == "" || a.OK {
				t.Fatalf("answer %s has no error", body)
			}
			if a.Field != tc.wantField {
				t.Fatalf("field %q (%s), want %q", a.Field, a.Error, tc.wantField)
			}
			if tc.wantField != "" && !strings.Contains(a.Error, tc.wantField) {
				t.Fatalf("error %q does not name the field %q", a.Error, tc.wantField)
			}
			if code == 405 && hdr.Get("Allow") == "" {
				t.Fatalf("405 without Allow")
			}
		})
	}
	t.Run("oversize without length", func(t *testing.T) {
		r := httptest.NewRequest("POST", "/v1/expire/users", bytes.NewReader(big))
		r.ContentLength = -1 // as a chunked upload
		r.RemoteAddr = "127.0.0.1:4000"
		r.Header.Set("Authorization", "Bearer "+testToken)
		w := httptest.NewRecorder()
		f.srv.ServeHTTP(w, r)
		if w.Code != 413 || !strings.Contains(w.Body.String(), "payload exceeds the limit") {
			t.Fatalf("status %d %s, want 413", w.Code, w.Body)
		}
	})
	if after := bustest.LastSeq(t, f.conn); after != before {
		t.Fatalf("rejected calls published: log at %d, was %d", after, before)
	}
}

// TestStateRecorded checks that fallback and drain are in the state bucket
// and in the status.
func TestStateRecorded(t *testing.T) {
	f := newFixture(t, admin.Config{Token: testToken}, nil)
	until := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
	code, _, body := f.do(t, "POST", "/v1/fallback", "127.0.0.1:1", testToken,
		fmt.Appendf(nil, `{"v":1,"on":true,"scope":"users","reason":"db down","until":%q}`, until.Format(time.RFC3339)))
	if code != 200 {
		t.Fatalf("fallback: %d %s", code, body)
	}
	if code, _, body = f.do(t, "POST", "/v1/drain/gateway/g1", "127.0.0.1:1", testToken, nil); code != 200 {
		t.Fatalf("drain: %d %s", code, body)
	}
	cs, err := f.state.Load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	fb := cs.Fallbacks["users"]
	if !fb.On || fb.Reason != "db down" || !fb.Until.Equal(until) || fb.Origin != "admin-test" {
		t.Fatalf("recorded fallback %+v", fb)
	}
	if !cs.FallbackActive("users", time.Now()) || cs.FallbackActive("pages", time.Now()) {
		t.Fatalf("fallback active for users only: %+v", cs)
	}
	if d, ok := cs.Draining("gateway", "g1"); !ok || d.Drained {
		t.Fatalf("drain of gateway/g1 = %+v, %v", d, ok)
	}

	code, _, body = f.do(t, "GET", "/v1/status", "127.0.0.1:1", testToken, nil)
	if code != 200 {
		t.Fatalf("status: %d %s", code, body)
	}
	var st admin.Status
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatal(err)
	}
	if len(st.Fallbacks) != 1 || !st.Fallbacks[0].Active || st.Fallbacks[0].Scope != "users" {
		t.Errorf("status fallbacks %+v", st.Fallbacks)
	}
	if len(st.Drains) != 1 || st.Drains[0].ID != "g1" {
		t.Errorf("status drains %+v", st.Drains)
	}
	if st.EventLog == nil || st.EventLog.LastSeq != 2 || st.EventLog.Stream != "CACHEBUS_EVENTS" {
		t.Errorf("status event log %+v", st.EventLog)
	}
	if len(st.Errors) != 0 {
		t.Errorf("status errors %v", st.Errors)
	}
}

// TestStatusMembersAndSections checks members, extra sections and the table.
func TestStatusMembersAndSections(t *testing.T) {
	var members *bus.Membership
	f := newFixture(t, admin.Config{Token: testToken}, func(o *admin.Options) {
		var err error
		members, err = bus.TrackMembers(o.Conn, 5*time.Second, bus.MembershipEvents{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(members.Stop)
		o.Members = members
		o.Extra = func() map[string]any { return map[string]any{"pool": map[string]int{"backends": 3}} }
	})
	hb, err := bus.StartHeartbeat(f.conn, bus.Heartbeat{ID: "n1", Role: bus.RoleNode, Addr: "http://127.0.0.1:1"}, 50*time.Millisecond, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hb.Stop(context.Background()) })
	bustest.WaitFor(t, 5*time.Second, "member n1 known", func() bool { _, ok := members.Get(bus.RoleNode, "n1"); return ok })

	code, _, body := f.do(t, "GET", "/v1/status", "127.0.0.1:1", testToken, nil)
	if code != 200 {
		t.Fatalf("status: %d %s", code, body)
	}
	var raw map[string]any
	if err := json.Unmarshal([]byte(body), &raw); err != nil {
		t.Fatal(err)
	}
	if _, ok := raw["sections"].(map[string]any)["pool"]; !ok {
		t.Errorf("status has no pool section: %s", body)
	}
	st, err := admin.Collect(context.Background(), f.conn, f.state.Load, members)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Members) != 1 || st.Members[0].ID != "n1" || st.Members[0].Addr != "http://127.0.0.1:1" {
		t.Fatalf("members %+v", st.Members)
	}
	var out strings.Builder
	if err := admin.WriteTable(&out, st); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"EVENT LOG", "CACHEBUS_EVENTS", "FALLBACK", "DRAINS", "MEMBERS", "n1", "http://127.0.0.1:1"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, out.String())
		}
	}
}

// TestReadyz checks the readiness answer follows Options.Ready.
func TestReadyz(t *testing.T) {
	var mu sync.Mutex
	reason := fmt.Errorf("event log not ready yet")
	f := newFixture(t, admin.Config{}, func(o *admin.Options) {
		o.Ready = func() error { mu.Lock(); defer mu.Unlock(); return reason }
	})
	code, _, body := f.do(t, "GET", "/readyz", "192.0.2.1:1", "", nil)
	if code != 503 || !strings.Contains(body, "event log not ready yet") {
		t.Fatalf("readyz = %d %q, want 503 with the reason", code, body)
	}
	mu.Lock()
	reason = nil
	mu.Unlock()
	if code, _, body = f.do(t, "GET", "/readyz", "192.0.2.1:1", "", nil); code != 200 {
		t.Fatalf("readyz = %d %q, want 200", code, body)
	}
	if code, _, body = f.do(t, "GET", "/healthz", "192.0.2.1:1", "", nil); code != 200 || body != "ok\n" {
		t.Fatalf("healthz = %d %q", code, body)
	}
}

// TestDefaultReadyFollowsNATS checks that, without Options.Ready, readiness
// is the NATS connection.
func TestDefaultReadyFollowsNATS(t *testing.T) {
	f := newFixture(t, admin.Config{}, nil)
	if code, _, body := f.do(t, "GET", "/readyz", "127.0.0.1:1", "", nil); code != 200 {
		t.Fatalf("readyz = %d %q", code, body)
	}
	f.conn.NC.Close()
	code, _, body := f.do(t, "GET", "/readyz", "127.0.0.1:1", "", nil)
	if code != 503 || !strings.Contains(body, "nats") {
		t.Fatalf("readyz after close = %d %q, want 503 naming nats", code, body)
	}
}

// TestNotAcknowledged checks that a publish the log never acknowledges
// answers 503 within the request timeout.
func TestNotAcknowledged(t *testing.T) {
	tg := bustest.Embedded(t)
	conn := bustest.Connect(t, tg.URL) // no event log: nothing will acknowledge
	pub, err := bus.NewPublisher(conn, "admin-test")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := admin.New(admin.Config{Token: testToken, Allow: []string{"127.0.0.0/8"}},
		admin.Options{Conn: conn, Publisher: pub, RequestTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{srv: srv}
	start := time.Now()
	code, _, body := f.do(t, "POST", "/v1/expire/users", "127.0.0.9:1", testToken, []byte("k"))
	if code != 503 || !strings.Contains(decodeAnswer(t, body).Error, "not acknowledged") {
		t.Fatalf("expire = %d %s, want 503 not acknowledged", code, body)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("answered after %s, want about the request timeout", d)
	}
	// Without a state bucket, fallback cannot be recorded.
	code, _, body = f.do(t, "POST", "/v1/fallback", "127.0.0.9:1", testToken, []byte(`{"v":1,"on":true}`))
	if code != 503 || !strings.Contains(body, "cluster state not available") {
		t.Fatalf("fallback = %d %s, want 503", code, body)
	}
	// Status still answers, naming the missing event log.
	code, _, body = f.do(t, "GET", "/v1/status", "127.0.0.9:1", testToken, nil)
	if code != 200 || !strings.Contains(body, "CACHEBUS_EVENTS") {
		t.Fatalf("status = %d %s", code, body)
	}
}

// TestNew checks the configuration New refuses.
func TestNew(t *testing.T) {
	tg := bustest.Embedded(t)
	conn := bustest.Connect(t, tg.URL)
	pub, _ := bus.NewPublisher(conn, "x")
	for _, tc := range []struct {
		name  string
		allow []string
		opts  admin.Options
		want  string
	}{
		{"bad cidr", []string{"10.0.0.0/33"}, admin.Options{Conn: conn, Publisher: pub}, `"10.0.0.0/33"`},
		{"not an address", []string{"127.0.0.1/32", "localhost"}, admin.Options{Conn: conn, Publisher: pub}, `"localhost"`},
		{"no conn", nil, admin.Options{Publisher: pub}, "Conn"},
		{"no publisher", nil, admin.Options{Conn: conn}, "Publisher"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := admin.New(admin.Config{Allow: tc.allow}, tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New = %v, want an error naming %s", err, tc.want)
			}
		})
	}
	got, err := admin.ParseAllow([]string{" 10.1.2.3/8 ", "192.0.2.7", "", "::1"})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != "[10.0.0.0/8 192.0.2.7/32 ::1/128]" {
		t.Fatalf("ParseAllow = %v", got)
	}
}

// TestServe checks a daemon's own route, and a graceful stop on cancel.
func TestServe(t *testing.T) {
	f := newFixture(t, admin.Config{Token: testToken}, nil)
	f.srv.Handle("GET /v1/pool", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "pool")
	}))
	ln, err := admin.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- f.srv.Serve(ctx, ln) }()
	base := admin.URL(ln.Addr())
	resp, err := http.Get(base + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("healthz %d", resp.StatusCode)
	}
	// A daemon's /v1/ route is guarded like the built-in ones.
	resp, err = http.Get(base + "/v1/pool")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Fatalf("/v1/pool without token: %d, want 401", resp.StatusCode)
	}
	req, _ := http.NewRequest("GET", base+"/v1/pool", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != "pool" {
		t.Fatalf("/v1/pool: %d %q", resp.StatusCode, b)
	}
	cancel()
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
	if _, err := http.Get(base + "/healthz"); err == nil {
		t.Fatal("still serving after cancel")
	}
}

// TestHandleChecksAccess checks that a daemon's own /v1/ route (a cache
// node's records) gets the checks of the built-in ones: reads those of
// GET /v1/status, writes those of the POST verbs; and that refusals are
// counted under its verb.
func TestHandleChecksAccess(t *testing.T) {
	reg := prometheus.NewRegistry()
	withToken := newFixture(t, admin.Config{Token: testToken}, func(o *admin.Options) { o.Registerer = reg })
	noToken := newFixture(t, admin.Config{}, nil)
	records := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusTeapot)
		_, _ = io.WriteString(w, r.Method+" "+r.URL.Path)
	})
	for _, f := range []*fixture{withToken, noToken} {
		f.srv.Handle("/v1/records/", records)
	}
	const in, out = "127.0.0.1:5000", "203.0.113.9:5000"
	cases := []struct {
		name       string
		f          *fixture
		method     string
		remote     string
		token      string
		wantStatus int
	}{
		{"get with the token", withToken, "GET", in, testToken, http.StatusTeapot},
		{"head with the token", withToken, "HEAD", in, testToken, http.StatusTeapot},
		{"get without the token", withToken, "GET", in, "", 401},
		{"get with a wrong token", withToken, "GET", in, "guess", 401},
		{"get from outside", withToken, "GET", out, testToken, 403},
		{"put with the token", withToken, "PUT", in, testToken, http.StatusTeapot},
		{"delete with the token", withToken, "DELETE", in, testToken, http.StatusTeapot},
		{"put without the token", withToken, "PUT", in, "", 401},
		{"delete from outside", withToken, "DELETE", out, testToken, 403},
		{"no token set: get", noToken, "GET", in, "", http.StatusTeapot},
		{"no token set: get from outside", noToken, "GET", out, "", 403},
		{"no token set: put refused", noToken, "PUT", in, "anything", 403},
		{"no token set: delete refused", noToken, "DELETE", in, "", 403},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, _, body := tc.f.do(t, tc.method, "/v1/records/users/k", tc.remote, tc.token, []byte("v"))
			if code != tc.wantStatus {
				t.Fatalf("%s = %d %s, want %d", tc.method, code, body, tc.wantStatus)
			}
			if code == http.StatusTeapot && tc.method != "HEAD" && body != tc.method+" /v1/records/users/k" {
				t.Fatalf("handler saw %q", body)
			}
		})
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	refused := 0.0
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "verb" && l.GetValue() == "records" {
					refused += m.GetCounter().GetValue()
				}
			}
		}
	}
	if refused != 5 {
		t.Errorf("cachebus_admin_requests_total{verb=\"records\"} sums to %v, want the 5 refusals", refused)
	}
}

// TestGuard: a page guarded outside /v1/ (a gateway's status page) takes
// the checks of GET /v1/status, with the token also as a basic-auth
// password for browsers.
func TestGuard(t *testing.T) {
	withToken := newFixture(t, admin.Config{Token: testToken}, nil)
	noToken := newFixture(t, admin.Config{}, nil)
	page := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusTeapot) })
	const in, out = "127.0.0.1:5000", "203.0.113.9:5000"
	cases := []struct {
		name   string
		f      *fixture
		remote string
		auth   func(*http.Request)
		want   int
	}{
		{"bearer token", withToken, in, func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+testToken) }, http.StatusTeapot},
		{"basic-auth password", withToken, in, func(r *http.Request) { r.SetBasicAuth("ops", testToken) }, http.StatusTeapot},
		{"wrong basic-auth password", withToken, in, func(r *http.Request) { r.SetBasicAuth("ops", "guess") }, 401},
		{"no token given", withToken, in, func(*http.Request) {}, 401},
		{"from outside the allow-list", withToken, out, func(r *http.Request) { r.SetBasicAuth("ops", testToken) }, 403},
		{"no token set, inside", noToken, in, func(*http.Request) {}, http.StatusTeapot},
		{"no token set, outside", noToken, out, func(*http.Request) {}, 403},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", "/_cachebus/", nil)
			r.RemoteAddr = tc.remote
			tc.auth(r)
			w := httptest.NewRecorder()
			tc.f.srv.Guard(page).ServeHTTP(w, r)
			if w.Code != tc.want {
				t.Fatalf("status %d %s, want %d", w.Code, w.Body.String(), tc.want)
			}
			if w.Code == 401 && !strings.HasPrefix(w.Header().Get("WWW-Authenticate"), "Basic") {
				t.Errorf("401 without a basic challenge: %q", w.Header().Get("WWW-Authenticate"))
			}
		})
	}
}
