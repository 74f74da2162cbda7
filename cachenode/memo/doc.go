// Package memo memoizes expensive results in an app server's own memory
// and keeps every app server's copy coherent through the bus.
//
// Do returns the cached value of a key or computes it once (concurrent
// misses on one key share one call). Flush drops a key here at once and
// tells every peer one-to-many, through the acknowledged event log; Seed
// sets a value here and on every peer. Peers never re-broadcast, and a
// client's own events coming back from the bus do no second work.
//
// While the cluster's fallback is on for the namespace, Do serves a stale
// copy (kept for StaleGrace past its TTL) instead of calling fn; and when
// fn fails, a stale copy is served instead of the error (stale-if-error).
// A client that missed events the log no longer holds flushes its whole
// namespace rather than serve what it cannot vouch for.
package memo
