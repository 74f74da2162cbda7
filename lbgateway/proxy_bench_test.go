package lbgateway

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// BenchmarkProxy measures a request through the gateway to a backend over
// loopback, as a new session and with a sticky cookie, served by the
// gateway's own server (the fast path, fastpath.go) and by net/http's
// server with the gateway as its handler (the general path). Client,
// gateway and backend share the process, so compare the cases, not the
// figure with other proxies (e2e/bench/gateway.sh does that).
func BenchmarkProxy(b *testing.B) {
	page := strings.Repeat("x", 1024)
	backends := make([]string, 2)
	for i := range backends {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.WriteString(w, page)
		}))
		b.Cleanup(srv.Close)
		backends[i] = []string{"b1", "b2"}[i] + "=" + srv.URL
	}
	cfg := Config{ID: "bench", Secret: testSecret, CookieMode: ModeInsert, Backends: backends, Retries: 2}
	g, err := New(b.Context(), cfg, Options{Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(g.Close)
	general := httptest.NewServer(g)
	b.Cleanup(general.Close)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- g.Serve(ctx, ln) }()
	b.Cleanup(func() { stop(); <-served })
	fast := "http://" + ln.Addr().String()
	cookie := "cbroute=" + g.sticky.Encode("b1", time.Now(), time.Now())
	for _, bc := range []struct {
		name   string
		url    string
		cookie string
	}{{"fast/new-session", fast, ""}, {"fast/sticky", fast, cookie},
		{"general/new-session", general.URL, ""}, {"general/sticky", general.URL, cookie}} {
		b.Run(bc.name, func(b *testing.B) {
			tr := &http.Transport{MaxIdleConnsPerHost: 64}
			defer tr.CloseIdleConnections()
			client := &http.Client{Transport: tr}
			b.SetParallelism(8)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					req, _ := http.NewRequest(http.MethodGet, bc.url+"/app/x", nil)
					if bc.cookie != "" {
						req.Header.Set("Cookie", bc.cookie)
					}
					resp, err := client.Do(req)
					if err != nil {
						b.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			})
		})
	}
}
