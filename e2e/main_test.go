//go:build unix

package e2e

import (
	"flag"
	"fmt"
	"os"
	"testing"

	"github.com/cachebus/cachebus/e2e/harness"
)

// harn starts the processes of the tests, from the binaries TestMain
// builds.
var harn *harness.Harness

func TestMain(m *testing.M) {
	// The test binary doubles as the app servers behind the gateway, so
	// that a test can SIGKILL one (groupcache's peer processes do so).
	if os.Getenv(harness.AppServerEnv) != "" {
		os.Exit(harness.RunAppServer())
	}
	flag.Parse()
	if testing.Short() {
		fmt.Println("e2e: skipped under -short: these tests build the cachebus binary and run NATS clusters as processes")
		os.Exit(0)
	}
	os.Exit(run(m))
}

// run builds the binaries into a directory removed after the run: with
// the race detector when the tests have it (see harness.Build).
func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "cachebus-e2e-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		return 1
	}
	defer os.RemoveAll(dir)
	bins, err := harness.Build(dir, raceEnabled)
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		return 1
	}
	harn = harness.New(bins)
	return m.Run()
}
