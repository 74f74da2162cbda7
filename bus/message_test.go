package bus_test

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus"
)

// wantField fails unless err is a *bus.ValidationError naming field.
func wantField(t *testing.T, err error, field string) {
	t.Helper()
	if err == nil {
		t.Fatalf("accepted, want a rejection of field %q", field)
	}
	var ve *bus.ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("error %v (%T) is not a *bus.ValidationError", err, err)
	}
	if ve.Field != field {
		t.Fatalf("rejected field %q (%v), want %q", ve.Field, err, field)
	}
	if ve.Reason == "" {
		t.Fatalf("rejection of %q gives no reason", field)
	}
	if got := bus.Reason(err); got != field {
		t.Fatalf("bus.Reason = %q, want %q", got, field)
	}
}

// The normalisers make decoded values comparable with reflect.DeepEqual:
// an empty list and no list mean the same, and times are compared as
// instants.

func normExpire(e bus.Expire) bus.Expire {
	e.Keys, e.Prefixes, e.Tags = normList(e.Keys), normList(e.Prefixes), normList(e.Tags)
	e.TS = normTime(e.TS)
	return e
}

func normSeed(s bus.Seed) bus.Seed {
	if len(s.Value) == 0 {
		s.Value = nil
	}
	s.TS = normTime(s.TS)
	return s
}

func normFallback(f bus.Fallback) bus.Fallback {
	f.Until, f.TS = normTime(f.Until), normTime(f.TS)
	return f
}

func normDrain(d bus.Drain) bus.Drain {
	d.Deadline, d.TS = normTime(d.Deadline), normTime(d.TS)
	return d
}

func normHeartbeat(h bus.Heartbeat) bus.Heartbeat {
	h.Started = normTime(h.Started)
	return h
}

func normList(l []string) []string {
	if len(l) == 0 {
		return nil
	}
	return l
}

func normTime(t time.Time) time.Time {
	if t.IsZero() {
		return time.Time{}
	}
	return t.UTC()
}

var (
	ts0   = time.Date(2025, 3, 14, 15, 9, 26, 535897000, time.UTC)
	ts0s  = "2025-03-14T15:09:26.535897Z"
	ts0tz = "2025-03-14T16:09:26.535897+01:00" // the same instant
)

func TestDecodeExpire(t *testing.T) {
	long := strings.Repeat("x", bus.MaxKeyLen)
	tests := []struct {
		name  string
		in    string
		want  bus.Expire
		field string // rejected field; "" means accepted
	}{
		{name: "keys", in: `{"v":1,"keys":["a","b"]}`, want: bus.Expire{Keys: []string{"a", "b"}}},
		{name: "every field", in: `{"v":1,"keys":["k"],"prefixes":["p:"],"tags":["t"],"all":true,"origin":"node-1","ts":"` + ts0s + `"}`,
			want: bus.Expire{Keys: []string{"k"}, Prefixes: []string{"p:"}, Tags: []string{"t"}, All: true, Origin: "node-1", TS: ts0}},
		{name: "prefixes only", in: `{"v":1,"prefixes":["user:"]}`, want: bus.Expire{Prefixes: []string{"user:"}}},
		{name: "tags only", in: `{"v":1,"tags":["product-7"]}`, want: bus.Expire{Tags: []string{"product-7"}}},
		{name: "all only", in: `{"v":1,"all":true}`, want: bus.Expire{All: true}},
		{name: "ts with offset", in: `{"v":1,"all":true,"ts":"` + ts0tz + `"}`, want: bus.Expire{All: true, TS: ts0}},
		{name: "unknown fields ignored", in: `{"v":1,"keys":["a"],"colour":"blue","nested":{"x":[1,2]}}`, want: bus.Expire{Keys: []string{"a"}}},
		{name: "leading whitespace before JSON", in: " \t\r\n{\"v\":1,\"keys\":[\"a\"]}", want: bus.Expire{Keys: []string{"a"}}},
		{name: "key of the maximum length", in: `{"v":1,"keys":["` + long + `"]}`, want: bus.Expire{Keys: []string{long}}},

		{name: "text one key", in: "user:42", want: bus.Expire{Keys: []string{"user:42"}}},
		{name: "text key list", in: "user:42\nuser:43\n", want: bus.Expire{Keys: []string{"user:42", "user:43"}}},
		{name: "text trims and skips blank lines", in: "  a  \r\n\n\t b\r\n \n", want: bus.Expire{Keys: []string{"a", "b"}}},
		{name: "text keeps inner spaces", in: "a key with spaces", want: bus.Expire{Keys: []string{"a key with spaces"}}},
		{name: "text that looks like JSON later", in: "x{\"v\":1}", want: bus.Expire{Keys: []string{"x{\"v\":1}"}}},
		{name: "text JSON array is a key", in: `["a"]`, want: bus.Expire{Keys: []string{`["a"]`}}},

		{name: "empty payload", in: "", field: "payload"},
		{name: "whitespace only is an empty key list", in: " \n\r\n\t", field: "keys"},
		{name: "nothing to expire", in: `{"v":1}`, field: "keys"},
		{name: "empty lists", in: `{"v":1,"keys":[],"prefixes":[],"tags":[],"all":false}`, field: "keys"},
		{name: "empty key", in: `{"v":1,"keys":["a",""]}`, field: "keys[1]"},
		{name: "null key", in: `{"v":1,"keys":[null]}`, field: "keys[0]"},
		{name: "empty prefix", in: `{"v":1,"prefixes":[""]}`, field: "prefixes[0]"},
		{name: "empty tag", in: `{"v":1,"keys":["a"],"tags":["t",""]}`, field: "tags[1]"},
		{name: "key too long", in: `{"v":1,"keys":["` + long + `x"]}`, field: "keys[0]"},
		{name: "text key too long", in: "ok\n" + long + "x", field: "keys[1]"},
		{name: "text not UTF-8", in: "user:\xff\xfe", field: "keys"},
		{name: "too many items", in: strings.Repeat("k\n", bus.MaxItems+1), field: "keys"},
		{name: "missing v", in: `{"keys":["a"]}`, field: "v"},
		{name: "null v", in: `{"v":null,"keys":["a"]}`, field: "v"},
		{name: "unknown v", in: `{"v":2,"keys":["a"]}`, field: "v"},
		{name: "v zero", in: `{"v":0,"keys":["a"]}`, field: "v"},
		{name: "v as string", in: `{"v":"1","keys":["a"]}`, field: "v"},
		{name: "v as float", in: `{"v":1.5,"keys":["a"]}`, field: "v"},
		{name: "keys as string", in: `{"v":1,"keys":"a"}`, field: "keys"},
		{name: "key as number", in: `{"v":1,"keys":[1]}`, field: "keys"},
		{name: "prefixes as object", in: `{"v":1,"prefixes":{"a":1}}`, field: "prefixes"},
		{name: "all as string", in: `{"v":1,"all":"yes"}`, field: "all"},
		{name: "origin as number", in: `{"v":1,"all":true,"origin":7}`, field: "origin"},
		{name: "bad origin", in: `{"v":1,"all":true,"origin":"node 1"}`, field: "origin"},
		{name: "origin too long", in: `{"v":1,"all":true,"origin":"` + strings.Repeat("o", 65) + `"}`, field: "origin"},
		{name: "ts as number", in: `{"v":1,"all":true,"ts":1700000000}`, field: "ts"},
		{name: "ts not RFC 3339", in: `{"v":1,"all":true,"ts":"yesterday"}`, field: "ts"},
		{name: "ts offset of 24 hours", in: `{"v":1,"all":true,"ts":"2025-01-01T00:00:00+24:00"}`, field: "ts"},
		{name: "ts offset of 23:60", in: `{"v":1,"all":true,"ts":"2025-01-01T00:00:00-23:60"}`, field: "ts"},
		{name: "malformed JSON", in: `{"v":1,"keys":["a"]`, field: "payload"},
		{name: "only a brace", in: `{`, field: "payload"},
		{name: "trailing garbage", in: `{"v":1,"keys":["a"]} x`, field: "payload"},
		{name: "oversize", in: strings.Repeat("k", bus.MaxPayload+1), field: "payload"},
		{name: "oversize JSON", in: `{"v":1,"keys":["a"],"pad":"` + strings.Repeat("p", bus.MaxPayload) + `"}`, field: "payload"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := bus.DecodeExpire([]byte(tt.in))
			if tt.field != "" {
				wantField(t, err, tt.field)
				return
			}
			if err != nil {
				t.Fatalf("rejected: %v", err)
			}
			if !reflect.DeepEqual(normExpire(got), normExpire(tt.want)) {
				t.Fatalf("decoded %+v, want %+v", got, tt.want)
			}
			roundTripExpire(t, got)
		})
	}
}

func roundTripExpire(t *testing.T, e bus.Expire) {
	t.Helper()
	data, err := e.Encode()
	if err != nil {
		t.Fatalf("encode %+v: %v", e, err)
	}
	if !strings.HasPrefix(string(data), `{"v":1,`) {
		t.Fatalf("encoded %s, want a JSON object starting with \"v\":1", data)
	}
	back, err := bus.DecodeExpire(data)
	if err != nil {
		t.Fatalf("decode of encoded %s: %v", data, err)
	}
	if !reflect.DeepEqual(normExpire(back), normExpire(e)) {
		t.Fatalf("round trip changed %+v into %+v (%s)", e, back, data)
	}
}

func TestDecodeSeed(t *testing.T) {
	tests := []struct {
		name  string
		in    string
		want  bus.Seed
		field string
	}{
		{name: "minimal", in: `{"v":1,"key":"k","value":"aGVsbG8="}`, want: bus.Seed{Key: "k", Value: []byte("hello")}},
		{name: "every field", in: `{"v":1,"key":"user:1","value":"AAEC/w==","ttl":"30s","origin":"app-1","ts":"` + ts0s + `"}`,
			want: bus.Seed{Key: "user:1", Value: []byte{0, 1, 2, 0xff}, TTL: 30 * time.Second, Origin: "app-1", TS: ts0}},
		{name: "compound ttl", in: `{"v":1,"key":"k","value":"","ttl":"1h30m"}`, want: bus.Seed{Key: "k", Value: []byte{}, TTL: 90 * time.Minute}},
		{name: "zero ttl", in: `{"v":1,"key":"k","value":"","ttl":"0s"}`, want: bus.Seed{Key: "k", Value: []byte{}}},
		{name: "empty value", in: `{"v":1,"key":"k","value":""}`, want: bus.Seed{Key: "k", Value: []byte{}}},
		{name: "unknown fields ignored", in: `{"v":1,"key":"k","value":"eA==","extra":[1]}`, want: bus.Seed{Key: "k", Value: []byte("x")}},

		{name: "missing key", in: `{"v":1,"value":"eA=="}`, field: "key"},
		{name: "null key", in: `{"v":1,"key":null,"value":"eA=="}`, field: "key"},
		{name: "empty key", in: `{"v":1,"key":"","value":"eA=="}`, field: "key"},
		{name: "key too long", in: `{"v":1,"key":"` + strings.Repeat("k", bus.MaxKeyLen+1) + `","value":""}`, field: "key"},
		{name: "key as number", in: `{"v":1,"key":5,"value":""}`, field: "key"},
		{name: "missing value", in: `{"v":1,"key":"k"}`, field: "value"},
		{name: "null value", in: `{"v":1,"key":"k","value":null}`, field: "value"},
		{name: "value not base64", in: `{"v":1,"key":"k","value":"!!"}`, field: "value"},
		{name: "value base64 without padding", in: `{"v":1,"key":"k","value":"eA"}`, field: "value"},
		{name: "value as number", in: `{"v":1,"key":"k","value":5}`, field: "value"},
		{name: "value as byte array", in: `{"v":1,"key":"k","value":[1,2]}`, field: "value"},
		{name: "ttl not a duration", in: `{"v":1,"key":"k","value":"","ttl":"soon"}`, field: "ttl"},
		{name: "ttl without unit", in: `{"v":1,"key":"k","value":"","ttl":"30"}`, field: "ttl"},
		{name: "ttl as number", in: `{"v":1,"key":"k","value":"","ttl":30}`, field: "ttl"},
		{name: "negative ttl", in: `{"v":1,"key":"k","value":"","ttl":"-1s"}`, field: "ttl"},
		{name: "bad origin", in: `{"v":1,"key":"k","value":"","origin":"a/b"}`, field: "origin"},
		{name: "bad ts", in: `{"v":1,"key":"k","value":"","ts":"2025-13-01T00:00:00Z"}`, field: "ts"},
		{name: "missing v", in: `{"key":"k","value":""}`, field: "v"},
		{name: "unknown v", in: `{"v":2,"key":"k","value":""}`, field: "v"},
		{name: "text form is not a seed", in: "k", field: "payload"},
		{name: "malformed JSON", in: `{"v":1,"key":`, field: "payload"},
		{name: "JSON array", in: `[{"v":1}]`, field: "payload"},
		{name: "empty", in: ``, field: "payload"},
		{name: "oversize", in: `{"v":1,"key":"k","value":"` + strings.Repeat("A", bus.MaxPayload) + `"}`, field: "payload"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := bus.DecodeSeed([]byte(tt.in))
			if tt.field != "" {
				wantField(t, err, tt.field)
				return
			}
			if err != nil {
				t.Fatalf("rejected: %v", err)
			}
			if !reflect.DeepEqual(normSeed(got), normSeed(tt.want)) {
				t.Fatalf("decoded %+v, want %+v", got, tt.want)
			}
			roundTripSeed(t, got)
		})
	}
}

func roundTripSeed(t *testing.T, s bus.Seed) {
	t.Helper()
	data, err := s.Encode()
	if err != nil {
		t.Fatalf("encode %+v: %v", s, err)
	}
	back, err := bus.DecodeSeed(data)
	if err != nil {
		t.Fatalf("decode of encoded %s: %v", data, err)
	}
	if !reflect.DeepEqual(normSeed(back), normSeed(s)) {
		t.Fatalf("round trip changed %+v into %+v (%s)", s, back, data)
	}
}

func TestDecodeFallback(t *testing.T) {
	until := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		name  string
		in    string
		want  bus.Fallback
		field string
	}{
		{name: "on, scope defaults to all", in: `{"v":1,"on":true}`, want: bus.Fallback{On: true, Scope: "*"}},
		{name: "empty scope means all", in: `{"v":1,"on":true,"scope":""}`, want: bus.Fallback{On: true, Scope: "*"}},
		{name: "off", in: `{"v":1,"on":false,"scope":"*"}`, want: bus.Fallback{Scope: "*"}},
		{name: "namespace scope", in: `{"v":1,"on":true,"scope":"users"}`, want: bus.Fallback{On: true, Scope: "users"}},
		{name: "every field", in: `{"v":1,"on":true,"scope":"users","reason":"db down","until":"2030-01-02T03:04:05Z","origin":"ops","ts":"` + ts0s + `"}`,
			want: bus.Fallback{On: true, Scope: "users", Reason: "db down", Until: until, Origin: "ops", TS: ts0}},

		{name: "missing on", in: `{"v":1,"scope":"*"}`, field: "on"},
		{name: "null on", in: `{"v":1,"on":null}`, field: "on"},
		{name: "on as string", in: `{"v":1,"on":"true"}`, field: "on"},
		{name: "on as number", in: `{"v":1,"on":1}`, field: "on"},
		{name: "bad scope", in: `{"v":1,"on":true,"scope":"users.eu"}`, field: "scope"},
		{name: "wildcard scope", in: `{"v":1,"on":true,"scope":">"}`, field: "scope"},
		{name: "scope as list", in: `{"v":1,"on":true,"scope":["a"]}`, field: "scope"},
		{name: "until not a time", in: `{"v":1,"on":true,"until":"in an hour"}`, field: "until"},
		{name: "until as number", in: `{"v":1,"on":true,"until":1}`, field: "until"},
		{name: "until date only", in: `{"v":1,"on":true,"until":"2030-01-02"}`, field: "until"},
		{name: "reason too long", in: `{"v":1,"on":true,"reason":"` + strings.Repeat("r", bus.MaxKeyLen+1) + `"}`, field: "reason"},
		{name: "bad origin", in: `{"v":1,"on":true,"origin":"!"}`, field: "origin"},
		{name: "missing v", in: `{"on":true}`, field: "v"},
		{name: "unknown v", in: `{"v":2,"on":true}`, field: "v"},
		{name: "malformed JSON", in: `{"v":1,"on":tru}`, field: "payload"},
		{name: "empty", in: ``, field: "payload"},
		{name: "oversize", in: `{"v":1,"on":true,"reason":"` + strings.Repeat("r", bus.MaxPayload) + `"}`, field: "payload"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := bus.DecodeFallback([]byte(tt.in))
			if tt.field != "" {
				wantField(t, err, tt.field)
				return
			}
			if err != nil {
				t.Fatalf("rejected: %v", err)
			}
			if !reflect.DeepEqual(normFallback(got), normFallback(tt.want)) {
				t.Fatalf("decoded %+v, want %+v", got, tt.want)
			}
			data, err := got.Encode()
			if err != nil {
				t.Fatalf("encode: %v", err)
			}
			back, err := bus.DecodeFallback(data)
			if err != nil {
				t.Fatalf("decode of encoded %s: %v", data, err)
			}
			if !reflect.DeepEqual(normFallback(back), normFallback(got)) {
				t.Fatalf("round trip changed %+v into %+v", got, back)
			}
		})
	}
}

func TestFallbackActiveAndCovers(t *testing.T) {
	now := time.Now()
	tests := []struct {
		name   string
		f      bus.Fallback
		active bool
	}{
		{"on forever", bus.Fallback{On: true, Scope: "*"}, true},
		{"on until later", bus.Fallback{On: true, Scope: "*", Until: now.Add(time.Minute)}, true},
		{"on until the past", bus.Fallback{On: true, Scope: "*", Until: now.Add(-time.Second)}, false},
		{"on until exactly now", bus.Fallback{On: true, Scope: "*", Until: now}, false},
		{"off", bus.Fallback{Scope: "*"}, false},
		{"off until later", bus.Fallback{Scope: "*", Until: now.Add(time.Minute)}, false},
	}
	for _, tt := range tests {
		if got := tt.f.Active(now); got != tt.active {
			t.Errorf("%s: Active = %v, want %v", tt.name, got, tt.active)
		}
	}
	all, users := bus.Fallback{Scope: "*"}, bus.Fallback{Scope: "users"}
	if !all.Covers("users") || !all.Covers("orders") {
		t.Error(`scope "*" must cover every namespace`)
	}
	if !users.Covers("users") || users.Covers("orders") {
		t.Error(`scope "users" must cover users and nothing else`)
	}
}

func TestDecodeDrain(t *testing.T) {
	deadline := time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name  string
		in    string
		want  bus.Drain
		field string
	}{
		{name: "on", in: `{"v":1,"on":true}`, want: bus.Drain{On: true}},
		{name: "off", in: `{"v":1,"on":false}`, want: bus.Drain{}},
		{name: "every field", in: `{"v":1,"on":true,"deadline":"2030-06-01T14:00:00+02:00","origin":"cli","ts":"` + ts0s + `"}`,
			want: bus.Drain{On: true, Deadline: deadline, Origin: "cli", TS: ts0}},

		{name: "missing on", in: `{"v":1}`, field: "on"},
		{name: "on as string", in: `{"v":1,"on":"yes"}`, field: "on"},
		{name: "deadline not a time", in: `{"v":1,"on":true,"deadline":"noon"}`, field: "deadline"},
		{name: "deadline as number", in: `{"v":1,"on":true,"deadline":0}`, field: "deadline"},
		{name: "bad origin", in: `{"v":1,"on":true,"origin":"a.b"}`, field: "origin"},
		{name: "missing v", in: `{"on":true}`, field: "v"},
		{name: "unknown v", in: `{"v":2,"on":true}`, field: "v"},
		{name: "malformed JSON", in: `on`, field: "payload"},
		{name: "empty", in: ``, field: "payload"},
		{name: "oversize", in: `{"v":1,"on":true,"x":"` + strings.Repeat("x", bus.MaxPayload) + `"}`, field: "payload"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := bus.DecodeDrain([]byte(tt.in))
			if tt.field != "" {
				wantField(t, err, tt.field)
				return
			}
			if err != nil {
				t.Fatalf("rejected: %v", err)
			}
			if !reflect.DeepEqual(normDrain(got), normDrain(tt.want)) {
				t.Fatalf("decoded %+v, want %+v", got, tt.want)
			}
			data, err := got.Encode()
			if err != nil {
				t.Fatalf("encode: %v", err)
			}
			back, err := bus.DecodeDrain(data)
			if err != nil {
				t.Fatalf("decode of encoded %s: %v", data, err)
			}
			if !reflect.DeepEqual(normDrain(back), normDrain(got)) {
				t.Fatalf("round trip changed %+v into %+v", got, back)
			}
		})
	}
}

func TestDecodeHeartbeat(t *testing.T) {
	started := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	full := bus.Heartbeat{ID: "node-1", Role: "node", Addr: "http://10.0.0.1:8080", DC: "dc1", State: "draining",
		Started: started, Sessions: 12, Load: 0.75, Version: "1.2.3"}
	tests := []struct {
		name  string
		in    string
		want  bus.Heartbeat
		field string
	}{
		{name: "minimal", in: `{"v":1,"id":"a","role":"app","state":"up"}`, want: bus.Heartbeat{ID: "a", Role: "app", State: "up"}},
		{name: "every field", in: `{"v":1,"id":"node-1","role":"node","addr":"http://10.0.0.1:8080","dc":"dc1","state":"draining",` +
			`"started":"2025-01-01T00:00:00Z","sessions":12,"load":0.75,"version":"1.2.3"}`, want: full},
		{name: "gone", in: `{"v":1,"id":"g","role":"gateway","state":"gone"}`, want: bus.Heartbeat{ID: "g", Role: "gateway", State: "gone"}},
		{name: "client role", in: `{"v":1,"id":"c_1","role":"client","state":"up"}`, want: bus.Heartbeat{ID: "c_1", Role: "client", State: "up"}},

		{name: "missing id", in: `{"v":1,"role":"node","state":"up"}`, field: "id"},
		{name: "missing role", in: `{"v":1,"id":"a","state":"up"}`, field: "role"},
		{name: "missing state", in: `{"v":1,"id":"a","role":"node"}`, field: "state"},
		{name: "bad id", in: `{"v":1,"id":"a b","role":"node","state":"up"}`, field: "id"},
		{name: "empty id", in: `{"v":1,"id":"","role":"node","state":"up"}`, field: "id"},
		{name: "id too long", in: `{"v":1,"id":"` + strings.Repeat("i", 65) + `","role":"node","state":"up"}`, field: "id"},
		{name: "unknown role", in: `{"v":1,"id":"a","role":"server","state":"up"}`, field: "role"},
		{name: "unknown state", in: `{"v":1,"id":"a","role":"node","state":"dying"}`, field: "state"},
		{name: "negative sessions", in: `{"v":1,"id":"a","role":"node","state":"up","sessions":-1}`, field: "sessions"},
		{name: "sessions as string", in: `{"v":1,"id":"a","role":"node","state":"up","sessions":"3"}`, field: "sessions"},
		{name: "sessions fractional", in: `{"v":1,"id":"a","role":"node","state":"up","sessions":1.5}`, field: "sessions"},
		{name: "load as string", in: `{"v":1,"id":"a","role":"node","state":"up","load":"high"}`, field: "load"},
		{name: "id as number", in: `{"v":1,"id":1,"role":"node","state":"up"}`, field: "id"},
		{name: "addr too long", in: `{"v":1,"id":"a","role":"node","state":"up","addr":"` + strings.Repeat("a", bus.MaxKeyLen+1) + `"}`, field: "addr"},
		{name: "dc too long", in: `{"v":1,"id":"a","role":"node","state":"up","dc":"` + strings.Repeat("d", 65) + `"}`, field: "dc"},
		{name: "version too long", in: `{"v":1,"id":"a","role":"node","state":"up","version":"` + strings.Repeat("v", 65) + `"}`, field: "version"},
		{name: "started not a time", in: `{"v":1,"id":"a","role":"node","state":"up","started":"boot"}`, field: "started"},
		{name: "missing v", in: `{"id":"a","role":"node","state":"up"}`, field: "v"},
		{name: "unknown v", in: `{"v":2,"id":"a","role":"node","state":"up"}`, field: "v"},
		{name: "malformed JSON", in: `{"v":1,"id":"a",}`, field: "payload"},
		{name: "empty", in: ``, field: "payload"},
		{name: "oversize", in: `{"v":1,"id":"a","role":"node","state":"up","x":"` + strings.Repeat("x", bus.MaxPayload) + `"}`, field: "payload"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := bus.DecodeHeartbeat([]byte(tt.in))
			if tt.field != "" {
				wantField(t, err, tt.field)
				return
			}
			if err != nil {
				t.Fatalf("rejected: %v", err)
			}
			if !reflect.DeepEqual(normHeartbeat(got), normHeartbeat(tt.want)) {
				t.Fatalf("decoded %+v, want %+v", got, tt.want)
			}
			data, err := got.Encode()
			if err != nil {
				t.Fatalf("encode: %v", err)
			}
			back, err := bus.DecodeHeartbeat(data)
			if err != nil {
				t.Fatalf("decode of encoded %s: %v", data, err)
			}
			if !reflect.DeepEqual(normHeartbeat(back), normHeartbeat(got)) {
				t.Fatalf("round trip changed %+v into %+v", got, back)
			}
		})
	}
}

// TestEncodeRejects checks that Encode validates before it writes, naming
// the field, so that nothing invalid is ever published.
func TestEncodeRejects(t *testing.T) {
	bigKeys := make([]string, 600) // each key is valid, together they exceed MaxPayload
	for i := range bigKeys {
		bigKeys[i] = strings.Repeat("k", bus.MaxKeyLen)
	}
	tests := []struct {
		name   string
		encode func() ([]byte, error)
		field  string
	}{
		{"expire with nothing", bus.Expire{}.Encode, "keys"},
		{"expire empty key", bus.Expire{Keys: []string{""}}.Encode, "keys[0]"},
		{"expire key too long", bus.Expire{Prefixes: []string{strings.Repeat("p", bus.MaxKeyLen+1)}}.Encode, "prefixes[0]"},
		{"expire too many items", bus.Expire{Tags: make([]string, bus.MaxItems+1)}.Encode, "keys"},
		{"expire bad origin", bus.Expire{All: true, Origin: "no spaces please"}.Encode, "origin"},
		{"expire over the payload limit", bus.Expire{Keys: bigKeys}.Encode, "payload"},
		{"seed without key", bus.Seed{Value: []byte("v")}.Encode, "key"},
		{"seed negative ttl", bus.Seed{Key: "k", TTL: -time.Second}.Encode, "ttl"},
		{"seed value over the payload limit", bus.Seed{Key: "k", Value: make([]byte, bus.MaxPayload*3/4)}.Encode, "payload"},
		{"fallback bad scope", bus.Fallback{On: true, Scope: "a.b"}.Encode, "scope"},
		{"fallback reason too long", bus.Fallback{Reason: strings.Repeat("r", bus.MaxKeyLen+1)}.Encode, "reason"},
		{"drain bad origin", bus.Drain{On: true, Origin: "x y"}.Encode, "origin"},
		{"heartbeat without id", bus.Heartbeat{Role: "node", State: "up"}.Encode, "id"},
		{"heartbeat bad role", bus.Heartbeat{ID: "a", Role: "db", State: "up"}.Encode, "role"},
		{"heartbeat without state", bus.Heartbeat{ID: "a", Role: "node"}.Encode, "state"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data, err := tt.encode()
			if err == nil {
				t.Fatalf("encoded %d bytes, want a rejection of %q", len(data), tt.field)
			}
			wantField(t, err, tt.field)
		})
	}
}

// TestEncodeRoundTrip encodes values built in Go, as publishers do, and
// decodes them back.
func TestEncodeRoundTrip(t *testing.T) {
	roundTripExpire(t, bus.Expire{Keys: []string{"a", "ü/\"quoted\"\n<html>&"}, Prefixes: []string{"p"}, Tags: []string{"t"},
		All: true, Origin: "n1", TS: ts0})
	roundTripExpire(t, bus.Expire{All: true})
	roundTripSeed(t, bus.Seed{Key: "k", Value: []byte{0, 0xff, 'a'}, TTL: 1500 * time.Millisecond, Origin: "o", TS: ts0})
	roundTripSeed(t, bus.Seed{Key: "k"}) // a nil value is an empty value
	roundTripSeed(t, bus.Seed{Key: "k", TTL: time.Duration(1<<63 - 1)})

	f := bus.Fallback{On: true, Reason: "origin down"} // an empty scope encodes as "*"
	data, err := f.Encode()
	if err != nil {
		t.Fatal(err)
	}
	back, err := bus.DecodeFallback(data)
	if err != nil || back.Scope != "*" || !back.On || back.Reason != "origin down" {
		t.Fatalf("fallback %s decoded to %+v, %v", data, back, err)
	}

	hb := bus.Heartbeat{ID: "gw-1", Role: "gateway", State: "up", Sessions: 0, Load: 0}
	data, err = hb.Encode()
	if err != nil {
		t.Fatal(err)
	}
	// sessions and load are always present, as DESIGN.md shows them.
	for _, field := range []string{`"v":1`, `"sessions":0`, `"load":0`, `"id":"gw-1"`, `"role":"gateway"`, `"state":"up"`} {
		if !strings.Contains(string(data), field) {
			t.Errorf("heartbeat %s lacks %s", data, field)
		}
	}
}

func TestDecodeEvent(t *testing.T) {
	s, err := bus.NewSubjects("")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, subject, payload string
		check                  func(bus.Event) bool
		field                  string
	}{
		{name: "expire", subject: "cachebus.expire.users", payload: "u1\nu2",
			check: func(e bus.Event) bool {
				return e.Kind == bus.KindExpire && e.NS == "users" && e.Expire != nil && len(e.Expire.Keys) == 2
			}},
		{name: "seed", subject: "cachebus.seed.users", payload: `{"v":1,"key":"k","value":"eA==","origin":"o1"}`,
			check: func(e bus.Event) bool {
				return e.Kind == bus.KindSeed && e.NS == "users" && e.Seed != nil && e.Origin() == "o1"
			}},
		{name: "fallback", subject: "cachebus.fallback", payload: `{"v":1,"on":true}`,
			check: func(e bus.Event) bool {
				return e.Kind == bus.KindFallback && e.Fallback != nil && e.Fallback.Scope == "*"
			}},
		{name: "drain", subject: "cachebus.drain.node.n-1", payload: `{"v":1,"on":true}`,
			check: func(e bus.Event) bool {
				return e.Kind == bus.KindDrain && e.Role == "node" && e.ID == "n-1" && e.Drain != nil && e.Drain.On
			}},
		{name: "bad namespace", subject: "cachebus.expire.bad!ns", payload: "k", field: "ns"},
		{name: "bad role", subject: "cachebus.drain.db.n1", payload: `{"v":1,"on":true}`, field: "role"},
		{name: "bad id", subject: "cachebus.drain.node.n!1", payload: `{"v":1,"on":true}`, field: "id"},
		{name: "heartbeat carries no event", subject: "cachebus.hb.node.n1", payload: `{"v":1,"id":"n1","role":"node","state":"up"}`, field: "subject"},
		{name: "other prefix", subject: "other.expire.users", payload: "k", field: "subject"},
		{name: "bad payload", subject: "cachebus.seed.users", payload: `{"v":1}`, field: "key"},
		{name: "wrong v", subject: "cachebus.fallback", payload: `{"v":2,"on":true}`, field: "v"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev, err := bus.DecodeEvent(s, tt.subject, []byte(tt.payload))
			if tt.field != "" {
				wantField(t, err, tt.field)
				return
			}
			if err != nil {
				t.Fatalf("rejected: %v", err)
			}
			if ev.Subject != tt.subject || !tt.check(ev) {
				t.Fatalf("decoded %+v", ev)
			}
		})
	}
}

func TestValidationErrorMessage(t *testing.T) {
	_, err := bus.DecodeFallback([]byte(`{"v":1}`))
	if err == nil || err.Error() != "bus: invalid on: required (true or false)" {
		t.Fatalf("error = %v", err)
	}
	if got := bus.Reason(errors.New("something else")); got != "json" {
		t.Fatalf("Reason of a plain error = %q, want json", got)
	}
}
