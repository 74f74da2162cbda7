package lbgateway

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"net/http"
	"net/textproto"
	"strings"
	"sync"
	"time"

	"github.com/cachebus/cachebus/bus"
)

// The sticky cookie, wire format (version 1). Any gateway that shares the
// secret, in any language, must read and write exactly this:
//
//	value   = base64url(payload | mac), no padding (RFC 4648 §5, unpadded)
//	payload = version  1 byte, always 0x01
//	          issued   uvarint, Unix seconds when the session was first routed
//	          age      uvarint, seconds from issued to when this value was issued (touched)
//	          idlen    1 byte, 1..64
//	          id       idlen bytes, the backend id, [A-Za-z0-9_-]{1,64}
//	mac     = HMAC-SHA256(secret, payload), all 32 bytes
//
// uvarint is the unsigned LEB128 varint of encoding/binary and protobuf:
// 7 bits per byte, least significant group first, high bit set on every
// byte but the last, minimal length. The value names a backend by its id
// only, never by host or port, so it tells a client nothing about the
// pool's addresses; the MAC makes it unforgeable. It is not encrypted: the
// id is readable by whoever holds the cookie.
//
// A reader rejects a value longer than 256 characters, with a character
// outside the base64url alphabet or non-zero padding bits, a version other
// than 1, a non-minimal uvarint, a bad id, bytes left over, or a MAC that
// matches neither the current secret nor the previous one (compared in
// constant time). An authentic value is still rejected when touched is
// MaxIdle or more ago, issued MaxLife or more ago, or either more than a
// minute in the future (a clock ahead on another gateway). The gateway
// re-issues a cookie signed with the previous secret, or touched more
// than MaxIdle/4 ago, so that rotation and idling never cut an active
// session.
//
// Test vector: secret "0123456789abcdef0123456789abcdef", id "app-1",
// issued 1700000000, touched 1700000090 gives
// "AYDiz6oGWgVhcHAtMUw_U9MCY8UpPohEO4Qun_VXZX_qOsCZc_62iUQTHsZ-".
const (
	routeVersion = 1
	// maxRouteValue bounds the work done on a value before it is known
	// to be ours; a valid one is under 150 characters.
	maxRouteValue = 256
	maxRawRoute   = maxRouteValue * 3 / 4
	routeMACSize  = sha256.Size
	// minRawRoute is a version, two one-byte uvarints, an id of one
	// byte and the MAC.
	minRawRoute = 1 + 1 + 1 + 1 + 1 + routeMACSize
	// routeMaxUnix keeps issued+age far from overflowing an int64; any time
	// past it (year 36812) is rejected as being in the future anyway.
	routeMaxUnix = 1 << 40
	// routeClockSkew is how far in the future a timestamp may be: gateways'
	// clocks are never quite in step.
	routeClockSkew = time.Minute
	// defaultStickyName is the sticky cookie's name when none is set.
	defaultStickyName = "cbroute"
	// minStickySecret is the shortest key accepted: 128 bits.
	minStickySecret = 16
)

// routeEncoding is strict so that every route has exactly one encoding:
// a value that differs in a padding bit is not another valid value.
var routeEncoding = base64.RawURLEncoding.Strict()

// Sentinel errors of Read and Decode, compared with errors.Is.
var (
	// ErrNoRoute is returned by Read when the request carries no sticky
	// cookie: a new session, to be balanced.
	ErrNoRoute = errors.New("lbgateway: no sticky cookie")
	// ErrRouteInvalid is wrapped by every error about a cookie that is
	// present but cannot be used; the caller balances the request as new.
	ErrRouteInvalid = errors.New("lbgateway: invalid sticky cookie")
)

// routeError says why a cookie was rejected. The reasons are fixed values
// so that rejecting garbage, which anyone can send at any rate, costs no
// allocation.
type routeError struct{ reason string }

func (e *routeError) Error() string { return ErrRouteInvalid.Error() + ": " + e.reason }
func (e *routeError) Unwrap() error { return ErrRouteInvalid }

var (
	errRouteTooLong   = &routeError{"longer than 256 characters"}
	errRouteEncoding  = &routeError{"not unpadded base64url"}
	errRouteShort     = &routeError{"too short"}
	errRouteVersion   = &routeError{"unknown version"}
	errRouteVarint    = &routeError{"bad timestamp encoding"}
	errRouteID        = &routeError{"bad backend id"}
	errRouteLength    = &routeError{"length does not match the id"}
	errRouteSignature = &routeError{"bad signature"}
	errRouteFuture    = &routeError{"timestamp in the future"}
	errRouteIdle      = &routeError{"idle longer than the max idle time"}
	errRouteLife      = &routeError{"older than the max life"}
)

// StickyConfig configures the sticky cookie.
type StickyConfig struct {
	// Name is the cookie name (CACHEBUS_GATEWAY_COOKIE); "" means "cbroute".
	Name string
	// Secret is the HMAC key (CACHEBUS_GATEWAY_SECRET), 16 bytes or more,
	// the same on every gateway so that any of them can read a cookie
	// another one set. Required.
	Secret string
	// Previous is the key being retired (CACHEBUS_GATEWAY_SECRET_PREVIOUS):
	// cookies signed with it are still accepted, and re-issued under
	// Secret, so that a key can be rotated without breaking sessions.
	// Optional; 16 bytes or more when set.
	Previous string
	// MaxIdle expires a cookie not refreshed for this long; 0 means no
	// limit. At least a second when set: timestamps are in seconds.
	MaxIdle time.Duration
	// MaxLife expires a cookie issued this long ago, however active its
	// session; 0 means no limit. At least a second when set.
	MaxLife time.Duration
}

// Sticky reads, verifies, strips and issues sticky cookies. It is safe for
// concurrent use: it runs on every request of every connection.
type Sticky struct {
	name    string
	maxIdle time.Duration
	maxLife time.Duration
	cur     *routeSigner
	prev    *routeSigner // nil without a previous key
}

// Route is what a valid cookie says.
type Route struct {
	// Backend is the id of the backend the session sticks to.
	Backend string
	// Issued is when the session was first routed; it is kept across
	// refreshes so that MaxLife bounds the whole session.
	Issued time.Time
	// Touched is when the cookie was last issued; MaxIdle counts from it.
	Touched time.Time
	// Refresh is set when the cookie should be issued again: it was
	// signed with the previous key, or MaxIdle is set and more than
	// MaxIdle/4 has passed since Touched (so an active session never idles
	// out, while most requests send no Set-Cookie).
	Refresh bool
}

// NewSticky checks cfg and returns a Sticky. Its errors name the variable
// at fault, since cfg comes from the environment.
func NewSticky(cfg StickyConfig) (*Sticky, error) {
	name := cfg.Name
	if name == "" {
		name = defaultStickyName
	}
	if !validStickyName(name) {
		return nil, fmt.Errorf("lbgateway: CACHEBUS_GATEWAY_COOKIE %q is not a valid cookie name", name)
	}
	if cfg.Secret == "" {
		return nil, errors.New("lbgateway: CACHEBUS_GATEWAY_SECRET is required to sign the sticky cookie")
	}
	if len(cfg.Secret) < minStickySecret {
		return nil, fmt.Errorf("lbgateway: CACHEBUS_GATEWAY_SECRET must be at least %d bytes, got %d", minStickySecret, len(cfg.Secret))
	}
	if cfg.Previous != "" && len(cfg.Previous) < minStickySecret {
		return nil, fmt.Errorf("lbgateway: CACHEBUS_GATEWAY_SECRET_PREVIOUS must be at least %d bytes when set, got %d", minStickySecret, len(cfg.Previous))
	}
	if err := checkStickyDuration("CACHEBUS_GATEWAY_COOKIE_MAX_IDLE", cfg.MaxIdle); err != nil {
		return nil, err
	}
	if err := checkStickyDuration("CACHEBUS_GATEWAY_COOKIE_MAX_LIFE", cfg.MaxLife); err != nil {
		return nil, err
	}
	s := &Sticky{name: name, maxIdle: cfg.MaxIdle, maxLife: cfg.MaxLife, cur: newRouteSigner(cfg.Secret)}
	if cfg.Previous != "" {
		s.prev = newRouteSigner(cfg.Previous)
	}
	return s, nil
}

// checkStickyDuration rejects limits the cookie cannot honour: its
// timestamps are whole seconds, so a sub-second limit would expire every
// cookie at once.
func checkStickyDuration(variable string, d time.Duration) error {
	switch {
	case d < 0:
		return fmt.Errorf("lbgateway: %s must not be negative, got %s", variable, d)
	case d > 0 && d < time.Second:
		return fmt.Errorf("lbgateway: %s must be 0 (no limit) or at least 1s, got %s", variable, d)
	}
	return nil
}

// Name returns the cookie name.
func (s *Sticky) Name() string { return s.name }

// Read finds the sticky cookie in r and verifies it. Without one it returns
// ErrNoRoute. A malformed, tampered, wrongly signed or expired cookie gives
// an error wrapping ErrRouteInvalid with the reason; the caller ignores it
// and balances the request as new. A client may send several cookies of
// the name (one per path or domain): the first valid one wins, and when
// none is, the error is the first one's.
//
// Read parses the Cookie headers itself, the way net/http does, rather
// than through r.Cookies, which allocates for every cookie of the request.
func (s *Sticky) Read(r *http.Request, now time.Time) (Route, error) {
	return s.readLines(r.Header["Cookie"], now)
}

// readLines is Read on the values of a request's Cookie headers.
func (s *Sticky) readLines(lines []string, now time.Time) (Route, error) {
	var first error
	for _, line := range lines {
		for len(line) > 0 {
			var part string
			part, line, _ = strings.Cut(line, ";")
			value, ok := s.match(part)
			if !ok {
				continue
			}
			value = unquoteStickyValue(value)
			rt, err := s.Decode(value, now)
			if err == nil {
				return rt, nil
			}
			if first == nil {
				first = err
			}
		}
	}
	if first == nil {
		return Route{}, ErrNoRoute
	}
	return Route{}, first
}

// match reports whether part, one "name=value" of a Cookie header, is the
// sticky cookie, trimming as net/http does so that Read and Strip see the
// same cookies the backend would.
func (s *Sticky) match(part string) (value string, ok bool) {
	name, value, _ := strings.Cut(textproto.TrimString(part), "=")
	return value, textproto.TrimString(name) == s.name
}

// unquoteStickyValue drops the double quotes RFC 6265 allows around a
// value; net/http drops them too.
func unquoteStickyValue(v string) string {
	if len(v) > 1 && v[0] == '"' && v[len(v)-1] == '"' {
		return v[1 : len(v)-1]
	}
	return v
}

// Decode verifies one cookie value, as Read does for each cookie of the
// name. It never panics, whatever the value: it is the fuzz target's
// entry point and is fed whatever clients send.
func (s *Sticky) Decode(value string, now time.Time) (Route, error) {
	if len(value) > maxRouteValue {
		return Route{}, errRouteTooLong
	}
	if len(value) < routeEncoding.EncodedLen(minRawRoute) {
		return Route{}, errRouteShort
	}
	// The decoder skips '\r' and '\n'; refusing every byte outside the
	// alphabet first keeps one value per route.
	for i := 0; i < len(value); i++ {
		if !routeByte(value[i]) {
			return Route{}, errRouteEncoding
		}
	}
	st := s.cur.get()
	defer s.cur.put(st)
	n := copy(st.src[:], value)
	m, err := routeEncoding.Decode(st.raw[:], st.src[:n])
	if err != nil {
		return Route{}, errRouteEncoding
	}
	raw := st.raw[:m]
	p, err := parseRoute(raw)
	if err != nil {
		return Route{}, err
	}
	payload, mac := raw[:len(raw)-routeMACSize], raw[len(raw)-routeMACSize:]
	refresh := false
	if !hmac.Equal(st.sign(payload), mac) {
		if s.prev == nil || !s.prev.verify(payload, mac) {
			return Route{}, errRouteSignature
		}
		refresh = true
	}
	issued := time.Unix(int64(p.issued), 0)
	touched := time.Unix(int64(p.issued+p.age), 0)
	if touched.Sub(now) > routeClockSkew {
		return Route{}, errRouteFuture
	}
	if s.maxLife > 0 && now.Sub(issued) >= s.maxLife {
		return Route{}, errRouteLife
	}
	if s.maxIdle > 0 {
		idle := now.Sub(touched)
		if idle >= s.maxIdle {
			return Route{}, errRouteIdle
		}
		if idle > s.maxIdle/4 {
			refresh = true
		}
	}
	return Route{Backend: string(p.id), Issued: issued, Touched: touched, Refresh: refresh}, nil
}

// parsedRoute is the payload of a structurally valid value; id points into
// the scratch buffer it was decoded in.
type parsedRoute struct {
	issued, age uint64
	id          []byte
}

// parseRoute checks the layout of raw (payload and MAC) before the MAC is
// computed: junk is turned away without hashing it.
func parseRoute(raw []byte) (parsedRoute, error) {
	var p parsedRoute
	if len(raw) < minRawRoute {
		return p, errRouteShort
	}
	if raw[0] != routeVersion {
		return p, errRouteVersion
	}
	rest := raw[1 : len(raw)-routeMACSize]
	var ok bool
	if p.issued, rest, ok = routeUvarint(rest); !ok {
		return p, errRouteVarint
	}
	if p.age, rest, ok = routeUvarint(rest); !ok {
		return p, errRouteVarint
	}
	if p.issued > routeMaxUnix || p.age > routeMaxUnix-p.issued {
		return p, errRouteFuture
	}
	if len(rest) < 1 {
		return p, errRouteLength
	}
	idLen := int(rest[0])
	if idLen != len(rest)-1 {
		return p, errRouteLength
	}
	p.id = rest[1:]
	if !bus.ValidName(string(p.id)) { // no copy: the compiler sees the conversion does not escape
		return p, errRouteID
	}
	return p, nil
}

// uvarint reads one minimal-length uvarint off the front of b. A
// non-minimal one (a trailing 0x00 group) would give one route two
// encodings.
func routeUvarint(b []byte) (uint64, []byte, bool) {
	v, n := binary.Uvarint(b)
	if n <= 0 || (n > 1 && b[n-1] == 0) {
		return 0, nil, false
	}
	return v, b[n:], true
}

// Encode returns a signed cookie value for backend, keeping issued (the
// session's start, for MaxLife) and stamping touched with now. It signs
// with Secret. An issued that is zero, after now or before 1970 is taken
// as now: the session starts here. Timestamps are whole seconds, rounded
// down. It returns "" when backend is not a valid id ([A-Za-z0-9_-]{1,64}),
// which the pool never holds.
func (s *Sticky) Encode(backend string, issued, now time.Time) string {
	if !bus.ValidName(backend) {
		return ""
	}
	issuedSec, touchedSec := routeStamps(issued, now)
	st := s.cur.get()
	defer s.cur.put(st)
	b := st.raw[:0]
	b = append(b, routeVersion)
	b = binary.AppendUvarint(b, issuedSec)
	b = binary.AppendUvarint(b, touchedSec-issuedSec)
	b = append(b, byte(len(backend)))
	b = append(b, backend...)
	b = append(b, st.sign(b)...)
	n := routeEncoding.EncodedLen(len(b))
	routeEncoding.Encode(st.src[:n], b)
	return string(st.src[:n])
}

// routeStamps returns the issued and touched times Encode writes, in Unix
// seconds: now, 0 before 1970 (a uvarint holds no negative number), and
// issued, or now when issued is zero, before 1970 or after now.
func routeStamps(issued, now time.Time) (issuedSec, touchedSec uint64) {
	if sec := now.Unix(); sec > 0 {
		touchedSec = uint64(sec)
	}
	if issued.IsZero() || issued.Unix() < 0 || uint64(issued.Unix()) > touchedSec {
		return touchedSec, touchedSec
	}
	return uint64(issued.Unix()), touchedSec
}

// Cookie returns the Set-Cookie for a session on backend: Path=/, HttpOnly
// (scripts have no use for it), SameSite=Lax, and Secure when secure is
// set, that is when the client came over TLS (a Secure cookie set over
// plain HTTP would never come back). With MaxLife set its Max-Age is the
// session's remaining life, at least 1s, so the browser forgets it when
// the gateway would refuse it; otherwise it is a browser-session cookie.
// It returns nil when backend is not a valid id; http.SetCookie ignores a
// nil cookie.
func (s *Sticky) Cookie(backend string, issued, now time.Time, secure bool) *http.Cookie {
	v := s.Encode(backend, issued, now)
	if v == "" {
		return nil
	}
	c := &http.Cookie{
		Name:     s.name,
		Value:    v,
		Path:     "/",
		HttpOnly: true,
		Secure:   secure,
		SameSite: http.SameSiteLaxMode,
	}
	if s.maxLife > 0 {
		// Count from the issued time written in the value, not the one
		// passed in, as Decode will.
		sec, _ := routeStamps(issued, now)
		left := time.Unix(int64(sec), 0).Add(s.maxLife).Sub(now)
		c.MaxAge = max(int(left/time.Second), 1)
	}
	return c
}

// Strip removes every cookie of the sticky name from r's Cookie headers,
// as HAProxy's "indirect" does: the cookie is the gateway's business and
// the backend never sees it. The other cookies stay byte for byte and in
// order; a header line without the sticky cookie is left untouched, one
// with it is rewritten with "; " between the remaining cookies, and one
// left empty is removed.
func (s *Sticky) Strip(r *http.Request) {
	lines := r.Header["Cookie"]
	if len(lines) == 0 {
		return
	}
	var kept []string // nil until a line changes
	for i, line := range lines {
		stripped, changed := s.stripLine(line)
		if changed && kept == nil {
			kept = append(make([]string, 0, len(lines)), lines[:i]...)
		}
		if kept != nil && stripped != "" {
			kept = append(kept, stripped)
		}
	}
	switch {
	case kept == nil:
	case len(kept) == 0:
		r.Header.Del("Cookie")
	default:
		r.Header["Cookie"] = kept
	}
}

// stripLine returns line without the sticky cookie, and whether it had one.
func (s *Sticky) stripLine(line string) (string, bool) {
	found := false
	for rest := line; len(rest) > 0; {
		var part string
		part, rest, _ = strings.Cut(rest, ";")
		if _, ok := s.match(part); ok {
			found = true
			break
		}
	}
	if !found {
		return line, false
	}
	var b strings.Builder
	b.Grow(len(line))
	for rest := line; len(rest) > 0; {
		var part string
		part, rest, _ = strings.Cut(rest, ";")
		if _, ok := s.match(part); ok {
			continue
		}
		part = textproto.TrimString(part)
		if part == "" {
			continue
		}
		if b.Len() > 0 {
			b.WriteString("; ")
		}
		b.WriteString(part)
	}
	return b.String(), true
}

// signer signs with one key. Its pool keeps HMAC states and scratch
// buffers between requests: hmac.New allocates both hash states and the
// padded keys, far more than the rest of a cookie check.
type routeSigner struct{ pool sync.Pool }

// routeMAC is a keyed HMAC with room for one cookie value; a pooled
// object's buffers are on the heap already, so handing them to the hash
// (an interface, which makes the compiler move any buffer to the heap)
// costs nothing per call.
type routeMAC struct {
	h   hash.Hash
	src [maxRouteValue]byte
	raw [maxRawRoute]byte
	sum [routeMACSize]byte
}

func newRouteSigner(key string) *routeSigner {
	k := []byte(key)
	s := &routeSigner{}
	s.pool.New = func() any { return &routeMAC{h: hmac.New(sha256.New, k)} }
	return s
}

func (s *routeSigner) get() *routeMAC   { return s.pool.Get().(*routeMAC) }
func (s *routeSigner) put(st *routeMAC) { s.pool.Put(st) }

// sign returns the MAC of payload in st's own buffer, valid until st is
// used again.
func (st *routeMAC) sign(payload []byte) []byte {
	st.h.Reset()
	st.h.Write(payload)
	return st.h.Sum(st.sum[:0])
}

// verify reports whether mac is payload's MAC under this key, in constant
// time.
func (s *routeSigner) verify(payload, mac []byte) bool {
	st := s.get()
	defer s.put(st)
	return hmac.Equal(st.sign(payload), mac)
}

func routeByte(c byte) bool {
	return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_'
}

// validStickyName reports whether name is an RFC 7230 token, what
// RFC 6265 allows as a cookie name.
func validStickyName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' {
			continue
		}
		if !strings.ContainsRune("!#$%&'*+-.^_`|~", rune(c)) {
			return false
		}
	}
	return true
}
