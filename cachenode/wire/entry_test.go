package wire_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/cachebus/cachebus/cachenode/wire"
)

// parseAll collects the entries of a batch. ParseBatch reuses its Entry
// and aliases data, so each is copied.
func parseAll(data []byte) ([]wire.Entry, byte, error) {
	var out []wire.Entry
	flags, err := wire.ParseBatch(data, func(e *wire.Entry) error {
		c := *e
		c.Value = bytes.Clone(e.Value)
		out = append(out, c)
		return nil
	})
	return out, flags, err
}

// equalEntry reports whether a and b are the same entry; a nil and an
// empty value are the same value.
func equalEntry(a, b wire.Entry) bool {
	return a.NS == b.NS && a.Key == b.Key && a.Version == b.Version && a.Writer == b.Writer &&
		a.Deadline == b.Deadline && a.Deleted == b.Deleted && bytes.Equal(a.Value, b.Value)
}

func equalEntries(a, b []wire.Entry) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !equalEntry(a[i], b[i]) {
			return false
		}
	}
	return true
}

// testEntries are entries of every shape a batch carries.
var testEntries = []wire.Entry{
	{NS: "users", Key: "user:42", Version: 7, Writer: 2, Deadline: 1_700_000_000_000_000_000, Value: []byte(`{"name":"ada"}`)},
	{NS: "users", Key: "user:43", Version: 8, Writer: 1, Deleted: true},
	{NS: "sessions", Key: "s", Version: 1, Writer: 3, Value: []byte{}},
	{NS: strings.Repeat("n", 64), Key: strings.Repeat("k", 300), Version: math.MaxUint64, Writer: math.MaxUint64,
		Deadline: -1, Value: bytes.Repeat([]byte{0, '\n', 0xff}, 100)},
	{NS: "a", Key: "b", Version: 0, Writer: 0, Deadline: math.MinInt64, Value: []byte("x")},
}

// batch builds a batch of entries, checking EntrySize against every
// append. It returns the batch and the offsets where each entry ends.
func batch(t *testing.T, flags byte, entries []wire.Entry) ([]byte, []int) {
	t.Helper()
	buf := wire.NewBatch(nil, flags)
	var ends []int
	for i := range entries {
		n := len(buf)
		buf = wire.AppendEntry(buf, &entries[i])
		if got, want := len(buf)-n, wire.EntrySize(&entries[i]); got != want {
			t.Fatalf("entry %d: AppendEntry added %d bytes, EntrySize says %d", i, got, want)
		}
		ends = append(ends, len(buf))
	}
	return buf, ends
}

func TestBatchRoundTrip(t *testing.T) {
	tests := []struct {
		name    string
		flags   byte
		entries []wire.Entry
	}{
		{"empty", 0, nil},
		{"last empty", wire.FlagLast, nil},
		{"one", 0, testEntries[:1]},
		{"several", 0, testEntries},
		{"several last", wire.FlagLast, testEntries},
		{"unknown flags kept", 0xfe, testEntries[1:3]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data, _ := batch(t, tt.flags, tt.entries)
			got, flags, err := parseAll(data)
			if err != nil {
				t.Fatalf("ParseBatch: %v", err)
			}
			if flags != tt.flags {
				t.Fatalf("flags %#x, want %#x", flags, tt.flags)
			}
			if !equalEntries(got, tt.entries) {
				t.Fatalf("ParseBatch = %+v, want %+v", got, tt.entries)
			}
		})
	}
}

func TestNewBatchReusesBuffer(t *testing.T) {
	buf, _ := batch(t, 0, testEntries)
	reused := wire.NewBatch(buf, wire.FlagLast)
	if len(reused) != 2 || &reused[0] != &buf[0] {
		t.Fatalf("NewBatch did not restart the buffer: len %d", len(reused))
	}
	reused = wire.AppendEntry(reused, &testEntries[2])
	got, flags, err := parseAll(reused)
	if err != nil || flags != wire.FlagLast || !equalEntries(got, testEntries[2:3]) {
		t.Fatalf("ParseBatch = %+v, %#x, %v", got, flags, err)
	}
}

// TestParseBatchTruncated cuts a batch at every byte. A cut between
// entries is a shorter valid batch; any other cut must be refused with
// ErrBadBatch, before fn sees the cut entry.
func TestParseBatchTruncated(t *testing.T) {
	data, ends := batch(t, wire.FlagLast, testEntries)
	complete := map[int]int{2: 0} // offset → entries before it
	for i, end := range ends {
		complete[end] = i + 1
	}
	for i := range len(data) {
		got, _, err := parseAll(data[:i:i])
		if n, ok := complete[i]; ok {
			if err != nil || !equalEntries(got, testEntries[:n]) {
				t.Fatalf("cut at %d: ParseBatch = %d entries, %v; want the first %d", i, len(got), err, n)
			}
			continue
		}
		if !errors.Is(err, wire.ErrBadBatch) {
			t.Fatalf("cut at %d: error %v, want ErrBadBatch", i, err)
		}
		if !equalEntries(got, testEntries[:len(got)]) {
			t.Fatalf("cut at %d: fn saw %+v", i, got)
		}
	}
}

func TestParseBatchRejects(t *testing.T) {
	good, _ := batch(t, 0, testEntries[:1])
	with := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	// Offsets into good's one entry.
	const nsLen = 0 + 2
	keyLen := nsLen + 1 + len(testEntries[0].NS)
	deleted := keyLen + 2 + len(testEntries[0].Key) + 24
	valLen := deleted + 1
	tests := []struct {
		name string
		data []byte
	}{
		{"nil", nil},
		{"version only", []byte{1}},
		{"version zero", with(func(b []byte) []byte { b[0] = 0; return b })},
		{"version two", with(func(b []byte) []byte { b[0] = 2; return b })},
		{"version 255", []byte{255, 0}},
		{"deleted flag two", with(func(b []byte) []byte { b[deleted] = 2; return b })},
		{"value length past the end", with(func(b []byte) []byte {
			binary.LittleEndian.PutUint32(b[valLen:], uint32(len(testEntries[0].Value)+1))
			return b
		})},
		{"value length max", with(func(b []byte) []byte {
			binary.LittleEndian.PutUint32(b[valLen:], math.MaxUint32)
			return b
		})},
		{"key length past the end", with(func(b []byte) []byte {
			binary.LittleEndian.PutUint16(b[keyLen:], math.MaxUint16)
			return b
		})},
		{"ns length past the end", with(func(b []byte) []byte { b[nsLen] = 255; return b })},
		{"empty namespace", wire.AppendEntry(wire.NewBatch(nil, 0), &wire.Entry{Key: "k"})},
		{"empty key", wire.AppendEntry(wire.NewBatch(nil, 0), &wire.Entry{NS: "n"})},
		{"trailing byte", append(bytes.Clone(good), 0)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			called := 0
			_, err := wire.ParseBatch(tt.data, func(*wire.Entry) error { called++; return nil })
			if !errors.Is(err, wire.ErrBadBatch) {
				t.Fatalf("ParseBatch(%x): error %v, want ErrBadBatch", tt.data, err)
			}
			if tt.name != "trailing byte" && called != 0 {
				t.Fatalf("fn called %d times for a malformed entry", called)
			}
		})
	}
}

func TestParseBatchStopsAtCallbackError(t *testing.T) {
	data, _ := batch(t, wire.FlagLast, testEntries)
	stop := errors.New("stop")
	calls := 0
	flags, err := wire.ParseBatch(data, func(e *wire.Entry) error {
		calls++
		if calls == 2 {
			return stop
		}
		return nil
	})
	if err != stop {
		t.Fatalf("error %v, want fn's", err)
	}
	if errors.Is(err, wire.ErrBadBatch) {
		t.Fatalf("fn's error reported as a bad batch")
	}
	if calls != 2 || flags != wire.FlagLast {
		t.Fatalf("%d calls, flags %#x; want 2 calls, FlagLast", calls, flags)
	}
}

func TestEntryNewer(t *testing.T) {
	tests := []struct {
		name            string
		version, writer uint64 // the entry's
		v, w            uint64 // the record's it is compared with
		want            bool
	}{
		{"higher version", 5, 1, 4, 9, true},
		{"lower version", 4, 9, 5, 1, false},
		{"same version higher writer", 5, 2, 5, 1, true},
		{"same version lower writer", 5, 1, 5, 2, false},
		{"same version same writer", 5, 1, 5, 1, false},
		{"zero against zero", 0, 0, 0, 0, false},
		{"first write", 1, 0, 0, 0, true},
		{"max version", math.MaxUint64, 0, math.MaxUint64 - 1, math.MaxUint64, true},
		{"max writer", 3, math.MaxUint64, 3, math.MaxUint64 - 1, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := wire.Entry{NS: "n", Key: "k", Version: tt.version, Writer: tt.writer}
			if got := e.Newer(tt.v, tt.w); got != tt.want {
				t.Fatalf("Entry{%d, %d}.Newer(%d, %d) = %v, want %v", tt.version, tt.writer, tt.v, tt.w, got, tt.want)
			}
		})
	}
}
