package lbgateway

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"strings"
	"sync"
	"time"
)

// statusPrefix is where the gateway answers for itself instead of the
// pool.
const statusPrefix = "/_cachebus/"

// ServeHTTP answers one request: from the cache, or from the backend its
// cookie names, or from a newly balanced one.
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if strings.HasPrefix(r.URL.Path, statusPrefix) {
		g.status.ServeHTTP(w, r)
		return
	}
	start := time.Now()
	g.inflight.Add(1)
	defer func() {
		g.inflight.Add(-1)
		g.metrics.duration.Observe(time.Since(start).Seconds())
	}()

	cacheable := g.cache != nil && g.cache.Cacheable(r)
	why := g.inFallback(start)
	fallback := why != ""
	var stale *Entry
	var mark uint64
	if cacheable {
		// Before the lookup: a purge from now on may be for a change the
		// origin's answer does not show (see Cache.StoreSince).
		mark = g.cache.Mark()
		e, fr := g.cache.Lookup(r, start)
		switch {
		case fr == Fresh:
			g.countCache(cachehit)
			e.Write(w, r, "HIT", start)
			return
		case e != nil && fallback:
			// However stale, even to a reload that asked for a fresh copy:
			// in fallback nothing goes to the origin.
			g.countCache(cachestale)
			g.metrics.fallback.Inc()
			e.Write(w, r, "STALE", start)
			return
		case fr == Revalidate:
			g.countCache(cachestale)
			e.Write(w, r, "STALE", start)
			g.revalidate(r)
			return
		case e != nil && fr != Fresh && e.UsableOnError(start):
			stale = e
		}
	}
	if fallback {
		g.metrics.fallback.Inc()
		g.unavailable(w, why)
		return
	}
	g.forward(w, r, cacheable, mark, stale, start)
}

// request is one request on its way to a backend.
type request struct {
	in      *http.Request
	out     *http.Request // headers and URL shared by every attempt
	body    []byte        // the whole body when it can be replayed
	stream  io.Reader     // the body otherwise
	replay  bool
	route   Route
	routed  bool // the request came with a valid cookie
	backend *Backend
	mark    uint64 // the cache's mark taken before the origin was asked
}

// forward sends the request to a backend, retrying where that is safe,
// and relays the answer.
func (g *Gateway) forward(w http.ResponseWriter, r *http.Request, cacheable bool, mark uint64, stale *Entry, now time.Time) {
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	q := &request{in: r, mark: mark}
	q.route, q.routed = g.readRoute(r.Header["Cookie"], r.RemoteAddr, now)
	if err := g.prepare(ctx, q); err != nil {
		http.Error(w, "bad request body: "+err.Error(), http.StatusBadRequest)
		return
	}

	v := g.pool.cur.Load()
	b := g.pick(v, q.route, q.routed, now)

	if isUpgrade(r) {
		if b == nil {
			g.metrics.noBackend.Inc()
			http.Error(w, "no backend available", http.StatusServiceUnavailable)
			return
		}
		g.upgrade(w, q, b)
		return
	}

	var tried []*Backend
	var resp *http.Response
	for attempt := 0; ; attempt++ {
		if b == nil {
			if stale != nil {
				g.countCache(cachestale)
				stale.Write(w, r, "STALE", now)
				return
			}
			g.noBackend(w, tried)
			return
		}
		var err error
		resp, err = g.roundTrip(ctx, q, b)
		if err == nil {
			break
		}
		g.attemptFailed(b)
		if r.Context().Err() != nil {
			return // the client left; nobody to answer
		}
		if !g.retryAfter(b, r.Method, r.URL.Path, err, attempt, func(reached bool) bool { return q.replay && (!reached || idempotent(r)) }) {
			if stale != nil {
				g.countCache(cachestale)
				stale.Write(w, r, "STALE", now)
				return
			}
			g.badGateway(w, b, err)
			return
		}
		tried = append(tried, b)
		b = v.pickNew(time.Now(), tried)
	}
	defer func() { _ = resp.Body.Close() }()
	g.metrics.requests.WithLabelValues(b.ID, statusClass(resp.StatusCode)).Inc()
	g.observe(b, resp.StatusCode >= 500, time.Now())
	if resp.StatusCode >= 500 && stale != nil {
		g.countCache(cachestale)
		stale.Write(w, r, "STALE", now)
		return
	}
	q.backend = b
	g.relay(ctx, cancel, w, q, resp, cacheable, now)
}

// readRoute reads the sticky cookie from a request's Cookie headers;
// routed is false when there is none or it is refused (counted and
// logged).
func (g *Gateway) readRoute(cookies []string, remote string, now time.Time) (rt Route, routed bool) {
	rt, err := g.sticky.readLines(cookies, now)
	if err != nil && !errors.Is(err, ErrNoRoute) {
		g.metrics.badCookies.Inc()
		g.log.Debug("sticky cookie ignored", "err", err, "remote", remote)
	}
	return rt, err == nil
}

// pick chooses the backend of a request: the one its cookie names while
// it can serve, else (redispatched, or new) one balanced from v.
func (g *Gateway) pick(v *view, rt Route, routed bool, now time.Time) *Backend {
	if routed {
		if b := v.pickSticky(rt.Backend, now); b != nil {
			b.lastSticky.Store(now.UnixNano())
			return b
		}
		g.metrics.redispatched.Inc()
	}
	return v.pickNew(now, nil)
}

// noBackend answers a request no backend is left for: the fallback page
// when none was up to try and the cache could have answered, else 503.
func (g *Gateway) noBackend(w http.ResponseWriter, tried []*Backend) {
	g.metrics.noBackend.Inc()
	if len(tried) == 0 && g.cfg.AutoFallback && g.cache != nil {
		g.unavailable(w, "no app server is up")
		return
	}
	http.Error(w, "no backend available", http.StatusServiceUnavailable)
}

// attemptFailed counts an attempt on b that got no answer.
func (g *Gateway) attemptFailed(b *Backend) {
	g.observe(b, true, time.Now())
	g.metrics.requests.WithLabelValues(b.ID, "error").Inc()
}

// retryAfter decides whether a request whose attempt on b failed with err
// goes to another backend: within the retries, and when may, told whether
// the request reached b, allows it. It logs and counts either way.
func (g *Gateway) retryAfter(b *Backend, method, path string, err error, attempt int, may func(reached bool) bool) bool {
	var ce *connectError
	reached := !errors.As(err, &ce)
	if attempt >= g.cfg.Retries || !may(reached) {
		g.log.Warn("backend failed, not retried", "backend", b.ID, "method", method, "path", path,
			"err", err, "attempt", attempt+1, "reached", reached)
		return false
	}
	g.metrics.retries.Inc()
	g.log.Info("backend failed, retrying on another", "backend", b.ID, "method", method, "path", path,
		"err", err, "attempt", attempt+1, "reached", reached)
	return true
}

// prepare builds the outgoing request and decides whether its body can be
// replayed on another backend: no body, or one small enough to keep.
func (g *Gateway) prepare(ctx context.Context, q *request) error {
	r := q.in
	// A shallow copy with a header map of its own: the values are shared
	// with the incoming request and never changed in place (Strip and
	// Set replace them), which saves copying them all as Clone would.
	out := r.WithContext(ctx)
	out.RequestURI = ""
	out.Close = false
	out.Header = outgoingHeader(r.Header)
	g.sticky.Strip(out)
	if ip, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		if prior := out.Header.Values("X-Forwarded-For"); len(prior) > 0 {
			ip = strings.Join(prior, ", ") + ", " + ip
		}
		out.Header.Set("X-Forwarded-For", ip)
	}
	out.Header.Set("X-Forwarded-Host", r.Host)
	proto := "http"
	if r.TLS != nil {
		proto = "https"
	}
	out.Header.Set("X-Forwarded-Proto", proto)
	if _, ok := out.Header["User-Agent"]; !ok {
		out.Header.Set("User-Agent", "") // not Go's default
	}
	q.out = out

	switch {
	case r.Body == nil || r.Body == http.NoBody || (r.ContentLength == 0 && len(r.TransferEncoding) == 0):
		q.replay = true
	case r.ContentLength > 0 && r.ContentLength <= int64(g.cfg.RetryBodyMax):
		q.body = make([]byte, r.ContentLength)
		if _, err := io.ReadFull(r.Body, q.body); err != nil {
			return fmt.Errorf("read %d bytes: %w", r.ContentLength, err)
		}
		q.replay = true
	case r.ContentLength < 0:
		// Chunked: keep it when it turns out small.
		buf, err := io.ReadAll(io.LimitReader(r.Body, int64(g.cfg.RetryBodyMax)+1))
		if err != nil {
			return fmt.Errorf("read body: %w", err)
		}
		if len(buf) <= g.cfg.RetryBodyMax {
			q.body, q.replay = buf, true
			out.ContentLength = int64(len(buf))
			out.TransferEncoding = nil
		} else {
			q.stream = io.MultiReader(bytes.NewReader(buf), r.Body)
		}
	default:
		q.stream = r.Body
	}
	return nil
}

// roundTrip sends one attempt of q to b.
func (g *Gateway) roundTrip(ctx context.Context, q *request, b *Backend) (*http.Response, error) {
	out := q.out.WithContext(ctx)
	u := *q.out.URL
	u.Scheme, u.Host = b.URL.Scheme, b.URL.Host
	if b.URL.Path != "" {
		u.Path = b.URL.Path + u.Path
		if u.RawPath != "" {
			u.RawPath = b.URL.Path + u.RawPath
		}
	}
	out.URL = &u
	out.GetBody = nil
	switch {
	case q.body != nil:
		body := q.body
		out.Body = io.NopCloser(bytes.NewReader(body))
		out.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	case q.stream != nil:
		out.Body = io.NopCloser(q.stream)
	default:
		out.Body = nil
	}
	b.inflight.Add(1)
	b.requests.Add(1)
	var resp *http.Response
	var err error
	if b.up != nil {
		resp, err = b.up.roundTrip(ctx, out, g.cfg.ResponseTimeout, q.replay && idempotent(q.in))
	} else {
		resp, err = g.transport.RoundTrip(out)
	}
	if err != nil {
		b.inflight.Add(-1)
		return nil, err
	}
	resp.Body = &countedBody{ReadCloser: resp.Body, b: b}
	return resp, nil
}

func isUpBody(rc io.ReadCloser) bool {
	_, ok := rc.(*upBody)
	return ok
}

// countedBody keeps a request in its backend's in-flight count until its
// response body is closed.
type countedBody struct {
	io.ReadCloser
	b    *Backend
	once sync.Once
}

func (c *countedBody) Close() error {
	c.once.Do(func() { c.b.inflight.Add(-1) })
	return c.ReadCloser.Close()
}

// relay sends the backend's response to the client: headers adjusted,
// the sticky cookie set when due, the body streamed and, when it may be
// shared, kept in the cache.
func (g *Gateway) relay(ctx context.Context, cancel context.CancelFunc, w http.ResponseWriter, q *request, resp *http.Response, cacheable bool, now time.Time) {
	h := w.Header()
	for k, vv := range resp.Header {
		h[k] = vv
	}
	removeHopHeaders(h)
	if ex := resp.Header.Values(ExpireHeader); len(ex) > 0 {
		g.publishExpires(ctx, q.backend, ex)
		h.Del(ExpireHeader)
	}
	h.Del("Surrogate-Key")
	h.Del("Surrogate-Control")
	if g.setsCookie(q, resp) {
		issued := now
		if q.routed && q.route.Backend == q.backend.ID {
			issued = q.route.Issued
		}
		if c := g.sticky.Cookie(q.backend.ID, issued, now, q.in.TLS != nil); c != nil {
			h.Add("Set-Cookie", c.String())
			markPrivate(h)
		}
	}
	if cacheable {
		// Counted here, where the backend's answer is relayed: a miss
		// answered from a stale copy counts as stale only.
		g.countCache(cachemiss)
		h.Set("X-Cache", "MISS")
	}
	for k := range resp.Trailer {
		h.Add("Trailer", k)
	}
	w.WriteHeader(resp.StatusCode)

	var keep *bytes.Buffer
	if cacheable && resp.StatusCode < 500 && resp.ContentLength <= int64(g.cfg.CacheMaxObject) {
		keep = &bytes.Buffer{}
		if resp.ContentLength > 0 {
			keep.Grow(int(resp.ContentLength))
		}
	}
	complete, err := g.copyBody(w, resp, cancel, keep)
	for k, vv := range resp.Trailer {
		h[http.TrailerPrefix+k] = vv
	}
	if err != nil {
		g.log.Debug("response body cut short", "backend", q.backend.ID, "path", q.in.URL.Path, "err", err)
		return
	}
	if complete && keep != nil {
		g.cache.StoreSince(q.in, q.mark, resp.StatusCode, resp.Header, keep.Bytes(), now)
	}
}

// bufPool holds the buffers bodies are copied through.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// copyBody streams the body to the client, cancelling the backend request
// when the backend stays silent for BodyTimeout. keep, when not nil,
// gets a copy of the body while it fits the cache's largest object; the
// result says whether it got all of it.
func (g *Gateway) copyBody(w http.ResponseWriter, resp *http.Response, cancel context.CancelFunc, keep *bytes.Buffer) (bool, error) {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	// A body from our own upstream renews its read deadline at each
	// read; others get a timer that cancels the request.
	var idle *time.Timer
	if cb, ok := resp.Body.(*countedBody); !ok || !isUpBody(cb.ReadCloser) {
		idle = time.AfterFunc(g.cfg.BodyTimeout, cancel)
		defer idle.Stop()
	}
	flusher, _ := w.(http.Flusher)
	// Streams of unknown length (server-sent events, long polls) reach
	// the client as they come.
	flush := flusher != nil && resp.ContentLength < 0
	fits := keep != nil
	for {
		n, rerr := resp.Body.Read(buf)
		if idle != nil {
			idle.Reset(g.cfg.BodyTimeout)
		}
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return false, fmt.Errorf("write to client: %w", werr)
			}
			if flush {
				flusher.Flush()
			}
			if fits {
				if keep.Len()+n > g.cfg.CacheMaxObject {
					fits = false
				} else {
					keep.Write(buf[:n])
				}
			}
		}
		if rerr == io.EOF {
			return fits, nil
		}
		if rerr != nil {
			return false, fmt.Errorf("read from backend: %w", rerr)
		}
	}
}

// setsCookie decides whether the response carries a new sticky cookie:
// when the request had none valid for this backend (it was new, or
// redispatched) and the mode says so, or when the cookie needs refreshing.
func (g *Gateway) setsCookie(q *request, resp *http.Response) bool {
	return g.cookieDue(q.routed, q.route, q.backend.ID, func() bool {
		for _, c := range resp.Header.Values("Set-Cookie") {
			if g.isSessionCookie(c) {
				return true
			}
		}
		return false
	})
}

// cookieDue is setsCookie's rule, for a request routed (or not) by route
// and answered by backend; setsSession, asked in session mode only, says
// whether the response sets the app's session cookie.
func (g *Gateway) cookieDue(routed bool, route Route, backend string, setsSession func() bool) bool {
	switch {
	case routed && route.Backend == backend:
		return route.Refresh
	case routed:
		return true // redispatched: the session now lives elsewhere
	case g.cfg.CookieMode == ModeInsert:
		return true
	}
	return setsSession()
}

// isSessionCookie says whether a Set-Cookie value of the backend's sets
// the app's session cookie (any cookie when none is configured).
func (g *Gateway) isSessionCookie(setCookie string) bool {
	name, _, _ := strings.Cut(setCookie, "=")
	return g.cfg.SessionCookie == "" || strings.TrimSpace(name) == g.cfg.SessionCookie
}

// markPrivate keeps shared caches from storing a response that sets the
// sticky cookie (HAProxy's "nocache"): another client would get it.
func markPrivate(h http.Header) {
	if !sharable(strings.Join(h.Values("Cache-Control"), ",")) {
		return
	}
	h.Set("Cache-Control", "private")
}

// sharable says whether a response's Cache-Control (its values joined)
// lets a shared cache keep it: neither private nor no-store.
func sharable(cacheControl string) bool {
	cc := ParseCacheControl(cacheControl)
	return !cc.Private && !cc.NoStore
}

// idempotent says whether a request that may have reached a backend can
// be sent to another one: the method says so, or the client gave an
// idempotency key.
func idempotent(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
		return true
	}
	return r.Header.Get("Idempotency-Key") != "" || r.Header.Get("X-Idempotency-Key") != ""
}

// outgoingHeader is h without the headers that stop at the gateway: the
// hop-by-hop ones, those its Connection header names, and Expect (the
// gateway has read the body already, or streams it at once).
func outgoingHeader(h http.Header) http.Header {
	out := make(http.Header, len(h)+3)
	for k, vv := range h {
		out[k] = vv
	}
	removeHopHeaders(out)
	delete(out, "Expect")
	return out
}

// hopHeaders are meaningful for one connection only (RFC 9110, 7.6.1).
var hopHeaders = []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

// removeHopHeaders drops the hop-by-hop headers, and those the Connection
// header names.
func removeHopHeaders(h http.Header) {
	for _, c := range h.Values("Connection") {
		for _, f := range strings.Split(c, ",") {
			if f = textproto.TrimString(f); f != "" {
				h.Del(f)
			}
		}
	}
	for _, k := range hopHeaders {
		delete(h, k)
	}
}

// badGateway answers a request no backend answered.
func (g *Gateway) badGateway(w http.ResponseWriter, b *Backend, err error) {
	code, what := http.StatusBadGateway, "backend failed"
	if errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
		code, what = http.StatusGatewayTimeout, "backend timed out"
	}
	http.Error(w, fmt.Sprintf("%s (%s)", what, b.ID), code)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// revalidate refreshes a cached copy served stale, in the background,
// once per URI at a time.
func (g *Gateway) revalidate(r *http.Request) {
	key := r.Host + r.URL.RequestURI()
	if _, busy := g.revalidating.LoadOrStore(key, struct{}{}); busy {
		return
	}
	in := r.Clone(context.Background())
	in.Method, in.Body, in.ContentLength = http.MethodGet, http.NoBody, 0
	// The client's validators are for its own copy: with them the origin
	// may answer 304, which refreshes nothing here.
	for _, h := range []string{"If-None-Match", "If-Modified-Since", "If-Match", "If-Unmodified-Since", "If-Range"} {
		in.Header.Del(h)
	}
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		defer g.revalidating.Delete(key)
		ctx, cancel := context.WithTimeout(context.Background(), g.cfg.ResponseTimeout+g.cfg.BodyTimeout)
		defer cancel()
		q := &request{in: in, mark: g.cache.Mark()}
		if err := g.prepare(ctx, q); err != nil {
			return
		}
		now := time.Now()
		b := g.pool.cur.Load().pickNew(now, nil)
		if b == nil {
			return
		}
		resp, err := g.roundTrip(ctx, q, b)
		if err != nil {
			g.observe(b, true, time.Now())
			return
		}
		defer func() { _ = resp.Body.Close() }()
		g.observe(b, resp.StatusCode >= 500, time.Now())
		body, err := io.ReadAll(io.LimitReader(resp.Body, int64(g.cfg.CacheMaxObject)+1))
		if err != nil || len(body) > g.cfg.CacheMaxObject {
			return
		}
		g.cache.StoreSince(in, q.mark, resp.StatusCode, resp.Header, body, now)
	}()
}
