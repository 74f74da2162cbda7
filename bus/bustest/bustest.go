// Package bustest starts real NATS servers for tests: an embedded server
// in-process, or Debian's nats-server binary as an external process, and
// polls conditions with a deadline instead of sleeping.
package bustest

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/persistence"
)

// Target is a NATS server a test runs against.
type Target struct {
	// Name is "embedded" or "external".
	Name string
	// URL is the client URL.
	URL string
	// Embedded is set for an in-process server.
	Embedded *bus.Server
	// Stop stops the server; Start starts it again on the same port and store.
	Stop, Start func()
}

// Embedded starts an in-process NATS server with JetStream on a free port;
// it is shut down when the test ends.
func Embedded(t testing.TB) *Target {
	t.Helper()
	srv, err := bus.StartServer(bus.ServerConfig{Host: "127.0.0.1", Port: -1, StoreDir: t.TempDir()}, nil)
	if err != nil {
		t.Fatalf("embedded nats: %v", err)
	}
	t.Cleanup(srv.Shutdown)
	tg := &Target{Name: "embedded", URL: srv.ClientURL(), Embedded: srv}
	tg.Stop = srv.Shutdown
	return tg
}

// NATSServerBinary is the external server the suites run against: Debian's
// nats-server, or $CACHEBUS_TEST_NATS_SERVER.
func NATSServerBinary() (string, error) {
	if p := os.Getenv("CACHEBUS_TEST_NATS_SERVER"); p != "" {
		return p, nil
	}
	return exec.LookPath("nats-server")
}

// External starts the nats-server binary as a process with JetStream on a
// free port. It skips the test, saying why, only when the binary is absent;
// CI installs it and sets CACHEBUS_REQUIRE_EXTERNAL=1 to fail instead.
func External(t testing.TB) *Target {
	t.Helper()
	bin, err := NATSServerBinary()
	if err != nil {
		if os.Getenv("CACHEBUS_REQUIRE_EXTERNAL") != "" {
			t.Fatalf("nats-server binary required but not found: %v", err)
		}
		t.Skipf("external NATS suite skipped: no nats-server binary (apt-get install nats-server): %v", err)
	}
	port := FreePort(t)
	dir := t.TempDir()
	url := "nats://127.0.0.1:" + strconv.Itoa(port)
	var cmd *exec.Cmd
	start := func() {
		cmd = exec.Command(bin, "-a", "127.0.0.1", "-p", strconv.Itoa(port), "-js", "-sd", dir)
		logf, err := os.Create(filepath.Join(dir, fmt.Sprintf("server-%d.log", time.Now().UnixNano())))
		if err == nil {
			cmd.Stdout, cmd.Stderr = logf, logf
		}
		if err := cmd.Start(); err != nil {
			t.Fatalf("start %s: %v", bin, err)
		}
		WaitFor(t, 15*time.Second, "nats-server accepting connections", func() bool {
			c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), 200*time.Millisecond)
			if err != nil {
				return false
			}
			_ = c.Close()
			return true
		})
	}
	stop := func() {
		if cmd != nil && cmd.Process != nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			cmd = nil
		}
	}
	start()
	t.Cleanup(stop)
	return &Target{Name: "external", URL: url, Stop: stop, Start: start}
}

// Targets returns the servers a suite must pass against: embedded always,
// external where the binary exists.
func Targets(t *testing.T) map[string]func(testing.TB) *Target {
	return map[string]func(testing.TB) *Target{"embedded": Embedded, "external": External}
}

// FreePort returns a TCP port free on 127.0.0.1 at the time of the call.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Connect connects to url with the bus defaults, a logger that writes to the
// test log on failure only, and closes the connection at the end of the test.
func Connect(t testing.TB, url string, opts ...bus.Option) *bus.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	opts = append([]bus.Option{bus.WithLogger(Logger(t))}, opts...)
	c, err := bus.Connect(ctx, bus.ConnConfig{URL: url, Prefix: bus.DefaultPrefix, Name: t.Name()}, opts...)
	if err != nil {
		t.Fatalf("connect %s: %v", url, err)
	}
	t.Cleanup(func() { c.NC.Close() })
	return c
}

// EnsureEvents creates the event log with test limits.
func EnsureEvents(t testing.TB, c *bus.Conn, cfg persistence.EventLogConfig) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if cfg.MaxAge == 0 {
		cfg.MaxAge = time.Hour
	}
	if _, err := persistence.EnsureEvents(ctx, c, cfg); err != nil {
		t.Fatalf("event log: %v", err)
	}
}

// OpenState creates the cluster state bucket on c, as a daemon would, and
// returns it.
func OpenState(t testing.TB, c *bus.Conn) *persistence.State {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	st, err := persistence.OpenState(ctx, c, persistence.StateConfig{})
	if err != nil {
		t.Fatalf("state bucket: %v", err)
	}
	return st
}

// Logger writes through t.Log at debug level, so a failing test shows what
// the bus did.
func Logger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	defer func() { _ = recover() }() // a log line after the test ended
	w.t.Log(string(p[:len(p)-1]))
	return len(p), nil
}

// WaitFor polls cond until it holds, failing the test after timeout.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for wait := time.Millisecond; ; wait = min(wait*2, 50*time.Millisecond) {
		if cond() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(wait)
	}
}
