//go:build unix

package harness

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// Binaries are the programs under test, as Build made them.
type Binaries struct {
	// Dir is the directory Build put its binaries in, and where the ones
	// built later (Harness.Demoapp) go.
	Dir string
	// Cachebus is the cachebus binary: built in Dir, or the one
	// CACHEBUS_E2E_BIN names.
	Cachebus string
	// Race is whether the binaries are built with the race detector.
	Race bool
}

// Build builds ./cmd/cachebus into dir, with the race detector when race is
// set, or takes the binary CACHEBUS_E2E_BIN names instead when it is set.
//
// The tests should pass race when they run under the race detector
// themselves, so that races in the daemons' shutdown and failover paths
// fail the tests too, and so that the build reuses the packages
// `go test -race` has just compiled.
func Build(dir string, race bool) (Binaries, error) {
	bins := Binaries{Dir: dir, Race: race}
	if bin := os.Getenv("CACHEBUS_E2E_BIN"); bin != "" {
		abs, err := filepath.Abs(bin)
		if err == nil {
			_, err = os.Stat(abs)
		}
		if err != nil {
			return bins, fmt.Errorf("CACHEBUS_E2E_BIN=%s: %w", bin, err)
		}
		bins.Cachebus = abs
		return bins, nil
	}
	bins.Cachebus = filepath.Join(dir, "cachebus")
	if err := build(bins.Cachebus, race); err != nil {
		return bins, err
	}
	return bins, nil
}

// build compiles ./cmd/cachebus to out, its output going to stderr.
func build(out string, race bool) error {
	args := []string{"build", "-o", out}
	if race {
		args = append(args, "-race")
	}
	args = append(args, "github.com/cachebus/cachebus/cmd/cachebus")
	cmd := exec.Command("go", args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go %v: %w", args, err)
	}
	if testing.Verbose() {
		fmt.Printf("e2e: built %s (race=%v) in %s\n", out, race, time.Since(start).Round(time.Millisecond))
	}
	return nil
}

// Harness starts the processes of a suite's tests from the binaries Build
// made; one serves all the tests of a test binary.
type Harness struct {
	bins Binaries

	demoOnce sync.Once
	demoBin  string
	demoErr  error
}

// New returns a Harness that runs bins.
func New(bins Binaries) *Harness { return &Harness{bins: bins} }

// Binaries returns the binaries the harness runs.
func (h *Harness) Binaries() Binaries { return h.bins }

// Demoapp builds ./cmd/demoapp into the binaries' directory, with the race
// detector when they have it, the first time a test asks for it, and
// returns its path; a failed build fails t.
func (h *Harness) Demoapp(t testing.TB) string {
	t.Helper()
	h.demoOnce.Do(func() {
		h.demoBin = filepath.Join(h.bins.Dir, "demoapp")
		args := []string{"build", "-o", h.demoBin}
		if h.bins.Race {
			args = append(args, "-race")
		}
		out, err := exec.Command("go", append(args, "github.com/cachebus/cachebus/cmd/demoapp")...).CombinedOutput()
		if err != nil {
			h.demoErr = fmt.Errorf("go build ./cmd/demoapp: %w\n%s", err, out)
		}
	})
	if h.demoErr != nil {
		t.Fatal(h.demoErr)
	}
	return h.demoBin
}
