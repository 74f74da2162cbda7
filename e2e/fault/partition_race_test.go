//go:build linux && race

package fault

import "time"

// Pace and bounds of TestNetworkPartition under the race detector, which
// slows the daemons several times: fewer writes over fewer keys (so that
// most keys are written again during the cut), and a longer budget.
const (
	splitWritePace    = 40 * time.Millisecond // a majority writer's pause after an acknowledged write
	splitMinorityPace = 50 * time.Millisecond // the cut-off node's writer's pause after each attempt
	splitReadPace     = 10 * time.Millisecond // a reader's pause after each read
	splitPhaseWrites  = 100                   // majority writes acknowledged in each phase, at least
	splitSharedKeys   = 120                   // keys the majority writes over and over until the heal
	splitTimeout      = 150 * time.Second     // the whole test
)
