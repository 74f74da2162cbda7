package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Entry is one record as nodes pass it among themselves: a replicated
// write, or a record of a partition being handed over. A delete travels as
// a tombstone so that a late, older write cannot bring the record back.
type Entry struct {
	NS, Key string
	// Version and Writer order the writes of a key: the higher version
	// wins, and the higher writer between equal versions.
	Version uint64
	Writer  uint64
	// Deadline is when the record expires, in Unix nanoseconds.
	Deadline int64
	Deleted  bool
	Value    []byte
}

// Newer reports whether e wins over a record of version v by writer w.
func (e *Entry) Newer(v, w uint64) bool {
	return e.Version > v || (e.Version == v && e.Writer > w)
}

// Batch flags.
const (
	batchVersion = 1
	// FlagLast marks the last batch of a partition handover.
	FlagLast = 1 << 0
)

const entryFixed = 1 + 2 + 8 + 8 + 8 + 1 + 4

// NewBatch starts a batch of entries in buf:
// version (1) | flags (1) | entries.
func NewBatch(buf []byte, flags byte) []byte {
	return append(buf[:0], batchVersion, flags)
}

// AppendEntry appends e to a batch started by NewBatch. Each entry is
// ns length (1) | ns | key length (2) | key | version (8) | writer (8) |
// deadline (8) | deleted (1) | value length (4) | value, integers little
// endian.
func AppendEntry(buf []byte, e *Entry) []byte {
	buf = append(buf, byte(len(e.NS)))
	buf = append(buf, e.NS...)
	buf = binary.LittleEndian.AppendUint16(buf, uint16(len(e.Key)))
	buf = append(buf, e.Key...)
	buf = binary.LittleEndian.AppendUint64(buf, e.Version)
	buf = binary.LittleEndian.AppendUint64(buf, e.Writer)
	buf = binary.LittleEndian.AppendUint64(buf, uint64(e.Deadline))
	var del byte
	if e.Deleted {
		del = 1
	}
	buf = append(buf, del)
	buf = binary.LittleEndian.AppendUint32(buf, uint32(len(e.Value)))
	return append(buf, e.Value...)
}

// EntrySize is how many bytes AppendEntry adds for e.
func EntrySize(e *Entry) int { return entryFixed + len(e.NS) + len(e.Key) + len(e.Value) }

// ErrBadBatch is wrapped by every error of ParseBatch.
var ErrBadBatch = errors.New("wire: bad entry batch")

// ParseBatch calls fn with every entry of a batch, in order, and returns
// the batch's flags. Entries alias data. It stops at the first malformed
// entry, before calling fn with it, or at fn's first error.
func ParseBatch(data []byte, fn func(*Entry) error) (flags byte, err error) {
	if len(data) < 2 || data[0] != batchVersion {
		return 0, fmt.Errorf("%w: header missing or unknown version", ErrBadBatch)
	}
	flags, data = data[1], data[2:]
	var e Entry
	for n := 0; len(data) > 0; n++ {
		nsLen := int(data[0])
		if len(data) < 1+nsLen+2 {
			return flags, fmt.Errorf("%w: entry %d truncated", ErrBadBatch, n)
		}
		e.NS = string(data[1 : 1+nsLen])
		data = data[1+nsLen:]
		keyLen := int(binary.LittleEndian.Uint16(data))
		if len(data) < 2+keyLen+29 {
			return flags, fmt.Errorf("%w: entry %d truncated", ErrBadBatch, n)
		}
		e.Key = string(data[2 : 2+keyLen])
		data = data[2+keyLen:]
		e.Version = binary.LittleEndian.Uint64(data)
		e.Writer = binary.LittleEndian.Uint64(data[8:])
		e.Deadline = int64(binary.LittleEndian.Uint64(data[16:]))
		if data[24] > 1 {
			return flags, fmt.Errorf("%w: entry %d: deleted flag %d", ErrBadBatch, n, data[24])
		}
		e.Deleted = data[24] == 1
		valLen := binary.LittleEndian.Uint32(data[25:])
		data = data[29:]
		if uint64(valLen) > uint64(len(data)) {
			return flags, fmt.Errorf("%w: entry %d: value of %d bytes, %d left", ErrBadBatch, n, valLen, len(data))
		}
		e.Value, data = data[:valLen:valLen], data[valLen:]
		if e.NS == "" || e.Key == "" {
			return flags, fmt.Errorf("%w: entry %d: empty namespace or key", ErrBadBatch, n)
		}
		if err := fn(&e); err != nil {
			return flags, err
		}
	}
	return flags, nil
}
