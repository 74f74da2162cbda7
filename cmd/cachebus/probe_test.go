package main

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestProbe checks the container health check: 0 on a 2xx, 1 with a
// one-line reason otherwise, within its timeout.
func TestProbe(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/ok":
			w.WriteHeader(http.StatusNoContent)
		case "/readyz":
			http.Error(w, "waiting for JetStream to create the event log\nsecond line", http.StatusServiceUnavailable)
		case "/empty":
			w.WriteHeader(http.StatusInternalServerError)
		case "/moved":
			http.Redirect(w, r, "/ok", http.StatusFound)
		case "/slow":
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}
	}))
	// Close the slow handler before the server, which waits for it.
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) })
	// A dead port: a listener opened, then closed.
	dead := httptest.NewServer(http.NotFoundHandler())
	dead.Close()

	for _, tc := range []struct {
		name, url string
		args      []string
		code      int
		stdout    string
		stderr    string
	}{
		{name: "2xx", url: srv.URL + "/ok", code: 0, stdout: "GET " + srv.URL + "/ok: 204 No Content\n"},
		{name: "not ready", url: srv.URL + "/readyz", code: 1,
			stderr: "cachebus probe: GET " + srv.URL + "/readyz: 503 Service Unavailable: waiting for JetStream to create the event log\n"},
		{name: "5xx without body", url: srv.URL + "/empty", code: 1,
			stderr: "cachebus probe: GET " + srv.URL + "/empty: 500 Internal Server Error\n"},
		{name: "redirect not followed", url: srv.URL + "/moved", code: 1, stderr: "302 Found"},
		{name: "refused", url: dead.URL + "/healthz", code: 1, stderr: "connection refused"},
		{name: "timeout", url: srv.URL + "/slow", args: []string{"--timeout", "200ms"}, code: 1, stderr: "no answer within 200ms"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			code, stdout, stderr := cmdRun(t, "", append([]string{"probe", tc.url}, tc.args...)...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tc.code, stdout, stderr)
			}
			if stdout != tc.stdout && tc.stdout != "" {
				t.Errorf("stdout %q, want %q", stdout, tc.stdout)
			}
			if tc.code != 0 {
				if stdout != "" {
					t.Errorf("a failed probe printed %q on stdout", stdout)
				}
				if strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, tc.stderr) {
					t.Errorf("stderr %q, want one line with %q", stderr, tc.stderr)
				}
			}
			if took := time.Since(start); took > 5*time.Second {
				t.Errorf("took %s", took)
			}
		})
	}
}

// TestProbeUsage checks the bad invocations of probe: exit 2 and why.
func TestProbeUsage(t *testing.T) {
	checkUsage(t, []usageCase{
		{nil, []string{"probe"}, "missing URL"},
		{nil, []string{"probe", "127.0.0.1:7380/readyz"}, "want an http:// or https:// URL"},
		{nil, []string{"probe", "http://127.0.0.1:1/a", "http://127.0.0.1:1/b"}, "unexpected arguments after the URL"},
		{nil, []string{"probe", "http://127.0.0.1:1/", "--timeout", "0s"}, "--timeout / CACHEBUS_PROBE_TIMEOUT: must be positive"},
		{map[string]string{"CACHEBUS_PROBE_TIMEOUT": "soon"}, []string{"probe", "http://127.0.0.1:1/"}, "CACHEBUS_PROBE_TIMEOUT"},
	})
}

// TestProbeHelp checks that -h lists its flag and variable.
func TestProbeHelp(t *testing.T) {
	code, _, stderr := cmdRun(t, "", "probe", "-h")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, want := range []string{"-timeout", "CACHEBUS_PROBE_TIMEOUT (default 2s)"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("-h does not list %q:\n%s", want, stderr)
		}
	}
}
