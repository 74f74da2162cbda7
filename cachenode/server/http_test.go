package server_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/bus/bustest"
	"github.com/cachebus/cachebus/cachenode/server"
	"github.com/cachebus/cachebus/cachenode/wire"
	"github.com/cachebus/cachebus/persistence"
)

// httpNode is one cache node on its own embedded NATS, its records
// handler served by httptest.
type httpNode struct {
	srv  *server.Server
	conn *bus.Conn
	url  string
}

// startHTTPNode starts node id with baseline (this node alone when empty)
// and, when ready is set, waits until it holds its partitions.
func startHTTPNode(t *testing.T, id string, baseline []string, ready bool) *httpNode {
	t.Helper()
	tg := bustest.Embedded(t)
	conn := bustest.Connect(t, tg.URL)
	cfg := server.Config{ID: id, Baseline: baseline, MaxMB: 8, MaxValue: 64, MaxKey: 32,
		StaleGrace: time.Minute, RequestTimeout: time.Second}
	cfg.Interval, cfg.FailureTimeout = 100*time.Millisecond, 600*time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	s, err := server.Start(ctx, cfg, server.Options{Conn: conn})
	if err != nil {
		t.Fatalf("start %s: %v", id, err)
	}
	t.Cleanup(func() { s.Shutdown(context.Background()) })
	if ready {
		bustest.WaitFor(t, 20*time.Second, id+" ready", func() bool { return s.Ready() == nil })
	}
	hs := httptest.NewServer(s.RecordsHandler())
	t.Cleanup(hs.Close)
	return &httpNode{srv: s, conn: conn, url: hs.URL}
}

type httpAnswer struct {
	status int
	header http.Header
	body   string
}

func (n *httpNode) do(t *testing.T, method, path string, header map[string]string, body string) httpAnswer {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, n.url+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return httpAnswer{resp.StatusCode, resp.Header, string(b)}
}

// errorCode decodes an error answer's code, failing on any other shape.
func errorCode(t *testing.T, a httpAnswer) string {
	t.Helper()
	var e struct{ Error, Code string }
	if err := json.Unmarshal([]byte(a.body), &e); err != nil || e.Error == "" || e.Code == "" {
		t.Fatalf("error answer %d %q is not {\"error\",\"code\"}: %v", a.status, a.body, err)
	}
	if ct := a.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("error answer Content-Type %q", ct)
	}
	return e.Code
}

func TestHTTPRecords(t *testing.T) {
	n := startHTTPNode(t, "h1", nil, true)
	type step struct {
		name       string
		method     string
		path       string
		header     map[string]string
		body       string
		wantStatus int
		wantBody   string // for 200
		wantCode   string // for errors
		check      func(t *testing.T, a httpAnswer)
	}
	expiresIn := func(lo, hi time.Duration) func(*testing.T, httpAnswer) {
		return func(t *testing.T, a httpAnswer) {
			exp, err := time.Parse(time.RFC3339, a.header.Get(server.HeaderExpires))
			if err != nil {
				t.Fatalf("%s %q: %v", server.HeaderExpires, a.header.Get(server.HeaderExpires), err)
			}
			if d := time.Until(exp); d < lo || d > hi {
				t.Fatalf("expires in %s, want %s..%s", d, lo, hi)
			}
		}
	}
	var putVersion string
	steps := []step{
		{name: "get missing", method: "GET", path: "/v1/records/users/k1", wantStatus: 404, wantCode: "not_found"},
		{name: "put", method: "PUT", path: "/v1/records/users/k1?ttl=30s", body: "v1", wantStatus: 204,
			check: func(t *testing.T, a httpAnswer) {
				putVersion = a.header.Get(server.HeaderVersion)
				if v, err := strconv.ParseUint(putVersion, 10, 64); err != nil || v == 0 {
					t.Fatalf("put version %q", putVersion)
				}
				expiresIn(25*time.Second, 31*time.Second)(t, a)
			}},
		{name: "get", method: "GET", path: "/v1/records/users/k1", wantStatus: 200, wantBody: "v1",
			check: func(t *testing.T, a httpAnswer) {
				if v := a.header.Get(server.HeaderVersion); v != putVersion {
					t.Fatalf("get version %q, put answered %q", v, putVersion)
				}
				if a.header.Get(server.HeaderStale) != "" {
					t.Fatalf("fresh record marked stale")
				}
				expiresIn(25*time.Second, 31*time.Second)(t, a)
			}},
		{name: "head", method: "HEAD", path: "/v1/records/users/k1", wantStatus: 200, wantBody: "",
			check: func(t *testing.T, a httpAnswer) {
				if a.header.Get("Content-Length") != "2" {
					t.Fatalf("HEAD Content-Length %q, want 2", a.header.Get("Content-Length"))
				}
			}},
		{name: "put ttl header, binary value", method: "PUT", path: "/v1/records/users/k2", body: "a\x00b\n",
			header: map[string]string{server.HeaderTTL: "10m"}, wantStatus: 204, check: expiresIn(9*time.Minute, 11*time.Minute)},
		{name: "get binary", method: "GET", path: "/v1/records/users/k2", wantStatus: 200, wantBody: "a\x00b\n"},
		{name: "query ttl wins over header", method: "PUT", path: "/v1/records/users/k3?ttl=1m", body: "x",
			header: map[string]string{server.HeaderTTL: "1h"}, wantStatus: 204, check: expiresIn(50*time.Second, 61*time.Second)},
		{name: "empty value", method: "PUT", path: "/v1/records/users/empty", wantStatus: 204},
		{name: "get empty value", method: "GET", path: "/v1/records/users/empty", wantStatus: 200, wantBody: ""},
		{name: "key with slashes and escapes", method: "PUT", path: "/v1/records/users/a/b%3Ac", body: "s", wantStatus: 204},
		{name: "get key with slashes", method: "GET", path: "/v1/records/users/a/b:c", wantStatus: 200, wantBody: "s"},
		{name: "replace", method: "PUT", path: "/v1/records/users/k1", body: "v2", wantStatus: 204,
			check: func(t *testing.T, a httpAnswer) {
				old, _ := strconv.ParseUint(putVersion, 10, 64)
				if v, _ := strconv.ParseUint(a.header.Get(server.HeaderVersion), 10, 64); v <= old {
					t.Fatalf("replacing version %d, not above %d", v, old)
				}
			}},
		{name: "get replaced", method: "GET", path: "/v1/records/users/k1", wantStatus: 200, wantBody: "v2"},
		{name: "delete", method: "DELETE", path: "/v1/records/users/k1", wantStatus: 204},
		{name: "get deleted", method: "GET", path: "/v1/records/users/k1", wantStatus: 404, wantCode: "not_found"},
		{name: "delete missing", method: "DELETE", path: "/v1/records/users/never", wantStatus: 204},
		{name: "other namespace is apart", method: "GET", path: "/v1/records/pages/k2", wantStatus: 404, wantCode: "not_found"},

		{name: "bad namespace", method: "GET", path: "/v1/records/a.b/k", wantStatus: 400, wantCode: "bad_request"},
		{name: "key with a space", method: "PUT", path: "/v1/records/users/a%20b", body: "x", wantStatus: 400, wantCode: "bad_request"},
		{name: "empty key", method: "GET", path: "/v1/records/users/", wantStatus: 400, wantCode: "bad_request"},
		{name: "key too long", method: "GET", path: "/v1/records/users/" + strings.Repeat("k", 33), wantStatus: 413, wantCode: "too_large"},
		{name: "value too large", method: "PUT", path: "/v1/records/users/big", body: strings.Repeat("v", 65), wantStatus: 413, wantCode: "too_large"},
		{name: "value at the limit", method: "PUT", path: "/v1/records/users/big", body: strings.Repeat("v", 64), wantStatus: 204},
		{name: "bad ttl", method: "PUT", path: "/v1/records/users/k?ttl=soon", body: "x", wantStatus: 400, wantCode: "bad_request"},
		{name: "negative ttl header", method: "PUT", path: "/v1/records/users/k", body: "x",
			header: map[string]string{server.HeaderTTL: "-1s"}, wantStatus: 400, wantCode: "bad_request"},
		{name: "nothing stored by refused puts", method: "GET", path: "/v1/records/users/k", wantStatus: 404, wantCode: "not_found"},
		{name: "post", method: "POST", path: "/v1/records/users/k", body: "x", wantStatus: 405, wantCode: "method_not_allowed",
			check: func(t *testing.T, a httpAnswer) {
				if a.header.Get("Allow") != "GET, HEAD, PUT, DELETE" {
					t.Fatalf("Allow %q", a.header.Get("Allow"))
				}
			}},
		// ServeMux redirects to /v1/records/users/, whose key is empty.
		{name: "no key segment", method: "GET", path: "/v1/records/users", wantStatus: 400, wantCode: "bad_request"},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			a := n.do(t, st.method, st.path, st.header, st.body)
			if a.status != st.wantStatus {
				t.Fatalf("%s %s = %d %q, want %d", st.method, st.path, a.status, a.body, st.wantStatus)
			}
			switch {
			case st.wantCode != "":
				if code := errorCode(t, a); code != st.wantCode {
					t.Fatalf("code %q, want %q (%s)", code, st.wantCode, a.body)
				}
			case a.status == 200:
				if a.body != st.wantBody {
					t.Fatalf("body %q, want %q", a.body, st.wantBody)
				}
				if a.header.Get("Content-Type") != "application/octet-stream" {
					t.Errorf("Content-Type %q", a.header.Get("Content-Type"))
				}
			case a.status == 204:
				if a.header.Get(server.HeaderVersion) == "" {
					t.Errorf("%d without %s", a.status, server.HeaderVersion)
				}
			}
			if st.check != nil {
				st.check(t, a)
			}
		})
	}
}

// TestHTTPStale checks that an expired record is served, marked stale,
// while fallback is on, and not otherwise.
func TestHTTPStale(t *testing.T) {
	n := startHTTPNode(t, "h1", nil, true)
	if a := n.do(t, "PUT", "/v1/records/users/k?ttl=50ms", nil, "old"); a.status != 204 {
		t.Fatalf("put = %d %s", a.status, a.body)
	}
	bustest.WaitFor(t, 5*time.Second, "the record expired", func() bool {
		return n.do(t, "GET", "/v1/records/users/k", nil, "").status == 404
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	state, err := persistence.BindState(ctx, n.conn)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := bus.NewPublisher(n.conn, "http-test")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := state.SetFallback(ctx, pub, bus.Fallback{On: true, Scope: "users", Reason: "test"}); err != nil {
		t.Fatal(err)
	}
	var a httpAnswer
	bustest.WaitFor(t, 5*time.Second, "the stale record served", func() bool {
		a = n.do(t, "GET", "/v1/records/users/k", nil, "")
		return a.status == 200
	})
	if a.body != "old" || a.header.Get(server.HeaderStale) != "1" {
		t.Fatalf("stale answer %q, %s=%q", a.body, server.HeaderStale, a.header.Get(server.HeaderStale))
	}
}

// TestHTTPNoOwner checks that a request for a partition no live node
// holds answers 503 with the no_owner code: this node is not in the
// baseline, and the one that is never started.
func TestHTTPNoOwner(t *testing.T) {
	n := startHTTPNode(t, "h1", []string{"ghost"}, false)
	for _, m := range []string{"GET", "PUT", "DELETE"} {
		a := n.do(t, m, "/v1/records/users/k", nil, "x")
		if a.status != 503 || errorCode(t, a) != "no_owner" || a.header.Get("Retry-After") == "" {
			t.Fatalf("%s = %d %q (Retry-After %q), want 503 no_owner", m, a.status, a.body, a.header.Get("Retry-After"))
		}
	}
}

func TestHTTPStatusCodes(t *testing.T) {
	for code, want := range map[string]int{
		"bad_request": 400, "too_large": 413, "no_owner": 503, "unavailable": 503, "internal": 500, "something_new": 500,
	} {
		if got := server.HTTPStatus(wire.Code(code)); got != want {
			t.Errorf("HTTPStatus(%s) = %d, want %d", code, got, want)
		}
	}
}
