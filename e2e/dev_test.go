//go:build unix

package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/bus/bustest"
	"github.com/cachebus/cachebus/e2e/harness"
	"github.com/nats-io/nats.go"
)

var (
	devNATSRe  = regexp.MustCompile(`^\s*NATS URL\s+(nats://\S+)`)
	devAdminRe = regexp.MustCompile(`^\s*admin URL\s+(http://\S+)`)
	devTokenRe = regexp.MustCompile(`^\s*token\s+(\S+)`)
	seqRe      = regexp.MustCompile(`seq=(\d+)`)
)

// TestDev runs `cachebus dev`, the README's first command, as a user
// would: on free ports, it prints its NATS URL, admin URL and token; the
// admin URL answers /healthz; an expire sent by each documented path —
// `cachebus expire` as its own process, curl's POST to the admin API, and
// the plain key list `nats pub` sends — reaches each of five subscribers
// once, in order; a call without the token is refused; SIGTERM ends it with exit 0
// and removes its temporary store.
func TestDev(t *testing.T) {
	// Its own TMPDIR, to see that its temporary store is gone after exit.
	tmp := t.TempDir()
	dev := harn.Start(t, "dev", map[string]string{"TMPDIR": tmp}, "dev", "--nats-port", "-1", "--http", "127.0.0.1:0", "--gateway", "127.0.0.1:0")
	natsURL := dev.WaitLine(30*time.Second, devNATSRe)[1]
	adminURL := dev.WaitLine(5*time.Second, devAdminRe)[1]
	token := dev.WaitLine(5*time.Second, devTokenRe)[1]
	t.Logf("dev: NATS %s, admin %s", natsURL, adminURL)

	if code, body := harness.HTTPGet(adminURL + "/healthz"); code != 200 {
		t.Fatalf("GET /healthz = %d %q, want 200", code, body)
	}
	bustest.WaitFor(t, 15*time.Second, "dev /readyz = 200", func() bool {
		code, _ := harness.HTTPGet(adminURL + "/readyz")
		return code == 200
	})

	// Five members, each with its own connection.
	var subs []*bus.Subscriber
	var recs []*recorder
	for i := range 5 {
		sub, rec := subscribe(t, harness.Connect(t, natsURL), bus.SubscriberOptions{Name: fmt.Sprintf("e2e-dev-%d", i)})
		subs, recs = append(subs, sub), append(recs, rec)
	}
	conn := harness.Connect(t, natsURL)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var want []string

	// 1. The CLI, as its own process, told where NATS is by CACHEBUS_NATS_URL.
	code, out := harn.Run(t, 20*time.Second, map[string]string{"CACHEBUS_NATS_URL": natsURL}, "expire", "users", "user:42")
	if code != 0 {
		t.Fatalf("cachebus expire users user:42 exited %d:\n%s", code, out)
	}
	m := seqRe.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("cachebus expire does not print the sequence it was stored at:\n%s", out)
	}
	want = append(want, "user:42")
	waitApplied(ctx, t, subs, recs, "cachebus expire", parseSeq(t, m[1]), len(want))

	// 2. curl -H 'Authorization: Bearer …' --data-binary 'user:43' …/v1/expire/users
	req, _ := http.NewRequest(http.MethodPost, adminURL+"/v1/expire/users", strings.NewReader("user:43"))
	req.Header.Set("Authorization", "Bearer "+token)
	code, body := harness.HTTPDo(req)
	if code != 200 {
		t.Fatalf("POST /v1/expire/users = %d %q, want 200", code, body)
	}
	m = regexp.MustCompile(`"seq":\s*(\d+)`).FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("POST /v1/expire/users answers %q, without the sequence", body)
	}
	want = append(want, "user:43")
	postSeq := parseSeq(t, m[1])
	waitApplied(ctx, t, subs, recs, "POST /v1/expire/users", postSeq, len(want))

	// Without the token, nothing is published.
	req, _ = http.NewRequest(http.MethodPost, adminURL+"/v1/expire/users", strings.NewReader("user:666"))
	if code, body := harness.HTTPDo(req); code != http.StatusUnauthorized {
		t.Errorf("POST /v1/expire/users without a token = %d %q, want 401", code, body)
	}
	req, _ = http.NewRequest(http.MethodPost, adminURL+"/v1/expire/users", strings.NewReader("user:666"))
	req.Header.Set("Authorization", "Bearer not-"+token)
	if code, body := harness.HTTPDo(req); code != http.StatusUnauthorized {
		t.Errorf("POST /v1/expire/users with a wrong token = %d %q, want 401", code, body)
	}

	// 3. `nats pub cachebus.expire.users user:44`: a plain core publish of
	// the key list, by a client that knows nothing of cachebus.
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatalf("raw NATS client: %v", err)
	}
	defer nc.Close()
	if err := nc.Publish("cachebus.expire.users", []byte("user:44")); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	want = append(want, "user:44")
	// The log stores it too (the server keeps up with one message): wait
	// until the subscribers have its log copy, so that applying it twice
	// shows.
	waitApplied(ctx, t, subs, recs, "nats pub", logSeqAfter(ctx, t, conn, postSeq), len(want))
	for i, sub := range subs {
		checkApplied(t, fmt.Sprintf("subscriber %d of cachebus dev", i), recs[i], want)
		sub.Close()
	}

	if entries, err := os.ReadDir(tmp); err != nil || len(entries) == 0 {
		t.Errorf("dev wrote nothing to its TMPDIR (%v): where is its temporary store?", err)
	}
	took := dev.Terminate(10 * time.Second)
	t.Logf("dev exited 0 %s after SIGTERM", took.Round(time.Millisecond))
	if entries, _ := os.ReadDir(tmp); len(entries) > 0 {
		t.Errorf("dev left %s behind in its TMPDIR", entries[0].Name())
	}
}

// waitApplied waits until every subscriber has processed log sequence seq
// and applied n events.
func waitApplied(ctx context.Context, t *testing.T, subs []*bus.Subscriber, recs []*recorder, what string, seq uint64, n int) {
	t.Helper()
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for i, sub := range subs {
		if err := sub.WaitSeq(wctx, seq); err != nil {
			t.Fatalf("%s, stored at seq %d, not processed by subscriber %d: %v", what, seq, i, err)
		}
		if got := recs[i].count(); got < n {
			t.Fatalf("%s: subscriber %d processed seq %d but applied %d events, want %d", what, i, seq, got, n)
		}
	}
}

// logSeqAfter waits for the event log to store an event after seq and
// returns its last sequence.
func logSeqAfter(ctx context.Context, t *testing.T, c *bus.Conn, seq uint64) uint64 {
	t.Helper()
	var last uint64
	bustest.WaitFor(t, 10*time.Second, fmt.Sprintf("the event log to store an event after seq %d", seq), func() bool {
		st, err := c.JS.Stream(ctx, c.Subjects.EventStream())
		if err != nil {
			return false
		}
		info, err := st.Info(ctx)
		if err != nil {
			return false
		}
		last = info.State.LastSeq
		return last > seq
	})
	return last
}

func parseSeq(t *testing.T, s string) uint64 {
	t.Helper()
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil || n == 0 {
		t.Fatalf("sequence %q: %v", s, err)
	}
	return n
}
