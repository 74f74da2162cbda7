package wire_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/cachebus/cachebus/cachenode/wire"
)

// FuzzFrameRoundTrip holds frames (several requests or replies in one
// NATS message, "batch <n>\n" then n times "<length>\n<bytes>") to more
// than FuzzParseFrame's count check:
//
//   - ParseFrame refuses with a bad_request *wire.Error and a message;
//   - what it accepts has 1 to wire.MaxFrame parts, each capped at its own
//     length, so that appending to one never overwrites the next in the
//     shared buffer; a request frame is one IsFrame recognises, and no
//     input is both a request frame and a reply frame;
//   - AppendFrame writes those parts back in the shortest form, which
//     parses to the same bytes (lengths such as "+3" or "03" parse, but
//     are not what AppendFrame writes);
//   - and any parts at all (here the input split at each 0xFF byte) go
//     through AppendFrame and ParseFrame unchanged.
func FuzzFrameRoundTrip(f *testing.F) {
	for _, s := range []string{
		"batch 2\n14\nget sessions a14\nget sessions b",
		"BATCH 2\n9\nNOT_FOUND9\nNOT_FOUND",
		"batch 1\n0\n",
		"batch 1\n03\nabc",
		"batch 1\n+3\nabc",
		"batch 0\n",
		"batch 1001\n",
		"batch 2\n3\nabc",
		"batch 1\n3\nabcdef",
		"batch 1\n-1\n",
		"get sessions a\xffput sessions b ttl=5\nv\xff",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		accepted := 0
		for _, replies := range []bool{false, true} {
			parts, err := wire.ParseFrame(data, replies)
			if err != nil {
				var we *wire.Error
				if !errors.As(err, &we) || we.Code != wire.CodeBadRequest || we.Message == "" {
					t.Fatalf("ParseFrame(%q, %v): error %v (%T), want a bad_request *wire.Error with a message", data, replies, err, err)
				}
				continue
			}
			accepted++
			if len(parts) < 1 || len(parts) > wire.MaxFrame {
				t.Fatalf("ParseFrame(%q, %v): %d parts, want 1 to %d", data, replies, len(parts), wire.MaxFrame)
			}
			if !replies && !wire.IsFrame(data) {
				t.Fatalf("ParseFrame(%q) accepted a request frame IsFrame does not recognise", data)
			}
			for i, p := range parts {
				if cap(p) != len(p) {
					t.Fatalf("ParseFrame(%q, %v): part %d has room for %d more bytes of the next part", data, replies, i, cap(p)-len(p))
				}
			}
			again := wire.AppendFrame(nil, replies, parts)
			if len(again) > len(data) {
				t.Fatalf("ParseFrame(%q, %v): AppendFrame writes its parts in %d bytes, more than the %d given", data, replies, len(again), len(data))
			}
			checkParts(t, again, replies, parts)
		}
		if accepted > 1 {
			t.Fatalf("%q parses both as a request frame and as a reply frame", data)
		}

		// Any parts, written by AppendFrame, come back as they were.
		parts := bytes.Split(data, []byte{0xff})
		if len(parts) > wire.MaxFrame {
			parts = parts[:wire.MaxFrame]
		}
		for _, replies := range []bool{false, true} {
			checkParts(t, wire.AppendFrame(nil, replies, parts), replies, parts)
		}
	})
}

// checkParts fails t unless frame parses to exactly parts.
func checkParts(t *testing.T, frame []byte, replies bool, parts [][]byte) {
	t.Helper()
	got, err := wire.ParseFrame(frame, replies)
	if err != nil {
		t.Fatalf("AppendFrame(%v, %q) = %q, which ParseFrame refuses: %v", replies, parts, frame, err)
	}
	if len(got) != len(parts) {
		t.Fatalf("AppendFrame(%v, %q) = %q parses to %d parts", replies, parts, frame, len(got))
	}
	for i := range parts {
		if !bytes.Equal(got[i], parts[i]) {
			t.Fatalf("AppendFrame(%v, %q) = %q: part %d parses to %q", replies, parts, frame, i, got[i])
		}
	}
}
