package wire

import (
	"bytes"
	"strconv"
)

// A frame carries several requests, or their replies, in one NATS message,
// so a client with many requests in flight to one node pays for one
// message instead of one each:
//
//	batch <n>\n then n times "<length>\n<request bytes>"
//	BATCH <n>\n then n times "<length>\n<reply bytes>", in request order
//
// Each request is answered as if it came alone; one failing does not fail
// the others.

// MaxFrame is the most requests one frame may carry.
const MaxFrame = 1000

var (
	batchReq = []byte("batch ")
	batchRep = []byte("BATCH ")
)

// IsFrame reports whether a request payload is a frame.
func IsFrame(data []byte) bool { return bytes.HasPrefix(data, batchReq) }

// AppendFrame appends a frame of the encoded messages parts to buf, with
// head "batch" for requests or "BATCH" for replies.
func AppendFrame(buf []byte, replies bool, parts [][]byte) []byte {
	if replies {
		buf = append(buf, batchRep...)
	} else {
		buf = append(buf, batchReq...)
	}
	buf = strconv.AppendInt(buf, int64(len(parts)), 10)
	buf = append(buf, '\n')
	for _, p := range parts {
		buf = strconv.AppendInt(buf, int64(len(p)), 10)
		buf = append(buf, '\n')
		buf = append(buf, p...)
	}
	return buf
}

// ParseFrame splits a frame into its messages, which alias data; replies
// selects the reply head. The error is an *Error with CodeBadRequest.
func ParseFrame(data []byte, replies bool) ([][]byte, error) {
	head := batchReq
	if replies {
		head = batchRep
	}
	if !bytes.HasPrefix(data, head) {
		return nil, Errorf(CodeBadRequest, "not a frame")
	}
	line, rest, ok := bytes.Cut(data[len(head):], []byte{'\n'})
	n, err := strconv.Atoi(string(line))
	if !ok || err != nil || n < 1 || n > MaxFrame {
		return nil, Errorf(CodeBadRequest, "frame: count must be 1 to %d, got %q", MaxFrame, clip(line))
	}
	parts := make([][]byte, 0, n)
	for i := range n {
		line, tail, ok := bytes.Cut(rest, []byte{'\n'})
		size, err := strconv.Atoi(string(line))
		if !ok || err != nil || size < 0 || size > len(tail) {
			return nil, Errorf(CodeBadRequest, "frame: message %d of %d: bad or truncated length %q", i+1, n, clip(line))
		}
		parts = append(parts, tail[:size:size])
		rest = tail[size:]
	}
	if len(rest) > 0 {
		return nil, Errorf(CodeBadRequest, "frame: %d bytes after the last message", len(rest))
	}
	return parts, nil
}
