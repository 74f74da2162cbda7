package lbgateway

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"
)

// upstream is one plain-HTTP backend's pool of idle keep-alive
// connections, each used by the request's own goroutine from writing the
// request to reading the end of the response. net/http's Transport hands
// every request to two goroutines of the connection, a writer and a
// reader; on a proxy's hot path those handoffs cost more CPU than the
// proxying itself. HTTPS backends go through the Transport.
type upstream struct {
	addr   string
	dialer *net.Dialer
	// bodyTimeout is the longest silence inside a response body: each
	// read of a body renews the connection's deadline, which costs less
	// than a timer per request.
	bodyTimeout time.Duration

	mu     sync.Mutex
	idle   []*upConn // most recently used last
	closed bool
}

// upConn is one connection to a backend.
type upConn struct {
	c    net.Conn
	br   *bufio.Reader
	bw   *bufio.Writer
	used time.Time // when it last went idle
}

const (
	// upMaxIdle bounds a backend's idle connections.
	upMaxIdle = 256
	// upIdleTimeout drops connections idle this long: shorter than the
	// keep-alive timeout of common app servers, so the gateway closes
	// them rather than writing into one the backend just closed.
	upIdleTimeout = 30 * time.Second
	// upFreshReuse is how recently a connection must have been used for a
	// request that may not be sent twice (a POST) to go on it: the window
	// in which a backend closes an idle connection just as it is reused
	// is then too short to meet.
	upFreshReuse = time.Second
)

func newUpstream(addr string, dialer *net.Dialer, bodyTimeout time.Duration) *upstream {
	return &upstream{addr: addr, dialer: dialer, bodyTimeout: bodyTimeout}
}

// get returns an idle connection used within maxIdle, or nil.
func (u *upstream) get(now time.Time, maxIdle time.Duration) *upConn {
	u.mu.Lock()
	defer u.mu.Unlock()
	for len(u.idle) > 0 {
		uc := u.idle[len(u.idle)-1]
		u.idle = u.idle[:len(u.idle)-1]
		if now.Sub(uc.used) < maxIdle {
			return uc
		}
		// Older than asked: the oldest are first, so the rest are too
		// old for this request; put nothing back, close this one only if
		// it is past the idle timeout.
		if now.Sub(uc.used) >= upIdleTimeout {
			_ = uc.c.Close()
			continue
		}
		u.idle = append(u.idle, uc)
		return nil
	}
	return nil
}

// put keeps uc for the next request.
func (u *upstream) put(uc *upConn) {
	uc.used = time.Now()
	u.mu.Lock()
	if u.closed || len(u.idle) >= upMaxIdle {
		u.mu.Unlock()
		_ = uc.c.Close()
		return
	}
	u.idle = append(u.idle, uc)
	u.mu.Unlock()
}

// close closes the idle connections; those in use close when done.
func (u *upstream) close() {
	u.mu.Lock()
	idle := u.idle
	u.idle, u.closed = nil, true
	u.mu.Unlock()
	for _, uc := range idle {
		_ = uc.c.Close()
	}
}

// staleConnError is a reused connection the backend had closed: the
// request got no byte of answer, and was most likely never read.
type staleConnError struct{ err error }

func (e *staleConnError) Error() string {
	return "kept-alive connection closed by the backend: " + e.err.Error()
}
func (e *staleConnError) Unwrap() error { return e.err }

// aLongTimeAgo is a deadline in the past: it makes a blocked read or
// write return at once.
var aLongTimeAgo = time.Unix(1, 0)

// roundTrip sends out on a connection of u and reads the response
// headers; the caller reads the body, and the connection goes back to the
// pool when the body is read to its end and closed. safeRetry says whether
// out may be sent twice: only then may it go on a connection idle for
// long, and be sent again on a new one when that connection turns out to
// be closed.
func (u *upstream) roundTrip(ctx context.Context, out *http.Request, responseTimeout time.Duration, safeRetry bool) (*http.Response, error) {
	maxIdle := upIdleTimeout
	if !safeRetry {
		maxIdle = upFreshReuse
	}
	for attempt := 0; ; attempt++ {
		uc, reused, err := u.conn(ctx, maxIdle)
		if err != nil {
			return nil, err
		}
		resp, err := u.exchange(ctx, uc, out, responseTimeout)
		if err == nil {
			return resp, nil
		}
		_ = uc.c.Close()
		var stale *staleConnError
		if !reused || attempt > 0 || !safeRetry || !errors.As(err, &stale) || (out.Body != nil && out.GetBody == nil) {
			return nil, err
		}
		if out.GetBody != nil {
			body, gerr := out.GetBody()
			if gerr != nil {
				return nil, err
			}
			out.Body = body
		}
	}
}

// conn returns an idle connection used within maxIdle, or a new one.
func (u *upstream) conn(ctx context.Context, maxIdle time.Duration) (uc *upConn, reused bool, err error) {
	if uc = u.get(time.Now(), maxIdle); uc != nil {
		return uc, true, nil
	}
	c, err := u.dialer.DialContext(ctx, "tcp", u.addr)
	if err != nil {
		return nil, false, &connectError{addr: u.addr, err: err}
	}
	return &upConn{c: c, br: bufio.NewReaderSize(c, 16<<10), bw: bufio.NewWriterSize(c, 16<<10)}, false, nil
}

// exchange writes out on uc and reads the response headers, within
// responseTimeout, or until ctx ends.
func (u *upstream) exchange(ctx context.Context, uc *upConn, out *http.Request, responseTimeout time.Duration) (*http.Response, error) {
	stop := context.AfterFunc(ctx, func() { _ = uc.c.SetDeadline(aLongTimeAgo) })
	_ = uc.c.SetDeadline(time.Now().Add(responseTimeout))
	if err := out.Write(uc.bw); err != nil {
		stop()
		return nil, staleOr(err, true)
	}
	if err := uc.bw.Flush(); err != nil {
		stop()
		return nil, staleOr(err, true)
	}
	for {
		resp, err := http.ReadResponse(uc.br, out)
		if err != nil {
			stop()
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, staleOr(err, uc.br.Buffered() == 0)
		}
		// An interim answer (100 Continue sent unasked, 103 Early
		// Hints) is not the response; 101 cannot happen, Upgrade is not
		// forwarded.
		if resp.StatusCode >= 100 && resp.StatusCode < 200 {
			continue
		}
		// The body has its own silence timeout (the caller's); the
		// response-header deadline must not cut it.
		_ = uc.c.SetDeadline(time.Time{})
		resp.Body = &upBody{body: resp.Body, uc: uc, up: u, stop: stop, keep: !resp.Close && !out.Close}
		return resp, nil
	}
}

// staleOr tells a connection the backend closed while it was idle (reset
// or EOF before any byte of answer) from other failures.
func staleOr(err error, nothingRead bool) error {
	if nothingRead && (errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)) {
		return &staleConnError{err: err}
	}
	return err
}

// upBody is a response body that returns its connection to the pool
// once read to its end.
type upBody struct {
	body io.ReadCloser
	uc   *upConn
	up   *upstream
	stop func() bool
	keep bool
	eof  bool
	done bool
}

func (b *upBody) Read(p []byte) (int, error) {
	_ = b.uc.c.SetReadDeadline(time.Now().Add(b.up.bodyTimeout))
	n, err := b.body.Read(p)
	if err == io.EOF {
		b.eof = true
	}
	return n, err
}

// Close releases the connection: back to the pool after a complete body,
// closed otherwise. The connection is closed before the body when the body
// was not read to its end, since closing net/http's body first would read
// the rest of it, however long.
func (b *upBody) Close() error {
	if b.done {
		return nil
	}
	b.done = true
	cancelled := !b.stop()
	if !b.eof || !b.keep || cancelled {
		_ = b.uc.c.Close()
		_ = b.body.Close()
		return nil
	}
	if err := b.body.Close(); err != nil {
		_ = b.uc.c.Close()
		return nil
	}
	b.up.put(b.uc)
	return nil
}
