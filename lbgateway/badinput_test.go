package lbgateway

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestBadInput: oversized headers, junk cookies and Cache-Control, and a
// backend that hangs at each phase get clear errors, and the gateway
// keeps serving the others meanwhile.
func TestBadInput(t *testing.T) {
	good := newBackend(t, "good")
	good.setHandler(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/page/junk-cc" {
			w.Header().Set("Cache-Control", `max-age=="x", s-maxage=-5, ,,, "private`)
		}
		fmt.Fprint(w, "ok")
	})
	cfg := cachingConfig(good)
	cfg.MaxHeaderBytes = 8 << 10
	g := startGateway(t, nil, cfg)

	t.Run("oversized headers", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodGet, g.url+"/", nil)
		req.Header.Set("X-Big", strings.Repeat("a", 64<<10))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Fatalf("status %d, want 431", resp.StatusCode)
		}
	})
	t.Run("junk cookies", func(t *testing.T) {
		for _, c := range []string{"cbroute=", "cbroute=%%%", "cbroute=" + strings.Repeat("A", 5000), "cbroute", "=;;;cbroute=a.b.c"} {
			resp, body := get(t, http.DefaultClient, g.url+"/x", "Cookie", c)
			if resp.StatusCode != 200 || body != "ok" {
				t.Errorf("Cookie %q: %d %q", c, resp.StatusCode, body)
			}
		}
	})
	t.Run("junk Cache-Control from the backend", func(t *testing.T) {
		for range 2 {
			resp, body := get(t, http.DefaultClient, g.url+"/page/junk-cc")
			if resp.StatusCode != 200 || body != "ok" || resp.Header.Get("X-Cache") != "MISS" {
				t.Fatalf("%d %q X-Cache %q: want served, not cached", resp.StatusCode, body, resp.Header.Get("X-Cache"))
			}
		}
	})
}

// TestHangingBackend: a backend that never answers, or stalls in its
// body, is cut off by the timeouts; other backends serve meanwhile.
func TestHangingBackend(t *testing.T) {
	good := newBackend(t, "good")
	hang := make(chan struct{})
	t.Cleanup(func() { close(hang) })
	slow := newBackend(t, "slow")
	slow.setHandler(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/no-headers":
		case "/stall-body":
			w.Header().Set("Content-Length", "100")
			w.WriteHeader(200)
			_, _ = io.WriteString(w, "partial")
			w.(http.Flusher).Flush()
		default:
			fmt.Fprint(w, "ok")
			return
		}
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	})
	cfg := testConfig()
	cfg.Backends = []string{slow.entry()}
	cfg.ResponseTimeout, cfg.BodyTimeout, cfg.Retries = 300*time.Millisecond, 300*time.Millisecond, 0
	cfg.EjectAfter = 0
	g := startGateway(t, nil, cfg)

	t.Run("no response headers: 504", func(t *testing.T) {
		start := time.Now()
		resp, _ := get(t, http.DefaultClient, g.url+"/no-headers")
		if resp.StatusCode != http.StatusGatewayTimeout {
			t.Fatalf("status %d, want 504", resp.StatusCode)
		}
		if took := time.Since(start); took > 3*time.Second {
			t.Errorf("took %s with a 300ms response timeout", took)
		}
	})
	t.Run("body stalls: cut off", func(t *testing.T) {
		resp, err := http.Get(g.url + "/stall-body")
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		_, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil {
			t.Fatal("a body cut short read as complete")
		}
		if took := time.Since(start); took > 3*time.Second {
			t.Errorf("cut after %s with a 300ms body timeout", took)
		}
	})
	t.Run("others served while one hangs", func(t *testing.T) {
		done := make(chan struct{})
		go func() {
			defer close(done)
			for range 5 {
				resp, err := http.Get(g.url + "/no-headers")
				if err == nil {
					resp.Body.Close()
				}
			}
		}()
		for range 50 {
			if resp, body := get(t, http.DefaultClient, g.url+"/fine"); resp.StatusCode != 200 || body != "ok" {
				t.Fatalf("/fine: %d %q", resp.StatusCode, body)
			}
		}
		<-done
	})
	t.Run("slow client headers: connection closed", func(t *testing.T) {
		cfg := testConfig(good)
		cfg.HeaderTimeout = 200 * time.Millisecond
		g := startGateway(t, nil, cfg)
		conn, err := net.Dial("tcp", strings.TrimPrefix(g.url, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_, _ = io.WriteString(conn, "GET / HTTP/1.1\r\nHost: x\r\n") // and never the blank line
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = bufio.NewReader(conn).ReadString('\n')
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatal("the gateway kept a client that never finished its headers")
		}
	})
}

// TestStatusPages: the HTML page and its JSON describe the pool.
func TestStatusPages(t *testing.T) {
	b1, b2 := newBackend(t, "b1"), newBackend(t, "b2")
	cfg := cachingConfig(b1, b2)
	g := startGateway(t, nil, cfg)
	get(t, http.DefaultClient, g.url+"/x")
	resp, body := get(t, http.DefaultClient, g.url+"/_cachebus/status.json")
	if resp.StatusCode != 200 {
		t.Fatalf("status.json: %d", resp.StatusCode)
	}
	var st Status
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatal(err)
	}
	if len(st.Backends) != 2 || st.Backends[0].ID != "b1" || st.Backends[0].State != "up" || st.Cache == nil {
		t.Fatalf("status = %+v", st)
	}
	if st.Backends[0].Requests+st.Backends[1].Requests != 1 {
		t.Errorf("requests counted %d+%d, want 1", st.Backends[0].Requests, st.Backends[1].Requests)
	}
	resp, body = get(t, http.DefaultClient, g.url+"/_cachebus/")
	if resp.StatusCode != 200 || !strings.Contains(body, "<td>b2</td>") || !strings.Contains(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("status page: %d %s", resp.StatusCode, body)
	}
	if b1.hits.Load()+b2.hits.Load() != 1 {
		t.Error("a status page request reached a backend")
	}
}

// TestShutdownFinishesInFlight: stopping the gateway lets a request in
// flight finish, and refuses new connections.
func TestShutdownFinishesInFlight(t *testing.T) {
	b := newBackend(t, "b1")
	release := make(chan struct{})
	b.setHandler(func(w http.ResponseWriter, r *http.Request) {
		<-release
		fmt.Fprint(w, "finished")
	})
	g := startGateway(t, nil, testConfig(b))
	got := make(chan string, 1)
	go func() {
		resp, err := http.Get(g.url + "/slow")
		if err != nil {
			got <- err.Error()
			return
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		got <- string(body)
	}()
	waitFor(t, 5*time.Second, "request in flight", func() bool { return b.hits.Load() == 1 })
	stopped := make(chan error, 1)
	go func() { stopped <- g.stop() }()
	waitFor(t, 5*time.Second, "listener closed", func() bool {
		c, err := net.DialTimeout("tcp", strings.TrimPrefix(g.url, "http://"), time.Second)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	close(release)
	if body := <-got; body != "finished" {
		t.Fatalf("in-flight request got %q", body)
	}
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
}
