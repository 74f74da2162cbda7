package wire_test

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"testing"

	"github.com/cachebus/cachebus/cachenode/wire"
)

// equalItem reports whether a and b are the same record; a nil and an
// empty value are the same value.
func equalItem(a, b wire.Item) bool {
	return a.Found == b.Found && a.Version == b.Version && a.Expires == b.Expires &&
		a.Stale == b.Stale && bytes.Equal(a.Value, b.Value)
}

// equalReply reports whether a and b are the same reply.
func equalReply(a, b wire.Reply) bool {
	if a.Status != b.Status || !equalItem(a.Item, b.Item) || len(a.Items) != len(b.Items) {
		return false
	}
	if (a.Err == nil) != (b.Err == nil) || (a.Err != nil && *a.Err != *b.Err) {
		return false
	}
	for i := range a.Items {
		if !equalItem(a.Items[i], b.Items[i]) {
			return false
		}
	}
	return true
}

func TestReplyRoundTrip(t *testing.T) {
	found := func(v uint64, exp int64, stale bool, val string) wire.Item {
		return wire.Item{Found: true, Version: v, Expires: exp, Stale: stale, Value: []byte(val)}
	}
	tests := []struct {
		name  string
		op    wire.Op
		reply wire.Reply
		wire  string
	}{
		{"get ok", wire.OpGet, wire.Reply{Status: wire.StatusOK, Item: found(7, 1700000000000, false, "v1")},
			"OK 7 1700000000000\nv1"},
		{"get ok stale", wire.OpGet, wire.Reply{Status: wire.StatusOK, Item: found(7, 1700000000000, true, "old")},
			"OK 7 1700000000000 stale\nold"},
		{"get ok empty value", wire.OpGet, wire.Reply{Status: wire.StatusOK, Item: found(1, 0, false, "")}, "OK 1 0\n"},
		{"get ok value with newlines", wire.OpGet, wire.Reply{Status: wire.StatusOK, Item: found(2, 5, false, "a\nb\r\n\nOK 1 2\n")},
			"OK 2 5\na\nb\r\n\nOK 1 2\n"},
		{"get ok extreme meta", wire.OpGet,
			wire.Reply{Status: wire.StatusOK, Item: found(math.MaxUint64, math.MinInt64, true, "x")},
			"OK 18446744073709551615 -9223372036854775808 stale\nx"},
		{"put ok", wire.OpPut, wire.Reply{Status: wire.StatusOK, Item: found(3, 99, false, "")}, "OK 3 99\n"},
		{"del ok", wire.OpDelete, wire.Reply{Status: wire.StatusOK, Item: found(4, 0, false, "")}, "OK 4 0\n"},
		{"get not found", wire.OpGet, wire.Reply{Status: wire.StatusNotFound}, "NOT_FOUND"},
		{"del not found", wire.OpDelete, wire.Reply{Status: wire.StatusNotFound}, "NOT_FOUND"},
		{"err", wire.OpPut, wire.Reply{Status: wire.StatusError, Err: wire.Errorf(wire.CodeUnavailable, "replica %s timed out", "n2")},
			"ERR unavailable replica n2 timed out"},
		{"err to mget", wire.OpMGet, wire.Reply{Status: wire.StatusError, Err: wire.Errorf(wire.CodeTooLarge, "mget: more than 3 keys")},
			"ERR too_large mget: more than 3 keys"},
		{"err empty message", wire.OpGet, wire.Reply{Status: wire.StatusError, Err: &wire.Error{Code: wire.CodeNoOwner}},
			"ERR no_owner "},
		{"items", wire.OpMGet, wire.Reply{Status: wire.StatusOK, Items: []wire.Item{
			found(1, 10, false, "v1"),
			{},
			found(2, 20, true, "line1\nline2\n"),
			found(3, 30, false, ""),
			{},
			found(4, 40, false, "\n-\n"),
		}}, "ITEMS 6\n2 1 10\nv1\n-\n12 2 20 stale\nline1\nline2\n\n0 3 30\n\n-\n3 4 40\n\n-\n\n"},
		{"items all missing", wire.OpMGet, wire.Reply{Status: wire.StatusOK, Items: []wire.Item{{}, {}}}, "ITEMS 2\n-\n-\n"},
		{"items none", wire.OpMGet, wire.Reply{Status: wire.StatusOK, Items: []wire.Item{}}, "ITEMS 0\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := tt.reply.Append([]byte("prefix:"), tt.op)
			if got := string(data); got != "prefix:"+tt.wire {
				t.Fatalf("Append = %q, want %q", got, "prefix:"+tt.wire)
			}
			got, err := wire.ParseReply(data[len("prefix:"):], tt.op)
			if err != nil {
				t.Fatalf("ParseReply(%q, %s): %v", tt.wire, tt.op, err)
			}
			if !equalReply(got, tt.reply) {
				t.Fatalf("ParseReply(%q, %s) = %+v, want %+v", tt.wire, tt.op, got, tt.reply)
			}
		})
	}
}

func TestReplyErrorFlattensNewlines(t *testing.T) {
	r := wire.Reply{Status: wire.StatusError, Err: wire.Errorf(wire.CodeInternal, "disk failed:\nread /x\nEOF")}
	data := r.Append(nil, wire.OpGet)
	if want := "ERR internal disk failed: read /x EOF"; string(data) != want {
		t.Fatalf("Append = %q, want %q", data, want)
	}
	got, err := wire.ParseReply(data, wire.OpGet)
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != wire.StatusError || got.Err == nil ||
		*got.Err != (wire.Error{Code: wire.CodeInternal, Message: "disk failed: read /x EOF"}) {
		t.Fatalf("ParseReply = %+v (err %+v)", got, got.Err)
	}
	if r.Err.Message != "disk failed:\nread /x\nEOF" {
		t.Fatalf("Append changed the reply's message to %q", r.Err.Message)
	}
}

func TestParseReplyLenient(t *testing.T) {
	tests := []struct {
		name string
		in   string
		op   wire.Op
		want wire.Reply
	}{
		{"ok crlf", "OK 1 2\r\nv", wire.OpGet,
			wire.Reply{Status: wire.StatusOK, Item: wire.Item{Found: true, Version: 1, Expires: 2, Value: []byte("v")}}},
		{"ok without value line", "OK 1 2", wire.OpDelete,
			wire.Reply{Status: wire.StatusOK, Item: wire.Item{Found: true, Version: 1, Expires: 2}}},
		{"err without message", "ERR internal", wire.OpGet,
			wire.Reply{Status: wire.StatusError, Err: &wire.Error{Code: wire.CodeInternal}}},
		{"items trailing data ignored", "ITEMS 1\n-\nmore", wire.OpMGet,
			wire.Reply{Status: wire.StatusOK, Items: []wire.Item{{}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := wire.ParseReply([]byte(tt.in), tt.op)
			if err != nil {
				t.Fatalf("ParseReply(%q, %s): %v", tt.in, tt.op, err)
			}
			if !equalReply(got, tt.want) {
				t.Fatalf("ParseReply(%q, %s) = %+v, want %+v", tt.in, tt.op, got, tt.want)
			}
		})
	}
}

func TestParseReplyRejects(t *testing.T) {
	tests := []struct {
		name string
		in   string
		op   wire.Op
	}{
		{"empty", "", wire.OpGet},
		{"garbage", "hello world", wire.OpGet},
		{"lowercase ok", "ok 1 2\nv", wire.OpGet},
		{"ok without meta", "OK\nv", wire.OpGet},
		{"ok with one field", "OK 1\nv", wire.OpGet},
		{"ok bad version", "OK x 2\nv", wire.OpGet},
		{"ok negative version", "OK -1 2\nv", wire.OpGet},
		{"ok bad expiry", "OK 1 2.5\nv", wire.OpGet},
		{"ok unknown flag", "OK 1 2 fresh\nv", wire.OpGet},
		{"ok too many fields", "OK 1 2 stale stale\nv", wire.OpGet},
		{"not found with data", "NOT_FOUND please", wire.OpGet},
		{"ok to mget", "OK 1 2\nv", wire.OpMGet},
		{"items to get", "ITEMS 0\n", wire.OpGet},
		{"items without count", "ITEMS \n", wire.OpMGet},
		{"items bad count", "ITEMS x\n", wire.OpMGet},
		{"items negative count", "ITEMS -1\n", wire.OpMGet},
		{"items count past the data", "ITEMS 99999\n-\n", wire.OpMGet},
		{"items huge count", "ITEMS 9223372036854775807\n", wire.OpMGet},
		{"items truncated after the count", "ITEMS 2\n", wire.OpMGet},
		{"items truncated after one item", "ITEMS 2\n-\n", wire.OpMGet},
		{"items truncated header", "ITEMS 1\n2 1 2", wire.OpMGet},
		{"items truncated value", "ITEMS 1\n5 1 2\nab", wire.OpMGet},
		{"items value without newline", "ITEMS 1\n2 1 2\nab", wire.OpMGet},
		{"items value longer than its size", "ITEMS 1\n2 1 2\nabc\n", wire.OpMGet},
		{"items negative size", "ITEMS 1\n-1 1 2\n\n", wire.OpMGet},
		{"items bad size", "ITEMS 1\nx 1 2\nab\n", wire.OpMGet},
		{"items huge size", "ITEMS 1\n9223372036854775807 1 2\nab\n", wire.OpMGet},
		{"items size one short of max int", "ITEMS 1\n9223372036854775806 1 2\nab\n", wire.OpMGet},
		{"items bad meta", "ITEMS 1\n2 1\nab\n", wire.OpMGet},
		{"items missing meta", "ITEMS 1\n2\nab\n", wire.OpMGet},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := wire.ParseReply([]byte(tt.in), tt.op)
			if err == nil {
				t.Fatalf("ParseReply(%q, %s) = %+v, want an error", tt.in, tt.op, r)
			}
		})
	}
}

// TestParseReplyTruncated cuts an ITEMS reply at every byte: each strict
// prefix ends inside an item, so each must be refused.
func TestParseReplyTruncated(t *testing.T) {
	r := wire.Reply{Status: wire.StatusOK, Items: []wire.Item{
		{Found: true, Version: 12, Expires: 345, Value: []byte("ab\ncd")},
		{},
		{Found: true, Version: 1, Expires: 2, Stale: true, Value: []byte("\n")},
		{Found: true, Version: 3, Expires: 4},
	}}
	data := r.Append(nil, wire.OpMGet)
	for i := range len(data) {
		if got, err := wire.ParseReply(data[:i:i], wire.OpMGet); err == nil {
			t.Fatalf("ParseReply(%q) = %+v, want an error", data[:i], got)
		}
	}
	if _, err := wire.ParseReply(data, wire.OpMGet); err != nil {
		t.Fatalf("ParseReply(%q): %v", data, err)
	}
}

func TestErrorReply(t *testing.T) {
	t.Run("plain error", func(t *testing.T) {
		r := wire.ErrorReply(errors.New("disk full"))
		if r.Status != wire.StatusError || r.Err == nil {
			t.Fatalf("ErrorReply = %+v", r)
		}
		if r.Err.Code != wire.CodeInternal || r.Err.Message != "disk full" {
			t.Fatalf("ErrorReply carries %+v, want internal: disk full", *r.Err)
		}
	})
	t.Run("wire error", func(t *testing.T) {
		e := wire.Errorf(wire.CodeNoOwner, "partition %d has no owner", 7)
		r := wire.ErrorReply(e)
		if r.Status != wire.StatusError || r.Err != e {
			t.Fatalf("ErrorReply = %+v, want it to carry %v", r, e)
		}
		got, err := wire.ParseReply(r.Append(nil, wire.OpGet), wire.OpGet)
		if err != nil {
			t.Fatal(err)
		}
		if !equalReply(got, r) {
			t.Fatalf("round trip = %+v, want %+v", got, r)
		}
	})
}

func TestErrorString(t *testing.T) {
	err := error(wire.Errorf(wire.CodeBadRequest, "get: key %s", "missing"))
	if got, want := err.Error(), "bad_request: get: key missing"; got != want {
		t.Fatalf("Error() = %q, want %q", got, want)
	}
	var we *wire.Error
	if !errors.As(fmt.Errorf("node: %w", err), &we) || we.Code != wire.CodeBadRequest {
		t.Fatalf("errors.As of a wrapped *wire.Error failed")
	}
}
