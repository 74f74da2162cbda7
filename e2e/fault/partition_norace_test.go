//go:build linux && !race

package fault

import "time"

// Pace and bounds of TestNetworkPartition.
const (
	splitWritePace    = 10 * time.Millisecond // a majority writer's pause after an acknowledged write
	splitMinorityPace = 20 * time.Millisecond // the cut-off node's writer's pause after each attempt
	splitReadPace     = 2 * time.Millisecond  // a reader's pause after each read
	splitPhaseWrites  = 300                   // majority writes acknowledged in each phase, at least
	splitSharedKeys   = 400                   // keys the majority writes over and over until the heal
	splitTimeout      = 90 * time.Second      // the whole test
)
