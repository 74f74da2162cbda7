// Package partition says where a key lives in the cache tier: its
// partition (FNV-1a 64 of the key, mod 1024) and the partition's owners, a
// primary and backups chosen by weighted rendezvous hashing over the
// baseline, data-center aware. Everything here is a pure function of its
// inputs, documented in docs/PROTOCOL.md so that any language can compute
// the same answers.
package partition
