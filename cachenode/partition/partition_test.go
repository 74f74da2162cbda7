package partition_test

import (
	"fmt"
	"hash/fnv"
	"testing"

	"github.com/cachebus/cachebus/cachenode/partition"
)

// partitionVectors are the test vectors of docs/PROTOCOL.md, "Partitions
// and the baseline": key, FNV-1a 64 of its UTF-8 bytes, partition. They
// were computed with the Python function of that section.
var partitionVectors = []struct {
	key       string
	hash      string
	partition int
}{
	{"", "cbf29ce484222325", 805},
	{"a", "af63dc4c8601ec8c", 140},
	{"foobar", "85944171f73967e8", 1000},
	{"user:42", "6c151ea4dcd221c2", 450},
	{"session:8f14e45fceea167a", "31eee14794d22e4f", 591},
	{"users/1001", "4c6b8b05a344ab72", 882},
	{"Grüße", "20e72e11e324b0b8", 184},
	{"日本語", "ee9ee2b5c854ef87", 903},
	{"key with spaces", "726ddf59e3a13e7b", 635},
}

func TestPartitionOfVectors(t *testing.T) {
	for _, v := range partitionVectors {
		t.Run(v.key, func(t *testing.T) {
			h := fnv.New64a()
			h.Write([]byte(v.key))
			if got := fmt.Sprintf("%016x", h.Sum64()); got != v.hash {
				t.Errorf("FNV-1a 64 of %q = %s, vector says %s", v.key, got, v.hash)
			}
			if got := partition.PartitionOf(v.key); got != v.partition {
				t.Errorf("PartitionOf(%q) = %d, want %d", v.key, got, v.partition)
			}
		})
	}
}

// TestPartitionOfMatchesStdlib checks the inlined hash against hash/fnv
// over many keys, and that every partition is in range.
func TestPartitionOfMatchesStdlib(t *testing.T) {
	seen := map[int]bool{}
	for i := range 20000 {
		key := fmt.Sprintf("key:%d", i)
		h := fnv.New64a()
		h.Write([]byte(key))
		want := int(h.Sum64() % partition.Partitions)
		got := partition.PartitionOf(key)
		if got != want {
			t.Fatalf("PartitionOf(%q) = %d, hash/fnv gives %d", key, got, want)
		}
		seen[got] = true
	}
	if len(seen) != partition.Partitions {
		t.Errorf("20000 keys hit %d of %d partitions", len(seen), partition.Partitions)
	}
}

func BenchmarkPartitionOf(b *testing.B) {
	key := "session:8f14e45fceea167a"
	for b.Loop() {
		_ = partition.PartitionOf(key)
	}
}
