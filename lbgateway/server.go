package lbgateway

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// The gateway's HTTP/1.1 server. Each client connection is served by one
// goroutine that reads a request, answers it and reads the next. Unlike
// net/http's server it starts no second goroutine per request to watch
// for the client going away: on a proxy that is a goroutine and a system
// call per request, about a tenth of the gateway's CPU. A client that
// leaves is seen when its answer is written. Requests are parsed by
// net/http (http.ReadRequest), with its checks against smuggling.

// server serves the gateway's handler on a listener.
type server struct {
	g       *Gateway
	handler http.Handler
	// fast is set when handler is the gateway itself: its requests may
	// take the fast path (fastpath.go).
	fast bool

	mu       sync.Mutex
	conns    map[*serverConn]struct{}
	closing  bool
	shutdown chan struct{}
	wg       sync.WaitGroup
}

// serverConn is one client connection.
type serverConn struct {
	c     net.Conn
	br    *bufio.Reader
	bw    *bufio.Writer
	limit *io.LimitedReader
	// idle is set while the connection waits for its next request: a
	// shutdown closes it then, and lets it finish its answer otherwise.
	idle atomic.Bool
	// hijacked is set when a handler took the connection (an upgrade to
	// WebSocket): the server no longer reads, writes or closes it.
	hijacked bool
	// ctx is the context of the connection's requests; cancel ends it
	// when the client is gone.
	ctx    context.Context
	cancel context.CancelFunc

	// The client's address and IP, whether it came over TLS, and the fast
	// path's buffers, kept from one request to the next.
	remote  string
	ip      string
	tls     bool
	fq      fastRequest
	fr      fastResponse
	cookies []string
	out     []byte
}

func newServer(g *Gateway, h http.Handler) *server {
	return &server{g: g, handler: h, fast: h == http.Handler(g), conns: map[*serverConn]struct{}{}, shutdown: make(chan struct{})}
}

// serve accepts connections until ln is closed.
func (s *server) serve(ln net.Listener) error {
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			select {
			case <-s.shutdown:
				return http.ErrServerClosed
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) {
				// Out of file descriptors: wait for some to close.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.g.log.Warn("accept failed; retrying", "err", err, "in", delay)
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		sc := &serverConn{c: c}
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			_ = c.Close()
			continue
		}
		s.conns[sc] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go s.serveConn(sc)
	}
}

// close stops s: the listener is closed by the caller; idle connections
// close now, busy ones after their answer. It returns when every
// connection is closed or ctx ends, closing the rest then.
func (s *server) close(ctx context.Context) error {
	s.mu.Lock()
	if !s.closing {
		s.closing = true
		close(s.shutdown)
	}
	for sc := range s.conns {
		if sc.idle.Load() {
			// A read deadline in the past wakes the waiting read; the
			// connection then sees the shutdown and closes.
			_ = sc.c.SetReadDeadline(aLongTimeAgo)
		}
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		s.mu.Lock()
		for sc := range s.conns {
			_ = sc.c.Close()
		}
		s.mu.Unlock()
		<-done
		return ctx.Err()
	}
}

func (s *server) closingNow() bool {
	select {
	case <-s.shutdown:
		return true
	default:
		return false
	}
}

// serveConn reads and answers the requests of one connection.
func (s *server) serveConn(sc *serverConn) {
	defer func() {
		if v := recover(); v != nil {
			s.g.log.Error("panic serving a request; connection closed", "panic", v, "remote", sc.c.RemoteAddr().String())
		}
		if !sc.hijacked {
			_ = sc.c.Close()
		}
		s.mu.Lock()
		delete(s.conns, sc)
		s.mu.Unlock()
		s.wg.Done()
	}()
	cfg := &s.g.cfg
	var tlsState *tls.ConnectionState
	if tc, ok := sc.c.(*tls.Conn); ok {
		_ = tc.SetDeadline(time.Now().Add(cfg.HeaderTimeout))
		if err := tc.Handshake(); err != nil {
			s.g.log.Debug("TLS handshake failed", "remote", tc.RemoteAddr().String(), "err", err)
			return
		}
		st := tc.ConnectionState()
		tlsState = &st
	}
	sc.limit = &io.LimitedReader{R: sc.c}
	sc.br = bufio.NewReaderSize(sc.limit, 4<<10)
	sc.bw = bufio.NewWriterSize(&timedWriter{c: sc.c, d: cfg.ReadTimeout}, 4<<10)
	sc.remote, sc.tls = sc.c.RemoteAddr().String(), tlsState != nil
	if ip, _, err := net.SplitHostPort(sc.remote); err == nil {
		sc.ip = ip
	}
	sc.ctx, sc.cancel = context.WithCancel(context.Background())
	defer sc.cancel()
	for {
		// Wait for the first byte of the next request up to the idle
		// timeout, then for the rest of its headers up to the header
		// timeout.
		// The deadline is set before the connection shows as idle, so a
		// shutdown's deadline in the past cannot be overwritten.
		_ = sc.c.SetReadDeadline(time.Now().Add(cfg.IdleTimeout))
		sc.idle.Store(true)
		if s.closingNow() {
			return
		}
		sc.limit.N = int64(cfg.MaxHeaderBytes) + 4096 // headers, and the request line
		if _, err := sc.br.Peek(1); err != nil {
			return
		}
		sc.idle.Store(false)
		_ = sc.c.SetReadDeadline(time.Now().Add(cfg.HeaderTimeout))
		if s.fast {
			if keep, served := s.serveFast(sc); served {
				if !keep {
					return
				}
				continue
			}
		}
		req, err := http.ReadRequest(sc.br)
		if err == nil {
			err = checkRequest(req)
		}
		if err != nil {
			s.badRequest(sc, err)
			return
		}
		// The body may take up to the read timeout, however long.
		sc.limit.N = 1 << 62
		_ = sc.c.SetReadDeadline(time.Now().Add(cfg.ReadTimeout))
		req.RemoteAddr, req.TLS = sc.remote, tlsState
		keep := s.answer(sc, req)
		if !keep {
			return
		}
	}
}

// answer runs the handler for req and finishes its response; it says
// whether the connection may carry another request.
func (s *server) answer(sc *serverConn, req *http.Request) bool {
	// The connection's context, not one per request: it ends when an
	// answer cannot be written, and the connection is done then anyway.
	req = req.WithContext(sc.ctx)
	w := &responseWriter{sc: sc, req: req, cancel: sc.cancel, header: make(http.Header, 8)}
	w.close = req.Close || s.closingNow()
	if req.Body != nil && req.Body != http.NoBody && req.Header.Get("Expect") == "100-continue" {
		req.Body = &continueReader{ReadCloser: req.Body, w: w}
	}
	s.handler.ServeHTTP(w, req)
	if sc.hijacked {
		return false
	}
	if err := w.finish(); err != nil || w.close {
		return false
	}
	// What the handler left of the body would be read as the next
	// request: read the rest when it is short, close otherwise. A client
	// still waiting for "100 Continue" may never send it.
	if cr, ok := req.Body.(*continueReader); ok && !cr.sent {
		return false
	}
	if req.Body != nil && req.Body != http.NoBody {
		if _, err := io.CopyN(io.Discard, req.Body, 256<<10); err != io.EOF {
			return false
		}
	}
	return true
}

// badRequest answers a request that could not be read, the way
// net/http's server does, and the connection is then closed.
func (s *server) badRequest(sc *serverConn, err error) {
	code, msg := http.StatusBadRequest, "bad request"
	switch {
	case errors.Is(err, errBadVersion):
		code, msg = http.StatusHTTPVersionNotSupported, "unsupported HTTP version"
	case errors.Is(err, errBadHost):
		msg = "missing, repeated or malformed Host header"
	case sc.limit.N <= 0:
		code, msg = http.StatusRequestHeaderFieldsTooLarge, "request header fields too large"
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || isTimeout(err):
		return // the client left, or never finished: nobody to answer
	}
	_ = sc.c.SetWriteDeadline(time.Now().Add(time.Second))
	fmt.Fprintf(sc.bw, "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s",
		code, http.StatusText(code), len(msg), msg)
	_ = sc.bw.Flush()
	s.g.log.Debug("bad request", "remote", sc.c.RemoteAddr().String(), "status", code, "err", err)
	// Closing with the rest of the request unread would reset the
	// connection, and the client might lose the answer: close our side
	// for writing and read what it still sends, briefly.
	if tc, ok := sc.c.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
		_ = tc.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		_, _ = io.Copy(io.Discard, io.LimitReader(tc, 256<<10))
	}
}

// timedWriter gives every write to a client the client read timeout: a
// client that stops taking its answer is dropped rather than holding a
// goroutine and a backend connection, and a long download that keeps
// moving is never cut.
type timedWriter struct {
	c net.Conn
	d time.Duration
}

func (t *timedWriter) Write(p []byte) (int, error) {
	_ = t.c.SetWriteDeadline(time.Now().Add(t.d))
	return t.c.Write(p)
}

// errBadHost and errBadVersion are requests net/http's own server
// refuses after parsing, which http.ReadRequest alone lets through.
var (
	errBadHost    = errors.New("lbgateway: missing, repeated or malformed Host header")
	errBadVersion = errors.New("lbgateway: unsupported HTTP version")
)

// checkRequest applies the checks net/http's server makes on top of
// parsing: HTTP/1.x only, and one well-formed Host header (required from
// HTTP/1.1 on), so that no request reaches a backend with a Host it
// would read differently from the gateway.
func checkRequest(r *http.Request) error {
	if r.ProtoMajor != 1 {
		return errBadVersion
	}
	// ReadRequest has moved the Host header to r.Host, refusing several.
	if r.Host == "" && r.ProtoAtLeast(1, 1) {
		return errBadHost
	}
	for i := 0; i < len(r.Host); i++ {
		if !validHostByte(r.Host[i]) {
			return errBadHost
		}
	}
	return nil
}

// validHostByte says whether c may appear in a Host header: the bytes of
// a registered name, an IP literal and a port.
func validHostByte(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!$%&'()*+,-.:;=[]_~", c) >= 0
}

// continueReader sends "100 Continue" before the first read of a body
// whose client waits for it.
type continueReader struct {
	io.ReadCloser
	w    *responseWriter
	sent bool
}

func (r *continueReader) Read(p []byte) (int, error) {
	if !r.sent {
		r.sent = true
		if !r.w.wroteHeader {
			_, _ = r.w.sc.bw.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
			if err := r.w.sc.bw.Flush(); err != nil {
				return 0, err
			}
		}
	}
	return r.ReadCloser.Read(p)
}

// responseWriter is the http.ResponseWriter of the gateway's server.
type responseWriter struct {
	sc     *serverConn
	req    *http.Request
	cancel context.CancelFunc
	header http.Header

	wroteHeader bool
	status      int
	chunked     bool
	bodyless    bool  // HEAD, 1xx, 204, 304
	remain      int64 // of a declared Content-Length; -1 when none
	close       bool
	err         error
}

var (
	_ http.ResponseWriter = (*responseWriter)(nil)
	_ http.Flusher        = (*responseWriter)(nil)
	_ http.Hijacker       = (*responseWriter)(nil)
)

// Hijack hands the connection to the handler, with what is buffered:
// the server is done with it.
func (w *responseWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if w.wroteHeader {
		return nil, nil, errors.New("lbgateway: hijack after the answer began")
	}
	sc := w.sc
	sc.hijacked = true
	_ = sc.c.SetDeadline(time.Time{})
	return sc.c, bufio.NewReadWriter(sc.br, sc.bw), nil
}

func (w *responseWriter) Header() http.Header { return w.header }

// WriteHeader writes the status line and headers into the buffer.
func (w *responseWriter) WriteHeader(code int) {
	if w.wroteHeader {
		return
	}
	if code < 100 || code > 999 {
		code = http.StatusInternalServerError
	}
	w.wroteHeader, w.status = true, code
	h := w.header
	w.bodyless = w.req.Method == http.MethodHead || code < 200 || code == http.StatusNoContent || code == http.StatusNotModified
	w.remain = -1
	if cl := h.Get("Content-Length"); cl != "" {
		if n, err := strconv.ParseInt(cl, 10, 64); err == nil && n >= 0 {
			w.remain = n
		} else {
			h.Del("Content-Length")
		}
	}
	if w.remain < 0 && !w.bodyless {
		if w.req.ProtoAtLeast(1, 1) {
			w.chunked = true
			h.Set("Transfer-Encoding", "chunked")
		} else {
			w.close = true
		}
	}
	if !w.req.ProtoAtLeast(1, 1) && !w.close && !strings.EqualFold(w.req.Header.Get("Connection"), "keep-alive") {
		w.close = true
	}
	if w.close {
		h.Set("Connection", "close")
	} else if !w.req.ProtoAtLeast(1, 1) {
		h.Set("Connection", "keep-alive")
	}
	if _, ok := h["Date"]; !ok {
		h["Date"] = []string{httpDate()}
	}
	bw := w.sc.bw
	bw.WriteString("HTTP/1.1 ")
	bw.WriteString(strconv.Itoa(code))
	bw.WriteByte(' ')
	bw.WriteString(http.StatusText(code))
	bw.WriteString("\r\n")
	writeHeader(bw, h)
	bw.WriteString("\r\n")
}

// writeHeader writes h in wire form, in map order: unlike
// http.Header.Write it neither sorts nor allocates. A value with a line
// break (which a backend's parsed header cannot hold, but a handler's
// could) has it turned into a space, so no header can be injected.
func writeHeader(bw *bufio.Writer, h http.Header) {
	for k, vv := range h {
		if strings.HasPrefix(k, http.TrailerPrefix) {
			continue
		}
		for _, v := range vv {
			if strings.ContainsAny(v, "\r\n") {
				v = strings.NewReplacer("\r", " ", "\n", " ").Replace(v)
			}
			bw.WriteString(k)
			bw.WriteString(": ")
			bw.WriteString(v)
			bw.WriteString("\r\n")
		}
	}
}

// Write writes body bytes, chunk-framed when the length was not declared.
func (w *responseWriter) Write(p []byte) (int, error) {
	if !w.wroteHeader {
		if _, ok := w.header["Content-Type"]; !ok {
			w.header.Set("Content-Type", http.DetectContentType(p))
		}
		w.WriteHeader(http.StatusOK)
	}
	if w.err != nil {
		return 0, w.err
	}
	if w.bodyless {
		return len(p), nil
	}
	if w.remain >= 0 {
		if int64(len(p)) > w.remain {
			return 0, http.ErrContentLength
		}
		w.remain -= int64(len(p))
	}
	if len(p) == 0 {
		return 0, nil
	}
	bw := w.sc.bw
	if w.chunked {
		bw.WriteString(strconv.FormatInt(int64(len(p)), 16))
		bw.WriteString("\r\n")
	}
	n, err := bw.Write(p)
	if w.chunked && err == nil {
		_, err = bw.WriteString("\r\n")
	}
	if err != nil {
		w.fail(err)
	}
	return n, err
}

// Flush sends what is buffered to the client.
func (w *responseWriter) Flush() {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if w.err == nil {
		if err := w.sc.bw.Flush(); err != nil {
			w.fail(err)
		}
	}
}

// fail records a write error: the client is gone, so the request's
// context ends and the backend request with it.
func (w *responseWriter) fail(err error) {
	w.err = err
	w.close = true
	w.cancel()
}

// finish ends the response: the last chunk and trailers, then the
// buffer goes out.
func (w *responseWriter) finish() error {
	if !w.wroteHeader {
		w.header.Set("Content-Length", "0")
		w.WriteHeader(http.StatusOK)
	}
	if w.err != nil {
		return w.err
	}
	bw := w.sc.bw
	if w.chunked {
		bw.WriteString("0\r\n")
		for k, vv := range w.header {
			if name, ok := strings.CutPrefix(k, http.TrailerPrefix); ok {
				for _, v := range vv {
					bw.WriteString(name + ": " + v + "\r\n")
				}
			}
		}
		bw.WriteString("\r\n")
	}
	if w.remain > 0 && !w.bodyless {
		// The handler wrote less than it declared: the client would wait
		// for the rest.
		w.close = true
	}
	if err := bw.Flush(); err != nil {
		w.fail(err)
		return err
	}
	return nil
}

// httpDate is the Date header, formatted once a second.
func httpDate() string {
	now := time.Now().Unix()
	if d := cachedDate.Load(); d != nil && d.unix == now {
		return d.text
	}
	d := &dateText{unix: now, text: time.Unix(now, 0).UTC().Format(http.TimeFormat)}
	cachedDate.Store(d)
	return d.text
}

type dateText struct {
	unix int64
	text string
}

var cachedDate atomic.Pointer[dateText]
