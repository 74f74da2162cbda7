package wire_test

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cachebus/cachebus/cachenode/wire"
)

// small are limits low enough for a test to cross each of them.
var small = wire.Limits{MaxKey: 8, MaxValue: 16, MaxKeys: 3}

// equalRequest reports whether a and b are the same request; a nil and an
// empty value are the same value.
func equalRequest(a, b wire.Request) bool {
	return a.Op == b.Op && a.NS == b.NS && a.Key == b.Key &&
		slices.Equal(a.Keys, b.Keys) && bytes.Equal(a.Value, b.Value) &&
		a.TTL == b.TTL && a.Replica == b.Replica && a.Hops == b.Hops
}

// wantCode fails unless err is a *wire.Error with code.
func wantCode(t *testing.T, err error, code wire.Code) {
	t.Helper()
	if err == nil {
		t.Fatalf("accepted, want a %s error", code)
	}
	var we *wire.Error
	if !errors.As(err, &we) {
		t.Fatalf("error %v (%T) is not a *wire.Error", err, err)
	}
	if we.Code != code {
		t.Fatalf("code %s (%v), want %s", we.Code, err, code)
	}
	if we.Message == "" {
		t.Fatalf("%s error without a message", we.Code)
	}
}

func TestRequestRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		req  wire.Request
		wire string
	}{
		{"get", wire.Request{Op: wire.OpGet, NS: "users", Key: "k1"}, "get users k1"},
		{"get replica hop", wire.Request{Op: wire.OpGet, NS: "users", Key: "user:42", Replica: true, Hops: 2},
			"get users user:42 replica hop=2"},
		{"get max hops", wire.Request{Op: wire.OpGet, NS: "a_B-9", Key: "k", Hops: wire.MaxHops}, "get a_B-9 k hop=3"},
		{"del", wire.Request{Op: wire.OpDelete, NS: "users", Key: "k1"}, "del users k1"},
		{"del hop", wire.Request{Op: wire.OpDelete, NS: "users", Key: "k1", Hops: 1}, "del users k1 hop=1"},
		{"put", wire.Request{Op: wire.OpPut, NS: "users", Key: "k1", Value: []byte("v1")}, "put users k1\nv1"},
		{"put ttl hop", wire.Request{Op: wire.OpPut, NS: "users", Key: "k1", Value: []byte("v1"), TTL: 30 * time.Second, Hops: 1},
			"put users k1 ttl=30000 hop=1\nv1"},
		{"put empty value", wire.Request{Op: wire.OpPut, NS: "users", Key: "k1", Value: []byte{}}, "put users k1\n"},
		{"put value with newlines", wire.Request{Op: wire.OpPut, NS: "users", Key: "k1", Value: []byte("a b\n\nc\r\n\x00\xff")},
			"put users k1\na b\n\nc\r\n\x00\xff"},
		{"put value like a request", wire.Request{Op: wire.OpPut, NS: "n", Key: "k", Value: []byte("get n k\nmget n\nk")},
			"put n k\nget n k\nmget n\nk"},
		{"mget", wire.Request{Op: wire.OpMGet, NS: "users", Keys: []string{"k3", "k1", "k2"}}, "mget users\nk3\nk1\nk2"},
		{"mget one key", wire.Request{Op: wire.OpMGet, NS: "users", Keys: []string{"k"}}, "mget users\nk"},
		{"mget duplicate keys", wire.Request{Op: wire.OpMGet, NS: "users", Keys: []string{"b", "a", "b"}}, "mget users\nb\na\nb"},
		{"mget replica hop", wire.Request{Op: wire.OpMGet, NS: "users", Keys: []string{"k1", "k2"}, Replica: true, Hops: 3},
			"mget users replica hop=3\nk1\nk2"},
		{"utf-8 key", wire.Request{Op: wire.OpGet, NS: "users", Key: "clé:é"}, "get users clé:é"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := tt.req.Append([]byte("prefix:"))
			if got := string(data); got != "prefix:"+tt.wire {
				t.Fatalf("Append = %q, want %q", got, "prefix:"+tt.wire)
			}
			got, err := wire.ParseRequest(data[len("prefix:"):], wire.DefaultLimits)
			if err != nil {
				t.Fatalf("ParseRequest(%q): %v", tt.wire, err)
			}
			if !equalRequest(got, tt.req) {
				t.Fatalf("ParseRequest(%q) = %+v, want %+v", tt.wire, got, tt.req)
			}
		})
	}
}

// TestParseRequestLenient covers what a hand-written request may do that
// Append never does.
func TestParseRequestLenient(t *testing.T) {
	tests := []struct {
		name string
		in   string
		lim  wire.Limits
		want wire.Request
	}{
		{"carriage return", "get users k1\r", wire.DefaultLimits, wire.Request{Op: wire.OpGet, NS: "users", Key: "k1"}},
		{"repeated spaces", "  get  users   k1  replica ", wire.DefaultLimits,
			wire.Request{Op: wire.OpGet, NS: "users", Key: "k1", Replica: true}},
		{"empty line after get", "get users k1\n", wire.DefaultLimits, wire.Request{Op: wire.OpGet, NS: "users", Key: "k1"}},
		{"hop zero", "del users k1 hop=0", wire.DefaultLimits, wire.Request{Op: wire.OpDelete, NS: "users", Key: "k1"}},
		{"ttl zero", "put users k1 ttl=0\nv", wire.DefaultLimits,
			wire.Request{Op: wire.OpPut, NS: "users", Key: "k1", Value: []byte("v")}},
		{"last option wins", "put users k1 ttl=5 ttl=7 hop=1 hop=2\nv", wire.DefaultLimits,
			wire.Request{Op: wire.OpPut, NS: "users", Key: "k1", Value: []byte("v"), TTL: 7 * time.Millisecond, Hops: 2}},
		{"put crlf", "put users k1\r\nv\r\n", wire.DefaultLimits,
			wire.Request{Op: wire.OpPut, NS: "users", Key: "k1", Value: []byte("v\r\n")}},
		{"mget blank lines", "mget users\n\nk1\n\n\nk2\n", wire.DefaultLimits,
			wire.Request{Op: wire.OpMGet, NS: "users", Keys: []string{"k1", "k2"}}},
		{"key at limit", "get users 12345678", small, wire.Request{Op: wire.OpGet, NS: "users", Key: "12345678"}},
		{"value at limit", "put users k\n0123456789abcdef", small,
			wire.Request{Op: wire.OpPut, NS: "users", Key: "k", Value: []byte("0123456789abcdef")}},
		{"keys at limit", "mget users\na\nb\nc", small, wire.Request{Op: wire.OpMGet, NS: "users", Keys: []string{"a", "b", "c"}}},
		{"namespace at limit", "get " + strings.Repeat("n", 64) + " k", wire.DefaultLimits,
			wire.Request{Op: wire.OpGet, NS: strings.Repeat("n", 64), Key: "k"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := wire.ParseRequest([]byte(tt.in), tt.lim)
			if err != nil {
				t.Fatalf("ParseRequest(%q): %v", tt.in, err)
			}
			if !equalRequest(got, tt.want) {
				t.Fatalf("ParseRequest(%q) = %+v, want %+v", tt.in, got, tt.want)
			}
		})
	}
}

func TestParseRequestRejects(t *testing.T) {
	bad, large := wire.CodeBadRequest, wire.CodeTooLarge
	tests := []struct {
		name string
		in   string
		code wire.Code
	}{
		{"empty payload", "", bad},
		{"blank line", " \r", bad},
		{"only newline", "\nget users k", bad},
		{"unknown op", "set users k1", bad},
		{"op in capitals", "GET users k1", bad},
		{"missing ns", "get", bad},
		{"missing ns of mget", "mget\nk1", bad},
		{"bad ns", "get us.ers k1", bad},
		{"ns too long", "get " + strings.Repeat("n", 65) + " k1", bad},
		{"missing key of get", "get users", bad},
		{"missing key of del", "del users", bad},
		{"missing key of put", "put users\nv", bad},
		{"key with control char", "get users k\x01", bad},
		{"key with tab", "get users a\tb", bad},
		{"key with del char", "del users k\x7f", bad},
		{"key with space splits into an option", "get users my key", bad},
		{"mget key with space", "mget users\nk1\nmy key", bad},
		{"mget key with control char", "mget users\nk\x00", bad},
		{"mget key with carriage return", "mget users\nk1\r\nk2", bad},
		{"oversize key", "get users 123456789", large},
		{"oversize put key", "put users 123456789\nv", large},
		{"oversize mget key", "mget users\nk1\n123456789", large},
		{"oversize value", "put users k\n0123456789abcdefg", large},
		{"too many mget keys", "mget users\na\nb\nc\nd", large},
		{"mget with no keys", "mget users", bad},
		{"mget with blank lines only", "mget users\n\n\n", bad},
		{"put without newline", "put users k1", bad},
		{"put without newline but ttl", "put users k1 ttl=5", bad},
		{"unknown option", "get users k1 fast", bad},
		{"replica on del", "del users k1 replica", bad},
		{"replica on put", "put users k1 replica\nv", bad},
		{"replica with a value", "get users k1 replica=1", bad},
		{"ttl on get", "get users k1 ttl=5", bad},
		{"ttl without value", "put users k1 ttl\nv", bad},
		{"hop without value", "get users k1 hop", bad},
		{"bad ttl", "put users k1 ttl=abc\nv", bad},
		{"ttl with unit", "put users k1 ttl=5s\nv", bad},
		{"negative ttl", "put users k1 ttl=-1\nv", bad},
		{"fractional ttl", "put users k1 ttl=1.5\nv", bad},
		{"ttl over a century", "put users k1 ttl=3153600000001\nv", bad},
		{"ttl overflow", "put users k1 ttl=99999999999999999999\nv", bad},
		{"hop over MaxHops", "get users k1 hop=4", bad},
		{"negative hop", "get users k1 hop=-1", bad},
		{"bad hop", "mget users hop=x\nk1", bad},
		{"trailing data after get", "get users k1\nextra", bad},
		{"trailing data after del", "del users k1\n\n", bad},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := wire.ParseRequest([]byte(tt.in), small)
			wantCode(t, err, tt.code)
		})
	}
}

func TestAppendRequestOptions(t *testing.T) {
	tests := []struct {
		name string
		req  wire.Request
		want string
	}{
		// A TTL under a millisecond must not become "no TTL".
		{"ttl rounds up to a millisecond", wire.Request{Op: wire.OpPut, NS: "n", Key: "k", TTL: time.Microsecond},
			"put n k ttl=1\n"},
		{"ttl truncates to milliseconds", wire.Request{Op: wire.OpPut, NS: "n", Key: "k", TTL: 1500 * time.Microsecond},
			"put n k ttl=1\n"},
		{"replica only on reads", wire.Request{Op: wire.OpDelete, NS: "n", Key: "k", Replica: true}, "del n k"},
		{"ttl only on put", wire.Request{Op: wire.OpGet, NS: "n", Key: "k", TTL: time.Second}, "get n k"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := tt.req.Append(nil)
			if string(data) != tt.want {
				t.Fatalf("Append = %q, want %q", data, tt.want)
			}
			if _, err := wire.ParseRequest(data, wire.DefaultLimits); err != nil {
				t.Fatalf("ParseRequest(%q): %v", data, err)
			}
		})
	}
}

func TestCheckKey(t *testing.T) {
	tests := []struct {
		key  string
		code wire.Code // "" when the key is valid
	}{
		{"k", ""},
		{"u:é~!", ""},
		{"12345678", ""},
		{"", wire.CodeBadRequest},
		{"123456789", wire.CodeTooLarge},
		{"a b", wire.CodeBadRequest},
		{"a\nb", wire.CodeBadRequest},
		{"\x7f", wire.CodeBadRequest},
	}
	for _, tt := range tests {
		err := wire.CheckKey(tt.key, small)
		if tt.code == "" {
			if err != nil {
				t.Errorf("CheckKey(%q): %v", tt.key, err)
			}
			continue
		}
		wantCode(t, err, tt.code)
	}
}

func TestOpString(t *testing.T) {
	for op, want := range map[wire.Op]string{
		wire.OpGet: "get", wire.OpPut: "put", wire.OpDelete: "del", wire.OpMGet: "mget", 0: "op(0)", 9: "op(9)",
	} {
		if got := op.String(); got != want {
			t.Errorf("Op(%d).String() = %q, want %q", uint8(op), got, want)
		}
	}
}
