package lbgateway

import (
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
)

// TestUpstreamReuse: requests in a row share one kept-alive connection;
// one the backend closed while idle is replaced without the client
// seeing it, for a request that may be sent twice.
func TestUpstreamReuse(t *testing.T) {
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Backend", "b1")
		_, _ = w.Write([]byte("ok"))
	}))
	srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	cfg := testConfig()
	cfg.Backends = []string{"b1=" + srv.URL}
	g := startGateway(t, nil, cfg)

	for range 50 {
		if resp, body := get(t, http.DefaultClient, g.url+"/"); resp.StatusCode != 200 || body != "ok" {
			t.Fatalf("%d %q", resp.StatusCode, body)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("50 requests in a row opened %d connections to the backend, want 1", n)
	}

	// The backend drops its idle connections: the next GET finds its
	// connection closed and goes on a new one.
	srv.CloseClientConnections()
	for range 5 {
		if resp, body := get(t, http.DefaultClient, g.url+"/"); resp.StatusCode != 200 || body != "ok" {
			t.Fatalf("after the backend closed its connections: %d %q", resp.StatusCode, body)
		}
	}
	if n := conns.Load(); n != 2 {
		t.Errorf("%d connections after one reconnect, want 2", n)
	}
}
