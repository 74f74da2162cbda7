package wire_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/cachebus/cachebus/cachenode/wire"
)

// The fuzz targets hold every decoder of the package to the same
// properties: it never panics; what ParseRequest rejects, it rejects with
// a *wire.Error a client can branch on; what a decoder accepts encodes
// again to something it decodes to an equal value. Their corpus lives in
// testdata/fuzz/<Fuzz name>/ and runs with every `go test`;
// `go test -run=^$ -fuzz=FuzzParseRequest ./cachenode/wire/` searches
// further.

var ops = []wire.Op{wire.OpGet, wire.OpPut, wire.OpDelete, wire.OpMGet}

func FuzzParseRequest(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		// Small limits as well as the defaults, so that the fuzzer
		// reaches every CodeTooLarge branch.
		for _, lim := range []wire.Limits{wire.DefaultLimits, small} {
			r, err := wire.ParseRequest(data, lim)
			if err != nil {
				var we *wire.Error
				if !errors.As(err, &we) || (we.Code != wire.CodeBadRequest && we.Code != wire.CodeTooLarge) {
					t.Fatalf("ParseRequest(%q): error %v (%T), want a bad_request or too_large *wire.Error", data, err, err)
				}
				continue
			}
			again := r.Append(nil)
			r2, err := wire.ParseRequest(again, lim)
			if err != nil {
				t.Fatalf("ParseRequest(%q) = %+v, whose wire form %q is refused: %v", data, r, again, err)
			}
			if !equalRequest(r, r2) {
				t.Fatalf("ParseRequest(%q) = %+v, but its wire form %q parses to %+v", data, r, again, r2)
			}
		}
	})
}

func FuzzParseReply(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, op := range ops {
			r, err := wire.ParseReply(data, op)
			if err != nil {
				continue
			}
			if r.Status == wire.StatusError && r.Err == nil {
				t.Fatalf("ParseReply(%q, %s): error status without an error", data, op)
			}
			again := r.Append(nil, op)
			r2, err := wire.ParseReply(again, op)
			if err != nil {
				t.Fatalf("ParseReply(%q, %s) = %+v, whose wire form %q is refused: %v", data, op, r, again, err)
			}
			if !equalReply(r, r2) {
				t.Fatalf("ParseReply(%q, %s) = %+v, but its wire form %q parses to %+v", data, op, r, again, r2)
			}
		}
	})
}

func FuzzParseBatch(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		entries, flags, err := parseAll(data)
		if err != nil {
			if !errors.Is(err, wire.ErrBadBatch) {
				t.Fatalf("ParseBatch(%x): error %v, want one wrapping ErrBadBatch", data, err)
			}
			return
		}
		again := wire.NewBatch(nil, flags)
		for i := range entries {
			again = wire.AppendEntry(again, &entries[i])
		}
		entries2, flags2, err := parseAll(again)
		if err != nil {
			t.Fatalf("ParseBatch(%x) = %+v, whose encoding %x is refused: %v", data, entries, again, err)
		}
		if flags2 != flags || !equalEntries(entries, entries2) {
			t.Fatalf("ParseBatch(%x) = %#x %+v, but its encoding parses to %#x %+v", data, flags, entries, flags2, entries2)
		}
		// The encoding has one form: what parses is what AppendEntry
		// writes.
		if !bytes.Equal(again, data) {
			t.Fatalf("ParseBatch(%x) accepted a form AppendEntry does not write (%x)", data, again)
		}
	})
}
