package persistence

import "strconv"

// Exports of snapshot.go's codec for the tests of package persistence_test
// (FuzzDecodeSnapshot); they are compiled into the test binary only.

// DecodeSnapshotChunk decodes data as the one chunk of partition p's
// snapshot of namespace ns. Sealed values are opened in place.
func (rc *RecordCodec) DecodeSnapshotChunk(ns string, p int, data []byte) ([]Record, error) {
	return rc.decodeSnapshot(ns, p, [][]byte{data})
}

// ParseSnapshotHeader parses a Cachebus-Snapshot header value and returns
// it written out again as snapshot.go writes it: the canonical form.
func ParseSnapshotHeader(hv string) (string, error) {
	m, c, err := parseSnapshotHeader(hv)
	switch {
	case err != nil:
		return "", err
	case m != nil:
		return m.header(), nil
	}
	return SnapshotChunkHeader(c.id, c.i, c.n), nil
}

// SnapshotChunkHeader is the Cachebus-Snapshot header of chunk i of n of
// snapshot id, as Compact writes it.
func SnapshotChunkHeader(id string, i, n int) string {
	return snapshotFormat + " chunk id=" + id + " i=" + strconv.Itoa(i) + " n=" + strconv.Itoa(n)
}

// AppendSnapshotEntry appends one entry of a snapshot chunk to b: the
// record's key, its Cachebus-Record header, its data (sealed or not) and
// its sequence in the log.
func AppendSnapshotEntry(b []byte, key, hdr string, data []byte, seq uint64) []byte {
	return appendSnapEntry(b, &snapEntry{key: key, hdr: hdr, data: data, seq: seq})
}
