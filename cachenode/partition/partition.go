package partition

// Partitions is the number of partitions the key space of the cache tier is
// split into. It is part of the wire contract: every client and node must
// agree on it, so it never changes.
const Partitions = 1024

// All lists every partition, 0 to Partitions-1, in a new slice: what a
// whole-namespace replay or compaction is asked for.
func All() []int {
	ps := make([]int, Partitions)
	for i := range ps {
		ps[i] = i
	}
	return ps
}

// FNV-1a 64-bit parameters.
const (
	fnvOffset64 = 14695981039346656037
	fnvPrime64  = 1099511628211
)

// fnv1a64 is FNV-1a 64-bit over the bytes of s, without the allocation of
// hash/fnv's []byte conversion.
func fnv1a64(s string) uint64 {
	h := uint64(fnvOffset64)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= fnvPrime64
	}
	return h
}

// PartitionOf returns the partition of key: FNV-1a 64-bit over the key's
// bytes (its UTF-8 encoding), modulo Partitions. docs/PROTOCOL.md gives the
// same definition with test vectors for other languages.
func PartitionOf(key string) int {
	return int(fnv1a64(key) % Partitions)
}
