//go:build unix

package harness

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus/bustest"
)

// tailLines is how much of a process's output a failed test shows.
const tailLines = 120

// Proc is a process started by a test. Its stdout and stderr go to one
// buffer (and to CACHEBUS_E2E_LOGDIR when set); when the test fails, the
// tail of that buffer is printed. It is killed when the test ends, if it is
// still running.
type Proc struct {
	t       testing.TB
	name    string
	cmd     *exec.Cmd
	out     *output
	started time.Time

	done  chan struct{} // closed once the process has exited
	state *os.ProcessState
	err   error // from cmd.Wait, other than a non-zero exit
}

// Start starts cachebus with args in the test's environment plus the
// variables of env. Any CACHEBUS_* variable of the test's own environment
// is left out, so that what runs is what the test says.
func (h *Harness) Start(t testing.TB, name string, env map[string]string, args ...string) *Proc {
	t.Helper()
	return StartBinary(t, h.bins.Cachebus, name, env, args...)
}

// StartBinary is Harness.Start for another program: the test binary itself
// run as an app server, say.
func StartBinary(t testing.TB, bin, name string, env map[string]string, args ...string) *Proc {
	t.Helper()
	p := &Proc{t: t, name: name, out: &output{}, done: make(chan struct{})}
	if dir := os.Getenv("CACHEBUS_E2E_LOGDIR"); dir != "" {
		file := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name()) + "-" + name + ".log"
		f, err := os.OpenFile(filepath.Join(dir, file), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			t.Fatalf("%s: log file: %v", name, err)
		}
		p.out.file = f
	}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = procEnv(env)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.SysProcAttr = sysProcAttr()
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("%s: start %s %s: %v", name, filepath.Base(bin), strings.Join(args, " "), err)
	}
	p.started = time.Now()
	go func() {
		err := p.cmd.Wait()
		var exitErr *exec.ExitError
		if err != nil && !errors.As(err, &exitErr) {
			p.err = err
		}
		p.state = p.cmd.ProcessState
		close(p.done)
	}()
	t.Cleanup(p.cleanup)
	return p
}

// Run runs a cachebus command to completion, bounded by timeout, and
// returns its exit code and combined output.
func (h *Harness) Run(t testing.TB, timeout time.Duration, env map[string]string, args ...string) (int, string) {
	t.Helper()
	p := h.Start(t, "cachebus "+strings.Join(args, " "), env, args...)
	return p.Wait(timeout), p.Output()
}

func procEnv(env map[string]string) []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CACHEBUS_") {
			out = append(out, kv)
		}
	}
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		out = append(out, k+"="+env[k])
	}
	return out
}

func (p *Proc) cleanup() {
	if !p.Exited() {
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	out := p.Output()
	if strings.Contains(out, "WARNING: DATA RACE") {
		p.t.Errorf("%s: the race detector reported a data race", p.name)
	}
	if p.t.Failed() {
		p.t.Logf("%s (%s) output, last %d lines:\n%s", p.name, p.Status(), tailLines, Tail(out, tailLines))
	}
	if p.out.file != nil {
		_ = p.out.file.Close()
	}
}

// Name is the name the process was started under.
func (p *Proc) Name() string { return p.name }

// Exited reports whether the process has exited.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Status describes the process for a message: its pid and how long it has
// run, or how it exited.
func (p *Proc) Status() string {
	if !p.Exited() {
		return fmt.Sprintf("pid %d, running for %s", p.cmd.Process.Pid, time.Since(p.started).Round(time.Millisecond))
	}
	if p.err != nil {
		return p.err.Error()
	}
	return p.state.String()
}

// Signal sends sig (SIGTERM, SIGKILL, SIGSTOP, SIGCONT…) to the process,
// which must still be running.
func (p *Proc) Signal(sig syscall.Signal) {
	p.t.Helper()
	if p.Exited() {
		p.t.Fatalf("%s: cannot send %v: process already exited (%s)", p.name, sig, p.Status())
	}
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatalf("%s: send %v: %v", p.name, sig, err)
	}
}

// Stop sends SIGSTOP and waits until every thread of the process has
// stopped: until then a thread the signal has not reached yet, woken by
// the network, may still answer, which a test of what a paused process
// no longer does must not count on.
func (p *Proc) Stop() {
	p.t.Helper()
	p.Signal(syscall.SIGSTOP)
	task := fmt.Sprintf("/proc/%d/task", p.cmd.Process.Pid)
	deadline := time.Now().Add(10 * time.Second)
	for {
		running, err := runningThreads(task)
		if err != nil {
			p.t.Fatalf("%s: after SIGSTOP: %v", p.name, err)
		}
		if running == 0 {
			return
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("%s: %d threads still not stopped 10s after SIGSTOP", p.name, running)
		}
		time.Sleep(time.Millisecond)
	}
}

// runningThreads counts the threads under task (/proc/<pid>/task) that are
// not stopped.
func runningThreads(task string) (int, error) {
	ents, err := os.ReadDir(task)
	if err != nil {
		return 0, err
	}
	running := 0
	for _, e := range ents {
		stat, err := os.ReadFile(task + "/" + e.Name() + "/stat")
		if err != nil {
			continue // the thread has exited
		}
		// The state follows the command name, which is in parentheses
		// and may itself hold spaces or parentheses.
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 || i+2 >= len(stat) {
			return 0, fmt.Errorf("%s: malformed stat %q", task, stat)
		}
		if st := stat[i+2]; st != 'T' && st != 't' {
			running++
		}
	}
	return running, nil
}

// Kill sends SIGKILL and waits for the process to be gone.
func (p *Proc) Kill() {
	p.t.Helper()
	p.Signal(syscall.SIGKILL)
	p.Wait(10 * time.Second)
}

// Wait waits at most timeout for the process to exit and returns its exit
// code (-1 when a signal ended it).
func (p *Proc) Wait(timeout time.Duration) int {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.t.Fatalf("%s: still running %s after it was expected to exit", p.name, timeout)
	}
	if p.err != nil {
		p.t.Fatalf("%s: wait: %v", p.name, p.err)
	}
	return p.state.ExitCode()
}

// Terminate sends SIGTERM and requires the process to exit 0 within
// timeout; it returns how long the exit took.
func (p *Proc) Terminate(timeout time.Duration) time.Duration {
	p.t.Helper()
	start := time.Now()
	p.Signal(syscall.SIGTERM)
	if code := p.Wait(timeout); code != 0 {
		p.t.Fatalf("%s: exited %d after SIGTERM (%s), want 0", p.name, code, p.Status())
	}
	return time.Since(start)
}

// WaitLine waits at most timeout for a line of the output that matches re
// and returns its submatches. It fails at once if the process exits first.
func (p *Proc) WaitLine(timeout time.Duration, re *regexp.Regexp) []string {
	p.t.Helper()
	var match []string
	bustest.WaitFor(p.t, timeout, fmt.Sprintf("%s to print a line matching %q", p.name, re), func() bool {
		exited := p.Exited() // before reading, so that the last lines are seen
		for _, line := range strings.Split(p.Output(), "\n") {
			if match = re.FindStringSubmatch(line); match != nil {
				return true
			}
		}
		if exited {
			p.t.Fatalf("%s exited (%s) before printing a line matching %q", p.name, p.Status(), re)
		}
		return false
	})
	return match
}

// Output is everything the process has written so far.
func (p *Proc) Output() string { return p.out.String() }

// output collects a process's stdout and stderr.
type output struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	file *os.File
}

func (o *output) Write(b []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.file != nil {
		_, _ = o.file.Write(b)
	}
	return o.buf.Write(b)
}

func (o *output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.String()
}

// Tail is the last n lines of s, after a line saying how many came before.
func Tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("[... %d lines before]", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}
