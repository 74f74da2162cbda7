package lbgateway

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// A request asking to switch protocols (WebSocket) goes to its backend on
// a connection of its own; if the backend agrees (101), the gateway
// steps aside and copies bytes both ways until either side closes. The
// sticky cookie routes it like any request; it is not retried once sent.

// isUpgrade says whether r asks to switch protocols.
func isUpgrade(r *http.Request) bool {
	if r.Header.Get("Upgrade") == "" {
		return false
	}
	for _, c := range r.Header.Values("Connection") {
		for _, f := range strings.Split(c, ",") {
			if strings.EqualFold(strings.TrimSpace(f), "upgrade") {
				return true
			}
		}
	}
	return false
}

// upgrade serves a protocol switch through backend b.
func (g *Gateway) upgrade(w http.ResponseWriter, q *request, b *Backend) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		http.Error(w, "protocol upgrade not supported here", http.StatusNotImplemented)
		return
	}
	proto := q.in.Header.Get("Upgrade")
	out := q.out.WithContext(context.Background())
	out.Header.Set("Connection", "Upgrade")
	out.Header.Set("Upgrade", proto)
	out.Body = nil
	u := *out.URL
	u.Scheme, u.Host = b.URL.Scheme, b.URL.Host
	out.URL = &u

	bc, err := g.dialBackend(q.in.Context(), b)
	if err != nil {
		g.observe(b, true, time.Now())
		g.badGateway(w, b, err)
		return
	}
	_ = bc.SetDeadline(time.Now().Add(g.cfg.ResponseTimeout))
	br := bufio.NewReader(bc)
	var resp *http.Response
	if err = out.Write(bc); err == nil {
		resp, err = http.ReadResponse(br, out)
	}
	if err != nil {
		_ = bc.Close()
		g.observe(b, true, time.Now())
		g.badGateway(w, b, err)
		return
	}
	g.observe(b, resp.StatusCode >= 500, time.Now())
	g.metrics.requests.WithLabelValues(b.ID, statusClass(resp.StatusCode)).Inc()
	if resp.StatusCode != http.StatusSwitchingProtocols {
		// The backend declined: its answer is an ordinary one.
		defer bc.Close()
		h := w.Header()
		for k, vv := range resp.Header {
			h[k] = vv
		}
		removeHopHeaders(h)
		w.WriteHeader(resp.StatusCode)
		_, _ = io.Copy(w, resp.Body)
		_ = resp.Body.Close()
		return
	}
	_ = bc.SetDeadline(time.Time{})
	cc, cbuf, err := hj.Hijack()
	if err != nil {
		_ = bc.Close()
		g.log.Warn("upgrade: cannot take the client connection", "backend", b.ID, "err", err)
		return
	}
	// The 101 goes to the client as the backend sent it.
	err = resp.Write(cbuf.Writer)
	if err == nil {
		err = cbuf.Flush()
	}
	if err != nil {
		_ = bc.Close()
		_ = cc.Close()
		return
	}
	g.log.Debug("protocol switched", "backend", b.ID, "upgrade", proto, "path", q.in.URL.Path)
	tunnel(cc, cbuf.Reader, bc, br)
}

// dialBackend opens a connection of its own to b, with TLS for an https
// backend.
func (g *Gateway) dialBackend(ctx context.Context, b *Backend) (net.Conn, error) {
	host := backendAddr(b.URL)
	c, err := g.dialer.DialContext(ctx, "tcp", host)
	if err != nil {
		return nil, &connectError{addr: host, err: err}
	}
	if b.URL.Scheme != "https" {
		return c, nil
	}
	tc := tls.Client(c, &tls.Config{ServerName: b.URL.Hostname(), NextProtos: []string{"http/1.1"}})
	hctx, cancel := context.WithTimeout(ctx, g.cfg.ConnectTimeout)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		_ = c.Close()
		return nil, &connectError{addr: host, err: err}
	}
	return tc, nil
}

// tunnel copies bytes both ways, each side's buffered bytes first, until
// one side ends; then both close.
func tunnel(client net.Conn, clientBuf *bufio.Reader, backend net.Conn, backendBuf *bufio.Reader) {
	var once sync.Once
	closeBoth := func() {
		once.Do(func() {
			_ = client.Close()
			_ = backend.Close()
		})
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		_, _ = io.Copy(backend, clientBuf)
		closeBoth()
	}()
	go func() {
		defer wg.Done()
		_, _ = io.Copy(client, backendBuf)
		closeBoth()
	}()
	wg.Wait()
}
