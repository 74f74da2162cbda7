// Package wire is the record protocol of the cache tier: the requests
// clients send to cache nodes (get, put, delete, multi-get) and their
// replies, a text format any language can speak over NATS request/reply,
// and the binary entry batches nodes exchange among themselves to
// replicate writes and hand over partitions. docs/PROTOCOL.md describes
// both for readers of other languages.
package wire
