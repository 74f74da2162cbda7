//go:build unix && !race

package e2e

const raceEnabled = false

// longTermRecords is how many long-term records TestLongTermSurvivesSIGKILL
// writes: the 100,000 of issue 6.
const longTermRecords = 100_000

// drainRecords is how many records TestDrainNodeUnderLoad holds: the
// 200,000 of issue 6.
const drainRecords = 200_000
