package lbgateway

import (
	"testing"
	"time"
)

func TestParseCacheControl(t *testing.T) {
	const s = time.Second
	tests := []struct {
		in   string
		want CacheControl
	}{
		{"", CacheControl{}},
		{"max-age=60", CacheControl{MaxAge: 60 * s, HasMaxAge: true}},
		{"MAX-AGE=60", CacheControl{MaxAge: 60 * s, HasMaxAge: true}},
		{"max-age=0", CacheControl{HasMaxAge: true}},
		{`max-age="60"`, CacheControl{MaxAge: 60 * s, HasMaxAge: true}},
		{"max-age = 60", CacheControl{MaxAge: 60 * s, HasMaxAge: true}},
		{"public, max-age=60, s-maxage=600", CacheControl{MaxAge: 60 * s, SMaxAge: 600 * s, HasMaxAge: true, HasSMaxAge: true, Public: true}},
		{"max-age=60, stale-while-revalidate=30, stale-if-error=86400", CacheControl{MaxAge: 60 * s, HasMaxAge: true, SWR: 30 * s, SIE: 86400 * s}},
		{"no-store", CacheControl{NoStore: true}},
		{"no-cache", CacheControl{NoCache: true}},
		{`no-cache="Set-Cookie, X-User", max-age=5`, CacheControl{NoCache: true, MaxAge: 5 * s, HasMaxAge: true}},
		{`private="X-User"`, CacheControl{Private: true}},
		{"Private", CacheControl{Private: true}},
		{"must-revalidate", CacheControl{MustRevalidate: true}},
		{"proxy-revalidate", CacheControl{MustRevalidate: true}},
		{"immutable, max-age=31536000", CacheControl{MaxAge: 31536000 * s, HasMaxAge: true}},
		{"max-age=60,max-age=120", CacheControl{MaxAge: 60 * s, HasMaxAge: true}},
		{"max-age=x, max-age=120", CacheControl{}},
		{"max-age=-5", CacheControl{}},
		{"max-age=+5", CacheControl{}},
		{"max-age=5s", CacheControl{}},
		{"max-age=", CacheControl{}},
		{"max-age", CacheControl{}},
		{"s-maxage=1.5", CacheControl{}},
		{"max-age=99999999999999999999999", CacheControl{MaxAge: maxDeltaSeconds * s, HasMaxAge: true}},
		{"max-age=2147483648", CacheControl{MaxAge: maxDeltaSeconds * s, HasMaxAge: true}},
		{`max-age="60`, CacheControl{}},
		{`max-age="60"junk, public`, CacheControl{Public: true}},
		{`max-age="6\"0", public`, CacheControl{Public: true}},
		{`foo="a,b", max-age=7`, CacheControl{MaxAge: 7 * s, HasMaxAge: true}},
		{`,,, ,max-age=8,,`, CacheControl{MaxAge: 8 * s, HasMaxAge: true}},
		{"=,=5,max-age=9", CacheControl{MaxAge: 9 * s, HasMaxAge: true}},
		{`max-age=="x", s-maxage=-5, ,,, "private`, CacheControl{}},
		{"  no-store  ,\tpublic\t", CacheControl{NoStore: true, Public: true}},
		{"stale-while-revalidate=a, stale-if-error", CacheControl{}},
		{"a-directive-name-much-longer-than-any-we-know=1, public", CacheControl{Public: true}},
		{"max-age=60, no-store, no-cache, private, public, must-revalidate", CacheControl{MaxAge: 60 * s, HasMaxAge: true,
			NoStore: true, NoCache: true, Private: true, Public: true, MustRevalidate: true}},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			if got := ParseCacheControl(tt.in); got != tt.want {
				t.Fatalf("ParseCacheControl(%q)\n got %+v\nwant %+v", tt.in, got, tt.want)
			}
		})
	}
}

func TestParseCacheControlLines(t *testing.T) {
	tests := []struct {
		lines []string
		want  CacheControl
	}{
		{nil, CacheControl{}},
		{[]string{"max-age=60", "no-cache"}, CacheControl{MaxAge: 60 * time.Second, HasMaxAge: true, NoCache: true}},
		{[]string{"max-age=60", "max-age=10"}, CacheControl{MaxAge: 60 * time.Second, HasMaxAge: true}},
		{[]string{"public", "s-maxage=5, stale-if-error=1"}, CacheControl{SMaxAge: 5 * time.Second, HasSMaxAge: true, Public: true, SIE: time.Second}},
	}
	for _, tt := range tests {
		got := parseCacheControlLines(tt.lines)
		if got != tt.want {
			t.Errorf("%q: got %+v, want %+v", tt.lines, got, tt.want)
		}
		joined := ""
		for i, l := range tt.lines {
			if i > 0 {
				joined += ","
			}
			joined += l
		}
		if j := ParseCacheControl(joined); j != got {
			t.Errorf("%q: lines give %+v, joined %+v", tt.lines, got, j)
		}
	}
}

func TestETagMatchWeak(t *testing.T) {
	tests := []struct {
		inm  []string
		etag string
		want bool
	}{
		{[]string{`"a"`}, `"a"`, true},
		{[]string{`W/"a"`}, `"a"`, true},
		{[]string{`"a"`}, `W/"a"`, true},
		{[]string{`W/"a"`}, `W/"a"`, true},
		{[]string{`"b", "a"`}, `"a"`, true},
		{[]string{`"b"`, `"a"`}, `"a"`, true},
		{[]string{`"a,b"`}, `"a,b"`, true},
		{[]string{`"a,b"`}, `"a"`, false},
		{[]string{`*`}, `"a"`, true},
		{[]string{`*`}, ``, true},
		{[]string{`""`}, ``, false},
		{[]string{`W/"a"`}, ``, false},
		{[]string{`"b"`}, `"a"`, false},
		{[]string{`a`}, `"a"`, false},
		{[]string{`junk, "a"`}, `"a"`, true},
		{[]string{`"a`}, `"a"`, false},
		{[]string{``}, `"a"`, false},
		{[]string{`W/`}, `"a"`, false},
		{nil, `"a"`, false},
	}
	for _, tt := range tests {
		if got := etagMatchWeak(tt.inm, tt.etag); got != tt.want {
			t.Errorf("If-None-Match %q vs ETag %q: %v, want %v", tt.inm, tt.etag, got, tt.want)
		}
	}
}

func FuzzParseCacheControl(f *testing.F) {
	for _, s := range []string{"max-age=60", `no-cache="a, b", s-maxage=5`, `max-age="6`, "stale-if-error=99999999999999999999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		cc := ParseCacheControl(v)
		for _, d := range []time.Duration{cc.MaxAge, cc.SMaxAge, cc.SWR, cc.SIE} {
			if d < 0 || d > maxDeltaSeconds*time.Second || d%time.Second != 0 {
				t.Fatalf("%q: duration %s out of range", v, d)
			}
		}
		if !cc.HasMaxAge && cc.MaxAge != 0 || !cc.HasSMaxAge && cc.SMaxAge != 0 {
			t.Fatalf("%q: a value without its directive: %+v", v, cc)
		}
		if again := parseCacheControlLines([]string{v}); again != cc {
			t.Fatalf("%q: one line parses differently: %+v vs %+v", v, again, cc)
		}
		etagMatchWeak([]string{v}, `"x"`)
		etagMatchWeak([]string{v}, v)
	})
}
