package wire

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
)

// Code names why a request failed.
type Code string

// The error codes of a reply.
const (
	// CodeBadRequest: the request cannot be parsed or breaks a rule.
	CodeBadRequest Code = "bad_request"
	// CodeTooLarge: a key, value or key count is over the node's limits.
	CodeTooLarge Code = "too_large"
	// CodeNoOwner: no live node holds the key's partition.
	CodeNoOwner Code = "no_owner"
	// CodeUnavailable: the write could not be replicated, or a forward
	// failed; it may be retried.
	CodeUnavailable Code = "unavailable"
	// CodeInternal: the node failed.
	CodeInternal Code = "internal"
	// CodeFrameFull: the request came in a frame whose reply would not fit
	// one NATS message; sent alone, it is answered.
	CodeFrameFull Code = "frame_full"
)

// Error is a failed request, as a reply carries it.
type Error struct {
	Code    Code
	Message string
}

func (e *Error) Error() string { return string(e.Code) + ": " + e.Message }

// Errorf returns an *Error with code and a formatted message.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Status is the outcome of a request.
type Status uint8

// Reply statuses.
const (
	StatusOK Status = iota + 1
	StatusNotFound
	StatusError
)

// Item is one record of a reply: a get's, or one key's of a multi-get.
type Item struct {
	Found bool
	// Version orders writes of a key: the higher wins.
	Version uint64
	// Expires is when the record expires, in Unix milliseconds.
	Expires int64
	// Stale marks a record past its TTL served because fallback is on.
	Stale bool
	Value []byte
}

// Reply answers a Request.
type Reply struct {
	Status Status
	Err    *Error // StatusError
	// Item is a get's record, or a put's or delete's version and expiry.
	Item Item
	// Items answer a multi-get, one per key in the request's order.
	Items []Item
}

// Append appends the wire form of r to buf:
//
//	OK <version> <expires ms>[ stale]\n<value bytes>   get, put, del
//	NOT_FOUND
//	ERR <code> <message>
//	ITEMS <n>\n then per key "-\n" when missing, else
//	    "<len> <version> <expires ms>[ stale]\n<len bytes>\n"
func (r *Reply) Append(buf []byte, op Op) []byte {
	switch {
	case r.Status == StatusError && r.Err != nil:
		buf = append(buf, "ERR "...)
		buf = append(buf, r.Err.Code...)
		buf = append(buf, ' ')
		return append(buf, bytes.ReplaceAll([]byte(r.Err.Message), []byte{'\n'}, []byte{' '})...)
	case r.Status == StatusNotFound:
		return append(buf, "NOT_FOUND"...)
	case op == OpMGet:
		buf = append(buf, "ITEMS "...)
		buf = strconv.AppendInt(buf, int64(len(r.Items)), 10)
		buf = append(buf, '\n')
		for i := range r.Items {
			it := &r.Items[i]
			if !it.Found {
				buf = append(buf, "-\n"...)
				continue
			}
			buf = strconv.AppendInt(buf, int64(len(it.Value)), 10)
			buf = append(buf, ' ')
			buf = appendMeta(buf, it)
			buf = append(buf, '\n')
			buf = append(buf, it.Value...)
			buf = append(buf, '\n')
		}
		return buf
	}
	buf = append(buf, "OK "...)
	buf = appendMeta(buf, &r.Item)
	buf = append(buf, '\n')
	return append(buf, r.Item.Value...)
}

func appendMeta(buf []byte, it *Item) []byte {
	buf = strconv.AppendUint(buf, it.Version, 10)
	buf = append(buf, ' ')
	buf = strconv.AppendInt(buf, it.Expires, 10)
	if it.Stale {
		buf = append(buf, " stale"...)
	}
	return buf
}

// ParseReply decodes the reply to a request of op. The values alias data.
func ParseReply(data []byte, op Op) (Reply, error) {
	var r Reply
	line, body, _ := bytes.Cut(data, []byte{'\n'})
	switch {
	case bytes.HasPrefix(line, []byte("ERR ")):
		code, msg, _ := bytes.Cut(line[4:], []byte{' '})
		r.Status, r.Err = StatusError, &Error{Code: Code(code), Message: string(msg)}
		return r, nil
	case bytes.Equal(line, []byte("NOT_FOUND")):
		r.Status = StatusNotFound
		return r, nil
	case op == OpMGet && bytes.HasPrefix(line, []byte("ITEMS ")):
		n, err := strconv.Atoi(string(line[6:]))
		if err != nil || n < 0 || n > len(data) {
			return r, fmt.Errorf("wire: bad item count %q", clip(line))
		}
		r.Status, r.Items = StatusOK, make([]Item, 0, n)
		for range n {
			var l []byte
			var ok bool
			if l, body, ok = bytes.Cut(body, []byte{'\n'}); !ok {
				return r, fmt.Errorf("wire: reply truncated after %d of %d items", len(r.Items), n)
			}
			if bytes.Equal(l, []byte("-")) {
				r.Items = append(r.Items, Item{})
				continue
			}
			size, meta, _ := bytes.Cut(l, []byte{' '})
			sz, err := strconv.Atoi(string(size))
			if err != nil || sz < 0 || sz >= len(body) || body[sz] != '\n' {
				return r, fmt.Errorf("wire: bad item %d header %q", len(r.Items), clip(l))
			}
			it, err := parseMeta(meta)
			if err != nil {
				return r, err
			}
			it.Value, body = body[:sz:sz], body[sz+1:]
			r.Items = append(r.Items, it)
		}
		return r, nil
	case bytes.HasPrefix(line, []byte("OK ")) && op != OpMGet:
		it, err := parseMeta(line[3:])
		if err != nil {
			return r, err
		}
		it.Value = body
		r.Status, r.Item = StatusOK, it
		return r, nil
	}
	return r, fmt.Errorf("wire: unexpected reply to %s: %q", op, clip(line))
}

func parseMeta(meta []byte) (Item, error) {
	it := Item{Found: true}
	f := fields(meta)
	if len(f) < 2 || len(f) > 3 || (len(f) == 3 && string(f[2]) != "stale") {
		return it, fmt.Errorf("wire: bad record header %q", clip(meta))
	}
	var err1, err2 error
	it.Version, err1 = strconv.ParseUint(string(f[0]), 10, 64)
	it.Expires, err2 = strconv.ParseInt(string(f[1]), 10, 64)
	if err1 != nil || err2 != nil {
		return it, fmt.Errorf("wire: bad record header %q", clip(meta))
	}
	it.Stale = len(f) == 3
	return it, nil
}

// ErrorReply returns the reply carrying err: the code of the *Error it
// wraps, with err's whole message, or CodeInternal.
func ErrorReply(err error) Reply {
	var we *Error
	if !errors.As(err, &we) {
		return Reply{Status: StatusError, Err: &Error{Code: CodeInternal, Message: err.Error()}}
	}
	if e, ok := err.(*Error); ok {
		return Reply{Status: StatusError, Err: e}
	}
	return Reply{Status: StatusError, Err: &Error{Code: we.Code, Message: err.Error()}}
}
