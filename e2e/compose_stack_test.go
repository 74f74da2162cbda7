//go:build unix

package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cachebus/cachebus/e2e/harness"
	"github.com/cachebus/cachebus/lbgateway"
)

// Settings of the compose stack under test.
const (
	// composeToken and composeSecret replace the compose file's documented
	// defaults, so that the test does not pass only because of them.
	composeToken  = "e2e-compose-admin-token"
	composeSecret = "e2e-compose-gateway-secret-0123456789"
	// composeDrainTimeout is how long a stopped app waits for its sessions
	// (CACHEBUS_DEMO_DRAIN_TIMEOUT; the file's default is 20s).
	composeDrainTimeout = "5s"
	// composeLogTail is how much of a service's log a failure prints.
	composeLogTail = 200
)

// composeServices are the services of compose/docker-compose.yml.
var composeServices = []string{"nats1", "nats2", "nats3", "node1", "node2", "node3", "app1", "app2", "app3", "gw1", "gw2"}

// composeTool is the Compose command that answered: `docker compose`
// (v2) or `docker-compose` (1.x).
type composeTool struct {
	name string
	argv []string
}

// requireDocker skips the test, with the reason, where no Docker engine or
// no Compose answers; with CACHEBUS_REQUIRE_DOCKER=1 (CI sets it) that is
// a failure instead.
func requireDocker(t *testing.T) composeTool {
	t.Helper()
	missing := func(format string, args ...any) {
		t.Helper()
		msg := fmt.Sprintf(format, args...)
		if os.Getenv("CACHEBUS_REQUIRE_DOCKER") == "1" {
			t.Fatalf("%s (CACHEBUS_REQUIRE_DOCKER=1: this machine must run the compose test)", msg)
		}
		t.Skip(msg)
	}
	if _, err := exec.LookPath("docker"); err != nil {
		missing("no docker command: %v", err)
	}
	if out, err := composeExec(30*time.Second, nil, "", "docker", "info", "--format", "{{.ServerVersion}}"); err != nil {
		missing("no Docker engine answers `docker info`: %v: %s", err, lastLine(out))
	}
	var tried []string
	for _, c := range []composeTool{
		{"docker compose", []string{"docker", "compose"}},
		{"docker-compose", []string{"docker-compose"}},
	} {
		if _, err := exec.LookPath(c.argv[0]); err != nil {
			tried = append(tried, fmt.Sprintf("%s: %v", c.name, err))
			continue
		}
		out, err := composeExec(30*time.Second, nil, "", append(slices.Clone(c.argv), "version")...)
		if err != nil {
			tried = append(tried, fmt.Sprintf("%s version: %v: %s", c.name, err, lastLine(out)))
			continue
		}
		t.Logf("compose: %s (%s)", c.name, firstLine(out))
		return c
	}
	missing("no Compose answers: %s", strings.Join(tried, "; "))
	return composeTool{}
}

// composeExec runs a command bounded by timeout and returns its combined
// output. env nil is the test's environment.
func composeExec(timeout time.Duration, env []string, dir string, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env, cmd.Dir = env, dir
	// A killed docker-compose can leave children holding the pipes open.
	cmd.WaitDelay = 5 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("still running after %s: %w", timeout, ctx.Err())
	}
	return out.String(), err
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(strings.TrimSpace(s), "\n")
	return line
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// composeStack is compose/docker-compose.yml brought up under a project
// name of its own, with host ports of its own, from a copy of the
// repository with its modules vendored.
type composeStack struct {
	t       *testing.T
	tool    composeTool
	repo    string // the repository under test
	ctxDir  string // the vendored copy: the build context
	file    string // the compose file, in the copy
	project string
	image   string // the image the services run, tagged for this run only
	env     []string
	ports   struct{ gw1, gw2, nats, admin int }
	logged  map[string]bool // services whose log a failure has printed
	// end is when the test must stop waiting, so that its cleanup still
	// runs: a test killed by go test's -timeout leaves the stack running.
	end      time.Time
	cleaning bool // cleanup has begun: its commands get their full time
}

// composeCleanupTime is what cleanup needs at most: logs and down.
const composeCleanupTime = 2 * time.Minute

// clip shortens timeout to the time left before s.end.
func (s *composeStack) clip(timeout time.Duration) time.Duration {
	if s.end.IsZero() || s.cleaning {
		return timeout
	}
	return max(min(timeout, time.Until(s.end)), time.Second)
}

func newComposeStack(t *testing.T, tool composeTool) *composeStack {
	t.Helper()
	repo, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	id := hex.EncodeToString(b[:])
	s := &composeStack{t: t, tool: tool, repo: repo, ctxDir: t.TempDir(),
		// Letters and digits only: both Compose versions take it as is.
		project: "cbe2e" + id, image: "cachebus-e2e:" + id, logged: map[string]bool{}}
	s.file = filepath.Join(s.ctxDir, "compose", "docker-compose.yml")
	if d, ok := t.Deadline(); ok {
		s.end = d.Add(-composeCleanupTime)
		if time.Until(s.end) < 4*time.Minute {
			t.Fatalf("go test -timeout leaves %s: the compose test needs about 4 minutes and %s to clean up",
				time.Until(d).Round(time.Second), composeCleanupTime)
		}
	}
	s.ports.gw1, s.ports.gw2, s.ports.nats, s.ports.admin = harness.FreePort(t), harness.FreePort(t), harness.FreePort(t), harness.FreePort(t)
	// The test's environment without its CACHEBUS_* variables, which the
	// compose file would otherwise take, plus the stack's own.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CACHEBUS_") && !strings.HasPrefix(kv, "COMPOSE_") {
			s.env = append(s.env, kv)
		}
	}
	s.env = append(s.env,
		"CACHEBUS_IMAGE="+s.image,
		"CACHEBUS_ADMIN_TOKEN="+composeToken,
		"CACHEBUS_GATEWAY_SECRET="+composeSecret,
		"CACHEBUS_DEMO_DRAIN_TIMEOUT="+composeDrainTimeout,
		fmt.Sprintf("CACHEBUS_HOST_GW1_PORT=%d", s.ports.gw1),
		fmt.Sprintf("CACHEBUS_HOST_GW2_PORT=%d", s.ports.gw2),
		fmt.Sprintf("CACHEBUS_HOST_NATS_PORT=%d", s.ports.nats),
		fmt.Sprintf("CACHEBUS_HOST_ADMIN_PORT=%d", s.ports.admin),
	)
	return s
}

func (s *composeStack) gw1() string     { return fmt.Sprintf("http://127.0.0.1:%d", s.ports.gw1) }
func (s *composeStack) gw2() string     { return fmt.Sprintf("http://127.0.0.1:%d", s.ports.gw2) }
func (s *composeStack) natsURL() string { return fmt.Sprintf("nats://127.0.0.1:%d", s.ports.nats) }

// compose runs the Compose command on the stack, bounded by timeout.
func (s *composeStack) compose(timeout time.Duration, args ...string) (string, error) {
	argv := append(slices.Clone(s.tool.argv), "-f", s.file, "-p", s.project)
	return composeExec(s.clip(timeout), s.env, s.ctxDir, append(argv, args...)...)
}

// mustCompose is compose that fails the test, with the logs of services,
// when the command fails.
func (s *composeStack) mustCompose(timeout time.Duration, services []string, args ...string) string {
	s.t.Helper()
	out, err := s.compose(timeout, args...)
	if err != nil {
		s.fatalf(services, "%s %s: %v\n%s", s.tool.name, strings.Join(args, " "), err, harness.Tail(out, 60))
	}
	return out
}

// fatalf fails the test, saying why, then the last lines of the logs
// of services (every service when none is named).
func (s *composeStack) fatalf(services []string, format string, args ...any) {
	s.t.Helper()
	s.t.Errorf(format, args...)
	s.printLogs(services...)
	s.t.FailNow()
}

func (s *composeStack) printLogs(services ...string) {
	s.t.Helper()
	if len(services) == 0 {
		services = composeServices
	}
	if out, err := s.compose(time.Minute, "ps"); err == nil {
		s.t.Logf("%s ps:\n%s", s.tool.name, out)
	}
	for _, svc := range services {
		// Names come from answers too (Demo-App): only the stack's services.
		if s.logged[svc] || !slices.Contains(composeServices, svc) {
			continue
		}
		s.logged[svc] = true
		out, err := s.compose(time.Minute, "logs", "--no-color", "--tail", fmt.Sprint(composeLogTail), svc)
		if err != nil {
			s.t.Logf("%s logs %s: %v", s.tool.name, svc, err)
		}
		s.t.Logf("%s: last %d lines of its log:\n%s", svc, composeLogTail, out)
	}
}

// prepare makes the build context and the Go base image with
// compose/local-image.sh: nothing is pulled, nothing is downloaded.
func (s *composeStack) prepare() (goImage string) {
	s.t.Helper()
	script := filepath.Join(s.repo, "compose", "local-image.sh")
	start := time.Now()
	if out, err := composeExec(s.clip(5*time.Minute), nil, s.repo, "bash", script, "context", s.ctxDir); err != nil {
		s.t.Fatalf("local-image.sh context: %v\n%s", err, harness.Tail(out, 40))
	}
	s.t.Logf("build context with vendored modules in %s: %s", s.ctxDir, time.Since(start).Round(time.Millisecond))
	start = time.Now()
	out, err := composeExec(s.clip(10*time.Minute), nil, s.repo, "bash", script, "base")
	if err != nil {
		s.t.Fatalf("local-image.sh base: %v\n%s", err, harness.Tail(out, 40))
	}
	goImage = lastLine(out)
	s.t.Logf("Go base image %s: %s", goImage, time.Since(start).Round(time.Millisecond))
	return goImage
}

// build builds the stack's image once, through Compose: the services
// share it. The legacy builder keeps the build stage's layers as untagged
// images; tagging that stage (a second, cached build) lets cleanup remove
// them with the image.
func (s *composeStack) build(goImage string) {
	s.t.Helper()
	start := time.Now()
	s.mustCompose(15*time.Minute, nil, "build", "--build-arg", "GO_IMAGE="+goImage, "nats1")
	s.t.Logf("image %s built by %s build: %s", s.image, s.tool.name, time.Since(start).Round(time.Millisecond))
	if out, err := composeExec(s.clip(5*time.Minute), nil, s.ctxDir, "docker", "build", "-q", "-f", "compose/Dockerfile",
		"--build-arg", "GO_IMAGE="+goImage, "--target", "build", "-t", s.image+"-build", "."); err != nil {
		s.t.Fatalf("docker build --target build: %v\n%s", err, harness.Tail(out, 40))
	}
}

// cleanup removes the stack, its volumes and network, and the images
// tagged for this run; the Go base image stays, reused by tag.
func (s *composeStack) cleanup() {
	s.cleaning = true
	// A failure that printed no log (a host command, a timeout of go
	// test's) gets every service's.
	if s.t.Failed() && len(s.logged) == 0 {
		s.printLogs()
	}
	if out, err := s.compose(3*time.Minute, "down", "-v", "--remove-orphans", "-t", "5"); err != nil {
		s.t.Errorf("%s down: %v\n%s", s.tool.name, err, harness.Tail(out, 40))
	}
	out, err := composeExec(time.Minute, nil, "", "docker", "ps", "-aq", "--filter", "label=com.docker.compose.project="+s.project)
	if err != nil || strings.TrimSpace(out) != "" {
		s.t.Errorf("containers of %s left after down: %q %v", s.project, out, err)
	}
	for _, img := range []string{s.image, s.image + "-build"} {
		if _, err := composeExec(time.Minute, nil, "", "docker", "image", "inspect", img); err != nil {
			continue // never built
		}
		if out, err := composeExec(time.Minute, nil, "", "docker", "rmi", img); err != nil {
			s.t.Errorf("docker rmi %s: %v\n%s", img, err, out)
		}
	}
}

// containerHealth is what `docker inspect` says of a container's health.
type containerHealth struct {
	State struct {
		Status string
		Health *struct {
			Status string
			Log    []struct{ Output string }
		}
	}
}

// health reports each service's container health: "healthy", "starting"
// or "unhealthy" (with what its last check said), or the container's
// state when it is not running.
func (s *composeStack) health(services ...string) (map[string]string, error) {
	got := map[string]string{}
	for _, svc := range services {
		out, err := s.compose(time.Minute, "ps", "-q", svc)
		if err != nil {
			return nil, fmt.Errorf("ps -q %s: %w: %s", svc, err, lastLine(out))
		}
		id := strings.TrimSpace(out)
		if id == "" {
			got[svc] = "absent"
			continue
		}
		out, err = composeExec(time.Minute, nil, "", "docker", "inspect", id)
		if err != nil {
			return nil, fmt.Errorf("docker inspect %s: %w: %s", svc, err, lastLine(out))
		}
		var cs []containerHealth
		if err := json.Unmarshal([]byte(out), &cs); err != nil || len(cs) != 1 {
			return nil, fmt.Errorf("docker inspect %s: %d containers, %v", svc, len(cs), err)
		}
		c := cs[0]
		switch {
		case c.State.Status != "running":
			got[svc] = c.State.Status
		case c.State.Health == nil:
			got[svc] = "no healthcheck"
		case c.State.Health.Status == "healthy" || len(c.State.Health.Log) == 0:
			got[svc] = c.State.Health.Status
		default:
			last := c.State.Health.Log[len(c.State.Health.Log)-1].Output
			got[svc] = c.State.Health.Status + " (" + strings.TrimSpace(last) + ")"
		}
	}
	return got, nil
}

// waitHealthy waits until every one of services is running and healthy.
func (s *composeStack) waitHealthy(timeout time.Duration, services ...string) {
	s.t.Helper()
	var last map[string]string
	s.waitFor(timeout, "services healthy: "+strings.Join(services, " "), nil, func() bool {
		got, err := s.health(services...)
		if err != nil {
			s.fatalf(services, "health: %v", err)
		}
		last = got
		for _, svc := range services {
			if got[svc] != "healthy" {
				return false
			}
		}
		return true
	}, func() []string {
		var bad []string
		for _, svc := range services {
			if last[svc] != "healthy" {
				bad = append(bad, svc)
			}
		}
		s.t.Logf("health: %v", last)
		return bad
	})
}

// waitFor polls cond until it holds, at most timeout; on timeout it prints
// the logs of the services blame names (or of services) and fails.
func (s *composeStack) waitFor(timeout time.Duration, what string, services []string, cond func() bool, blame ...func() []string) {
	s.t.Helper()
	timeout = s.clip(timeout)
	deadline := time.Now().Add(timeout)
	for wait := 10 * time.Millisecond; ; wait = min(wait*2, time.Second) {
		if cond() {
			return
		}
		if time.Now().After(deadline) {
			if len(blame) > 0 {
				services = blame[0]()
			}
			s.fatalf(services, "timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(wait)
	}
}

// cachebus runs a cachebus command on the host against the stack's
// published NATS port, as an operator would, and requires exit 0.
func (s *composeStack) cachebus(timeout time.Duration, services []string, args ...string) string {
	s.t.Helper()
	code, out := harn.Run(s.t, s.clip(timeout), map[string]string{"CACHEBUS_NATS_URL": s.natsURL()}, args...)
	if code != 0 {
		s.fatalf(services, "cachebus %s: exit %d\n%s", strings.Join(args, " "), code, out)
	}
	return out
}

// gatewayStatus reads a gateway's status.json, which sits behind its
// admin checks: the host is an allowed source (a private address on the
// Compose network), and the token goes as basic auth, as a browser sends it.
func (s *composeStack) gatewayStatus(gw string) (lbgateway.Status, error) {
	var st lbgateway.Status
	req, err := http.NewRequest(http.MethodGet, gw+"/_cachebus/status.json", nil)
	if err != nil {
		return st, err
	}
	req.SetBasicAuth("e2e", composeToken)
	resp, err := harness.HTTPClient.Do(req)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return st, err
	}
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("status.json: %s: %s", resp.Status, body)
	}
	if err := json.Unmarshal(body, &st); err != nil {
		return st, fmt.Errorf("status.json: %w", err)
	}
	return st, nil
}

// waitGateways waits until cond holds for the status of both gateways.
func (s *composeStack) waitGateways(timeout time.Duration, what string, cond func(lbgateway.Status) bool) {
	s.t.Helper()
	for _, gw := range s.gateways() {
		var lastErr error
		var last lbgateway.Status
		s.waitFor(timeout, gw.name+": "+what, []string{gw.name}, func() bool {
			last, lastErr = s.gatewayStatus(gw.url)
			return lastErr == nil && cond(last)
		}, func() []string {
			b, _ := json.Marshal(last)
			s.t.Logf("%s status: %s (%v)", gw.name, b, lastErr)
			return []string{gw.name}
		})
	}
}
