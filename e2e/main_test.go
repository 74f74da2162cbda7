//go:build unix

package e2e

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// cachebusBin is the cachebus binary under test, set by TestMain.
var cachebusBin string

func TestMain(m *testing.M) {
	// The test binary doubles as the app servers behind the gateway, so
	// that a test can SIGKILL one (groupcache's peer processes do so).
	if os.Getenv(appServerEnv) != "" {
		os.Exit(runAppServer())
	}
	flag.Parse()
	if testing.Short() {
		fmt.Println("e2e: skipped under -short: these tests build the cachebus binary and run NATS clusters as processes")
		os.Exit(0)
	}
	os.Exit(run(m))
}

// binDir holds the binaries the tests build, removed after the run.
var binDir string

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "cachebus-e2e-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		return 1
	}
	defer os.RemoveAll(dir)
	binDir = dir
	if bin := os.Getenv("CACHEBUS_E2E_BIN"); bin != "" {
		abs, err := filepath.Abs(bin)
		if err == nil {
			_, err = os.Stat(abs)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "e2e: CACHEBUS_E2E_BIN=%s: %v\n", bin, err)
			return 1
		}
		cachebusBin = abs
		return m.Run()
	}
	cachebusBin = filepath.Join(dir, "cachebus")
	if err := build(cachebusBin); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		return 1
	}
	return m.Run()
}

// build compiles ./cmd/cachebus to out. The binary gets the race detector
// when the tests have it, so that races in the daemons' shutdown and
// failover paths fail the tests too, and so that the build reuses the
// packages `go test -race` has just compiled.
func build(out string) error {
	args := []string{"build", "-o", out}
	if raceEnabled {
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
		fmt.Printf("e2e: built %s (race=%v) in %s\n", out, raceEnabled, time.Since(start).Round(time.Millisecond))
	}
	return nil
}
