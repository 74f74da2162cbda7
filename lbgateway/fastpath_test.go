package lbgateway

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// rawBackend is an app server that answers with bytes a test scripts, and
// keeps the request heads it got as they came, so a test sees both what
// the fast path writes and what it makes of any answer.
type rawBackend struct {
	ln    net.Listener
	conns atomic.Int64
	// respond gives the raw answer to a request, and whether to close
	// the connection after it.
	respond func(req *http.Request) (raw string, closeAfter bool)

	mu    sync.Mutex
	heads []string
}

func newRawBackend(t *testing.T, respond func(req *http.Request) (string, bool)) *rawBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rb := &rawBackend{ln: ln, respond: respond}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			rb.conns.Add(1)
			go rb.serve(c)
		}
	}()
	return rb
}

func (rb *rawBackend) serve(c net.Conn) {
	defer func() { _ = c.Close() }()
	br := bufio.NewReader(c)
	for {
		var head strings.Builder
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			head.WriteString(line)
			if line == "\r\n" || line == "\n" {
				break
			}
		}
		rb.mu.Lock()
		rb.heads = append(rb.heads, head.String())
		rb.mu.Unlock()
		req, err := http.ReadRequest(bufio.NewReader(strings.NewReader(head.String())))
		if err != nil {
			return
		}
		if req.ContentLength > 0 {
			if _, err := io.CopyN(io.Discard, br, req.ContentLength); err != nil {
				return
			}
		}
		raw, closeAfter := rb.respond(req)
		if _, err := io.WriteString(c, raw); err != nil || closeAfter {
			return
		}
	}
}

// lastHead is the last request head the backend got.
func (rb *rawBackend) lastHead() string {
	rb.mu.Lock()
	defer rb.mu.Unlock()
	if len(rb.heads) == 0 {
		return ""
	}
	return rb.heads[len(rb.heads)-1]
}

func (rb *rawBackend) entry(id string) string { return id + "=http://" + rb.ln.Addr().String() }

// exchangeRaw sends raw to the gateway on a new connection and reads one
// response to method.
func exchangeRaw(t *testing.T, url, raw, method string) (*http.Response, string, error) {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: method})
	if err != nil {
		return nil, "", err
	}
	body, err := io.ReadAll(resp.Body)
	return resp, string(body), err
}

// TestFastPathResponses relays every framing and kind of answer a backend
// may give to a fast request, and the backend failures it may meet.
func TestFastPathResponses(t *testing.T) {
	big := "HTTP/1.1 200 OK\r\nX-Big: " + strings.Repeat("a", 17<<10) + "\r\nContent-Length: 2\r\n\r\nok"
	for _, tc := range []struct {
		name    string
		method  string
		answer  string
		close   bool          // the backend closes after answering
		hang    bool          // the backend never answers
		status  int           // 0: the client's read must fail
		body    string        //
		header  []string      // name, value pairs the client must get
		absent  []string      // headers the client must not get
		trailer []string      // name, value pairs of the trailer
		chunked bool          // the client gets a chunked body
		reused  bool          // the backend connection is kept: a second request reuses it
		timeout time.Duration // the gateway's response timeout
	}{
		{name: "content length", method: "GET", answer: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello",
			status: 200, body: "hello", header: []string{"X-A", "1", "Content-Length", "5"}, reused: true},
		{name: "chunked with trailer and extensions", method: "GET",
			answer: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\nContent-Length: 99\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: done\r\n\r\n",
			status: 200, body: "hello world", chunked: true, trailer: []string{"X-T", "done"}, reused: true},
		{name: "until close", method: "GET", answer: "HTTP/1.1 200 OK\r\nX-B: 2\r\n\r\nuntil the end", close: true,
			status: 200, body: "until the end", chunked: true, header: []string{"X-B", "2"}},
		{name: "HTTP/1.0 backend", method: "GET", answer: "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
			status: 200, body: "ok"},
		{name: "HTTP/1.0 keep-alive", method: "GET", answer: "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
			status: 200, body: "ok", reused: true},
		{name: "no content", method: "GET", answer: "HTTP/1.1 204\r\n\r\n", status: 204, reused: true},
		{name: "not modified", method: "GET", answer: "HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n",
			status: 304, header: []string{"Etag", `"v1"`}, reused: true},
		{name: "HEAD keeps the length", method: "HEAD", answer: "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
			status: 200, header: []string{"Content-Length", "10"}, reused: true},
		{name: "interim answer skipped", method: "GET",
			answer: "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
			status: 200, body: "ok", reused: true},
		{name: "hop-by-hop and surrogate headers dropped", method: "GET",
			answer: "HTTP/1.1 200 OK\r\nConnection: X-Private\r\nX-Private: secret\r\nKeep-Alive: timeout=5\r\nSurrogate-Key: a b\r\nSurrogate-Control: max-age=9\r\nCachebus-Expire: http /x\r\nContent-Length: 2\r\n\r\nok",
			status: 200, body: "ok", absent: []string{"X-Private", "Keep-Alive", "Surrogate-Key", "Surrogate-Control", "Cachebus-Expire"}, reused: true},
		{name: "connection close from the backend", method: "GET", answer: "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
			close: true, status: 200, body: "ok"},
		{name: "unsupported transfer coding", method: "GET", answer: "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxx",
			status: 502},
		{name: "two lengths", method: "GET", answer: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
			status: 502},
		{name: "garbage", method: "GET", answer: "SPDY/3 200\r\n\r\n", status: 502},
		{name: "head over the buffer", method: "GET", answer: big, status: 502},
		{name: "switching protocols unasked", method: "GET", answer: "HTTP/1.1 101 Switching Protocols\r\n\r\n", status: 502},
		{name: "backend hangs", method: "GET", hang: true, status: 504, timeout: 300 * time.Millisecond},
		{name: "body cut short", method: "GET", answer: "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", close: true},
		{name: "bad chunk", method: "GET", answer: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n", close: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rb := newRawBackend(t, func(*http.Request) (string, bool) {
				if tc.hang {
					time.Sleep(2 * time.Second)
					return "", true
				}
				return tc.answer, tc.close
			})
			cfg := testConfig()
			cfg.Backends, cfg.Retries, cfg.EjectAfter = []string{rb.entry("r1")}, 0, 0
			cfg.ResponseTimeout = tc.timeout
			g := startGateway(t, nil, cfg)
			req := tc.method + " /p HTTP/1.1\r\nHost: gw.test\r\nx-lower: 1\r\n\r\n"
			resp, body, err := exchangeRaw(t, g.url, req, tc.method)
			if !strings.Contains(rb.lastHead(), "\r\nx-lower: 1\r\n") {
				t.Errorf("the backend got %q: not the fast path's head (names as the client wrote them)", rb.lastHead())
			}
			if tc.status == 0 {
				if err == nil {
					t.Fatalf("the client read a whole answer (%d, %q) to a body the backend cut", resp.StatusCode, body)
				}
				return
			}
			if err != nil {
				t.Fatalf("client: %v", err)
			}
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d (body %q)", resp.StatusCode, tc.status, body)
			}
			if tc.status >= 500 {
				return
			}
			if body != tc.body {
				t.Errorf("body %q, want %q", body, tc.body)
			}
			for i := 0; i+1 < len(tc.header); i += 2 {
				if got := resp.Header.Get(tc.header[i]); got != tc.header[i+1] {
					t.Errorf("%s: %q, want %q", tc.header[i], got, tc.header[i+1])
				}
			}
			for _, h := range tc.absent {
				if v, ok := resp.Header[http.CanonicalHeaderKey(h)]; ok {
					t.Errorf("%s reached the client: %q", h, v)
				}
			}
			for i := 0; i+1 < len(tc.trailer); i += 2 {
				if got := resp.Trailer.Get(tc.trailer[i]); got != tc.trailer[i+1] {
					t.Errorf("trailer %s: %q, want %q", tc.trailer[i], got, tc.trailer[i+1])
				}
			}
			if chunked := len(resp.TransferEncoding) > 0; chunked != tc.chunked {
				t.Errorf("chunked to the client: %v, want %v", chunked, tc.chunked)
			}
			if resp.Header.Get("Date") == "" {
				t.Error("no Date header")
			}
			// A second request: on the same backend connection when the
			// answer left it usable, on a new one otherwise.
			if _, _, err := exchangeRaw(t, g.url, req, tc.method); err != nil {
				t.Fatalf("second request: %v", err)
			}
			want := int64(2)
			if tc.reused {
				want = 1
			}
			if got := rb.conns.Load(); got != want {
				t.Errorf("%d backend connections for two requests, want %d", got, want)
			}
		})
	}
}

// TestFastPathRequestHead checks what a backend gets from a fast request:
// the sticky cookie taken out and the other cookies left as they were,
// X-Forwarded-For extended, X-Forwarded-Host and -Proto the gateway's own,
// the hop-by-hop headers gone.
func TestFastPathRequestHead(t *testing.T) {
	rb := newRawBackend(t, func(*http.Request) (string, bool) {
		return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false
	})
	cfg := testConfig()
	cfg.Backends = []string{rb.entry("r1")}
	g := startGateway(t, nil, cfg)
	resp, _, err := exchangeRaw(t, g.url, "GET / HTTP/1.1\r\nHost: gw.test\r\n\r\n", "GET")
	if err != nil {
		t.Fatal(err)
	}
	sticky := routeCookie(resp)
	if sticky == "" {
		t.Fatal("no sticky cookie on a new session")
	}
	if cc := resp.Header.Get("Cache-Control"); cc != "private" {
		t.Errorf("Cache-Control %q with a sticky cookie set, want private", cc)
	}
	req := "GET /p?q=1 HTTP/1.1\r\nHost: gw.test:8080\r\n" +
		"Cookie: a=1; cbroute=" + sticky + "; b=2\r\nCookie: cbroute=" + sticky + "\r\n" +
		"X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Host: spoofed\r\nX-Forwarded-Proto: https\r\n" +
		"Connection: keep-alive\r\nKeep-Alive: 300\r\nUser-Agent: test/1\r\n\r\n"
	resp, _, err = exchangeRaw(t, g.url, req, "GET")
	if err != nil {
		t.Fatal(err)
	}
	if routeCookie(resp) != "" {
		t.Errorf("a valid sticky cookie was set again")
	}
	head := rb.lastHead()
	for _, want := range []string{
		"GET /p?q=1 HTTP/1.1\r\nHost: gw.test:8080\r\n",
		"\r\nCookie: a=1; b=2\r\n",
		"\r\nX-Forwarded-For: 10.0.0.1, 127.0.0.1\r\n",
		"\r\nX-Forwarded-Host: gw.test:8080\r\n",
		"\r\nX-Forwarded-Proto: http\r\n",
		"\r\nUser-Agent: test/1\r\n",
	} {
		if !strings.Contains(head, want) {
			t.Errorf("backend head lacks %q:\n%s", want, head)
		}
	}
	for _, gone := range []string{"cbroute", "spoofed", "https", "Connection", "Keep-Alive"} {
		if strings.Contains(head, gone) {
			t.Errorf("backend head still has %q:\n%s", gone, head)
		}
	}
	if n := strings.Count(head, "Cookie:"); n != 1 {
		t.Errorf("%d Cookie lines reached the backend, want 1 (the line holding only the sticky cookie goes):\n%s", n, head)
	}
}

// TestFastPathConnection checks the client connection's life on the fast
// path: pipelined requests answered in order, Connection: close honoured,
// and requests the fast path leaves to the general one still served.
func TestFastPathConnection(t *testing.T) {
	var n atomic.Int64
	rb := newRawBackend(t, func(r *http.Request) (string, bool) {
		body := fmt.Sprintf("%s %s %d", r.Method, r.URL.Path, n.Add(1))
		return fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body), false
	})
	cfg := testConfig()
	cfg.Backends = []string{rb.entry("r1")}
	g := startGateway(t, nil, cfg)
	c, err := net.Dial("tcp", strings.TrimPrefix(g.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	// Pipelined: a fast GET, a POST with a body (general path), a fast
	// GET that closes.
	_, err = io.WriteString(c, "GET /one HTTP/1.1\r\nHost: a\r\n\r\n"+
		"POST /two HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"+
		"GET /three HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	for i, want := range []string{"GET /one 1", "POST /two 2", "GET /three 3"} {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("answer %d: %v", i+1, err)
		}
		body, _ := io.ReadAll(resp.Body)
		if string(body) != want {
			t.Errorf("answer %d: %q, want %q", i+1, body, want)
		}
		if i == 2 && !resp.Close {
			t.Error("no Connection: close on the answer to a request that asked for it")
		}
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("the connection stayed open after Connection: close (read: %v)", err)
	}
}

// readerConn is a net.Conn that reads from r and accepts deadlines, for
// feeding fastBody bytes directly.
type readerConn struct {
	net.Conn
	r io.Reader
}

func (c readerConn) Read(p []byte) (int, error)         { return c.r.Read(p) }
func (c readerConn) SetReadDeadline(time.Time) error    { return nil }
func (c readerConn) SetDeadline(time.Time) error        { return nil }
func (c readerConn) SetWriteDeadline(t time.Time) error { return nil }

// FuzzFastChunked feeds a chunked body to the fast path's copier: it must
// never panic, and when it takes the body, what it writes must decode (by
// net/http) to what net/http decodes from the input.
func FuzzFastChunked(f *testing.F) {
	for _, s := range []string{
		"5\r\nhello\r\n0\r\n\r\n",
		"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: done\r\n\r\n",
		"0\r\n\r\n",
		"A\n0123456789\n0\n\n",
		"zz\r\nabc\r\n",
		"3\r\nabcd\r\n0\r\n\r\n",
		"ffffffffffffffff\r\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		var out bytes.Buffer
		bw := bufio.NewWriter(&out)
		uc := &upConn{c: readerConn{r: strings.NewReader(in)}, br: bufio.NewReaderSize(strings.NewReader(in), 16<<10)}
		body := fastBody{uc: uc, to: bw, timeout: time.Second}
		if err := body.copyChunked(); err != nil {
			return
		}
		if err := bw.Flush(); err != nil {
			t.Fatal(err)
		}
		want, err := readChunked(in)
		if err != nil {
			t.Fatalf("the fast path took %q, which net/http refuses: %v", in, err)
		}
		got, err := readChunked(out.String())
		if err != nil {
			t.Fatalf("the fast path wrote %q for %q, which net/http cannot read: %v", out.String(), in, err)
		}
		if got != want {
			t.Fatalf("the fast path relays %q as %q, net/http reads %q", in, got, want)
		}
	})
}

// readChunked decodes a chunked body the way net/http's client does.
func readChunked(body string) (string, error) {
	resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"+body)), nil)
	if err != nil {
		return "", err
	}
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}
