package lbgateway

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// rawExchange writes raw to the gateway and reads responses until n have
// arrived (or the connection ends); it returns them and whether the
// gateway closed the connection after them.
func rawExchange(t *testing.T, url, raw string, n int, method string) ([]*http.Response, []string, bool) {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	var resps []*http.Response
	var bodies []string
	for range n {
		resp, err := http.ReadResponse(br, &http.Request{Method: method})
		if err != nil {
			t.Fatalf("response %d: %v", len(resps)+1, err)
		}
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("response %d body: %v", len(resps)+1, err)
		}
		resps, bodies = append(resps, resp), append(bodies, string(body))
	}
	_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	_, err = br.ReadByte()
	return resps, bodies, err == io.EOF
}

// TestServerHTTP: the gateway's own HTTP/1.1 server keeps to the
// protocol where clients and backends rely on it.
func TestServerHTTP(t *testing.T) {
	b := newBackend(t, "b1")
	b.setHandler(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		switch r.URL.Path {
		case "/stream":
			w.Header().Set("Trailer", "X-Sum")
			fmt.Fprint(w, "part1 ")
			w.(http.Flusher).Flush()
			fmt.Fprint(w, "part2")
			w.Header().Set("X-Sum", "42")
		case "/head":
			w.Header().Set("Content-Length", "5")
			if r.Method != http.MethodHead {
				fmt.Fprint(w, "hello")
			}
		default:
			fmt.Fprintf(w, "%s %s te=%q cl=%d body=%q", r.Method, r.URL.Path, r.TransferEncoding, r.ContentLength, body)
		}
	})
	g := startGateway(t, nil, testConfig(b))

	t.Run("pipelined requests answered in order", func(t *testing.T) {
		_, bodies, closed := rawExchange(t, g.url,
			"GET /one HTTP/1.1\r\nHost: x\r\n\r\nGET /two HTTP/1.1\r\nHost: x\r\n\r\n", 2, "GET")
		if !strings.HasPrefix(bodies[0], "GET /one") || !strings.HasPrefix(bodies[1], "GET /two") || closed {
			t.Fatalf("bodies %q, closed %v", bodies, closed)
		}
	})
	t.Run("HTTP/1.0 without keep-alive: closed after the answer", func(t *testing.T) {
		resps, _, closed := rawExchange(t, g.url, "GET /old HTTP/1.0\r\nHost: x\r\n\r\n", 1, "GET")
		if resps[0].StatusCode != 200 || !closed {
			t.Fatalf("status %d, closed %v", resps[0].StatusCode, closed)
		}
	})
	t.Run("Connection: close honoured", func(t *testing.T) {
		resps, _, closed := rawExchange(t, g.url, "GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 1, "GET")
		if !resps[0].Close || !closed {
			t.Fatalf("answer says close %v, closed %v", resps[0].Close, closed)
		}
	})
	t.Run("Expect 100-continue", func(t *testing.T) {
		c, err := net.Dial("tcp", strings.TrimPrefix(g.url, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(c, "POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
		br := bufio.NewReader(c)
		line, err := br.ReadString('\n')
		if err != nil || !strings.Contains(line, "100 Continue") {
			t.Fatalf("first line %q (%v), want 100 Continue before the body is sent", line, err)
		}
		br.ReadString('\n')
		io.WriteString(c, "hello")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		if !strings.Contains(string(body), `body="hello"`) {
			t.Fatalf("backend saw %q", body)
		}
	})
	t.Run("chunked request body", func(t *testing.T) {
		_, bodies, _ := rawExchange(t, g.url,
			"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", 1, "POST")
		if !strings.Contains(bodies[0], `body="abcde"`) {
			t.Fatalf("backend saw %q", bodies[0])
		}
	})
	t.Run("streamed answer with a trailer", func(t *testing.T) {
		resps, bodies, _ := rawExchange(t, g.url, "GET /stream HTTP/1.1\r\nHost: x\r\n\r\n", 1, "GET")
		if bodies[0] != "part1 part2" || resps[0].Trailer.Get("X-Sum") != "42" {
			t.Fatalf("body %q trailer %v", bodies[0], resps[0].Trailer)
		}
	})
	t.Run("HEAD keeps the length, sends no body", func(t *testing.T) {
		resps, bodies, closed := rawExchange(t, g.url,
			"HEAD /head HTTP/1.1\r\nHost: x\r\n\r\nGET /head HTTP/1.1\r\nHost: x\r\n\r\n", 1, "HEAD")
		if resps[0].ContentLength != 5 || bodies[0] != "" || closed {
			t.Fatalf("length %d body %q closed %v", resps[0].ContentLength, bodies[0], closed)
		}
	})
	t.Run("conflicting lengths refused", func(t *testing.T) {
		resps, _, closed := rawExchange(t, g.url,
			"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde", 1, "POST")
		if resps[0].StatusCode != http.StatusBadRequest || !closed {
			t.Fatalf("status %d closed %v, want 400 and closed", resps[0].StatusCode, closed)
		}
	})
	t.Run("bad Host or version refused", func(t *testing.T) {
		for _, tc := range []struct {
			raw  string
			want int
		}{
			{"GET /x HTTP/1.1\r\n\r\n", http.StatusBadRequest},
			{"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", http.StatusBadRequest},
			{"GET /x HTTP/1.1\r\nHost: a b\r\n\r\n", http.StatusBadRequest},
			{"GET /x HTTP/1.1\r\nHost: evil/x\r\n\r\n", http.StatusBadRequest},
			{"GET /x HTTP/2.0\r\nHost: a\r\n\r\n", http.StatusHTTPVersionNotSupported},
			{"GET /x HTTP/1.0\r\n\r\n", http.StatusOK}, // HTTP/1.0 needs no Host
			{"GET /x HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n", http.StatusOK},
		} {
			resps, _, _ := rawExchange(t, g.url, tc.raw, 1, "GET")
			if resps[0].StatusCode != tc.want {
				t.Errorf("%q: status %d, want %d", tc.raw, resps[0].StatusCode, tc.want)
			}
		}
	})
	t.Run("shutdown closes idle connections", func(t *testing.T) {
		g2 := startGateway(t, nil, testConfig(b))
		c, err := net.Dial("tcp", strings.TrimPrefix(g2.url, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		io.WriteString(c, "GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.ReadAll(resp.Body)
		start := time.Now()
		if err := g2.stop(); err != nil {
			t.Fatal(err)
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Errorf("shutdown took %s with one idle connection", took)
		}
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := br.ReadByte(); err != io.EOF {
			t.Errorf("idle connection after shutdown: %v, want EOF", err)
		}
	})
}

// FuzzServeConn: whatever bytes a client sends, the server answers or
// closes, and never panics or hangs; the handler only sees requests that
// passed the checks.
func FuzzServeConn(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		"GET / HTTP/1.0\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi",
		"GARBAGE\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
	} {
		f.Add(s)
	}
	g := &Gateway{cfg: Config{HeaderTimeout: time.Second, ReadTimeout: time.Second, IdleTimeout: time.Second,
		MaxHeaderBytes: 4096}, log: slog.New(slog.DiscardHandler)}
	var unchecked atomic.Value // the first request that should have been refused
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Host == "" && r.ProtoAtLeast(1, 1) || r.ProtoMajor != 1 {
			unchecked.CompareAndSwap(nil, fmt.Sprintf("%s %s %s host %q", r.Method, r.RequestURI, r.Proto, r.Host))
		}
		body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<16))
		w.Header().Set("X-Len", fmt.Sprint(len(body)))
		fmt.Fprintf(w, "%s %s", r.Method, r.URL.Path)
	})
	f.Fuzz(func(t *testing.T, in string) {
		s := newServer(g, handler)
		client, srv := net.Pipe()
		s.conns = map[*serverConn]struct{}{}
		sc := &serverConn{c: srv}
		s.conns[sc] = struct{}{}
		s.wg.Add(1)
		done := make(chan struct{})
		go func() {
			defer close(done)
			s.serveConn(sc)
		}()
		// A pipe write returns once the server has read it all; closing
		// then ends the connection without waiting out the idle timeout,
		// while the answers to what was read are still made.
		go func() { _, _ = io.Copy(io.Discard, client) }()
		go func() {
			_, _ = io.WriteString(client, in)
			_ = client.Close()
		}()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatalf("server still serving %q after 5s with 1s timeouts", in)
		}
		client.Close()
		if u := unchecked.Load(); u != nil {
			t.Fatalf("%q reached the handler: %v", in, u)
		}
	})
}
