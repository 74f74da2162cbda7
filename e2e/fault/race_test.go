//go:build race

package fault

// raceEnabled reports whether the tests run under the race detector.
const raceEnabled = true

// soakGood and soakBad are how many good expires and malformed messages
// TestSoakMalformed publishes: a fifth of issue 9's 100,000 each under the
// race detector, which slows every publish and every decode several times.
const (
	soakGood = 20_000
	soakBad  = 20_000
)
