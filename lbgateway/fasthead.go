package lbgateway

import (
	"bufio"
	"bytes"
	"errors"
)

// Heads read in place, for the fast path (fastpath.go). The parsers are
// strict: what they accept, net/http reads the same way (the fuzz tests
// check it), and what they refuse a request leaves to the general path,
// which parses with net/http.

// field is one header field of a head read in place; its slices point
// into the reader's buffer and live until the next read.
type field struct {
	name, value []byte
	kind        fieldKind
}

// fieldKind says what the fast path does with a field.
type fieldKind uint8

const (
	fieldKeep         fieldKind = iota // forwarded as it came
	fieldCookie                        // request: the sticky cookie is taken out of it
	fieldDrop                          // not forwarded
	fieldCacheControl                  // response: replaced by "private" when the sticky cookie is set
	fieldSetCookie                     // response: forwarded; a session cookie may call for the sticky one
	fieldLength                        // response: Content-Length, forwarded on bodyless answers only
	fieldExpire                        // response: Cachebus-Expire, published and not forwarded
	fieldTrailer                       // response: Trailer, forwarded with a chunked body only
)

// fastRequest is a request head the fast path serves.
type fastRequest struct {
	method string // one of fastMethods
	target []byte // origin form: starts with '/'
	host   []byte
	fields []field
	xff    [][]byte // X-Forwarded-For values the client sent
	close  bool     // Connection: close
}

// fastMethods are the methods the fast path serves: those without a
// body, whose requests may be sent to another backend when one fails.
var fastMethods = [...]string{"GET", "HEAD", "OPTIONS", "DELETE"}

// headEnd returns the length of the head at the start of b, through the
// empty line that ends it, or 0 when b holds no whole head. Lines may end
// in CRLF or in a bare LF, as net/http allows.
func headEnd(b []byte) int {
	for i := 0; ; {
		j := bytes.IndexByte(b[i:], '\n')
		if j < 0 {
			return 0
		}
		i += j + 1
		switch {
		case i < len(b) && b[i] == '\n':
			return i + 1
		case i+1 < len(b) && b[i] == '\r' && b[i+1] == '\n':
			return i + 2
		}
	}
}

// errHeadTooLarge is a head that does not fit the reader's buffer.
var errHeadTooLarge = errors.New("head larger than the read buffer")

// peekHead returns the next head in br, unread: it reads until the head
// is whole, br's buffer is full (errHeadTooLarge), or a read fails.
func peekHead(br *bufio.Reader) ([]byte, error) {
	for {
		buf, _ := br.Peek(br.Buffered())
		if n := headEnd(buf); n > 0 {
			return buf[:n], nil
		}
		if len(buf) >= br.Size() {
			return nil, errHeadTooLarge
		}
		if _, err := br.Peek(len(buf) + 1); err != nil {
			return nil, err
		}
	}
}

// nextLine splits the first line off b, without its line end; ok is false
// when the line holds a CR anywhere but at its end.
func nextLine(b []byte) (line, rest []byte, ok bool) {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		return nil, nil, false
	}
	line, rest = b[:i], b[i+1:]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, rest, bytes.IndexByte(line, '\r') < 0
}

// parseField reads one "name: value" line: a token for a name, no space
// before the colon, optional white space around the value, and no control
// byte but tab in it. Folded lines (starting with white space) are refused.
func parseField(line []byte) (name, value []byte, ok bool) {
	colon := bytes.IndexByte(line, ':')
	if colon <= 0 {
		return nil, nil, false
	}
	name = line[:colon]
	for _, c := range name {
		if !tokenByte(c) {
			return nil, nil, false
		}
	}
	value = line[colon+1:]
	for len(value) > 0 && (value[0] == ' ' || value[0] == '\t') {
		value = value[1:]
	}
	for len(value) > 0 && (value[len(value)-1] == ' ' || value[len(value)-1] == '\t') {
		value = value[:len(value)-1]
	}
	for _, c := range value {
		if (c < ' ' && c != '\t') || c == 0x7f {
			return nil, nil, false
		}
	}
	return name, value, true
}

// tokenByte says whether c may appear in a header name (RFC 9110, 5.6.2).
func tokenByte(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	switch c {
	case '!', '#', '$', '%', '&', '\'', '*', '+', '-', '.', '^', '_', '`', '|', '~':
		return true
	}
	return false
}

// foldEq says whether b equals the lower-case s, ignoring ASCII case.
func foldEq(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}

// eachToken calls fn with each element of a comma-separated list, trimmed;
// empty elements are skipped.
func eachToken(v []byte, fn func(tok []byte)) {
	for len(v) > 0 {
		var tok []byte
		tok, v, _ = bytes.Cut(v, []byte{','})
		if tok = bytes.Trim(tok, " \t"); len(tok) > 0 {
			fn(tok)
		}
	}
}

// parseFastRequest reads head (from peekHead) into rq, reusing its
// slices. It returns false for anything the fast path leaves to the
// general one: a method with a body or an unknown one, a target not in
// origin form or under the status pages, a version but HTTP/1.1, a
// missing, repeated or malformed Host, a body, an upgrade, an Expect, a
// hop-by-hop header but Connection's keep-alive and close, or any line
// net/http might read differently.
func parseFastRequest(head []byte, rq *fastRequest) bool {
	line, rest, ok := nextLine(head)
	if !ok {
		return false
	}
	method, line, _ := bytes.Cut(line, []byte{' '})
	target, version, _ := bytes.Cut(line, []byte{' '})
	rq.method = ""
	for _, m := range fastMethods {
		if string(method) == m {
			rq.method = m
		}
	}
	if rq.method == "" || string(version) != "HTTP/1.1" || len(target) == 0 || target[0] != '/' ||
		bytes.HasPrefix(target, []byte(statusPrefix)) ||
		bytes.IndexByte(target[:min(len(target), len(statusPrefix))], '%') >= 0 {
		return false
	}
	for _, c := range target {
		if c <= ' ' || c >= 0x7f {
			return false
		}
	}
	// net/http refuses a path with a bad escape; so does the fast path,
	// leaving the answer (400) to it.
	path, _, _ := bytes.Cut(target, []byte{'?'})
	for i := bytes.IndexByte(path, '%'); i >= 0; i = bytes.IndexByte(path, '%') {
		if i+2 >= len(path) || !hexByte(path[i+1]) || !hexByte(path[i+2]) {
			return false
		}
		path = path[i+3:]
	}
	rq.target, rq.host, rq.fields, rq.xff, rq.close = target, nil, rq.fields[:0], rq.xff[:0], false
	hosts := 0
	for {
		if line, rest, ok = nextLine(rest); !ok {
			return false
		}
		if len(line) == 0 {
			break
		}
		name, value, ok := parseField(line)
		if !ok {
			return false
		}
		kind := fieldKeep
		switch {
		case foldEq(name, "host"):
			hosts++
			rq.host = value
			continue
		case foldEq(name, "cookie"):
			kind = fieldCookie
		case foldEq(name, "x-forwarded-for"):
			rq.xff = append(rq.xff, value)
			continue
		case foldEq(name, "x-forwarded-host"), foldEq(name, "x-forwarded-proto"), foldEq(name, "keep-alive"):
			continue
		case foldEq(name, "connection"):
			plain := true
			eachToken(value, func(tok []byte) {
				switch {
				case foldEq(tok, "close"):
					rq.close = true
				case !foldEq(tok, "keep-alive"):
					plain = false
				}
			})
			if !plain {
				return false
			}
			continue
		case foldEq(name, "content-length"):
			if string(value) != "0" {
				return false
			}
			continue
		case foldEq(name, "transfer-encoding"), foldEq(name, "upgrade"), foldEq(name, "expect"),
			foldEq(name, "te"), foldEq(name, "trailer"), foldEq(name, "proxy-connection"),
			foldEq(name, "proxy-authorization"), foldEq(name, "proxy-authenticate"), foldEq(name, "http2-settings"):
			return false
		}
		rq.fields = append(rq.fields, field{name: name, value: value, kind: kind})
	}
	if hosts != 1 || len(rq.host) == 0 {
		return false
	}
	for _, c := range rq.host {
		if !validHostByte(c) {
			return false
		}
	}
	return true
}

// fastResponse is a backend's response head, read in place.
type fastResponse struct {
	status  int
	minor   int // HTTP/1.<minor>
	fields  []field
	length  int64 // of the body; -1 when not declared
	chunked bool
	// closes: the backend closes the connection after this response.
	closes bool
	// nominated are the headers the Connection header names: hop-by-hop,
	// not forwarded.
	nominated [][]byte
	hasDate   bool
	hasTE     bool
}

// errBadResponse is a response head the gateway cannot relay.
type errBadResponse string

func (e errBadResponse) Error() string { return "malformed response from the backend: " + string(e) }

// parseFastResponse reads a response head into rs, reusing its slices,
// and checks its framing the way net/http does: one transfer coding,
// chunked; Content-Lengths that agree and are plain digits.
func parseFastResponse(head []byte, rs *fastResponse) error {
	line, rest, ok := nextLine(head)
	if !ok || len(line) < len("HTTP/1.x 200") || string(line[:7]) != "HTTP/1." ||
		line[7] < '0' || line[7] > '9' || line[8] != ' ' || (len(line) > 12 && line[12] != ' ') {
		return errBadResponse("status line")
	}
	rs.minor = int(line[7] - '0')
	code := 0
	for _, c := range line[9:12] {
		if c < '0' || c > '9' {
			return errBadResponse("status code")
		}
		code = code*10 + int(c-'0')
	}
	if code < 100 {
		return errBadResponse("status code")
	}
	rs.status, rs.fields, rs.nominated = code, rs.fields[:0], rs.nominated[:0]
	rs.length, rs.chunked, rs.closes, rs.hasDate, rs.hasTE = -1, false, false, false, false
	keepAlive := false
	var lengthText []byte // the first Content-Length: repeats must be the same text
	badTrailer := false   // a Trailer naming a field a trailer may not hold
	for {
		if line, rest, ok = nextLine(rest); !ok {
			return errBadResponse("line break")
		}
		if len(line) == 0 {
			break
		}
		name, value, ok := parseField(line)
		if !ok {
			return errBadResponse("header field")
		}
		kind := fieldKeep
		switch {
		case foldEq(name, "content-length"):
			n, ok := parseLength(value)
			if !ok || (rs.length >= 0 && !bytes.Equal(value, lengthText)) {
				return errBadResponse("Content-Length")
			}
			rs.length, lengthText = n, value
			kind = fieldLength
		case foldEq(name, "transfer-encoding"):
			if rs.hasTE || !foldEq(value, "chunked") {
				return errBadResponse("unsupported transfer encoding")
			}
			rs.hasTE, rs.chunked = true, true
			continue
		case foldEq(name, "connection"):
			eachToken(value, func(tok []byte) {
				switch {
				case foldEq(tok, "close"):
					rs.closes = true
				case foldEq(tok, "keep-alive"):
					keepAlive = true
				default:
					rs.nominated = append(rs.nominated, tok)
				}
			})
			continue
		case foldEq(name, "keep-alive"), foldEq(name, "proxy-connection"), foldEq(name, "proxy-authenticate"),
			foldEq(name, "proxy-authorization"), foldEq(name, "te"), foldEq(name, "upgrade"),
			foldEq(name, "surrogate-key"), foldEq(name, "surrogate-control"):
			continue
		case foldEq(name, "date"):
			rs.hasDate = true
		case foldEq(name, "cache-control"):
			kind = fieldCacheControl
		case foldEq(name, "set-cookie"):
			kind = fieldSetCookie
		case foldEq(name, "cachebus-expire"):
			kind = fieldExpire
		case foldEq(name, "trailer"):
			kind = fieldTrailer
			eachToken(value, func(tok []byte) {
				if foldEq(tok, "content-length") || foldEq(tok, "transfer-encoding") || foldEq(tok, "trailer") {
					badTrailer = true
				}
			})
		}
		rs.fields = append(rs.fields, field{name: name, value: value, kind: kind})
	}
	if rs.chunked && rs.minor == 0 {
		// net/http ignores a transfer coding from HTTP/1.0 and reads to
		// the close; RFC 9112 6.1 calls such framing faulty.
		return errBadResponse("Transfer-Encoding from HTTP/1.0")
	}
	if rs.chunked && badTrailer {
		return errBadResponse("Trailer")
	}
	if rs.minor == 0 && !keepAlive {
		rs.closes = true // HTTP/1.0 closes unless it says keep-alive
	}
	if rs.chunked {
		// A chunked body's length is the chunks' (RFC 9112, 6.3).
		rs.length = -1
	}
	for i := range rs.fields {
		for _, n := range rs.nominated {
			if bytes.EqualFold(rs.fields[i].name, n) {
				rs.fields[i].kind = fieldDrop
			}
		}
	}
	return nil
}

// hexByte says whether c is a hex digit.
func hexByte(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// parseLength reads a Content-Length: digits only, no sign, below 2^62.
func parseLength(v []byte) (int64, bool) {
	if len(v) == 0 || len(v) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// parseChunkLine reads a chunk-size line (without its line end): hex
// digits, then optionally extensions after ';', which are dropped.
func parseChunkLine(line []byte) (int64, bool) {
	// As net/http: white space may end the line, not the size.
	size, ext, _ := bytes.Cut(bytes.TrimRight(line, " \t"), []byte{';'})
	if len(size) == 0 || len(size) > 15 {
		return 0, false
	}
	for _, c := range ext {
		if (c < ' ' && c != '\t') || c == 0x7f {
			return 0, false
		}
	}
	var n int64
	for _, c := range size {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c -= 'a' - 10
		case 'A' <= c && c <= 'F':
			c -= 'A' - 10
		default:
			return 0, false
		}
		n = n<<4 | int64(c)
	}
	return n, true
}
