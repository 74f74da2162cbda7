package wire

import (
	"bytes"
	"fmt"
	"strconv"
	"time"

	"github.com/cachebus/cachebus/bus"
)

// Op is a record operation.
type Op uint8

// The record operations.
const (
	OpGet Op = iota + 1
	OpPut
	OpDelete
	OpMGet
)

var opNames = [...]string{OpGet: "get", OpPut: "put", OpDelete: "del", OpMGet: "mget"}

func (o Op) String() string {
	if int(o) < len(opNames) && opNames[o] != "" {
		return opNames[o]
	}
	return "op(" + strconv.Itoa(int(o)) + ")"
}

// Limits bound what a node accepts; a request past them is refused with
// CodeTooLarge, nothing stored.
type Limits struct {
	// MaxKey is the longest key, in bytes.
	MaxKey int
	// MaxValue is the largest value, in bytes.
	MaxValue int
	// MaxKeys is the most keys of one multi-get.
	MaxKeys int
}

// DefaultLimits are the limits of a node that configures none.
var DefaultLimits = Limits{MaxKey: 512, MaxValue: 256 << 10, MaxKeys: 1000}

// MaxHops bounds how many times a request is forwarded between nodes, so
// nodes whose views of the cluster briefly disagree cannot bounce a
// request forever.
const MaxHops = 3

// Request is one record request.
type Request struct {
	Op  Op
	NS  string
	Key string // get, put, del
	// Keys are a multi-get's keys, in the order the reply gives them.
	Keys  []string
	Value []byte // put
	// TTL of a put; zero means the node's default.
	TTL time.Duration
	// Replica lets a backup holding the partition answer a read.
	Replica bool
	// Hops counts how often the request was forwarded.
	Hops int
}

// Append appends the wire form of r to buf:
//
//	get <ns> <key>[ replica][ hop=<n>]
//	del <ns> <key>[ hop=<n>]
//	put <ns> <key>[ ttl=<ms>][ hop=<n>]\n<value bytes>
//	mget <ns>[ replica][ hop=<n>]\n<key>\n<key>…
func (r *Request) Append(buf []byte) []byte {
	buf = append(buf, r.Op.String()...)
	buf = append(buf, ' ')
	buf = append(buf, r.NS...)
	if r.Op != OpMGet {
		buf = append(buf, ' ')
		buf = append(buf, r.Key...)
	}
	if r.Op == OpPut && r.TTL > 0 {
		buf = append(buf, " ttl="...)
		buf = strconv.AppendInt(buf, max(r.TTL.Milliseconds(), 1), 10)
	}
	if r.Replica && (r.Op == OpGet || r.Op == OpMGet) {
		buf = append(buf, " replica"...)
	}
	if r.Hops > 0 {
		buf = append(buf, " hop="...)
		buf = strconv.AppendInt(buf, int64(r.Hops), 10)
	}
	switch r.Op {
	case OpPut:
		buf = append(buf, '\n')
		buf = append(buf, r.Value...)
	case OpMGet:
		for _, k := range r.Keys {
			buf = append(buf, '\n')
			buf = append(buf, k...)
		}
	}
	return buf
}

// ParseRequest decodes a request, checking it against lim. The error is an
// *Error with CodeBadRequest or CodeTooLarge; the returned request's Value
// aliases data.
func ParseRequest(data []byte, lim Limits) (Request, error) {
	var r Request
	line, body, hasBody := bytes.Cut(data, []byte{'\n'})
	f := fields(line)
	if len(f) == 0 {
		return r, Errorf(CodeBadRequest, "empty request")
	}
	switch string(f[0]) {
	case "get":
		r.Op = OpGet
	case "put":
		r.Op = OpPut
	case "del":
		r.Op = OpDelete
	case "mget":
		r.Op = OpMGet
	default:
		return r, Errorf(CodeBadRequest, "unknown operation %q (get, put, del, mget)", clip(f[0]))
	}
	if len(f) < 2 {
		return r, Errorf(CodeBadRequest, "%s: namespace missing", r.Op)
	}
	r.NS = string(f[1])
	if err := bus.CheckNamespace(r.NS); err != nil {
		return r, Errorf(CodeBadRequest, "%s: namespace %q must match [A-Za-z0-9_-]{1,64}", r.Op, clip(f[1]))
	}
	opts := f[2:]
	if r.Op != OpMGet {
		if len(f) < 3 {
			return r, Errorf(CodeBadRequest, "%s: key missing", r.Op)
		}
		r.Key = string(f[2])
		if err := CheckKey(r.Key, lim); err != nil {
			return r, err
		}
		opts = f[3:]
	}
	for _, o := range opts {
		if err := r.option(o); err != nil {
			return r, err
		}
	}
	switch r.Op {
	case OpPut:
		if !hasBody {
			return r, Errorf(CodeBadRequest, "put: no newline before the value (truncated request?)")
		}
		if len(body) > lim.MaxValue {
			return r, Errorf(CodeTooLarge, "put: value of %d bytes exceeds the limit of %d", len(body), lim.MaxValue)
		}
		r.Value = body
	case OpMGet:
		for len(body) > 0 {
			var k []byte
			k, body, _ = bytes.Cut(body, []byte{'\n'})
			if len(k) == 0 {
				continue
			}
			if len(r.Keys) == lim.MaxKeys {
				return r, Errorf(CodeTooLarge, "mget: more than %d keys", lim.MaxKeys)
			}
			key := string(k)
			if err := CheckKey(key, lim); err != nil {
				return r, err
			}
			r.Keys = append(r.Keys, key)
		}
		if len(r.Keys) == 0 {
			return r, Errorf(CodeBadRequest, "mget: no keys")
		}
	default:
		if hasBody && len(body) > 0 {
			return r, Errorf(CodeBadRequest, "%s: unexpected data after the request line", r.Op)
		}
	}
	return r, nil
}

func (r *Request) option(o []byte) error {
	name, val, hasVal := bytes.Cut(o, []byte{'='})
	switch {
	case string(name) == "replica" && !hasVal && (r.Op == OpGet || r.Op == OpMGet):
		r.Replica = true
	case string(name) == "ttl" && hasVal && r.Op == OpPut:
		ms, err := strconv.ParseInt(string(val), 10, 64)
		if err != nil || ms < 0 || ms > int64(100*365*24*time.Hour/time.Millisecond) {
			return Errorf(CodeBadRequest, "put: ttl must be a number of milliseconds, got %q", clip(val))
		}
		r.TTL = time.Duration(ms) * time.Millisecond
	case string(name) == "hop" && hasVal:
		n, err := strconv.Atoi(string(val))
		if err != nil || n < 0 || n > MaxHops {
			return Errorf(CodeBadRequest, "%s: hop must be 0 to %d, got %q", r.Op, MaxHops, clip(val))
		}
		r.Hops = n
	default:
		return Errorf(CodeBadRequest, "%s: unknown option %q", r.Op, clip(o))
	}
	return nil
}

// CheckKey checks a record key: 1 to lim.MaxKey bytes, none of them a
// space or a control character, so it fits the request line.
func CheckKey(key string, lim Limits) error {
	if key == "" {
		return Errorf(CodeBadRequest, "empty key")
	}
	if len(key) > lim.MaxKey {
		return Errorf(CodeTooLarge, "key of %d bytes exceeds the limit of %d", len(key), lim.MaxKey)
	}
	for i := 0; i < len(key); i++ {
		if c := key[i]; c <= ' ' || c == 0x7f {
			return Errorf(CodeBadRequest, "key %q: byte %d is a space or control character", clip([]byte(key)), i)
		}
	}
	return nil
}

// fields splits a request line on single spaces, ignoring a trailing
// carriage return and repeated spaces.
func fields(line []byte) [][]byte {
	line = bytes.TrimSuffix(line, []byte{'\r'})
	var out [][]byte
	for len(line) > 0 {
		var f []byte
		f, line, _ = bytes.Cut(line, []byte{' '})
		if len(f) > 0 {
			out = append(out, f)
		}
	}
	return out
}

// clip shortens what an error message quotes from a request.
func clip(b []byte) string {
	if len(b) > 64 {
		return string(b[:64]) + "…"
	}
	return string(b)
}

// String is the request line, for logs.
func (r *Request) String() string {
	s := fmt.Sprintf("%s %s", r.Op, r.NS)
	if r.Op == OpMGet {
		return s + fmt.Sprintf(" (%d keys)", len(r.Keys))
	}
	return s + " " + r.Key
}
