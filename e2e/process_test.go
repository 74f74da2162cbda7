//go:build unix

package e2e

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/e2e/harness"
)

// TestUsageErrorsExit2 runs the binary as a script would and requires a bad
// command, flag, argument or variable to exit 2 at once with a message
// that names the culprit, and -h to exit 0 listing the variables.
func TestUsageErrorsExit2(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		args []string
		code int
		say  string
	}{
		{"unknown command", nil, []string{"nosuch"}, 2, `unknown command "nosuch"`},
		{"no command", nil, nil, 2, "Usage: cachebus <command>"},
		{"bad variable", map[string]string{"CACHEBUS_NATS_PORT": "four"}, []string{"nats"}, 2, "CACHEBUS_NATS_PORT"},
		{"bad log level", map[string]string{"CACHEBUS_LOG_LEVEL": "loud"}, []string{"nats"}, 2, "CACHEBUS_LOG_LEVEL"},
		{"unknown flag", nil, []string{"nats", "--no-such-flag"}, 2, "no-such-flag"},
		{"unexpected argument", nil, []string{"nats", "extra"}, 2, "unexpected arguments"},
		{"help", nil, []string{"nats", "-h"}, 0, "CACHEBUS_NATS_PORT (default 4222)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out := harn.Run(t, 10*time.Second, tc.env, tc.args...)
			if code != tc.code {
				t.Errorf("cachebus %s exited %d, want %d\n%s", strings.Join(tc.args, " "), code, tc.code, out)
			}
			if !strings.Contains(out, tc.say) {
				t.Errorf("cachebus %s does not say %q:\n%s", strings.Join(tc.args, " "), tc.say, out)
			}
		})
	}
}

// TestNATSPortInUse starts `cachebus nats` on a port another process holds:
// it must fail at once, naming the address, not hang as a server that
// never becomes ready.
func TestNATSPortInUse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	p := harn.Start(t, "nats", map[string]string{
		"CACHEBUS_NATS_PORT":      fmt.Sprint(port),
		"CACHEBUS_NATS_STORE_DIR": t.TempDir(),
		"CACHEBUS_HTTP_ADDR":      harness.FreeAddr(t),
	}, "nats")
	start := time.Now()
	code := p.Wait(10 * time.Second)
	if code == 0 {
		t.Errorf("cachebus nats on a port in use exited 0, want an error")
	}
	if out := p.Output(); !strings.Contains(out, fmt.Sprint(port)) || !strings.Contains(out, "in use") {
		t.Errorf("cachebus nats on a port in use does not say the port is in use:\n%s", harness.Tail(out, 20))
	}
	t.Logf("exited %d after %s", code, time.Since(start).Round(time.Millisecond))
}

// TestNATSTerminate runs a single `cachebus nats` with a client connected
// and requires SIGTERM to end it with exit 0 within a few seconds, and the
// event log kept in its store directory to be there after a restart.
func TestNATSTerminate(t *testing.T) {
	port := harness.FreePort(t)
	env := map[string]string{
		"CACHEBUS_NATS_PORT":      fmt.Sprint(port),
		"CACHEBUS_NATS_STORE_DIR": t.TempDir(),
		"CACHEBUS_HTTP_ADDR":      harness.FreeAddr(t),
	}
	n := &harness.NATSNode{Name: "nats", URL: fmt.Sprintf("nats://127.0.0.1:%d", port), HTTPAddr: env["CACHEBUS_HTTP_ADDR"], Env: env}
	n.P = harn.Start(t, n.Name, env, "nats")
	n.WaitReady(t, 30*time.Second)
	c := harness.Connect(t, n.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pub, err := bus.NewPublisher(c, "e2e-pub")
	if err != nil {
		t.Fatal(err)
	}
	keys := userKeys(0, 3)
	publishExpires(ctx, t, pub, keys)

	took := n.P.Terminate(10 * time.Second)
	t.Logf("exited 0 %s after SIGTERM", took.Round(time.Millisecond))

	n.P = harn.Start(t, "nats-restarted", env, "nats")
	n.WaitReady(t, 30*time.Second)
	checkLog(ctx, t, harness.Connect(t, n.URL), keys)
	n.P.Terminate(10 * time.Second)
}
