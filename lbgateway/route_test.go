package lbgateway

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestStickyAcross1000Sessions: every session stays on the backend its
// first answer chose, the cookie never reaches a backend, the sessions
// spread over the pool, and the answer that sets the cookie is private.
func TestStickyAcross1000Sessions(t *testing.T) {
	bs := []*backend{newBackend(t, "b1"), newBackend(t, "b2"), newBackend(t, "b3")}
	g := startGateway(t, nil, testConfig(bs...))

	const sessions, follow = 1000, 3
	perBackend := map[string]int{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, sessions)
	sem := make(chan struct{}, 16)
	for s := range sessions {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c := newClient(t)
			resp, _ := get(t, c, g.url+"/app/"+fmt.Sprint(s))
			first := resp.Header.Get("X-Backend")
			if routeCookie(resp) == "" {
				errs <- fmt.Errorf("session %d: no sticky cookie on the first answer", s)
				return
			}
			if cc := resp.Header.Get("Cache-Control"); cc != "private" {
				errs <- fmt.Errorf("session %d: answer setting the cookie has Cache-Control %q, want private", s, cc)
			}
			for range follow {
				resp, _ := get(t, c, g.url+"/app/next")
				if got := resp.Header.Get("X-Backend"); got != first {
					errs <- fmt.Errorf("session %d moved from %s to %s", s, first, got)
					return
				}
				if routeCookie(resp) != "" {
					errs <- fmt.Errorf("session %d: cookie set again on a sticky answer", s)
				}
			}
			mu.Lock()
			perBackend[first]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for _, b := range bs {
		if n := perBackend[b.id]; n < sessions/6 {
			t.Errorf("backend %s got %d of %d sessions: %v", b.id, n, sessions, perBackend)
		}
		if n := b.sawCookie.Load(); n != 0 {
			t.Errorf("backend %s saw the sticky cookie %d times: it must be stripped", b.id, n)
		}
	}
	t.Logf("sessions per backend: %v", perBackend)
}

// TestCookieCases: a cookie the gateway cannot trust is ignored and the
// request balanced as new; one naming a backend that cannot serve is
// redispatched and rewritten; a rotated key still opens old cookies.
func TestCookieCases(t *testing.T) {
	b1, b2 := newBackend(t, "b1"), newBackend(t, "b2")
	cfg := testConfig(b1, b2)
	cfg.MaxLife = time.Hour
	g := startGateway(t, nil, cfg)
	now := time.Now()
	valid := g.sticky.Encode("b2", now, now)
	other, err := NewSticky(StickyConfig{Secret: "some-other-secret-key"})
	if err != nil {
		t.Fatal(err)
	}
	tampered := []byte(valid)
	tampered[len(tampered)/2] ^= 1
	if tampered[len(tampered)/2] == '.' || tampered[len(tampered)/2] > 'z' {
		tampered[len(tampered)/2] = 'A'
	}

	cases := []struct {
		name       string
		cookie     string
		wantSticky bool // routed to b2 with no new cookie
		wantNew    bool // a new cookie is set
	}{
		{"valid", valid, true, false},
		{"tampered", string(tampered), false, true},
		{"signed with another key", other.Encode("b2", now, now), false, true},
		{"expired", g.sticky.Encode("b2", now.Add(-2*time.Hour), now.Add(-2*time.Hour)), false, true},
		{"garbage", "not-a-cookie", false, true},
		{"empty", "", false, true},
		{"unknown backend", g.sticky.Encode("b9", now, now), false, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for i := range 20 {
				resp, _ := get(t, http.DefaultClient, g.url+"/x", "Cookie", "cbroute="+tc.cookie+"; other=1")
				got, set := resp.Header.Get("X-Backend"), routeCookie(resp)
				if tc.wantSticky && (got != "b2" || set != "") {
					t.Fatalf("request %d: served by %s, set %q; want b2 and no new cookie", i, got, set)
				}
				if tc.wantNew {
					if set == "" {
						t.Fatalf("request %d: no new cookie", i)
					}
					r, err := g.sticky.Decode(set, time.Now())
					if err != nil || r.Backend != got {
						t.Fatalf("request %d: new cookie %q names %q (%v), served by %s", i, set, r.Backend, err, got)
					}
				}
			}
		})
	}

	t.Run("dead backend: redispatched, cookie rewritten", func(t *testing.T) {
		dead := newBackend(t, "b3")
		cfg := testConfig(b1, dead)
		g := startGateway(t, nil, cfg)
		cookie := g.sticky.Encode("b3", now, now)
		dead.srv.Close()
		resp, _ := get(t, http.DefaultClient, g.url+"/x", "Cookie", "cbroute="+cookie)
		if resp.StatusCode != 200 || resp.Header.Get("X-Backend") != "b1" {
			t.Fatalf("got %d from %q, want 200 from b1", resp.StatusCode, resp.Header.Get("X-Backend"))
		}
		r, err := g.sticky.Decode(routeCookie(resp), time.Now())
		if err != nil || r.Backend != "b1" {
			t.Fatalf("cookie rewritten to %q (%v), want b1", r.Backend, err)
		}
	})

	t.Run("key rotation", func(t *testing.T) {
		old := startGateway(t, nil, testConfig(b1, b2))
		resp, _ := get(t, http.DefaultClient, old.url+"/x")
		issued, at := routeCookie(resp), resp.Header.Get("X-Backend")
		rotated := testConfig(b1, b2)
		rotated.Secret, rotated.SecretPrevious = "the-new-secret-0123456789", testSecret
		g := startGateway(t, nil, rotated)
		resp, _ = get(t, http.DefaultClient, g.url+"/x", "Cookie", "cbroute="+issued)
		if got := resp.Header.Get("X-Backend"); got != at {
			t.Fatalf("cookie of the previous key routed to %s, want %s", got, at)
		}
		fresh := routeCookie(resp)
		if fresh == "" {
			t.Fatal("a cookie of the previous key is not re-signed with the new one")
		}
		newOnly, _ := NewSticky(StickyConfig{Secret: rotated.Secret})
		if r, err := newOnly.Decode(fresh, time.Now()); err != nil || r.Backend != at {
			t.Fatalf("re-signed cookie does not open with the new key alone: %v", err)
		}
		// Once the previous key is dropped, old cookies are just ignored.
		rotated.SecretPrevious = ""
		g2 := startGateway(t, nil, rotated)
		resp, _ = get(t, http.DefaultClient, g2.url+"/x", "Cookie", "cbroute="+issued)
		if resp.StatusCode != 200 || routeCookie(resp) == "" {
			t.Fatalf("old cookie after the rotation: %d, cookie %q; want served as new", resp.StatusCode, routeCookie(resp))
		}
	})
}

// TestSessionMode: in session mode the gateway sets its cookie only with
// the backend's own session cookie.
func TestSessionMode(t *testing.T) {
	b := newBackend(t, "b1")
	b.setHandler(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/login" {
			http.SetCookie(w, &http.Cookie{Name: "SID", Value: "42"})
		}
		if r.URL.Path == "/tracking" {
			http.SetCookie(w, &http.Cookie{Name: "ads", Value: "1"})
		}
	})
	cfg := testConfig(b)
	cfg.CookieMode, cfg.SessionCookie = ModeSession, "SID"
	g := startGateway(t, nil, cfg)
	for _, tc := range []struct {
		path string
		want bool
	}{{"/", false}, {"/tracking", false}, {"/login", true}} {
		resp, _ := get(t, http.DefaultClient, g.url+tc.path)
		if got := routeCookie(resp) != ""; got != tc.want {
			t.Errorf("%s: sticky cookie set %v, want %v", tc.path, got, tc.want)
		}
		if tc.want && !strings.Contains(strings.Join(resp.Header.Values("Set-Cookie"), ";"), "SID=42") {
			t.Errorf("%s: the backend's own cookie is gone", tc.path)
		}
	}
}
