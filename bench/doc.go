// Package bench measures cachebus the way an operator would judge it: how
// long an expire takes from the publisher to every subscriber, and how many
// keys per second the event log can invalidate.
//
// Fanout runs N subscribers, each on its own NATS connection, and a
// publisher paced by an absolute schedule (message i is due at start +
// i/rate, so a late wake-up is caught up rather than stretching the run).
// Every message carries its send time in its key, and each subscriber
// records publish→applied latency in a Histogram. Two paths are measured
// side by side in one run, in short alternating rounds so that a noisy
// machine weighs on both alike:
//
//   - core: a plain core NATS publish to a subject no stream captures,
//     received by an nc.Subscribe callback that decodes the expire;
//   - bus: an asynchronous, acknowledged JetStream publish with a
//     Nats-Msg-Id header into the event log, applied by a bus.Subscriber
//     (core copy applied at once, log copy paired and dropped).
//
// With Memo set, the memo path takes the bus path's place: one
// memo.Client calls Flush (which waits for the log's acknowledgement) from
// a small pool of goroutines, and each subscriber is a memo.Client that
// records the latency when its Observe hook runs, once the flush has
// reached its memory. That is the figure an app sees.
//
// Each path reports p50, p99, p99.9 and max, what every subscriber
// received, and what was lost (an acknowledged bus event or memo flush
// missing at a subscriber is a bug). The throughput mode publishes
// expires of Batch keys through the event log as fast as acknowledgements
// allow and reports the keys per second applied at the slowest subscriber.
//
// The server is an embedded nats-server started in this process (clients
// still reach it over loopback TCP) or an external one by URL; the report
// says which.
package bench
