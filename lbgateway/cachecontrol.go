package lbgateway

import (
	"strings"
	"time"
)

// CacheControl is what a Cache-Control or Surrogate-Control header says
// that a shared cache acts on (RFC 9111 section 5.2, RFC 5861).
type CacheControl struct {
	// MaxAge is max-age; it means something only when HasMaxAge is set.
	MaxAge time.Duration
	// SMaxAge is s-maxage; it means something only when HasSMaxAge is set.
	SMaxAge time.Duration
	// SWR is stale-while-revalidate, zero when absent.
	SWR time.Duration
	// SIE is stale-if-error, zero when absent.
	SIE time.Duration

	HasMaxAge, HasSMaxAge bool
	// NoStore, NoCache and Private are set by their directive, with or
	// without a field list.
	NoStore, NoCache, Private, Public bool
	// MustRevalidate is set by must-revalidate and by proxy-revalidate,
	// which means the same to a shared cache.
	MustRevalidate bool
}

// maxDeltaSeconds is what a delta-seconds value too large to represent
// counts as (RFC 9111 section 1.2.2).
const maxDeltaSeconds = 1 << 31

// ParseCacheControl parses a Cache-Control (or Surrogate-Control) header
// value. It never fails: unknown directives are ignored, a directive
// whose number is not a non-negative integer is taken as absent, values
// may be quoted, and several header lines may be given joined by commas.
// When a directive is repeated, its first occurrence counts.
func ParseCacheControl(v string) CacheControl {
	var cc CacheControl
	var seen uint8
	cc.parse(v, &seen)
	return cc
}

// parseCacheControlLines parses every line of a header, as if they were
// joined by commas, without joining them.
func parseCacheControlLines(lines []string) CacheControl {
	var cc CacheControl
	var seen uint8
	for _, v := range lines {
		cc.parse(v, &seen)
	}
	return cc
}

// Bits of seen: the numeric directives met so far.
const (
	seenMaxAge = 1 << iota
	seenSMaxAge
	seenSWR
	seenSIE
)

// parse adds the directives of v to cc.
func (cc *CacheControl) parse(v string, seen *uint8) {
	for len(v) > 0 {
		i := 0
		for i < len(v) && v[i] != '=' && v[i] != ',' {
			i++
		}
		name := strings.TrimSpace(v[:i])
		var val string
		hasVal, ok := false, true
		if i < len(v) && v[i] == '=' {
			hasVal = true
			i++
			for i < len(v) && (v[i] == ' ' || v[i] == '\t') {
				i++
			}
			if i < len(v) && v[i] == '"' {
				j := i + 1
				for j < len(v) && v[j] != '"' {
					if v[j] == '\\' && j+1 < len(v) {
						j++
					}
					j++
				}
				val = v[i+1 : j]
				if j == len(v) {
					ok = false // no closing quote
				} else {
					j++
				}
				for i = j; i < len(v) && v[i] != ','; i++ {
					if v[i] != ' ' && v[i] != '\t' {
						ok = false // junk after the quoted string
					}
				}
			} else {
				j := i
				for j < len(v) && v[j] != ',' {
					j++
				}
				val, i = strings.TrimSpace(v[i:j]), j
			}
		}
		if i < len(v) {
			i++ // the comma
		}
		v = v[i:]
		cc.apply(name, val, hasVal, ok, seen)
	}
}

// apply records one directive.
func (cc *CacheControl) apply(name, val string, hasVal, ok bool, seen *uint8) {
	var buf [24]byte
	if name == "" || len(name) > len(buf) {
		return
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		buf[i] = c
	}
	var d *time.Duration
	var has *bool
	var bit uint8
	switch string(buf[:len(name)]) {
	case "no-store":
		cc.NoStore = true
	case "no-cache":
		cc.NoCache = true
	case "private":
		cc.Private = true
	case "public":
		cc.Public = true
	case "must-revalidate", "proxy-revalidate":
		cc.MustRevalidate = true
	case "max-age":
		d, has, bit = &cc.MaxAge, &cc.HasMaxAge, seenMaxAge
	case "s-maxage":
		d, has, bit = &cc.SMaxAge, &cc.HasSMaxAge, seenSMaxAge
	case "stale-while-revalidate":
		d, bit = &cc.SWR, seenSWR
	case "stale-if-error":
		d, bit = &cc.SIE, seenSIE
	}
	if d == nil || *seen&bit != 0 {
		return
	}
	*seen |= bit
	n, good := deltaSeconds(val)
	if !hasVal || !ok || !good {
		return
	}
	*d = time.Duration(n) * time.Second
	if has != nil {
		*has = true
	}
}

// deltaSeconds parses 1*DIGIT, capping it at maxDeltaSeconds.
func deltaSeconds(s string) (int64, bool) {
	if s == "" {
		return 0, false
	}
	var n int64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		if n < maxDeltaSeconds {
			n = n*10 + int64(c-'0')
		}
	}
	return min(n, maxDeltaSeconds), true
}

// etagMatchWeak reports whether an If-None-Match value (its lines) is
// "*", which any stored response matches, or names etag, compared weakly
// (RFC 9110 section 8.8.3.2).
func etagMatchWeak(lines []string, etag string) bool {
	etag = strings.TrimPrefix(strings.TrimSpace(etag), "W/")
	for _, v := range lines {
		for len(v) > 0 {
			v = strings.TrimLeft(v, " \t,")
			if v == "" {
				break
			}
			if v[0] == '*' {
				return true
			}
			v = strings.TrimPrefix(v, "W/")
			if v == "" || v[0] != '"' {
				// Not an entity tag: skip to the next comma.
				i := strings.IndexByte(v, ',')
				if i < 0 {
					break
				}
				v = v[i:]
				continue
			}
			end := strings.IndexByte(v[1:], '"')
			if end < 0 {
				break
			}
			if etag != "" && v[:end+2] == etag {
				return true
			}
			v = v[end+2:]
		}
	}
	return false
}
