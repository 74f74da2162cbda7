package lbgateway

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"testing/iotest"
)

// wantField is a header field a parser is expected to keep.
type wantField struct {
	name, value string
	kind        fieldKind
}

func gotFields(fs []field) []wantField {
	out := make([]wantField, 0, len(fs))
	for _, f := range fs {
		out = append(out, wantField{string(f.name), string(f.value), f.kind})
	}
	return out
}

func byteStrings(bs [][]byte) []string {
	out := make([]string, 0, len(bs))
	for _, b := range bs {
		out = append(out, string(b))
	}
	return out
}

type fastRequestCase struct {
	name   string
	head   string
	ok     bool
	method string
	target string
	host   string
	fields []wantField
	xff    []string
	close  bool
}

var fastRequestCases = []fastRequestCase{
	// Accepted.
	{name: "plain GET", head: "GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
		ok: true, method: "GET", target: "/", host: "example.com"},
	{name: "HEAD with query", head: "HEAD /a/b?c=d&e HTTP/1.1\r\nHost: example.com:8080\r\nAccept: */*\r\n\r\n",
		ok: true, method: "HEAD", target: "/a/b?c=d&e", host: "example.com:8080",
		fields: []wantField{{"Accept", "*/*", fieldKeep}}},
	{name: "OPTIONS", head: "OPTIONS /x HTTP/1.1\r\nhost: a\r\n\r\n",
		ok: true, method: "OPTIONS", target: "/x", host: "a"},
	{name: "DELETE", head: "DELETE /items/7 HTTP/1.1\r\nHOST: [::1]:80\r\nUser-Agent: t\r\n\r\n",
		ok: true, method: "DELETE", target: "/items/7", host: "[::1]:80",
		fields: []wantField{{"User-Agent", "t", fieldKeep}}},
	{name: "bare LF", head: "GET /x HTTP/1.1\nHost: a\nAccept: text/html\n\n",
		ok: true, method: "GET", target: "/x", host: "a",
		fields: []wantField{{"Accept", "text/html", fieldKeep}}},
	{name: "mixed line ends", head: "GET /x HTTP/1.1\r\nHost: a\nAccept: text/html\r\n\n",
		ok: true, method: "GET", target: "/x", host: "a",
		fields: []wantField{{"Accept", "text/html", fieldKeep}}},
	{name: "value white space trimmed", head: "GET / HTTP/1.1\r\nHost: \t a \t\r\nX-A:b\r\nX-B: \t\r\nX-C: \xc3\xa9 x \r\n\r\n",
		ok: true, method: "GET", target: "/", host: "a",
		fields: []wantField{{"X-A", "b", fieldKeep}, {"X-B", "", fieldKeep}, {"X-C", "\xc3\xa9 x", fieldKeep}}},
	{name: "cookies", head: "GET / HTTP/1.1\r\nHost: a\r\nCookie: a=1\r\nAccept: x\r\ncookie: b=2; c=3\r\n\r\n",
		ok: true, method: "GET", target: "/", host: "a",
		fields: []wantField{{"Cookie", "a=1", fieldCookie}, {"Accept", "x", fieldKeep}, {"cookie", "b=2; c=3", fieldCookie}}},
	{name: "X-Forwarded-For collected", head: "GET / HTTP/1.1\r\nX-Forwarded-For: 192.0.2.1\r\nHost: a\r\nx-forwarded-for: 192.0.2.2, 192.0.2.3\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: b\r\n\r\n",
		ok: true, method: "GET", target: "/", host: "a",
		xff: []string{"192.0.2.1", "192.0.2.2, 192.0.2.3"}},
	{name: "keep-alive", head: "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\n",
		ok: true, method: "GET", target: "/", host: "a"},
	{name: "close", head: "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
		ok: true, method: "GET", target: "/", host: "a", close: true},
	{name: "keep-alive and close", head: "GET / HTTP/1.1\r\nHost: a\r\nConnection: Keep-Alive, , CLOSE\r\n\r\n",
		ok: true, method: "GET", target: "/", host: "a", close: true},
	{name: "Content-Length 0", head: "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
		ok: true, method: "GET", target: "/", host: "a"},
	{name: "status prefix not at the start", head: "GET /a/_cachebus/ HTTP/1.1\r\nHost: a\r\n\r\n",
		ok: true, method: "GET", target: "/a/_cachebus/", host: "a"},
	{name: "escape after the status prefix's length", head: "GET /abcdefghij%41 HTTP/1.1\r\nHost: a\r\n\r\n",
		ok: true, method: "GET", target: "/abcdefghij%41", host: "a"},

	{name: "escapes in the path", head: "GET /abcdefghijk%41%2f?q=%zz HTTP/1.1\r\nHost: a\r\n\r\n",
		ok: true, method: "GET", target: "/abcdefghijk%41%2f?q=%zz", host: "a"},
	// Refused.
	{name: "bad escape in the path", head: "GET /0123456789/%zz HTTP/1.1\r\nHost: a\r\n\r\n"},
	{name: "cut escape at the end of the path", head: "GET /0123456789/%4?x HTTP/1.1\r\nHost: a\r\n\r\n"},
	{name: "POST", head: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"},
	{name: "PUT", head: "PUT / HTTP/1.1\r\nHost: a\r\n\r\n"},
	{name: "unknown method", head: "BREW / HTTP/1.1\r\nHost: a\r\n\r\n"},
	{name: "lower-case method", head: "get / HTTP/1.1\r\nHost: a\r\n\r\n"},
	{name: "HTTP/1.0", head: "GET / HTTP/1.0\r\nHost: a\r\n\r\n"},
	{name: "HTTP/2.0", head: "GET / HTTP/2.0\r\nHost: a\r\n\r\n"},
	{name: "lower-case version", head: "GET / http/1.1\r\nHost: a\r\n\r\n"},
	{name: "absolute form", head: "GET http://a/b HTTP/1.1\r\nHost: a\r\n\r\n"},
	{name: "asterisk", head: "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"},
	{name: "status pages", head: "GET /_cachebus/ HTTP/1.1\r\nHost: a\r\n\r\n"},
	{name: "status page", head: "GET /_cachebus/status HTTP/1.1\r\nHost: a\r\n\r\n"},
	{name: "escaped status pages", head: "GET /%5Fcachebus/ HTTP/1.1\r\nHost: a\r\n\r\n"},
	{name: "escaped status slash", head: "GET /_cachebus%2Fstatus HTTP/1.1\r\nHost: a\r\n\r\n"},
	{name: "two spaces", head: "GET  / HTTP/1.1\r\nHost: a\r\n\r\n"},
	{name: "trailing space", head: "GET / HTTP/1.1 \r\nHost: a\r\n\r\n"},
	{name: "no version", head: "GET /\r\nHost: a\r\n\r\n"},
	{name: "tab in target", head: "GET /a\tb HTTP/1.1\r\nHost: a\r\n\r\n"},
	{name: "high byte in target", head: "GET /\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n"},
	{name: "DEL in target", head: "GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n"},
	{name: "missing Host", head: "GET / HTTP/1.1\r\nAccept: x\r\n\r\n"},
	{name: "two Hosts", head: "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"},
	{name: "empty Host", head: "GET / HTTP/1.1\r\nHost: \r\n\r\n"},
	{name: "Host with a space", head: "GET / HTTP/1.1\r\nHost: a b\r\n\r\n"},
	{name: "Host with a slash", head: "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n"},
	{name: "Host with a high byte", head: "GET / HTTP/1.1\r\nHost: \xc3\xa9\r\n\r\n"},
	{name: "Content-Length 5", head: "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n"},
	{name: "Content-Length 00", head: "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 00\r\n\r\n"},
	{name: "Transfer-Encoding", head: "GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"},
	{name: "Upgrade", head: "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n"},
	{name: "Expect", head: "GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n"},
	{name: "TE", head: "GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n"},
	{name: "Trailer", head: "GET / HTTP/1.1\r\nHost: a\r\nTrailer: X\r\n\r\n"},
	{name: "Proxy-Connection", head: "GET / HTTP/1.1\r\nHost: a\r\nProxy-Connection: close\r\n\r\n"},
	{name: "HTTP2-Settings", head: "GET / HTTP/1.1\r\nHost: a\r\nHTTP2-Settings: x\r\n\r\n"},
	{name: "Connection upgrade", head: "GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n\r\n"},
	{name: "Connection nominates", head: "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Foo\r\n\r\n"},
	{name: "obs-fold", head: "GET / HTTP/1.1\r\nHost: a\r\nX-A: a\r\n b\r\n\r\n"},
	{name: "obs-fold with colon", head: "GET / HTTP/1.1\r\nHost: a\r\nX-A: a\r\n\tb: c\r\n\r\n"},
	{name: "first field folded", head: "GET / HTTP/1.1\r\n Host: a\r\n\r\n"},
	{name: "space before colon", head: "GET / HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n"},
	{name: "no colon", head: "GET / HTTP/1.1\r\nHost: a\r\nX-A\r\n\r\n"},
	{name: "empty name", head: "GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n"},
	{name: "high byte in name", head: "GET / HTTP/1.1\r\nHost: a\r\nX-\xc3\xa9: b\r\n\r\n"},
	{name: "control byte in value", head: "GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x01b\r\n\r\n"},
	{name: "NUL in value", head: "GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n"},
	{name: "DEL in value", head: "GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x7fb\r\n\r\n"},
	{name: "CR inside a line", head: "GET / HTTP/1.1\r\nHost: a\r\nX-A: a\rb\r\n\r\n"},
	{name: "CR CR LF", head: "GET / HTTP/1.1\r\nHost: a\r\r\n\r\n"},
	{name: "CR in request line", head: "GET /\r HTTP/1.1\r\nHost: a\r\n\r\n"},
	{name: "no final empty line", head: "GET / HTTP/1.1\r\nHost: a\r\n"},
	{name: "empty", head: ""},
}

func TestParseFastRequest(t *testing.T) {
	// One fastRequest for all cases: the parser must reset what it reuses.
	var rq fastRequest
	for _, c := range fastRequestCases {
		t.Run(c.name, func(t *testing.T) {
			ok := parseFastRequest([]byte(c.head), &rq)
			if ok != c.ok {
				t.Fatalf("parseFastRequest(%q) = %v, want %v", c.head, ok, c.ok)
			}
			if !ok {
				return
			}
			if rq.method != c.method || string(rq.target) != c.target || string(rq.host) != c.host {
				t.Errorf("method, target, host = %q, %q, %q; want %q, %q, %q",
					rq.method, rq.target, rq.host, c.method, c.target, c.host)
			}
			if got := gotFields(rq.fields); !slices.Equal(got, c.fields) && (len(got) != 0 || len(c.fields) != 0) {
				t.Errorf("fields = %q, want %q", got, c.fields)
			}
			if got := byteStrings(rq.xff); !slices.Equal(got, c.xff) && (len(got) != 0 || len(c.xff) != 0) {
				t.Errorf("xff = %q, want %q", got, c.xff)
			}
			if rq.close != c.close {
				t.Errorf("close = %v, want %v", rq.close, c.close)
			}
		})
	}
}

type fastResponseCase struct {
	name    string
	head    string
	err     bool
	status  int
	minor   int
	length  int64
	chunked bool
	closes  bool
	hasDate bool
	fields  []wantField
}

var fastResponseCases = []fastResponseCase{
	// Accepted.
	{name: "200 with length", head: "HTTP/1.1 200 OK\r\nContent-Length: 12\r\nContent-Type: text/plain\r\n\r\n",
		status: 200, minor: 1, length: 12,
		fields: []wantField{{"Content-Length", "12", fieldLength}, {"Content-Type", "text/plain", fieldKeep}}},
	{name: "chunked", head: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
		status: 200, minor: 1, length: -1, chunked: true},
	{name: "chunked and length", head: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: Chunked\r\n\r\n",
		status: 200, minor: 1, length: -1, chunked: true,
		fields: []wantField{{"Content-Length", "5", fieldLength}}},
	{name: "204 without reason", head: "HTTP/1.1 204\r\n\r\n",
		status: 204, minor: 1, length: -1},
	{name: "304 with length", head: "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
		status: 304, minor: 1, length: 10,
		fields: []wantField{{"Content-Length", "10", fieldLength}}},
	{name: "100 continue", head: "HTTP/1.1 100 Continue\r\n\r\n",
		status: 100, minor: 1, length: -1},
	{name: "empty reason", head: "HTTP/1.1 404 \r\nContent-Length: 0\r\n\r\n",
		status: 404, minor: 1, length: 0,
		fields: []wantField{{"Content-Length", "0", fieldLength}}},
	{name: "bare LF", head: "HTTP/1.1 200 OK\nContent-Length: 1\nX-A: b\n\n",
		status: 200, minor: 1, length: 1,
		fields: []wantField{{"Content-Length", "1", fieldLength}, {"X-A", "b", fieldKeep}}},
	// No length and not chunked: the body runs to the connection's end;
	// the fast path sets closes itself when it copies such a body.
	{name: "body to EOF", head: "HTTP/1.1 200 OK\r\n\r\n",
		status: 200, minor: 1, length: -1},
	{name: "HTTP/1.0 closes", head: "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n",
		status: 200, minor: 0, length: 1, closes: true,
		fields: []wantField{{"Content-Length", "1", fieldLength}}},
	{name: "HTTP/1.0 keep-alive", head: "HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 1\r\n\r\n",
		status: 200, minor: 0, length: 1,
		fields: []wantField{{"Content-Length", "1", fieldLength}}},
	{name: "HTTP/1.0 keep-alive and close", head: "HTTP/1.0 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 1\r\n\r\n",
		status: 200, minor: 0, length: 1, closes: true,
		fields: []wantField{{"Content-Length", "1", fieldLength}}},
	{name: "close", head: "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
		status: 200, minor: 1, length: 0, closes: true,
		fields: []wantField{{"Content-Length", "0", fieldLength}}},
	{name: "nominated", head: "HTTP/1.1 200 OK\r\nx-foo: 1\r\nConnection: X-Foo, close\r\nX-Bar: 2\r\nContent-Length: 0\r\nX-FOO: 3\r\n\r\n",
		status: 200, minor: 1, length: 0, closes: true,
		fields: []wantField{{"x-foo", "1", fieldDrop}, {"X-Bar", "2", fieldKeep}, {"Content-Length", "0", fieldLength}, {"X-FOO", "3", fieldDrop}}},
	{name: "kinds", head: "HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\nCache-Control: max-age=5\r\nCachebus-Expire: users\r\nTrailer: X-Sum\r\nDate: Mon, 02 Jan 2006 15:04:05 GMT\r\nTransfer-Encoding: chunked\r\n\r\n",
		status: 200, minor: 1, length: -1, chunked: true, hasDate: true,
		fields: []wantField{{"Set-Cookie", "a=1", fieldSetCookie}, {"set-cookie", "b=2", fieldSetCookie},
			{"Cache-Control", "max-age=5", fieldCacheControl}, {"Cachebus-Expire", "users", fieldExpire},
			{"Trailer", "X-Sum", fieldTrailer}, {"Date", "Mon, 02 Jan 2006 15:04:05 GMT", fieldKeep}}},
	{name: "hop-by-hop left out", head: "HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nUpgrade: h2c\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\nProxy-Authenticate: Basic\r\nSurrogate-Key: a b\r\nSurrogate-Control: max-age=1\r\nX-A: 1\r\nContent-Length: 2\r\n\r\n",
		status: 200, minor: 1, length: 2,
		fields: []wantField{{"X-A", "1", fieldKeep}, {"Content-Length", "2", fieldLength}}},
	{name: "identical lengths", head: "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length:  3 \r\n\r\n",
		status: 200, minor: 1, length: 3,
		fields: []wantField{{"Content-Length", "3", fieldLength}, {"Content-Length", "3", fieldLength}}},
	{name: "odd status", head: "HTTP/1.1 599 Whatever it is\r\nContent-Length: 0\r\n\r\n",
		status: 599, minor: 1, length: 0,
		fields: []wantField{{"Content-Length", "0", fieldLength}}},

	// Refused.
	{name: "transfer coding from HTTP/1.0", head: "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", err: true},
	{name: "lengths written differently", head: "HTTP/1.1 200 OK\r\nContent-Length: 03\r\nContent-Length: 3\r\n\r\n", err: true},
	{name: "trailer naming the length", head: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-A, Content-Length\r\n\r\n", err: true},
	{name: "HTTP/2", head: "HTTP/2 200 OK\r\n\r\n", err: true},
	{name: "HTTP/2.0", head: "HTTP/2.0 200 OK\r\n\r\n", err: true},
	{name: "lower-case version", head: "http/1.1 200 OK\r\n\r\n", err: true},
	{name: "four digits", head: "HTTP/1.1 2000 OK\r\n\r\n", err: true},
	{name: "signed", head: "HTTP/1.1 +20 OK\r\n\r\n", err: true},
	{name: "below 100", head: "HTTP/1.1 099 OK\r\n\r\n", err: true},
	{name: "two digits", head: "HTTP/1.1 20\r\n\r\n", err: true},
	{name: "two spaces", head: "HTTP/1.1  200 OK\r\n\r\n", err: true},
	{name: "no space after code", head: "HTTP/1.1 200OK\r\n\r\n", err: true},
	{name: "CR in status line", head: "HTTP/1.1 200 O\rK\r\n\r\n", err: true},
	{name: "different lengths", head: "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", err: true},
	{name: "negative length", head: "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", err: true},
	{name: "two numbers", head: "HTTP/1.1 200 OK\r\nContent-Length: 1 2\r\n\r\n", err: true},
	{name: "list of lengths", head: "HTTP/1.1 200 OK\r\nContent-Length: 1, 1\r\n\r\n", err: true},
	{name: "plus sign", head: "HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\n", err: true},
	{name: "empty length", head: "HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n", err: true},
	{name: "huge length", head: "HTTP/1.1 200 OK\r\nContent-Length: 9999999999999999999\r\n\r\n", err: true},
	{name: "gzip", head: "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", err: true},
	{name: "gzip, chunked", head: "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", err: true},
	{name: "two TE lines", head: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", err: true},
	{name: "identity", head: "HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\n", err: true},
	{name: "space in name", head: "HTTP/1.1 200 OK\r\nX A: b\r\n\r\n", err: true},
	{name: "space before colon", head: "HTTP/1.1 200 OK\r\nX-A : b\r\n\r\n", err: true},
	{name: "no colon", head: "HTTP/1.1 200 OK\r\nX-A\r\n\r\n", err: true},
	{name: "obs-fold", head: "HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\n\r\n", err: true},
	{name: "control byte", head: "HTTP/1.1 200 OK\r\nX-A: a\x01b\r\n\r\n", err: true},
	{name: "NUL", head: "HTTP/1.1 200 OK\r\nX-A: \x00\r\n\r\n", err: true},
	{name: "CR inside", head: "HTTP/1.1 200 OK\r\nX-A: a\rb\r\n\r\n", err: true},
	{name: "no final empty line", head: "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n", err: true},
	{name: "empty", head: "", err: true},
}

func TestParseFastResponse(t *testing.T) {
	// One fastResponse for all cases: the parser must reset what it reuses.
	var rs fastResponse
	for _, c := range fastResponseCases {
		t.Run(c.name, func(t *testing.T) {
			err := parseFastResponse([]byte(c.head), &rs)
			if (err != nil) != c.err {
				t.Fatalf("parseFastResponse(%q) = %v, want error %v", c.head, err, c.err)
			}
			if err != nil {
				var bad errBadResponse
				if !errors.As(err, &bad) {
					t.Errorf("error %T, want errBadResponse", err)
				}
				return
			}
			if rs.status != c.status || rs.minor != c.minor || rs.length != c.length ||
				rs.chunked != c.chunked || rs.closes != c.closes || rs.hasDate != c.hasDate {
				t.Errorf("status %d minor %d length %d chunked %v closes %v hasDate %v; want %d %d %d %v %v %v",
					rs.status, rs.minor, rs.length, rs.chunked, rs.closes, rs.hasDate,
					c.status, c.minor, c.length, c.chunked, c.closes, c.hasDate)
			}
			if got := gotFields(rs.fields); !slices.Equal(got, c.fields) && (len(got) != 0 || len(c.fields) != 0) {
				t.Errorf("fields = %q, want %q", got, c.fields)
			}
		})
	}
}

func TestHeadEnd(t *testing.T) {
	for _, c := range []struct {
		in   string
		want int
	}{
		{"", 0},
		{"\n", 0},
		{"GET / HTTP/1.1", 0},
		{"GET / HTTP/1.1\r\n", 0},
		{"GET / HTTP/1.1\r\nHost: a\r\n", 0},
		{"GET / HTTP/1.1\r\nHost: a\r\n\r", 0},
		{"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 27},
		{"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody", 27},
		{"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\n\r\n", 27},
		{"GET / HTTP/1.1\nHost: a\n\n", 24},
		{"GET / HTTP/1.1\nHost: a\n\nxyz", 24},
		{"GET / HTTP/1.1\r\nHost: a\n\r\n", 26},
		{"GET / HTTP/1.1\nHost: a\r\n\n", 25},
		{"GET / HTTP/1.1\r\n\r\n", 18},
		{"\n\n", 2},
		{"\r\n\r\n", 4},
		{"GET / HTTP/1.1\r\nHost: a\r\n\r\r\n", 0},
		{"GET / HTTP/1.1\r\nHost: a\r\n \r\n", 0},
	} {
		if got := headEnd([]byte(c.in)); got != c.want {
			t.Errorf("headEnd(%q) = %d, want %d", c.in, got, c.want)
		}
	}
}

func TestParseChunkLine(t *testing.T) {
	for _, c := range []struct {
		in   string
		n    int64
		want bool
	}{
		{"0", 0, true},
		{"1a", 0x1a, true},
		{"1A;ext=1", 0x1a, true},
		{"1A ;ext=1", 0, false}, // net/http refuses white space before the extension
		{"1A \t", 0x1a, true},
		{"ff \t", 0xff, true},
		{"0;a=\"b c\"\t", 0, true},
		{"00000000000000f", 0xf, true},
		{"fffffffffffffff", 1<<60 - 1, true},
		{"", 0, false},
		{"  ", 0, false},
		{";ext", 0, false},
		{"g", 0, false},
		{" 1", 0, false},
		{"-1", 0, false},
		{"+1", 0, false},
		{"0x1", 0, false},
		{"1 2", 0, false},
		{"0123456789abcdef", 0, false},
		{"ffffffffffffffff", 0, false},
		{"1;a\x01", 0, false},
		{"1;a\x7f", 0, false},
		{"1;a\x00", 0, false},
	} {
		n, ok := parseChunkLine([]byte(c.in))
		if ok != c.want || (ok && n != c.n) {
			t.Errorf("parseChunkLine(%q) = %d, %v; want %d, %v", c.in, n, ok, c.n, c.want)
		}
	}
}

func TestPeekHead(t *testing.T) {
	t.Run("too large", func(t *testing.T) {
		head := "GET /0123456789abcdef HTTP/1.1\r\nHost: a\r\n\r\n"
		br := bufio.NewReaderSize(iotest.OneByteReader(strings.NewReader(head)), 16)
		if br.Size() != 16 {
			t.Fatalf("reader size %d", br.Size())
		}
		if _, err := peekHead(br); !errors.Is(err, errHeadTooLarge) {
			t.Fatalf("peekHead = %v, want errHeadTooLarge", err)
		}
	})
	t.Run("small reads", func(t *testing.T) {
		const head = "GET / HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n"
		const rest = "GET /next HTTP/1.1\r\n"
		br := bufio.NewReaderSize(iotest.OneByteReader(strings.NewReader(head+rest)), 4096)
		got, err := peekHead(br)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != head {
			t.Fatalf("peekHead = %q, want %q", got, head)
		}
		if br.Buffered() < len(head) {
			t.Fatalf("Buffered() = %d, want at least %d", br.Buffered(), len(head))
		}
		// Nothing was consumed: the reader still gives all of it.
		all, err := io.ReadAll(br)
		if err != nil || string(all) != head+rest {
			t.Fatalf("ReadAll = %q, %v; want %q", all, err, head+rest)
		}
	})
	t.Run("exact fit", func(t *testing.T) {
		const head = "GET / HTTP/1.1\n\n" // 16 bytes
		br := bufio.NewReaderSize(iotest.OneByteReader(strings.NewReader(head)), 16)
		got, err := peekHead(br)
		if err != nil || string(got) != head {
			t.Fatalf("peekHead = %q, %v; want %q", got, err, head)
		}
	})
	t.Run("cut short", func(t *testing.T) {
		br := bufio.NewReaderSize(iotest.OneByteReader(strings.NewReader("GET / HTTP/1.1\r\nHost: a\r\n")), 4096)
		got, err := peekHead(br)
		if err == nil || errors.Is(err, errHeadTooLarge) {
			t.Fatalf("peekHead = %q, %v; want a read error", got, err)
		}
	})
	t.Run("read error", func(t *testing.T) {
		boom := errors.New("boom")
		r := io.MultiReader(strings.NewReader("GET / HTTP/1.1\r\n"), iotest.ErrReader(boom))
		br := bufio.NewReaderSize(r, 4096)
		if got, err := peekHead(br); !errors.Is(err, boom) {
			t.Fatalf("peekHead = %q, %v; want %v", got, err, boom)
		}
	})
}

// fastRequestDirty is parsed into a fastRequest before the one under
// test, so that the fuzz targets also check the reset of reused slices.
const fastRequestDirty = "GET /dirty HTTP/1.1\r\nHost: dirty\r\nCookie: a=1\r\nX-Forwarded-For: 1.2.3.4\r\nConnection: close\r\nX-A: b\r\n\r\n"

func FuzzFastRequestHead(f *testing.F) {
	for _, c := range fastRequestCases {
		f.Add(c.head)
	}
	f.Add(fastRequestDirty + "GET / HTTP/1.1\r\n")
	f.Fuzz(func(t *testing.T, s string) {
		b := []byte(s)
		n := headEnd(b)
		if n == 0 {
			return
		}
		if n > len(b) || (b[n-1] != '\n') {
			t.Fatalf("headEnd(%q) = %d", s, n)
		}
		var rq fastRequest
		if !parseFastRequest([]byte(fastRequestDirty), &rq) {
			t.Fatal("dirty head refused")
		}
		head := b[:n]
		if !parseFastRequest(head, &rq) {
			return
		}
		req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(head)))
		if err != nil {
			t.Fatalf("fast path accepts %q; net/http: %v", head, err)
		}
		if req.Method != rq.method {
			t.Errorf("method: fast %q, net/http %q", rq.method, req.Method)
		}
		if req.RequestURI != string(rq.target) {
			t.Errorf("target: fast %q, net/http %q", rq.target, req.RequestURI)
		}
		if strings.HasPrefix(req.URL.Path, statusPrefix) {
			t.Errorf("fast path accepts a status page: %q", req.URL.Path)
		}
		if req.Host != string(rq.host) {
			t.Errorf("host: fast %q, net/http %q", rq.host, req.Host)
		}
		if req.Close != rq.close {
			t.Errorf("close: fast %v, net/http %v", rq.close, req.Close)
		}
		if req.ContentLength != 0 || req.TransferEncoding != nil || req.Body != http.NoBody {
			t.Errorf("net/http reads a body: length %d, encoding %q", req.ContentLength, req.TransferEncoding)
		}
		for _, f := range rq.fields {
			name := http.CanonicalHeaderKey(string(f.name))
			if !slices.Contains(req.Header.Values(name), string(f.value)) {
				t.Errorf("field %q: fast %q, net/http %q", name, f.value, req.Header.Values(name))
			}
			want := fieldKeep
			if name == "Cookie" {
				want = fieldCookie
			}
			if f.kind != want {
				t.Errorf("field %q: kind %d, want %d", name, f.kind, want)
			}
			switch name {
			case "Host", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "Connection", "Keep-Alive",
				"Content-Length", "Transfer-Encoding", "Upgrade", "Expect", "Te", "Trailer", "Proxy-Connection",
				"Proxy-Authorization", "Proxy-Authenticate", "Http2-Settings":
				t.Errorf("field %q kept", name)
			}
		}
		if got, want := byteStrings(rq.xff), req.Header.Values("X-Forwarded-For"); !slices.Equal(got, want) {
			t.Errorf("X-Forwarded-For: fast %q, net/http %q", got, want)
		}
		if t.Failed() {
			t.Logf("head %q", head)
		}
	})
}

// fastBodyAllowed says whether a response with this status may have a body.
func fastBodyAllowed(status int) bool {
	return status >= 200 && status != http.StatusNoContent && status != http.StatusNotModified
}

const fastResponseDirty = "HTTP/1.1 200 OK\r\nConnection: close, X-A\r\nX-A: 1\r\nDate: x\r\nTransfer-Encoding: chunked\r\nSet-Cookie: a=1\r\n\r\n"

func FuzzFastResponseHead(f *testing.F) {
	for _, c := range fastResponseCases {
		f.Add(c.head)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b := []byte(s)
		n := headEnd(b)
		if n == 0 {
			return
		}
		var rs fastResponse
		if err := parseFastResponse([]byte(fastResponseDirty), &rs); err != nil {
			t.Fatal(err)
		}
		head := b[:n]
		if parseFastResponse(head, &rs) != nil {
			return
		}
		resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(head)), &http.Request{Method: "GET"})
		if err != nil {
			t.Fatalf("fast path accepts %q; net/http: %v", head, err)
		}
		if resp.StatusCode != rs.status {
			t.Errorf("status: fast %d, net/http %d", rs.status, resp.StatusCode)
		}
		if resp.ProtoMajor != 1 || resp.ProtoMinor != rs.minor {
			t.Errorf("version: fast 1.%d, net/http %d.%d", rs.minor, resp.ProtoMajor, resp.ProtoMinor)
		}
		if chunked := slices.Equal(resp.TransferEncoding, []string{"chunked"}); chunked != rs.chunked {
			t.Errorf("chunked: fast %v, net/http %q", rs.chunked, resp.TransferEncoding)
		}
		if rs.chunked && rs.length != -1 {
			t.Errorf("chunked with length %d", rs.length)
		}
		if !rs.chunked && fastBodyAllowed(rs.status) && resp.ContentLength != rs.length {
			t.Errorf("length: fast %d, net/http %d", rs.length, resp.ContentLength)
		}
		// A body that runs to the connection's end closes it: net/http
		// says so in Close, the fast path when it copies the body
		// (fastpath.go sets rs.closes then).
		closes := rs.closes || (!rs.chunked && rs.length < 0 && fastBodyAllowed(rs.status))
		if resp.Close != closes {
			t.Errorf("closes: fast %v (length %d, chunked %v), net/http %v", rs.closes, rs.length, rs.chunked, resp.Close)
		}
		if _, ok := resp.Header["Date"]; ok != rs.hasDate {
			t.Errorf("hasDate: fast %v, net/http %v", rs.hasDate, ok)
		}
		for _, f := range rs.fields {
			name := http.CanonicalHeaderKey(string(f.name))
			nominated := false
			for _, n := range rs.nominated {
				nominated = nominated || bytes.EqualFold(n, f.name)
			}
			want := fieldKeep
			switch {
			case nominated:
				want = fieldDrop
			case name == "Content-Length":
				want = fieldLength
			case name == "Cache-Control":
				want = fieldCacheControl
			case name == "Set-Cookie":
				want = fieldSetCookie
			case name == "Cachebus-Expire":
				want = fieldExpire
			case name == "Trailer":
				want = fieldTrailer
			}
			if f.kind != want {
				t.Errorf("field %q: kind %d, want %d", name, f.kind, want)
			}
			switch name {
			case "Connection", "Transfer-Encoding", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate",
				"Proxy-Authorization", "Te", "Upgrade", "Surrogate-Key", "Surrogate-Control":
				t.Errorf("field %q kept", name)
			}
			// net/http takes these out of the header when chunked.
			if rs.chunked && (name == "Content-Length" || name == "Trailer") {
				continue
			}
			if !slices.Contains(resp.Header.Values(name), string(f.value)) {
				t.Errorf("field %q: fast %q, net/http %q", name, f.value, resp.Header.Values(name))
			}
		}
		if t.Failed() {
			t.Logf("head %q", head)
		}
	})
}
