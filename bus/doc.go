// Package bus is cachebus's messaging layer: the NATS subject hierarchy for
// expire, seed, fallback, drain and heartbeats, the message types and their
// validation, acknowledged publishing, the event-log subscriber that applies
// every event exactly once with nothing lost across a disconnect, membership
// from heartbeats, and the embedded NATS server.
//
// The wire contract is docs/PROTOCOL.md; this package is its Go
// implementation. Every payload is a JSON object with "v":1. A decoder
// rejects a missing required field, a wrong type, an unknown version or a
// bad name with a *ValidationError naming the field and the reason.
//
// Delivery uses two paths at once. Core NATS delivers an event in tens of
// microseconds but at most once; the CACHEBUS_EVENTS JetStream stream keeps
// the ordered log and republishes each stored event, with its sequence, to
// <prefix>.log.<subject>. A Subscriber applies what core delivers the moment
// it arrives and takes the republished copy behind it: that copy confirms
// the first, or applies what core missed, and a pairing of the two keeps
// every event applied once. A sequence that skips ahead, a reconnect or a
// quiet tail sends the subscriber to read the missing range from the
// stream; when the log no longer holds it, the subscriber's Flush is
// called, so a cache is never left stale.
package bus
