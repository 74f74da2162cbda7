//go:build unix

package fault

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus/bustest"
	"github.com/cachebus/cachebus/e2e/harness"
	"github.com/cachebus/cachebus/lbgateway"
)

// Settings of TestSecurity's sticky cookie part.
const (
	secGatewaySecret = "sec-gateway-secret-0123456789abcdef"
	secOtherSecret   = "sec-another-secret-0123456789abcdef" // a key the gateway does not have
	secCookie        = "cbroute"
	secTarget        = "b3"                   // the backend the forged cookies name
	secCookieReqs    = 40                     // requests per kind of cookie
	secCookieHealth  = 100 * time.Millisecond // the gateway's active check interval
)

var secGatewayURLRe = regexp.MustCompile(`gateway \S+: (http://\S+)`)

// secBackend is an app server of the pool, in the test process: it names
// itself in X-Backend and counts the requests it serves. A draining one
// answers its health check 404, which the gateway takes as "no new
// sessions" (CACHEBUS_GATEWAY_HEALTH_DRAIN_404).
type secBackend struct {
	id       string
	draining bool
	srv      *httptest.Server

	mu     sync.Mutex
	served int
}

func startSecBackend(t *testing.T, id string, draining bool) *secBackend {
	b := &secBackend{id: id, draining: draining}
	b.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			if b.draining {
				w.WriteHeader(http.StatusNotFound)
			}
			return
		}
		b.mu.Lock()
		b.served++
		b.mu.Unlock()
		w.Header().Set("X-Backend", b.id)
		_, _ = io.WriteString(w, b.id)
	}))
	t.Cleanup(b.srv.Close)
	return b
}

func (b *secBackend) count() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.served
}

// testSecCookie runs `cachebus gateway` in front of three backends, b3
// draining: balancing never sends it a new session, while a valid sticky
// cookie still pins a session to it. So every request a forged, tampered
// or wrongly signed cookie naming b3 lands on b3 is one the cookie won;
// there must be none, and each must be balanced as a new session.
func testSecCookie(t *testing.T, b *secBus) {
	backends := []*secBackend{startSecBackend(t, "b1", false), startSecBackend(t, "b2", false), startSecBackend(t, secTarget, true)}
	var list []string
	for _, be := range backends {
		list = append(list, be.id+"="+be.srv.URL)
	}
	gw := harn.Start(t, "gateway", b.env(map[string]string{
		"CACHEBUS_GATEWAY_SECRET":           secGatewaySecret,
		"CACHEBUS_GATEWAY_COOKIE":           secCookie,
		"CACHEBUS_GATEWAY_COOKIE_MODE":      "insert",
		"CACHEBUS_GATEWAY_BACKENDS":         strings.Join(list, ","),
		"CACHEBUS_GATEWAY_HEARTBEATS":       "false",
		"CACHEBUS_GATEWAY_HEALTH_PATH":      "/healthz",
		"CACHEBUS_GATEWAY_HEALTH_INTERVAL":  secCookieHealth.String(),
		"CACHEBUS_GATEWAY_HEALTH_RISE":      "1",
		"CACHEBUS_GATEWAY_HEALTH_DRAIN_404": "true",
		"CACHEBUS_GATEWAY_SLOW_START":       "0s",
	}), "gateway", "--id", "sec-gw", "--addr", "127.0.0.1:0", "--http", "127.0.0.1:0")
	url := gw.WaitLine(30*time.Second, secGatewayURLRe)[1]
	want := map[string]string{"b1": "up", "b2": "up", secTarget: "draining"}
	var states map[string]string
	bustest.WaitFor(t, 15*time.Second, "the gateway to see b1 and b2 up and b3 draining", func() bool {
		states = secGatewayStates(url)
		for id, s := range want {
			if states[id] != s {
				return false
			}
		}
		return true
	})

	signer, err := lbgateway.NewSticky(lbgateway.StickyConfig{Name: secCookie, Secret: secGatewaySecret})
	if err != nil {
		t.Fatal(err)
	}
	other, err := lbgateway.NewSticky(lbgateway.StickyConfig{Name: secCookie, Secret: secOtherSecret})
	if err != nil {
		t.Fatal(err)
	}

	// Balancing: requests without a cookie, which also gives a cookie the
	// gateway issued itself.
	bal := secSend(t, url, "", backends, signer)
	issued := bal.issued[0]
	Figure(t, "balancing, no cookie: requests per backend", bal.describe(backends),
		fmt.Sprintf("%s draining gets no new session", secTarget))
	Check(t, "balancing, no cookie: on "+secTarget, bal.on[secTarget], "= 0", bal.on[secTarget] == 0)
	rt, err := signer.Decode(issued, time.Now())
	if err != nil {
		t.Fatalf("the gateway's own cookie %q does not verify: %v", issued, err)
	}

	now := time.Now()
	kinds := []struct {
		name, value string
		pins        bool // a valid cookie: every request on the backend it names
		target      string
	}{
		{"valid, issued by the gateway", issued, true, rt.Backend},
		{"valid, signed with the gateway's secret, naming " + secTarget, signer.Encode(secTarget, now, now), true, secTarget},
		{"forged: the format by hand, a made-up MAC", secForge(secTarget, now), false, secTarget},
		{"tampered: the gateway's cookie with its id changed", secTamper(t, issued, rt.Backend, secTarget), false, secTarget},
		{"signed with another key", other.Encode(secTarget, now, now), false, secTarget},
		{"the bare id", secTarget, false, secTarget},
	}
	for _, k := range kinds {
		r := secSend(t, url, k.value, backends, signer)
		name := "cookie " + k.name + ": on " + k.target
		if k.pins {
			Check(t, name, r.on[k.target], fmt.Sprintf("= %d of %d", secCookieReqs, secCookieReqs), r.on[k.target] == secCookieReqs)
			continue
		}
		Check(t, name, r.on[k.target], fmt.Sprintf("= 0 of %d (balancing: %d)", secCookieReqs, bal.on[k.target]), r.on[k.target] == 0)
		Check(t, "cookie "+k.name+": balanced as new, given a valid cookie", len(r.issued),
			fmt.Sprintf("= %d (%s)", secCookieReqs, r.describe(backends)), len(r.issued) == secCookieReqs)
	}
}

// secSent is what secSend saw: requests per backend, by the backends'
// own counts, and the valid sticky cookies the gateway set.
type secSent struct {
	on     map[string]int
	issued []string
}

func (s secSent) describe(backends []*secBackend) string {
	var parts []string
	for _, b := range backends {
		parts = append(parts, fmt.Sprintf("%s %d", b.id, s.on[b.id]))
	}
	return strings.Join(parts, ", ")
}

// secSend sends secCookieReqs GETs through the gateway at url, one at a
// time, each with the sticky cookie set to value (none when empty). It
// counts where they landed by the backends' own counts, checks each
// answer names the backend that counted it, and keeps the sticky cookies
// set in the answers that sticky verifies and that name that backend.
func secSend(t *testing.T, url, value string, backends []*secBackend, sticky *lbgateway.Sticky) secSent {
	t.Helper()
	s := secSent{on: map[string]int{}}
	before := map[string]int{}
	for _, b := range backends {
		before[b.id] = b.count()
	}
	for i := range secCookieReqs {
		req, err := http.NewRequest(http.MethodGet, fmt.Sprintf("%s/page/%d", url, i), nil)
		if err != nil {
			t.Fatal(err)
		}
		if value != "" {
			req.AddCookie(&http.Cookie{Name: secCookie, Value: value})
		}
		resp, err := harness.HTTPClient.Do(req)
		if err != nil {
			t.Fatalf("GET through the gateway: %v", err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		at := resp.Header.Get("X-Backend")
		if resp.StatusCode != http.StatusOK || at == "" {
			t.Fatalf("GET through the gateway: %d, X-Backend %q", resp.StatusCode, at)
		}
		for _, c := range resp.Cookies() {
			if c.Name != secCookie {
				continue
			}
			if rt, err := sticky.Decode(c.Value, time.Now()); err == nil && rt.Backend == at {
				s.issued = append(s.issued, c.Value)
			}
		}
	}
	total := 0
	for _, b := range backends {
		s.on[b.id] = b.count() - before[b.id]
		total += s.on[b.id]
	}
	if total != secCookieReqs {
		t.Fatalf("the backends served %d requests, want %d", total, secCookieReqs)
	}
	return s
}

// secGatewayStates reads each backend's state from the gateway's
// status.json; nil while it does not answer.
func secGatewayStates(url string) map[string]string {
	code, body := harness.HTTPGet(url + "/_cachebus/status.json")
	if code != http.StatusOK {
		return nil
	}
	var st lbgateway.Status
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		return nil
	}
	states := map[string]string{}
	for _, b := range st.Backends {
		states[b.ID] = b.State
	}
	return states
}

// secForge builds a sticky cookie for backend as someone who knows the
// documented format (lbgateway/sticky.go) but not the key would: a
// well-formed payload and 32 random bytes for the MAC.
func secForge(backend string, now time.Time) string {
	b := []byte{1}
	b = binary.AppendUvarint(b, uint64(now.Unix()))
	b = binary.AppendUvarint(b, 0)
	b = append(b, byte(len(backend)))
	b = append(b, backend...)
	mac := make([]byte, 32)
	_, _ = rand.Read(mac)
	return base64.RawURLEncoding.EncodeToString(append(b, mac...))
}

// secTamper changes the backend id in a genuine cookie, keeping its MAC:
// what a client that edits its cookie sends. The ids must be of one
// length, so that the rest of the cookie stays well formed.
func secTamper(t *testing.T, value, from, to string) string {
	t.Helper()
	raw, err := base64.RawURLEncoding.DecodeString(value)
	if err != nil || len(from) != len(to) {
		t.Fatalf("cannot tamper with %q (%v)", value, err)
	}
	id := len(raw) - 32 - len(from)
	if id < 0 || string(raw[id:id+len(from)]) != from {
		t.Fatalf("cookie %q does not hold id %q where expected", value, from)
	}
	copy(raw[id:], to)
	return base64.RawURLEncoding.EncodeToString(raw)
}
