package wire

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
)

func TestFrameRoundTrip(t *testing.T) {
	for _, replies := range []bool{false, true} {
		parts := [][]byte{[]byte("get ns a"), {}, []byte("put ns b\nline1\nline2"), []byte("12\n34")}
		data := AppendFrame(nil, replies, parts)
		if IsFrame(data) == replies {
			t.Fatalf("IsFrame(%q) = %v", data, !replies)
		}
		got, err := ParseFrame(data, replies)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(parts) {
			t.Fatalf("%d parts, want %d", len(got), len(parts))
		}
		for i := range parts {
			if !bytes.Equal(got[i], parts[i]) {
				t.Errorf("part %d = %q, want %q", i, got[i], parts[i])
			}
		}
	}
}

func TestFrameRejects(t *testing.T) {
	for name, data := range map[string]string{
		"not a frame":    "get ns k",
		"zero count":     "batch 0\n",
		"huge count":     "batch 1001\n",
		"no newline":     "batch 1",
		"bad length":     "batch 1\nx\nabc",
		"negative":       "batch 1\n-1\n",
		"truncated":      "batch 1\n10\nabc",
		"missing part":   "batch 2\n3\nabc",
		"trailing bytes": "batch 1\n3\nabcdef",
	} {
		_, err := ParseFrame([]byte(data), false)
		var we *Error
		if !errors.As(err, &we) || we.Code != CodeBadRequest {
			t.Errorf("%s: err = %v, want a bad_request *Error", name, err)
		}
	}
}

func FuzzParseFrame(f *testing.F) {
	f.Add([]byte("batch 2\n8\nget ns a3\nabc"))
	f.Add([]byte("BATCH 1\n9\nNOT_FOUND"))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, replies := range []bool{false, true} {
			parts, err := ParseFrame(data, replies)
			if err != nil {
				continue
			}
			again, err := ParseFrame(AppendFrame(nil, replies, parts), replies)
			if err != nil || len(again) != len(parts) {
				t.Fatalf("re-encoded frame does not parse: %v", err)
			}
		}
	})
}

// TestFrameExampleOfProtocol checks the frame example of docs/PROTOCOL.md.
func TestFrameExampleOfProtocol(t *testing.T) {
	parts, err := ParseFrame([]byte("batch 2\n14\nget sessions a14\nget sessions b"), false)
	if err != nil || !reflect.DeepEqual(parts, [][]byte{[]byte("get sessions a"), []byte("get sessions b")}) {
		t.Fatalf("request frame: %q %v", parts, err)
	}
	parts, err = ParseFrame([]byte("BATCH 2\n9\nNOT_FOUND9\nNOT_FOUND"), true)
	if err != nil || len(parts) != 2 || string(parts[1]) != "NOT_FOUND" {
		t.Fatalf("reply frame: %q %v", parts, err)
	}
}
