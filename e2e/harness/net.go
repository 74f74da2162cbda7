//go:build unix

package harness

import (
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/bus/bustest"
)

// Ports handed out by FreePort, never twice in one test binary: the
// registry belongs to the process, not to a Harness.
var (
	portsMu sync.Mutex
	ports   = map[int]bool{}
)

// FreePort returns a TCP port free on 127.0.0.1, below the kernel's
// ephemeral range (32768 and up on Linux), never the same twice in one
// test binary.
//
// A port from the ephemeral range, as bustest.FreePort gives, may be taken
// as the source port of an outgoing connection — a cluster's own routes —
// between the test choosing it and the daemon binding it, and then the
// daemon fails to start.
func FreePort(t testing.TB) int {
	t.Helper()
	portsMu.Lock()
	defer portsMu.Unlock()
	for range 1000 {
		port := 20000 + rand.IntN(12000)
		if ports[port] {
			continue
		}
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		_ = ln.Close()
		ports[port] = true
		return port
	}
	t.Fatal("no free port in 20000-31999")
	return 0
}

// FreeAddr is 127.0.0.1:port for a port from FreePort.
func FreeAddr(t testing.TB) string {
	return fmt.Sprintf("127.0.0.1:%d", FreePort(t))
}

// WaitListening waits until addr (host:port) accepts TCP connections; it
// fails at once if p, when not nil, exits first.
func WaitListening(t testing.TB, timeout time.Duration, what, addr string, p *Proc) {
	t.Helper()
	bustest.WaitFor(t, timeout, what+" listening on "+addr, func() bool {
		if p != nil && p.Exited() {
			t.Fatalf("%s exited (%s) before listening on %s", p.name, p.Status(), addr)
		}
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err != nil {
			return false
		}
		_ = c.Close()
		return true
	})
}

// HTTPClient is the HTTP client of the helpers, with a 5s timeout.
var HTTPClient = &http.Client{Timeout: 5 * time.Second}

// HTTPDo sends a request with HTTPClient and returns the status and body;
// a transport error is status 0 with the error as body.
func HTTPDo(req *http.Request) (int, string) {
	resp, err := HTTPClient.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, string(body)
}

// HTTPGet is HTTPDo of a GET of url.
func HTTPGet(url string) (int, string) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return 0, err.Error()
	}
	return HTTPDo(req)
}

// Connect connects to NATS at urls (comma-separated), closed when the test
// ends, and logs only the bus's warnings, into the test log.
func Connect(t testing.TB, urls string) *bus.Conn {
	t.Helper()
	return bustest.Connect(t, urls, bus.WithLogger(WarnLogger(t)))
}

// WarnLogger logs the bus clients' warnings into the test log, or
// everything with CACHEBUS_E2E_DEBUG set.
func WarnLogger(t testing.TB) *slog.Logger {
	level := slog.LevelWarn
	if os.Getenv("CACHEBUS_E2E_DEBUG") != "" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(testLog{t}, &slog.HandlerOptions{Level: level}))
}

type testLog struct{ t testing.TB }

func (w testLog) Write(p []byte) (int, error) {
	defer func() { _ = recover() }() // a line logged after the test ended
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
