package lbgateway

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus"
)

const (
	stickySecret   = "sticky-test-secret-0001"
	stickyPrevious = "sticky-test-secret-0000"
	stickyOther    = "somebody-else-entirely"
)

// stickyVector is the test vector of the wire format comment.
const stickyVector = "AYDiz6oGWgVhcHAtMUw_U9MCY8UpPohEO4Qun_VXZX_qOsCZc_62iUQTHsZ-"

// stickyNow is the clock of these tests: a whole second, so that what a
// cookie stores equals what was passed in.
var stickyNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func newTestSticky(t testing.TB, cfg StickyConfig) *Sticky {
	t.Helper()
	s, err := NewSticky(cfg)
	if err != nil {
		t.Fatalf("NewSticky(%+v): %v", cfg, err)
	}
	return s
}

// routePayload builds a payload by hand, following the wire format
// comment rather than Encode, so that the tests check the contract.
func routePayload(version byte, issued, age uint64, id string) []byte {
	b := []byte{version}
	b = binary.AppendUvarint(b, issued)
	b = binary.AppendUvarint(b, age)
	b = append(b, byte(len(id)))
	return append(b, id...)
}

// signRoute returns base64url(payload | HMAC-SHA256(secret, payload)).
func signRoute(secret string, payload []byte) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write(payload)
	return base64.RawURLEncoding.EncodeToString(m.Sum(slices.Clip(payload)))
}

func raceEnabled() bool {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range bi.Settings {
		if s.Key == "-race" {
			return s.Value == "true"
		}
	}
	return false
}

func TestNewSticky(t *testing.T) {
	tests := []struct {
		name    string
		cfg     StickyConfig
		wantErr string // "" for success
	}{
		{"defaults", StickyConfig{Secret: stickySecret}, ""},
		{"everything", StickyConfig{Name: "route_1", Secret: stickySecret, Previous: stickyPrevious, MaxIdle: time.Hour, MaxLife: 24 * time.Hour}, ""},
		{"secret of exactly 16 bytes", StickyConfig{Secret: "0123456789abcdef"}, ""},
		{"no secret", StickyConfig{}, "CACHEBUS_GATEWAY_SECRET is required"},
		{"short secret", StickyConfig{Secret: "0123456789abcde"}, "CACHEBUS_GATEWAY_SECRET must be at least 16 bytes, got 15"},
		{"short previous", StickyConfig{Secret: stickySecret, Previous: "short"}, "CACHEBUS_GATEWAY_SECRET_PREVIOUS must be at least 16 bytes"},
		{"bad name", StickyConfig{Name: "c;route", Secret: stickySecret}, "CACHEBUS_GATEWAY_COOKIE"},
		{"name with a space", StickyConfig{Name: "cb route", Secret: stickySecret}, "CACHEBUS_GATEWAY_COOKIE"},
		{"negative max idle", StickyConfig{Secret: stickySecret, MaxIdle: -time.Second}, "CACHEBUS_GATEWAY_COOKIE_MAX_IDLE must not be negative"},
		{"sub-second max idle", StickyConfig{Secret: stickySecret, MaxIdle: time.Millisecond}, "CACHEBUS_GATEWAY_COOKIE_MAX_IDLE must be 0"},
		{"negative max life", StickyConfig{Secret: stickySecret, MaxLife: -time.Hour}, "CACHEBUS_GATEWAY_COOKIE_MAX_LIFE must not be negative"},
		{"sub-second max life", StickyConfig{Secret: stickySecret, MaxLife: time.Millisecond}, "CACHEBUS_GATEWAY_COOKIE_MAX_LIFE must be 0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := NewSticky(tc.cfg)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				want := tc.cfg.Name
				if want == "" {
					want = "cbroute"
				}
				if s.Name() != want {
					t.Errorf("Name() = %q, want %q", s.Name(), want)
				}
				return
			}
			if err == nil {
				t.Fatalf("no error, want one containing %q", tc.wantErr)
			}
			if !strings.HasPrefix(err.Error(), "lbgateway: ") || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %q, want \"lbgateway: \" and %q", err, tc.wantErr)
			}
		})
	}
}

func TestStickyRoundTrip(t *testing.T) {
	s := newTestSticky(t, StickyConfig{Secret: stickySecret, MaxIdle: time.Hour, MaxLife: 30 * 24 * time.Hour})
	long := strings.Repeat("x", 64)
	tests := []struct {
		name        string
		backend     string
		issued, now time.Time
		wantIssued  time.Time
	}{
		{"new session", "app-1", stickyNow, stickyNow, stickyNow},
		{"refreshed session keeps issued", "app_2", stickyNow.Add(-72 * time.Hour), stickyNow, stickyNow.Add(-72 * time.Hour)},
		{"longest id", long, stickyNow.Add(-time.Second), stickyNow, stickyNow.Add(-time.Second)},
		{"one-byte id", "Z", stickyNow, stickyNow, stickyNow},
		{"sub-second times round down", "a", stickyNow.Add(-time.Minute + 900*time.Millisecond), stickyNow.Add(999 * time.Millisecond), stickyNow.Add(-time.Minute)},
		{"zero issued starts now", "a", time.Time{}, stickyNow, stickyNow},
		{"issued after now starts now", "a", stickyNow.Add(time.Hour), stickyNow, stickyNow},
		{"issued before 1970 starts now", "a", time.Unix(-5, 0), stickyNow, stickyNow},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v := s.Encode(tc.backend, tc.issued, tc.now)
			if len(v) > 256 || strings.ContainsAny(v, "=+/") {
				t.Fatalf("Encode = %q: not short unpadded base64url", v)
			}
			r, err := s.Decode(v, tc.now)
			if err != nil {
				t.Fatalf("Decode(Encode) = %v", err)
			}
			want := Route{Backend: tc.backend, Issued: tc.wantIssued, Touched: tc.now.Truncate(time.Second)}
			if r.Backend != want.Backend || !r.Issued.Equal(want.Issued) || !r.Touched.Equal(want.Touched) || r.Refresh {
				t.Errorf("Decode = %+v, want %+v", r, want)
			}
			if strings.Contains(v, tc.backend) && len(tc.backend) > 8 {
				t.Errorf("value %q shows the id in clear", v)
			}
		})
	}
	t.Run("invalid id is not encoded", func(t *testing.T) {
		for _, id := range []string{"", "a.b", "a b", strings.Repeat("x", 65), "10.0.0.1:8080", "é"} {
			if v := s.Encode(id, stickyNow, stickyNow); v != "" {
				t.Errorf("Encode(%q) = %q, want \"\"", id, v)
			}
		}
	})
}

// TestStickyWireFormat pins the format other languages implement from
// docs/PROTOCOL.md: a value built by hand decodes, Encode builds the same
// bytes, and the test vector of the format comment holds.
func TestStickyWireFormat(t *testing.T) {
	const secret = "0123456789abcdef0123456789abcdef"
	s := newTestSticky(t, StickyConfig{Secret: secret})
	issued, touched := time.Unix(1700000000, 0), time.Unix(1700000090, 0)
	byHand := signRoute(secret, routePayload(1, 1700000000, 90, "app-1"))
	if byHand != stickyVector {
		t.Fatalf("by hand = %q, want the documented vector %q", byHand, stickyVector)
	}
	if got := s.Encode("app-1", issued, touched); got != stickyVector {
		t.Errorf("Encode = %q, want %q", got, stickyVector)
	}
	r, err := s.Decode(stickyVector, touched)
	if err != nil || r.Backend != "app-1" || !r.Issued.Equal(issued) || !r.Touched.Equal(touched) {
		t.Errorf("Decode(vector) = %+v, %v", r, err)
	}
}

func TestStickyTamper(t *testing.T) {
	s := newTestSticky(t, StickyConfig{Secret: stickySecret, Previous: stickyPrevious})
	v := s.Encode("app-7", stickyNow.Add(-time.Hour), stickyNow)
	raw, err := base64.RawURLEncoding.DecodeString(v)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("every bit of the decoded value", func(t *testing.T) {
		for i := range raw {
			for bit := range 8 {
				b := slices.Clone(raw)
				b[i] ^= 1 << bit
				tv := base64.RawURLEncoding.EncodeToString(b)
				if r, err := s.Decode(tv, stickyNow); !errors.Is(err, ErrRouteInvalid) {
					t.Fatalf("byte %d bit %d flipped: Decode = %+v, %v", i, bit, r, err)
				}
			}
		}
	})
	t.Run("every character of the value", func(t *testing.T) {
		const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
		for i := range len(v) {
			for _, c := range []byte(alphabet + "=+/.\n") {
				if c == v[i] {
					continue
				}
				tv := v[:i] + string(c) + v[i+1:]
				if r, err := s.Decode(tv, stickyNow); !errors.Is(err, ErrRouteInvalid) {
					t.Fatalf("char %d set to %q: Decode = %+v, %v", i, c, r, err)
				}
			}
		}
	})
	t.Run("cut or extended", func(t *testing.T) {
		for n := range len(v) {
			if _, err := s.Decode(v[:n], stickyNow); !errors.Is(err, ErrRouteInvalid) {
				t.Fatalf("first %d chars: %v", n, err)
			}
		}
		for _, tail := range []string{"A", "AA", "AAA", "AAAA", "="} {
			if _, err := s.Decode(v+tail, stickyNow); !errors.Is(err, ErrRouteInvalid) {
				t.Fatalf("with %q appended: %v", tail, err)
			}
		}
	})
}

func TestStickyKeys(t *testing.T) {
	old := newTestSticky(t, StickyConfig{Secret: stickyPrevious})
	rotated := newTestSticky(t, StickyConfig{Secret: stickySecret, Previous: stickyPrevious})
	other := newTestSticky(t, StickyConfig{Secret: stickyOther})
	tests := []struct {
		name        string
		by, reader  *Sticky
		wantErr     error
		wantRefresh bool
	}{
		{"same key", rotated, rotated, nil, false},
		{"another key", other, rotated, errRouteSignature, false},
		{"another key, no previous", rotated, other, errRouteSignature, false},
		// Rotation: the old secret is now the previous one, so the
		// cookies it signed still route, and are re-issued under the new.
		{"old secret now previous", old, rotated, nil, true},
		{"new secret, reader not rotated yet", rotated, old, errRouteSignature, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v := tc.by.Encode("app-1", stickyNow.Add(-time.Hour), stickyNow)
			r, err := tc.reader.Decode(v, stickyNow)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) || !errors.Is(err, ErrRouteInvalid) {
					t.Fatalf("Decode = %+v, %v; want %v", r, err, tc.wantErr)
				}
				return
			}
			if err != nil || r.Backend != "app-1" || r.Refresh != tc.wantRefresh {
				t.Fatalf("Decode = %+v, %v; want app-1 with Refresh %v", r, err, tc.wantRefresh)
			}
			if !r.Refresh {
				return
			}
			// What the gateway sends back is under the new key and keeps
			// the session's start.
			again := tc.reader.Encode(r.Backend, r.Issued, stickyNow)
			r2, err := tc.reader.Decode(again, stickyNow)
			if err != nil || r2.Refresh || !r2.Issued.Equal(r.Issued) {
				t.Errorf("re-issued cookie: %+v, %v", r2, err)
			}
			if _, err := old.Decode(again, stickyNow); !errors.Is(err, errRouteSignature) {
				t.Errorf("re-issued cookie verifies under the old key: %v", err)
			}
		})
	}
}

func TestStickyExpiry(t *testing.T) {
	limited := StickyConfig{Secret: stickySecret, MaxIdle: time.Hour, MaxLife: 24 * time.Hour}
	tests := []struct {
		name            string
		cfg             StickyConfig
		issued, touched time.Duration // relative to stickyNow
		wantErr         error
		wantRefresh     bool
	}{
		{"fresh", limited, -time.Hour, 0, nil, false},
		{"idle under a quarter", limited, -time.Hour, -15 * time.Minute, nil, false},
		{"idle over a quarter refreshes", limited, -time.Hour, -15*time.Minute - time.Second, nil, true},
		{"idle just under max", limited, -time.Hour, -time.Hour + time.Second, nil, true},
		{"idle max", limited, -time.Hour, -time.Hour, errRouteIdle, false},
		{"idle long", limited, -20 * time.Hour, -2 * time.Hour, errRouteIdle, false},
		{"life just under max", limited, -24*time.Hour + time.Second, 0, nil, false},
		{"life max, active", limited, -24 * time.Hour, -time.Minute, errRouteLife, false},
		{"life over, active", limited, -25 * time.Hour, 0, errRouteLife, false},
		{"no limits, a year old", StickyConfig{Secret: stickySecret}, -365 * 24 * time.Hour, -364 * 24 * time.Hour, nil, false},
		{"max life only, idle a day", StickyConfig{Secret: stickySecret, MaxLife: 48 * time.Hour}, -40 * time.Hour, -39 * time.Hour, nil, false},
		{"max idle only, a year old but active", StickyConfig{Secret: stickySecret, MaxIdle: time.Hour}, -365 * 24 * time.Hour, -time.Minute, nil, false},
		{"touched within the clock skew", limited, 0, time.Minute, nil, false},
		{"touched in the future", limited, 0, time.Minute + time.Second, errRouteFuture, false},
		{"issued and touched in the future", limited, time.Hour, time.Hour, errRouteFuture, false},
		{"issued in the future, no limits", StickyConfig{Secret: stickySecret}, 2 * time.Minute, 2 * time.Minute, errRouteFuture, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newTestSticky(t, tc.cfg)
			v := s.Encode("app-1", stickyNow.Add(tc.issued), stickyNow.Add(tc.touched))
			r, err := s.Decode(v, stickyNow)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) || !errors.Is(err, ErrRouteInvalid) {
					t.Fatalf("Decode = %+v, %v; want %v", r, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if r.Refresh != tc.wantRefresh {
				t.Errorf("Refresh = %v, want %v", r.Refresh, tc.wantRefresh)
			}
		})
	}
}

func TestStickyDecodeBad(t *testing.T) {
	s := newTestSticky(t, StickyConfig{Secret: stickySecret})
	sec := uint64(stickyNow.Unix())
	good := routePayload(1, sec, 0, "app-1")
	tests := []struct {
		name    string
		value   string
		wantErr error // nil: any ErrRouteInvalid
	}{
		{"empty", "", errRouteShort},
		{"one char", "A", errRouteShort},
		{"garbage", "hello world, this is not a cookie at all, not even close!!", errRouteEncoding},
		{"257 chars", strings.Repeat("A", 257), errRouteTooLong},
		{"huge", strings.Repeat("A", 1<<20), errRouteTooLong},
		{"256 chars of zeros", strings.Repeat("A", 256), errRouteVersion},
		{"padded", signRoute(stickySecret, good) + "==", errRouteEncoding},
		{"std alphabet", strings.NewReplacer("-", "+", "_", "/").Replace(stickyVector), errRouteEncoding},
		{"newline inside", signRoute(stickySecret, good)[:10] + "\n" + signRoute(stickySecret, good)[10:], errRouteEncoding},
		{"impossible length", signRoute(stickySecret, good) + "A", errRouteEncoding},
		{"non-zero padding bits", nonZeroPadding(signRoute(stickySecret, routePayload(1, sec, 0, "app-12"))), errRouteEncoding},
		{"version 0", signRoute(stickySecret, routePayload(0, sec, 0, "app-1")), errRouteVersion},
		{"version 2", signRoute(stickySecret, routePayload(2, sec, 0, "app-1")), errRouteVersion},
		{"id with a dot", signRoute(stickySecret, routePayload(1, sec, 0, "10.0.0.1")), errRouteID},
		{"id with a colon", signRoute(stickySecret, routePayload(1, sec, 0, "host:80")), errRouteID},
		{"id with a NUL", signRoute(stickySecret, routePayload(1, sec, 0, "a\x00b")), errRouteID},
		{"id of 65 bytes", signRoute(stickySecret, routePayload(1, sec, 0, strings.Repeat("a", 65))), errRouteID},
		{"id of 0 bytes", signRoute(stickySecret, append(routePayload(1, sec, 0, ""), "abcde"...)), errRouteLength},
		{"id length too long", signRoute(stickySecret, lengthByte(good, 6)), errRouteLength},
		{"id length too short", signRoute(stickySecret, lengthByte(good, 4)), errRouteLength},
		{"bytes after the id", signRoute(stickySecret, append(slices.Clone(good), 'x')), errRouteLength},
		{"mac cut", signRoute(stickySecret, good)[:len(signRoute(stickySecret, good))-4], nil},
		{"no mac", base64.RawURLEncoding.EncodeToString(append(slices.Clone(good), make([]byte, 32)...)), errRouteSignature},
		{"non-minimal issued", signRoute(stickySecret, nonMinimal(sec)), errRouteVarint},
		{"unterminated varint", signRoute(stickySecret, []byte{1, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80}), nil},
		{"varint overflow", signRoute(stickySecret, append([]byte{1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0}, "\x01a"...)), errRouteVarint},
		{"issued absurdly far", signRoute(stickySecret, routePayload(1, 1<<62, 0, "a")), errRouteFuture},
		{"touched overflows", signRoute(stickySecret, routePayload(1, sec, 1<<63, "a")), errRouteFuture},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := s.Decode(tc.value, stickyNow)
			if !errors.Is(err, ErrRouteInvalid) {
				t.Fatalf("Decode = %+v, %v; want ErrRouteInvalid", r, err)
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("Decode error %q, want %q", err, tc.wantErr)
			}
			if r != (Route{}) {
				t.Errorf("Decode returned %+v with its error", r)
			}
		})
	}
}

// nonZeroPadding sets the unused low bits of the last character of an
// unpadded base64url value, which a lax decoder would ignore.
func nonZeroPadding(v string) string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	last := strings.IndexByte(alphabet, v[len(v)-1])
	if len(v)%4 == 0 {
		panic("no padding bits in " + v)
	}
	return v[:len(v)-1] + string(alphabet[last|1])
}

func lengthByte(payload []byte, n byte) []byte {
	b := slices.Clone(payload)
	b[len(b)-len("app-1")-1] = n
	return b
}

// nonMinimal is a payload whose issued uvarint has a needless trailing
// zero group: the same number, another encoding.
func nonMinimal(issued uint64) []byte {
	b := []byte{1}
	v := binary.AppendUvarint(nil, issued)
	v[len(v)-1] |= 0x80
	b = append(b, v...)
	b = append(b, 0, 0, 5)
	return append(b, "app-1"...)
}

func TestStickyRead(t *testing.T) {
	s := newTestSticky(t, StickyConfig{Secret: stickySecret, MaxIdle: time.Hour})
	valid := s.Encode("app-1", stickyNow, stickyNow)
	valid2 := s.Encode("app-2", stickyNow, stickyNow)
	expired := s.Encode("app-9", stickyNow.Add(-2*time.Hour), stickyNow.Add(-2*time.Hour))
	other := newTestSticky(t, StickyConfig{Secret: stickyOther}).Encode("app-8", stickyNow, stickyNow)
	tests := []struct {
		name    string
		lines   []string // Cookie header lines
		want    string   // backend, "" for an error
		wantErr error
	}{
		{"no Cookie header", nil, "", ErrNoRoute},
		{"other cookies only", []string{"session=abc; theme=dark"}, "", ErrNoRoute},
		{"a prefix of the name", []string{"cbrout=" + valid + "; cbroutex=" + valid}, "", ErrNoRoute},
		{"valid alone", []string{"cbroute=" + valid}, "app-1", nil},
		{"valid among others", []string{"session=a=b; cbroute=" + valid + "; theme=dark"}, "app-1", nil},
		{"spaces around", []string{"  a=1 ;  cbroute =" + valid + " ; b=2"}, "app-1", nil},
		{"quoted", []string{`cbroute="` + valid + `"`}, "app-1", nil},
		{"garbage", []string{"cbroute=garbage"}, "", errRouteShort},
		{"empty value", []string{"cbroute="}, "", errRouteShort},
		{"bare name", []string{"cbroute"}, "", errRouteShort},
		{"expired", []string{"cbroute=" + expired}, "", errRouteIdle},
		{"wrong key", []string{"cbroute=" + other}, "", errRouteSignature},
		{"invalid then valid", []string{"cbroute=" + other + "; cbroute=" + valid}, "app-1", nil},
		{"invalid then valid, several lines", []string{"a=1; cbroute=" + expired, "b=2", "cbroute=" + valid}, "app-1", nil},
		{"two valid: the first wins", []string{"cbroute=" + valid2 + "; cbroute=" + valid}, "app-2", nil},
		{"all invalid: the first error", []string{"cbroute=" + other + "; cbroute=" + expired}, "", errRouteSignature},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "/", nil)
			for _, l := range tc.lines {
				r.Header.Add("Cookie", l)
			}
			rt, err := s.Read(r, stickyNow)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("Read = %+v, %v; want %v", rt, err, tc.wantErr)
				}
				if tc.wantErr != ErrNoRoute && !errors.Is(err, ErrRouteInvalid) {
					t.Errorf("error %v does not wrap ErrRouteInvalid", err)
				}
				return
			}
			if err != nil || rt.Backend != tc.want {
				t.Fatalf("Read = %+v, %v; want %s", rt, err, tc.want)
			}
		})
	}
	t.Run("custom name", func(t *testing.T) {
		c := newTestSticky(t, StickyConfig{Name: "route", Secret: stickySecret})
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.Header.Set("Cookie", "cbroute="+valid)
		if _, err := c.Read(r, stickyNow); !errors.Is(err, ErrNoRoute) {
			t.Errorf("read cbroute with name route: %v", err)
		}
		r.Header.Add("Cookie", "route="+valid)
		if rt, err := c.Read(r, stickyNow); err != nil || rt.Backend != "app-1" {
			t.Errorf("Read = %+v, %v", rt, err)
		}
	})
}

func TestStickyStrip(t *testing.T) {
	s := newTestSticky(t, StickyConfig{Secret: stickySecret})
	tests := []struct {
		name  string
		lines []string
		want  []string // nil: no Cookie header left
	}{
		{"no Cookie header", nil, nil},
		{"none of ours", []string{"a=1; b=2"}, []string{"a=1; b=2"}},
		{"none of ours, odd spacing kept", []string{"a=1 ;b=2;  c=3"}, []string{"a=1 ;b=2;  c=3"}},
		{"only ours", []string{"cbroute=xyz"}, nil},
		{"ours first", []string{"cbroute=xyz; a=1"}, []string{"a=1"}},
		{"ours in the middle", []string{"a=1; cbroute=xyz; b=x=y=="}, []string{"a=1; b=x=y=="}},
		{"ours last, spaces around", []string{"a=1 ;  cbroute=xyz  "}, []string{"a=1"}},
		{"ours twice", []string{"cbroute=1; a=1; cbroute=2"}, []string{"a=1"}},
		{"space before '='", []string{"a=1; cbroute =x"}, []string{"a=1"}},
		{"bare name", []string{"cbroute; a=1"}, []string{"a=1"}},
		{"quoted values kept", []string{`a="q w"; cbroute=x; b=""`}, []string{`a="q w"; b=""`}},
		{"similar names kept", []string{"cbroute2=x; xcbroute=y; cbroute=z; CBROUTE=w"}, []string{"cbroute2=x; xcbroute=y; CBROUTE=w"}},
		{"our name inside a value", []string{"a=cbroute=x; b=cbroute"}, []string{"a=cbroute=x; b=cbroute"}},
		{"several lines", []string{"a=1", "cbroute=v", "b=2; cbroute=w", "c=3 ; d=4"}, []string{"a=1", "b=2", "c=3 ; d=4"}},
		{"several lines, all ours", []string{"cbroute=v", " cbroute=w ; "}, nil},
		{"empty parts dropped", []string{"a=1;; cbroute=v;;b=2;"}, []string{"a=1; b=2"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "/", nil)
			for _, l := range tc.lines {
				r.Header.Add("Cookie", l)
			}
			before := r.Cookies()
			s.Strip(r)
			got, present := r.Header["Cookie"]
			if tc.want == nil {
				if present {
					t.Fatalf("Cookie header left: %q", got)
				}
			} else if !slices.Equal(got, tc.want) {
				t.Fatalf("Cookie = %q, want %q", got, tc.want)
			}
			// What the backend parses is what the client sent, less ours.
			var want []string
			for _, c := range before {
				if c.Name != "cbroute" {
					want = append(want, c.String())
				}
			}
			var after []string
			for _, c := range r.Cookies() {
				after = append(after, c.String())
			}
			if !slices.Equal(after, want) {
				t.Errorf("backend sees %q, want %q", after, want)
			}
		})
	}
}

func TestStickyCookie(t *testing.T) {
	tests := []struct {
		name       string
		cfg        StickyConfig
		issued     time.Duration // relative to stickyNow
		secure     bool
		wantMaxAge int
	}{
		{"plain HTTP, session cookie", StickyConfig{Secret: stickySecret}, 0, false, 0},
		{"TLS", StickyConfig{Secret: stickySecret}, 0, true, 0},
		{"max idle alone keeps a session cookie", StickyConfig{Secret: stickySecret, MaxIdle: time.Hour}, 0, true, 0},
		{"max life, new session", StickyConfig{Secret: stickySecret, MaxLife: 8 * time.Hour}, 0, false, 8 * 3600},
		{"max life, session half through", StickyConfig{Secret: stickySecret, MaxLife: 8 * time.Hour}, -4 * time.Hour, false, 4 * 3600},
		{"max life, last second", StickyConfig{Secret: stickySecret, MaxLife: 8 * time.Hour}, -8*time.Hour + time.Second, false, 1},
		{"max life, over", StickyConfig{Secret: stickySecret, MaxLife: 8 * time.Hour}, -9 * time.Hour, false, 1},
		{"custom name", StickyConfig{Name: "lb", Secret: stickySecret}, 0, true, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newTestSticky(t, tc.cfg)
			c := s.Cookie("app-3", stickyNow.Add(tc.issued), stickyNow, tc.secure)
			if c.Name != s.Name() || c.Path != "/" || !c.HttpOnly || c.SameSite != http.SameSiteLaxMode || c.Secure != tc.secure {
				t.Errorf("cookie %+v", c)
			}
			if c.MaxAge != tc.wantMaxAge || !c.Expires.IsZero() || c.Domain != "" {
				t.Errorf("MaxAge %d, Expires %v, Domain %q; want MaxAge %d only", c.MaxAge, c.Expires, c.Domain, tc.wantMaxAge)
			}
			line := c.String()
			for _, attr := range []string{"Path=/", "HttpOnly", "SameSite=Lax"} {
				if !strings.Contains(line, "; "+attr) {
					t.Errorf("Set-Cookie %q lacks %s", line, attr)
				}
			}
			if strings.Contains(line, "Secure") != tc.secure {
				t.Errorf("Set-Cookie %q: Secure should be %v", line, tc.secure)
			}
			if strings.Contains(line, "Max-Age") != (tc.wantMaxAge > 0) {
				t.Errorf("Set-Cookie %q: Max-Age should be there: %v", line, tc.wantMaxAge > 0)
			}
			// The browser sends the value back as it got it.
			r := httptest.NewRequest(http.MethodGet, "/", nil)
			r.AddCookie(&http.Cookie{Name: c.Name, Value: c.Value})
			rt, err := s.Read(r, stickyNow)
			if tc.issued < -8*time.Hour {
				if !errors.Is(err, errRouteLife) {
					t.Errorf("Read after max life: %+v, %v", rt, err)
				}
				return
			}
			if err != nil || rt.Backend != "app-3" || !rt.Issued.Equal(stickyNow.Add(tc.issued).Truncate(time.Second)) {
				t.Errorf("Read = %+v, %v", rt, err)
			}
		})
	}
	t.Run("invalid id", func(t *testing.T) {
		s := newTestSticky(t, StickyConfig{Secret: stickySecret})
		c := s.Cookie("10.0.0.1:80", stickyNow, stickyNow, false)
		if c != nil {
			t.Fatalf("Cookie = %+v, want nil", c)
		}
		w := httptest.NewRecorder()
		http.SetCookie(w, c)
		if h := w.Header().Values("Set-Cookie"); len(h) != 0 {
			t.Errorf("SetCookie(nil) set %q", h)
		}
	})
}

func TestStickyConcurrent(t *testing.T) {
	s := newTestSticky(t, StickyConfig{Secret: stickySecret, Previous: stickyPrevious, MaxIdle: time.Hour})
	old := newTestSticky(t, StickyConfig{Secret: stickyPrevious})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 500 {
				id := fmt.Sprintf("app-%d-%d", g, i)
				by := s
				if i%3 == 0 {
					by = old
				}
				r, err := s.Decode(by.Encode(id, stickyNow, stickyNow), stickyNow)
				if err != nil || r.Backend != id || r.Refresh != (by == old) {
					t.Errorf("Decode = %+v, %v; want %s", r, err, id)
					return
				}
				if _, err := s.Decode("AAAA"+id, stickyNow); err == nil {
					t.Error("garbage accepted")
					return
				}
			}
		})
	}
	wg.Wait()
}

// TestStickyAllocs guards the per-request cost: a valid cookie costs the
// Backend string, a bad one nothing. The race detector's sync.Pool drops
// objects on purpose, so it is skipped there.
func TestStickyAllocs(t *testing.T) {
	if raceEnabled() {
		t.Skip("sync.Pool drops objects under the race detector")
	}
	s := newTestSticky(t, StickyConfig{Secret: stickySecret, Previous: stickyPrevious, MaxIdle: time.Hour})
	valid := s.Encode("app-1", stickyNow, stickyNow)
	prev := newTestSticky(t, StickyConfig{Secret: stickyPrevious}).Encode("app-1", stickyNow, stickyNow)
	forged := newTestSticky(t, StickyConfig{Secret: stickyOther}).Encode("app-1", stickyNow, stickyNow)
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	r.Header.Set("Cookie", "session=abc; cbroute="+valid+"; theme=dark")
	plain := httptest.NewRequest(http.MethodGet, "/", nil)
	plain.Header.Set("Cookie", "session=abc; theme=dark")
	tests := []struct {
		name string
		max  float64
		f    func()
	}{
		{"Decode valid", 1, func() { _, _ = s.Decode(valid, stickyNow) }},
		{"Decode previous key", 1, func() { _, _ = s.Decode(prev, stickyNow) }},
		{"Decode forged", 0, func() { _, _ = s.Decode(forged, stickyNow) }},
		{"Decode garbage", 0, func() { _, _ = s.Decode("not a cookie", stickyNow) }},
		{"Read valid", 1, func() { _, _ = s.Read(r, stickyNow) }},
		{"Read none", 0, func() { _, _ = s.Read(plain, stickyNow) }},
		{"Strip none", 0, func() { s.Strip(plain) }},
		{"Encode", 1, func() { _ = s.Encode("app-1", stickyNow, stickyNow) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if n := testing.AllocsPerRun(200, tc.f); n > tc.max {
				t.Errorf("%v allocations, want at most %v", n, tc.max)
			}
		})
	}
}

func BenchmarkStickyRead(b *testing.B) {
	s := newTestSticky(b, StickyConfig{Secret: stickySecret, Previous: stickyPrevious, MaxIdle: time.Hour, MaxLife: 24 * time.Hour})
	valid := s.Encode("app-1", stickyNow, stickyNow)
	prev := newTestSticky(b, StickyConfig{Secret: stickyPrevious}).Encode("app-1", stickyNow, stickyNow)
	forged := newTestSticky(b, StickyConfig{Secret: stickyOther}).Encode("app-1", stickyNow, stickyNow)
	for _, bc := range []struct{ name, header string }{
		{"valid", "session=abc; cbroute=" + valid + "; theme=dark"},
		{"previous key", "session=abc; cbroute=" + prev + "; theme=dark"},
		{"forged", "session=abc; cbroute=" + forged + "; theme=dark"},
		{"garbage", "session=abc; cbroute=garbage; theme=dark"},
		{"none", "session=abc; theme=dark"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			r := httptest.NewRequest(http.MethodGet, "/", nil)
			r.Header.Set("Cookie", bc.header)
			b.ReportAllocs()
			for b.Loop() {
				_, _ = s.Read(r, stickyNow)
			}
		})
	}
	b.Run("parallel", func(b *testing.B) {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.Header.Set("Cookie", "session=abc; cbroute="+valid+"; theme=dark")
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				_, _ = s.Read(r, stickyNow)
			}
		})
	})
}

func BenchmarkStickyCookie(b *testing.B) {
	s := newTestSticky(b, StickyConfig{Secret: stickySecret, MaxLife: 24 * time.Hour})
	b.ReportAllocs()
	for b.Loop() {
		_ = s.Cookie("app-1", stickyNow, stickyNow, true).String()
	}
}

func BenchmarkStickyStrip(b *testing.B) {
	s := newTestSticky(b, StickyConfig{Secret: stickySecret})
	v := s.Encode("app-1", stickyNow, stickyNow)
	for _, bc := range []struct{ name, header string }{
		{"ours", "session=abc; cbroute=" + v + "; theme=dark"},
		{"none", "session=abc; theme=dark"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			r := httptest.NewRequest(http.MethodGet, "/", nil)
			b.ReportAllocs()
			for b.Loop() {
				r.Header["Cookie"] = []string{bc.header}
				s.Strip(r)
			}
		})
	}
}

// FuzzDecodeRoute feeds Decode what clients may send (value) and, since a
// fuzzer cannot forge a MAC, also payload signed with either key, so that
// the parsing behind the signature is explored too. Decode must never
// panic, must reject with ErrRouteInvalid, and what it accepts must
// encode back to the same route (to the same value under the current key:
// every route has one encoding).
func FuzzDecodeRoute(f *testing.F) {
	limited := newTestSticky(f, StickyConfig{Secret: stickySecret, Previous: stickyPrevious, MaxIdle: time.Hour, MaxLife: 24 * time.Hour})
	unlimited := newTestSticky(f, StickyConfig{Secret: stickySecret, Previous: stickyPrevious})
	current := newTestSticky(f, StickyConfig{Secret: stickySecret})
	old := newTestSticky(f, StickyConfig{Secret: stickyPrevious})
	sec := uint64(stickyNow.Unix())
	f.Add(current.Encode("app-1", stickyNow.Add(-time.Hour), stickyNow), routePayload(1, sec-60, 60, "app-1"))
	f.Add(old.Encode("b", stickyNow, stickyNow), routePayload(1, 0, sec, "x"))
	f.Add("", []byte{})
	f.Add(strings.Repeat("A", 300), routePayload(2, sec, 0, "a.b"))

	check := func(t *testing.T, s *Sticky, value string) {
		r, err := s.Decode(value, stickyNow)
		if err != nil {
			if !errors.Is(err, ErrRouteInvalid) || r != (Route{}) {
				t.Fatalf("Decode(%q) = %+v, %v", value, r, err)
			}
			return
		}
		if !bus.ValidName(r.Backend) || r.Touched.Before(r.Issued) || r.Touched.Sub(stickyNow) > time.Minute {
			t.Fatalf("Decode(%q) accepted %+v", value, r)
		}
		again := s.Encode(r.Backend, r.Issued, r.Touched)
		r2, err := s.Decode(again, stickyNow)
		if err != nil || r2.Backend != r.Backend || !r2.Issued.Equal(r.Issued) || !r2.Touched.Equal(r.Touched) {
			t.Fatalf("Decode(%q) = %+v; re-encoded %q decodes to %+v, %v", value, r, again, r2, err)
		}
		if _, err := current.Decode(value, stickyNow); err == nil && again != value {
			t.Fatalf("route %+v has two encodings: %q and %q", r, value, again)
		}
	}
	f.Fuzz(func(t *testing.T, value string, payload []byte) {
		for _, s := range []*Sticky{limited, unlimited} {
			check(t, s, value)
			check(t, s, signRoute(stickySecret, payload))
			check(t, s, signRoute(stickyPrevious, payload))
		}
	})
}
