package lbgateway

import (
	"bytes"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestBackendDiesUnderLoad: sessions on a backend that dies move to the
// others; idempotent requests that hit it are retried and succeed.
func TestBackendDiesUnderLoad(t *testing.T) {
	bs := []*backend{newBackend(t, "b1"), newBackend(t, "b2"), newBackend(t, "b3")}
	g := startGateway(t, nil, testConfig(bs...))

	const clients = 12
	var failed, done, moved atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := newClient(t)
			first := ""
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := c.Get(fmt.Sprintf("%s/app/%d/%d", g.url, i, n))
				if err != nil {
					failed.Add(1)
					continue
				}
				resp.Body.Close()
				if resp.StatusCode != 200 {
					failed.Add(1)
					continue
				}
				done.Add(1)
				at := resp.Header.Get("X-Backend")
				if first == "" {
					first = at
				} else if at != first {
					if first != "b2" {
						t.Errorf("client %d moved from %s to %s though %s is alive", i, first, at, first)
					}
					moved.Add(1)
					first = at
				}
			}
		}()
	}
	waitFor(t, 10*time.Second, "load on b2", func() bool { return bs[1].hits.Load() > 50 })
	bs[1].srv.CloseClientConnections()
	bs[1].srv.Close()
	after := done.Load()
	waitFor(t, 10*time.Second, "load served after b2 died", func() bool { return done.Load() > after+500 })
	close(stop)
	wg.Wait()
	if n := failed.Load(); n != 0 {
		t.Errorf("%d requests failed; idempotent requests must be retried on another backend", n)
	}
	t.Logf("%d requests, %d sessions moved off the dead backend", done.Load(), moved.Load())
}

// TestRetryOnlyWhenSafe: a request that could not be sent is retried
// whatever its method; a POST that may have reached a backend is not.
func TestRetryOnlyWhenSafe(t *testing.T) {
	t.Run("connect refused: POST retried", func(t *testing.T) {
		live, dead := newBackend(t, "live"), newBackend(t, "dead")
		dead.srv.Close()
		cfg := testConfig(live, dead)
		cfg.EjectAfter = 0 // keep the dead one in the draw
		g := startGateway(t, nil, cfg)
		for i := range 20 {
			req, _ := http.NewRequest(http.MethodPost, g.url+"/order", bytes.NewReader([]byte("item=1")))
			req.Header.Set("X-Req", fmt.Sprint(i))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != 200 || live.served(fmt.Sprint(i)) != 1 {
				t.Fatalf("POST %d: status %d, served %d times by the live backend", i, resp.StatusCode, live.served(fmt.Sprint(i)))
			}
		}
	})

	t.Run("reached then failed: POST not retried, GET retried", func(t *testing.T) {
		crashy, other := newBackend(t, "crashy"), newBackend(t, "other")
		// crashy takes the request, then drops the connection without an
		// answer: it may have acted on it.
		crashy.setHandler(func(w http.ResponseWriter, r *http.Request) {
			hj, _ := w.(http.Hijacker)
			conn, _, _ := hj.Hijack()
			conn.Close()
		})
		cfg := testConfig(crashy, other)
		cfg.EjectAfter = 0
		g := startGateway(t, nil, cfg)
		var posts502, getsOK int
		for i := range 40 {
			method := http.MethodPost
			if i%2 == 1 {
				method = http.MethodGet
			}
			id := fmt.Sprint(i)
			req, _ := http.NewRequest(method, g.url+"/pay", bytes.NewReader([]byte("amount=5")))
			req.Header.Set("X-Req", id)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			times := crashy.served(id) + other.served(id)
			switch {
			case method == http.MethodPost && crashy.served(id) == 1:
				if resp.StatusCode != http.StatusBadGateway || other.served(id) != 0 {
					t.Fatalf("POST %s reached crashy then got %d, and other served it %d times: never send it twice", id, resp.StatusCode, other.served(id))
				}
				posts502++
			case method == http.MethodPost:
				if resp.StatusCode != 200 || times != 1 {
					t.Fatalf("POST %s: %d, served %d times", id, resp.StatusCode, times)
				}
			default:
				if resp.StatusCode != 200 || other.served(id) != 1 {
					t.Fatalf("GET %s: %d, served by other %d times; a GET is retried", id, resp.StatusCode, other.served(id))
				}
				if crashy.served(id) == 1 {
					getsOK++
				}
			}
		}
		if posts502 == 0 || getsOK == 0 {
			t.Fatalf("the draw never picked crashy (POSTs refused %d, GETs retried %d): the test proves nothing", posts502, getsOK)
		}
	})
}
