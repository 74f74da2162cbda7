//go:build !race

package fault

import "time"

// raceEnabled reports whether the tests run under the race detector.
const raceEnabled = false

// soakGood and soakBad are how many good expires and malformed messages
// TestSoakMalformed publishes: the 100,000 and 100,000 of issue 9.
const (
	soakGood = 100_000
	soakBad  = 100_000
)

// recordsWritePace is how long each writer of TestRecordsUnderFaults waits
// after an acknowledged write, and recordsMaxKeys how many keys it writes
// at most per namespace: at most 400 writes a second per namespace (some
// 5,000 plain and 3,000 long-term ones in a run), the cap being far above
// what the test's bounded phases write.
const (
	recordsWritePace = 10 * time.Millisecond
	// recordsPhaseWrites is how many more writes of each namespace the
	// test waits to see acknowledged before each fault and after the last:
	// a thousand.
	recordsPhaseWrites = 1_000
	recordsMaxKeys     = 30_000
)

// invTimeout bounds TestInvalidationUnderFaults, from the first process
// started; invWritePause is its writer's pause after each acknowledged
// expire: the 10,000 updates take some 30 s, long enough for every fault
// to happen while they go on.
const (
	invTimeout    = 3 * time.Minute
	invWritePause = 2 * time.Millisecond
)
