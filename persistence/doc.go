// Package persistence owns what cachebus keeps in JetStream: the event
// log's stream (CACHEBUS_EVENTS), the cluster state bucket (CACHEBUS_STATE,
// the current fallback and the set of drains), the baseline and its
// partition assignment (CACHEBUS_NODES) and the log of long-term records
// (CACHEBUS_RECORDS: one message per key, optionally sealed with AES-GCM,
// replayed by partition), which the cache nodes write and read back.
//
// Streams and buckets are created or updated idempotently by every daemon
// at start, with limits and replicas from its Config, so no operator step
// must run before the first one.
package persistence
