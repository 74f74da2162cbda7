package persistence_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"slices"
	"testing"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/cachenode/partition"
	"github.com/cachebus/cachebus/persistence"
)

// FuzzDecodeSnapshot feeds the snapshot decoder any chunk data and the
// header parser any Cachebus-Snapshot header, as a foreign publisher or a
// corruption may leave them in the snapshot stream. Neither panics; each
// error wraps one of the snapshot or record errors; a header that parses
// writes out to a canonical form that parses to itself; and the records a
// chunk decodes to encode back into entries that decode to the same
// records. The chunk is decoded as one of partition p, the partition of
// its first entry's key when it has one. The seed corpus is in
// testdata/fuzz/FuzzDecodeSnapshot.
func FuzzDecodeSnapshot(f *testing.F) {
	s := bus.Subjects{Prefix: bus.DefaultPrefix}
	// Sealing with key 2 and opening with 2 or 1, the previous key.
	codec, err := persistence.NewRecordCodec(s, testKey(2), testKey(1))
	if err != nil {
		f.Fatal(err)
	}
	old, err := persistence.NewRecordCodec(s, testKey(1), "")
	if err != nil {
		f.Fatal(err)
	}
	const ns = "sessions"
	entry := func(b []byte, c *persistence.RecordCodec, r persistence.Record, seq uint64) []byte {
		r.NS, r.Partition = ns, partition.PartitionOf(r.Key)
		m, err := c.Encode(r)
		if err != nil {
			f.Fatal(err)
		}
		return persistence.AppendSnapshotEntry(b, r.Key, m.Header.Get(persistence.RecordHeader), m.Data, seq)
	}
	// "user:42" is in partition 450, as are these.
	k450 := keysIn("u", []int{450}, 3)
	sealed := entry(nil, codec, persistence.Record{Key: "user:42", Value: []byte("hello"), Version: 7}, 12)
	sealedOld := entry(nil, old, persistence.Record{Key: k450[0], Value: []byte("sealed under the previous key")}, 3)
	clear := persistence.AppendSnapshotEntry(nil, "user:42", "1 put exp=1795322156159 ver=1795322096159769415", []byte("hello"), 1)
	several := persistence.AppendSnapshotEntry(slices.Clone(clear), k450[1], "1 del exp=1795322156159 ver=9", nil, 2)
	several = persistence.AppendSnapshotEntry(several, k450[2], "1 put zone=eu", []byte{}, 1<<63)
	manifest := "1 manifest id=Ab3xGkPq0Zt9 n=2 upto=1000 checked=1795322156159 folded=1795322096159 records=4096 log=1795322096159769415"
	chunk := persistence.SnapshotChunkHeader("Ab3xGkPq0Zt9", 1, 2)
	f.Add(clear, manifest)
	f.Add(sealed, chunk)
	f.Add(slices.Concat(sealed, sealedOld), "1 chunk id=x i=0 n=1")
	f.Add(several, "1 manifest id=a n=0 upto=0 checked=0 folded=0 records=0 log=0")
	f.Add(clear[:len(clear)-3], "1 chunk id=a i=2 n=2")
	f.Add(persistence.AppendSnapshotEntry(slices.Clone(clear), "other", "1 put", nil, 1), "2 chunk id=a i=0 n=1")
	f.Add(persistence.AppendSnapshotEntry(nil, "user:42", "1 put kid=0123456789abcdef", make([]byte, 40), 1), "1 lump")
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, "")

	f.Fuzz(func(t *testing.T, data []byte, hv string) {
		if canon, err := persistence.ParseSnapshotHeader(hv); err != nil {
			if !errors.Is(err, persistence.ErrBadSnapshot) {
				t.Fatalf("header %q: error %v is no ErrBadSnapshot", hv, err)
			}
		} else if again, err := persistence.ParseSnapshotHeader(canon); err != nil || again != canon {
			t.Fatalf("header %q writes out as %q, which parses to %q, %v", hv, canon, again, err)
		}

		p := 450
		if n, k := binary.Uvarint(data); k > 0 && n > 0 && n <= uint64(len(data)-k) {
			p = partition.PartitionOf(string(data[k : k+int(n)]))
		}
		recs, err := codec.DecodeSnapshotChunk(ns, p, slices.Clone(data))
		if err != nil {
			if !errors.Is(err, persistence.ErrBadSnapshot) && !errors.Is(err, persistence.ErrBadRecord) &&
				!errors.Is(err, persistence.ErrRecordKeyUnknown) && !errors.Is(err, persistence.ErrRecordSeal) {
				t.Fatalf("error %v wraps none of the snapshot and record errors", err)
			}
			return
		}
		var again []byte
		for _, r := range recs {
			if r.NS != ns || r.Partition != p || r.Partition != partition.PartitionOf(r.Key) {
				t.Fatalf("decoded %+v from a chunk of %s/%d", r, ns, p)
			}
			m, err := codec.Encode(r)
			if err != nil {
				t.Fatalf("decoded %+v does not encode: %v", r, err)
			}
			again = persistence.AppendSnapshotEntry(again, r.Key, m.Header.Get(persistence.RecordHeader), m.Data, r.Seq)
		}
		back, err := codec.DecodeSnapshotChunk(ns, p, again)
		if err != nil {
			t.Fatalf("re-encoded %d records do not decode: %v", len(recs), err)
		}
		if len(back) != len(recs) {
			t.Fatalf("%d records re-encoded decode to %d", len(recs), len(back))
		}
		for i, r := range recs {
			b := back[i]
			if b.NS != r.NS || b.Key != r.Key || b.Partition != r.Partition || b.Deleted != r.Deleted || b.Seq != r.Seq ||
				b.Version != r.Version || !b.Expires.Equal(r.Expires) || !bytes.Equal(b.Value, r.Value) {
				t.Fatalf("round trip changed %+v into %+v", r, b)
			}
		}
	})
}
