// Package topology tells who serves each partition of the cache tier right
// now: the assignment (from the baseline in JetStream) crossed with the
// live cache nodes and the partitions each one announces it holds in its
// heartbeat. Cache nodes use it to route, forward and replicate; the Go
// client uses it to address a key's owner directly.
package topology
