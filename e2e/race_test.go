//go:build unix && race

package e2e

const raceEnabled = true

// longTermRecords is how many long-term records TestLongTermSurvivesSIGKILL
// writes: fewer under the race detector, which slows every write.
const longTermRecords = 10_000

// drainRecords is how many records TestDrainNodeUnderLoad holds: fewer
// under the race detector.
const drainRecords = 20_000
