package lbgateway

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"time"
)

// The fast path. Most requests a sticky gateway sees are a GET, HEAD,
// OPTIONS or DELETE without a body, for a backend that answers with a
// length, chunks, or a close. For those the gateway relays bytes, as
// HAProxy does: it reads the request head in place, writes it to the
// backend with the gateway's changes (sticky cookie out, X-Forwarded-*
// in), reads the response head in place, writes it to the client with its
// own changes (hop-by-hop headers out, sticky cookie in) and copies the
// body. It builds none of net/http's Request, Response and header maps,
// which cost a third of the gateway's CPU on this path.
//
// It routes, retries, counts and logs exactly as the general path
// (ServeHTTP, forward, relay) does. Anything else takes the general path:
// a request body, an upgrade, HTTP/1.0, a head the parser doubts or that
// does not fit the connection's buffer, a route the response cache covers,
// fallback, an HTTPS backend or one with a path. A backend's response head
// must fit its connection's 16 KiB buffer (HAProxy's limit is its buffer
// too); a larger one is a failed request.

// serveFast answers the next request by the fast path when it can. When
// it cannot, served is false and nothing was read.
func (s *server) serveFast(sc *serverConn) (keep, served bool) {
	head, err := peekHead(sc.br)
	if err != nil {
		return false, false
	}
	rq := &sc.fq
	if !parseFastRequest(head, rq) {
		return false, false
	}
	now := time.Now()
	if !s.g.fastEligible(rq, now) {
		return false, false
	}
	// The head's bytes stay in the buffer, and rq's slices valid, until
	// the next read from the client: after this request.
	_, _ = sc.br.Discard(len(head))
	return s.relayFast(sc, rq, now), true
}

// fastEligible says whether the gateway may serve rq by the fast path.
func (g *Gateway) fastEligible(rq *fastRequest, now time.Time) bool {
	if g.cache != nil && g.cache.mayCover(rq.target) {
		return false
	}
	if !g.pool.cur.Load().plain {
		return false
	}
	return g.inFallback(now) == ""
}

// mayCover says whether a request for target might be one the cache
// answers: under one of its prefixes, or percent-encoded, which the
// general path decodes before it compares.
func (c *Cache) mayCover(target []byte) bool {
	path, _, _ := bytes.Cut(target, []byte{'?'})
	if bytes.IndexByte(path, '%') >= 0 {
		return true
	}
	for _, p := range c.prefixes {
		if bytes.HasPrefix(path, []byte(p)) {
			return true
		}
	}
	return false
}

// relayFast is forward for a fast request: the sticky route, the backend,
// the attempts; it says whether the connection may carry another request.
func (s *server) relayFast(sc *serverConn, rq *fastRequest, start time.Time) bool {
	g := s.g
	g.inflight.Add(1)
	defer func() {
		g.inflight.Add(-1)
		g.metrics.duration.Observe(time.Since(start).Seconds())
	}()
	sc.cookies = sc.cookies[:0]
	for _, f := range rq.fields {
		if f.kind == fieldCookie {
			sc.cookies = append(sc.cookies, string(f.value))
		}
	}
	route, routed := g.readRoute(sc.cookies, sc.remote, start)
	v := g.pool.cur.Load()
	b := g.pick(v, route, routed, start)
	sc.out = g.appendFastRequest(sc.out[:0], rq, sc)
	var tried []*Backend
	for attempt := 0; ; attempt++ {
		if b == nil {
			w := s.fastErrorWriter(sc, rq)
			g.noBackend(w, tried)
			return s.finishError(w)
		}
		keep, err := s.exchangeFast(sc, rq, b, route, routed, start)
		if err == nil {
			return keep
		}
		g.attemptFailed(b)
		// Every fast request may be sent twice: no body, an idempotent
		// method.
		if !g.retryAfter(b, rq.method, string(rq.target), err, attempt, func(bool) bool { return true }) {
			w := s.fastErrorWriter(sc, rq)
			g.badGateway(w, b, err)
			return s.finishError(w)
		}
		tried = append(tried, b)
		b = v.pickNew(time.Now(), tried)
	}
}

// fastErrorWriter is a responseWriter for the gateway's own answer to a
// fast request.
func (s *server) fastErrorWriter(sc *serverConn, rq *fastRequest) *responseWriter {
	req := &http.Request{Method: rq.method, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, Header: http.Header{}, Close: rq.close}
	w := &responseWriter{sc: sc, req: req, cancel: sc.cancel, header: make(http.Header, 4)}
	w.close = rq.close || s.closingNow()
	return w
}

// finishError ends an answer of fastErrorWriter's.
func (s *server) finishError(w *responseWriter) bool {
	return w.finish() == nil && !w.close
}

// appendFastRequest appends the head rq goes to a backend with: the
// client's, less the sticky cookie, with X-Forwarded-For, -Host and
// -Proto of the gateway's own.
func (g *Gateway) appendFastRequest(out []byte, rq *fastRequest, sc *serverConn) []byte {
	out = append(out, rq.method...)
	out = append(out, ' ')
	out = append(out, rq.target...)
	out = append(out, " HTTP/1.1\r\nHost: "...)
	out = append(out, rq.host...)
	out = append(out, "\r\n"...)
	cookie := 0
	for _, f := range rq.fields {
		if f.kind == fieldCookie {
			line := sc.cookies[cookie]
			cookie++
			if stripped, changed := g.sticky.stripLine(line); changed {
				if stripped != "" {
					out = append(out, "Cookie: "...)
					out = append(out, stripped...)
					out = append(out, "\r\n"...)
				}
				continue
			}
		}
		out = append(out, f.name...)
		out = append(out, ": "...)
		out = append(out, f.value...)
		out = append(out, "\r\n"...)
	}
	if len(rq.xff) > 0 || sc.ip != "" {
		out = append(out, "X-Forwarded-For: "...)
		for i, v := range rq.xff {
			if i > 0 {
				out = append(out, ", "...)
			}
			out = append(out, v...)
		}
		if sc.ip != "" {
			if len(rq.xff) > 0 {
				out = append(out, ", "...)
			}
			out = append(out, sc.ip...)
		}
		out = append(out, "\r\n"...)
	}
	out = append(out, "X-Forwarded-Host: "...)
	out = append(out, rq.host...)
	if sc.tls {
		out = append(out, "\r\nX-Forwarded-Proto: https\r\n\r\n"...)
	} else {
		out = append(out, "\r\nX-Forwarded-Proto: http\r\n\r\n"...)
	}
	return out
}

// exchangeFast sends the request to b and relays the answer. An error
// means nothing was sent to the client, and the request may go to another
// backend; once the answer has begun, a failure ends the connection.
func (s *server) exchangeFast(sc *serverConn, rq *fastRequest, b *Backend, route Route, routed bool, now time.Time) (bool, error) {
	g := s.g
	b.inflight.Add(1)
	b.requests.Add(1)
	defer b.inflight.Add(-1)
	rs := &sc.fr
	uc, head, err := b.up.fastRoundTrip(sc.ctx, sc.out, g.cfg.ResponseTimeout, rs)
	if err != nil {
		return false, err
	}
	g.metrics.requests.WithLabelValues(b.ID, statusClass(rs.status)).Inc()
	g.observe(b, rs.status >= 500, time.Now())

	var expires []string
	for i := range rs.fields {
		if rs.fields[i].kind == fieldExpire {
			expires = append(expires, string(rs.fields[i].value))
		}
	}
	if expires != nil {
		g.publishExpires(sc.ctx, b, expires)
	}
	var cookie string
	due := g.cookieDue(routed, route, b.ID, func() bool {
		for _, f := range rs.fields {
			if f.kind == fieldSetCookie && g.isSessionCookie(string(f.value)) {
				return true
			}
		}
		return false
	})
	if due {
		issued := now
		if routed && route.Backend == b.ID {
			issued = route.Issued
		}
		if c := g.sticky.Cookie(b.ID, issued, now, sc.tls); c != nil {
			cookie = c.String()
		}
	}
	bodyless := rq.method == http.MethodHead || rs.status == http.StatusNoContent || rs.status == http.StatusNotModified
	closing := rq.close || s.closingNow()
	writeFastHead(sc.bw, rs, cookie, bodyless, closing)
	// The head is copied out: the body's reads may now move the buffer.
	_, _ = uc.br.Discard(len(head))

	body := fastBody{uc: uc, to: sc.bw, timeout: g.cfg.BodyTimeout}
	switch {
	case bodyless:
	case rs.chunked:
		err = body.copyChunked()
	case rs.length >= 0:
		err = body.copyN(rs.length)
	default:
		err = body.copyToEOF()
		rs.closes = true
	}
	if err == nil && !rs.closes {
		b.up.put(uc)
	} else {
		_ = uc.c.Close()
	}
	if err == nil {
		err = sc.bw.Flush()
	}
	if err != nil {
		g.log.Debug("response body cut short", "backend", b.ID, "path", string(rq.target), "err", err)
		sc.cancel()
		return false, nil
	}
	return !closing, nil
}

// writeFastHead writes the client's response head: the backend's status
// and fields less the hop-by-hop ones, the sticky cookie when due (and
// then Cache-Control: private, HAProxy's "nocache"), a Date, the framing
// and Connection: close when the connection ends.
func writeFastHead(bw *bufio.Writer, rs *fastResponse, cookie string, bodyless, closing bool) {
	private := false // the backend's Cache-Control is replaced
	if cookie != "" {
		var cc []byte
		for _, f := range rs.fields {
			if f.kind == fieldCacheControl {
				cc = append(append(cc, ','), f.value...)
			}
		}
		private = sharable(string(cc))
	}
	var num [20]byte
	bw.WriteString("HTTP/1.1 ")
	bw.Write(strconv.AppendInt(num[:0], int64(rs.status), 10))
	bw.WriteByte(' ')
	bw.WriteString(http.StatusText(rs.status))
	bw.WriteString("\r\n")
	wroteLength := false
	for _, f := range rs.fields {
		switch f.kind {
		case fieldDrop, fieldExpire:
			continue
		case fieldCacheControl:
			if private {
				continue
			}
		case fieldLength:
			if !bodyless || wroteLength {
				continue
			}
			wroteLength = true
		case fieldTrailer:
			if !rs.chunked || bodyless {
				continue
			}
		}
		bw.Write(f.name)
		bw.WriteString(": ")
		bw.Write(f.value)
		bw.WriteString("\r\n")
	}
	if private {
		bw.WriteString("Cache-Control: private\r\n")
	}
	if cookie != "" {
		bw.WriteString("Set-Cookie: ")
		bw.WriteString(cookie)
		bw.WriteString("\r\n")
	}
	if !rs.hasDate {
		bw.WriteString("Date: ")
		bw.WriteString(httpDate())
		bw.WriteString("\r\n")
	}
	switch {
	case bodyless:
	case rs.length >= 0 && !rs.chunked:
		bw.WriteString("Content-Length: ")
		bw.Write(strconv.AppendInt(num[:0], rs.length, 10))
		bw.WriteString("\r\n")
	default:
		bw.WriteString("Transfer-Encoding: chunked\r\n")
	}
	if closing {
		bw.WriteString("Connection: close\r\n")
	}
	bw.WriteString("\r\n")
}

// fastRoundTrip writes head on a connection to u and reads the response
// head into rs; the caller reads the body and puts the connection back,
// or closes it. A reused connection the backend had closed is replaced
// by a new one, once: every fast request may be sent twice.
func (u *upstream) fastRoundTrip(ctx context.Context, head []byte, timeout time.Duration, rs *fastResponse) (*upConn, []byte, error) {
	for attempt := 0; ; attempt++ {
		uc, reused, err := u.conn(ctx, upIdleTimeout)
		if err != nil {
			return nil, nil, err
		}
		resp, err := fastExchange(uc, head, timeout, rs)
		if err == nil {
			return uc, resp, nil
		}
		_ = uc.c.Close()
		var stale *staleConnError
		if !reused || attempt > 0 || !errors.As(err, &stale) {
			return nil, nil, err
		}
	}
}

// fastExchange writes head on uc and reads the response head, within
// timeout; interim (1xx) answers are skipped.
func fastExchange(uc *upConn, head []byte, timeout time.Duration, rs *fastResponse) ([]byte, error) {
	_ = uc.c.SetDeadline(time.Now().Add(timeout))
	_, _ = uc.bw.Write(head)
	if err := uc.bw.Flush(); err != nil {
		return nil, staleOr(err, true)
	}
	for {
		resp, err := peekHead(uc.br)
		switch {
		case errors.Is(err, errHeadTooLarge):
			return nil, errBadResponse("head over 16 KiB")
		case err != nil:
			return nil, staleOr(err, uc.br.Buffered() == 0)
		}
		if err := parseFastResponse(resp, rs); err != nil {
			return nil, err
		}
		if rs.status >= 200 {
			return resp, nil
		}
		if rs.status == http.StatusSwitchingProtocols {
			return nil, errBadResponse("101 Switching Protocols to a request without Upgrade")
		}
		_, _ = uc.br.Discard(len(resp))
	}
}

// fastBody copies a response body from a backend connection into the
// client's buffer. Before each wait on the backend the client gets what
// is buffered, so a stream reaches it as it comes; each wait has the body
// timeout.
type fastBody struct {
	uc      *upConn
	to      *bufio.Writer
	timeout time.Duration
}

// errChunk is a malformed chunked body.
var errChunk = errBadResponse("chunked body")

// wait flushes the client and waits for the backend's next bytes.
func (f *fastBody) wait() error {
	if err := f.to.Flush(); err != nil {
		return err
	}
	_ = f.uc.c.SetReadDeadline(time.Now().Add(f.timeout))
	_, err := f.uc.br.Peek(f.uc.br.Buffered() + 1)
	return err
}

// copyN copies n bytes of body.
func (f *fastBody) copyN(n int64) error {
	br := f.uc.br
	for n > 0 {
		if br.Buffered() == 0 {
			if err := f.wait(); err != nil {
				return err
			}
		}
		chunk, _ := br.Peek(int(min(int64(br.Buffered()), n)))
		if _, err := f.to.Write(chunk); err != nil {
			return err
		}
		_, _ = br.Discard(len(chunk))
		n -= int64(len(chunk))
	}
	return nil
}

// line reads one CRLF-ended line of a chunked body, without its line end;
// it is valid until the next read.
func (f *fastBody) line() ([]byte, error) {
	br := f.uc.br
	for {
		buf, _ := br.Peek(br.Buffered())
		if i := bytes.IndexByte(buf, '\n'); i >= 0 {
			_, _ = br.Discard(i + 1)
			// Chunked framing ends its lines in CRLF; net/http refuses a
			// bare LF there, against smuggling, and so does the fast path.
			line, _, ok := nextLine(buf[:i+1])
			if !ok || i == 0 || buf[i-1] != '\r' {
				return nil, errChunk
			}
			return line, nil
		}
		if len(buf) >= br.Size() {
			return nil, errChunk
		}
		if err := f.wait(); err != nil {
			return nil, err
		}
	}
}

// copyChunked copies a chunked body, chunk by chunk, trailers included;
// chunk extensions are dropped.
func (f *fastBody) copyChunked() error {
	var num [16]byte
	for {
		line, err := f.line()
		if err != nil {
			return err
		}
		size, ok := parseChunkLine(line)
		if !ok {
			return errChunk
		}
		if size == 0 {
			f.to.WriteString("0\r\n")
			for {
				line, err := f.line()
				if err != nil {
					return err
				}
				if len(line) == 0 {
					_, err = f.to.WriteString("\r\n")
					return err
				}
				name, value, ok := parseField(line)
				if !ok {
					return errChunk
				}
				f.to.Write(name)
				f.to.WriteString(": ")
				f.to.Write(value)
				f.to.WriteString("\r\n")
			}
		}
		f.to.Write(strconv.AppendInt(num[:0], size, 16))
		f.to.WriteString("\r\n")
		if err := f.copyN(size); err != nil {
			return err
		}
		if line, err = f.line(); err != nil {
			return err
		}
		if len(line) != 0 {
			return errChunk
		}
		if _, err := f.to.WriteString("\r\n"); err != nil {
			return err
		}
	}
}

// copyToEOF copies a body that ends when the backend closes, in chunks
// for the client, whose connection stays open.
func (f *fastBody) copyToEOF() error {
	br := f.uc.br
	var num [16]byte
	for {
		if br.Buffered() == 0 {
			err := f.wait()
			if errors.Is(err, io.EOF) {
				_, err = f.to.WriteString("0\r\n\r\n")
				return err
			}
			if err != nil {
				return err
			}
		}
		chunk, _ := br.Peek(br.Buffered())
		f.to.Write(strconv.AppendInt(num[:0], int64(len(chunk)), 16))
		f.to.WriteString("\r\n")
		f.to.Write(chunk)
		if _, err := f.to.WriteString("\r\n"); err != nil {
			return err
		}
		_, _ = br.Discard(len(chunk))
	}
}
