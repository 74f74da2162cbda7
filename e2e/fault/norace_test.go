//go:build !race

package fault

// raceEnabled reports whether the tests run under the race detector.
const raceEnabled = false

// soakGood and soakBad are how many good expires and malformed messages
// TestSoakMalformed publishes: the 100,000 and 100,000 of issue 9.
const (
	soakGood = 100_000
	soakBad  = 100_000
)
