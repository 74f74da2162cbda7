//go:build race

package fault

import "time"

// raceEnabled reports whether the tests run under the race detector.
const raceEnabled = true

// soakGood and soakBad are how many good expires and malformed messages
// TestSoakMalformed publishes: a fifth of issue 9's 100,000 each under the
// race detector, which slows every publish and every decode several times.
const (
	soakGood = 20_000
	soakBad  = 20_000
)

// recordsWritePace is how long each writer of TestRecordsUnderFaults waits
// after an acknowledged write, and recordsMaxKeys how many keys it writes
// at most per namespace: under the race detector, which slows the cache
// nodes and NATS several times, a third of the writes.
const (
	recordsWritePace = 30 * time.Millisecond
	// recordsPhaseWrites is how many more writes of each namespace the
	// test waits to see acknowledged before each fault and after the last:
	// 150: fewer under the race detector.
	recordsPhaseWrites = 150
	recordsMaxKeys     = 10_000
)

// invTimeout bounds TestInvalidationUnderFaults, from the first process
// started; invWritePause is its writer's pause after each acknowledged
// expire. Under the race detector the five memo clients, the NATS cluster
// and the writer all run several times slower (CI saw 3m11s beside the
// e2e package): more time, and no pause, the acknowledgements being slow
// enough to spread the updates over the faults.
const (
	invTimeout    = 5 * time.Minute
	invWritePause = 0
)
