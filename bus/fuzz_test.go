package bus_test

import (
	"errors"
	"reflect"
	"testing"

	"github.com/cachebus/cachebus/bus"
)

// The fuzz targets hold every decoder to three properties: it never
// panics; what it rejects, it rejects with a *bus.ValidationError naming a
// field; what it accepts is valid, re-encodes, and decodes again to an
// equal value. Their corpus lives in testdata/fuzz/<Fuzz name>/ and runs
// with every `go test`; `go test -run=^$ -fuzz=FuzzDecodeExpire ./bus/`
// searches further.

// checkRejected fails unless err is a *bus.ValidationError with a field
// and a reason.
func checkRejected(t *testing.T, err error) {
	t.Helper()
	var ve *bus.ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("rejection %v (%T) is not a *bus.ValidationError", err, err)
	}
	if ve.Field == "" || ve.Reason == "" {
		t.Fatalf("rejection %+v lacks a field or a reason", ve)
	}
}

// encodeAgain encodes a value its decoder accepted. It reports false when
// the encoding would exceed bus.MaxPayload (JSON escaping may inflate text
// up to six times), the one rejection Encode may make of a decoded value.
func encodeAgain(t *testing.T, encode func() ([]byte, error)) ([]byte, bool) {
	t.Helper()
	data, err := encode()
	if err == nil {
		return data, true
	}
	var ve *bus.ValidationError
	if errors.As(err, &ve) && ve.Field == "payload" {
		return nil, false
	}
	t.Fatalf("a decoded value does not encode: %v", err)
	return nil, false
}

func FuzzDecodeExpire(f *testing.F) {
	for _, s := range []string{
		`{"v":1,"keys":["a","b"],"prefixes":["p:"],"tags":["t"],"all":true,"origin":"n1","ts":"2025-03-14T15:09:26.5Z"}`,
		`{"v":1,"all":true}`,
		`{"v":1,"keys":[""]}`,
		`{"v":2,"keys":["a"]}`,
		`{"keys":["a"]}`,
		`{"v":"1","keys":["a"]}`,
		`{"v":1,"keys":"a"}`,
		`{"v":1,"all":true,"ts":"2025-01-01T00:00:00+23:59"}`,
		" \n{\"v\":1,\"tags\":[\"\\u00e9\"]}",
		"user:42",
		"user:42\r\nuser:43\n\n",
		"  \t\n",
		"",
		"\xff\xfe",
		`{`,
		`null`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := bus.DecodeExpire(data)
		if err != nil {
			checkRejected(t, err)
			return
		}
		if err := e.Validate(); err != nil {
			t.Fatalf("decoded %+v fails Validate: %v", e, err)
		}
		enc, ok := encodeAgain(t, e.Encode)
		if !ok {
			return
		}
		back, err := bus.DecodeExpire(enc)
		if err != nil {
			t.Fatalf("re-encoded %q rejected: %v", enc, err)
		}
		if !reflect.DeepEqual(normExpire(back), normExpire(e)) {
			t.Fatalf("round trip changed %+v into %+v", e, back)
		}
	})
}

func FuzzDecodeSeed(f *testing.F) {
	for _, s := range []string{
		`{"v":1,"key":"user:1","value":"AAEC/w==","ttl":"30s","origin":"app-1","ts":"2025-03-14T15:09:26Z"}`,
		`{"v":1,"key":"k","value":""}`,
		`{"v":1,"key":"k","value":"eA"}`,
		`{"v":1,"key":"k","value":[1,2]}`,
		`{"v":1,"key":"k","value":"eA==","ttl":"-1s"}`,
		`{"v":1,"key":"k","value":"eA==","ttl":"1h2m3.5s"}`,
		`{"v":1,"key":"k","value":"eA==","ttl":30}`,
		`{"v":1,"value":"eA=="}`,
		`{"v":1,"key":"k"}`,
		`{"key":"k","value":""}`,
		`k`,
		``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := bus.DecodeSeed(data)
		if err != nil {
			checkRejected(t, err)
			return
		}
		if err := s.Validate(); err != nil {
			t.Fatalf("decoded %+v fails Validate: %v", s, err)
		}
		enc, ok := encodeAgain(t, s.Encode)
		if !ok {
			return
		}
		back, err := bus.DecodeSeed(enc)
		if err != nil {
			t.Fatalf("re-encoded %q rejected: %v", enc, err)
		}
		if !reflect.DeepEqual(normSeed(back), normSeed(s)) {
			t.Fatalf("round trip changed %+v into %+v", s, back)
		}
	})
}

func FuzzDecodeFallback(f *testing.F) {
	for _, s := range []string{
		`{"v":1,"on":true}`,
		`{"v":1,"on":false,"scope":"users","reason":"db down","until":"2030-01-02T03:04:05Z","origin":"ops","ts":"2025-03-14T15:09:26Z"}`,
		`{"v":1,"on":true,"scope":"*"}`,
		`{"v":1,"on":true,"scope":"a.b"}`,
		`{"v":1,"on":"true"}`,
		`{"v":1,"scope":"*"}`,
		`{"v":1,"on":true,"until":"2030-01-02"}`,
		`{"v":3,"on":true}`,
		`[]`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fb, err := bus.DecodeFallback(data)
		if err != nil {
			checkRejected(t, err)
			return
		}
		if fb.Scope == "" {
			t.Fatalf("decoded %+v without a scope", fb)
		}
		if err := fb.Validate(); err != nil {
			t.Fatalf("decoded %+v fails Validate: %v", fb, err)
		}
		enc, ok := encodeAgain(t, fb.Encode)
		if !ok {
			return
		}
		back, err := bus.DecodeFallback(enc)
		if err != nil {
			t.Fatalf("re-encoded %q rejected: %v", enc, err)
		}
		if !reflect.DeepEqual(normFallback(back), normFallback(fb)) {
			t.Fatalf("round trip changed %+v into %+v", fb, back)
		}
	})
}

func FuzzDecodeDrain(f *testing.F) {
	for _, s := range []string{
		`{"v":1,"on":true}`,
		`{"v":1,"on":false,"deadline":"2030-06-01T14:00:00+02:00","origin":"cli","ts":"2025-03-14T15:09:26.123456789Z"}`,
		`{"v":1,"on":true,"deadline":"noon"}`,
		`{"v":1}`,
		`{"v":1,"on":1}`,
		`on`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := bus.DecodeDrain(data)
		if err != nil {
			checkRejected(t, err)
			return
		}
		if err := d.Validate(); err != nil {
			t.Fatalf("decoded %+v fails Validate: %v", d, err)
		}
		enc, ok := encodeAgain(t, d.Encode)
		if !ok {
			return
		}
		back, err := bus.DecodeDrain(enc)
		if err != nil {
			t.Fatalf("re-encoded %q rejected: %v", enc, err)
		}
		if !reflect.DeepEqual(normDrain(back), normDrain(d)) {
			t.Fatalf("round trip changed %+v into %+v", d, back)
		}
	})
}

func FuzzDecodeHeartbeat(f *testing.F) {
	for _, s := range []string{
		`{"v":1,"id":"node-1","role":"node","addr":"http://10.0.0.1:8080","dc":"dc1","state":"draining","started":"2025-01-01T00:00:00Z","sessions":12,"load":0.75,"version":"1.2.3"}`,
		`{"v":1,"id":"a","role":"app","state":"up"}`,
		`{"v":1,"id":"g","role":"gateway","state":"gone","load":-0,"sessions":0}`,
		`{"v":1,"id":"a","role":"server","state":"up"}`,
		`{"v":1,"id":"a","role":"node","state":"dying"}`,
		`{"v":1,"id":"a","role":"node","state":"up","sessions":-1}`,
		`{"v":1,"id":"a","role":"node","state":"up","load":1e400}`,
		`{"v":1,"id":"a b","role":"node","state":"up"}`,
		`{"v":1,"role":"node","state":"up"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := bus.DecodeHeartbeat(data)
		if err != nil {
			checkRejected(t, err)
			return
		}
		if err := h.Validate(); err != nil {
			t.Fatalf("decoded %+v fails Validate: %v", h, err)
		}
		enc, ok := encodeAgain(t, h.Encode)
		if !ok {
			return
		}
		back, err := bus.DecodeHeartbeat(enc)
		if err != nil {
			t.Fatalf("re-encoded %q rejected: %v", enc, err)
		}
		if !reflect.DeepEqual(normHeartbeat(back), normHeartbeat(h)) {
			t.Fatalf("round trip changed %+v into %+v", h, back)
		}
	})
}

func FuzzDecodeEvent(f *testing.F) {
	for _, c := range []struct{ subject, payload string }{
		{"cachebus.expire.users", "user:1\nuser:2"},
		{"cachebus.expire.users", `{"v":1,"prefixes":["p"]}`},
		{"cachebus.expire.bad!ns", "k"},
		{"cachebus.seed.users", `{"v":1,"key":"k","value":"eA==","ttl":"1m"}`},
		{"cachebus.fallback", `{"v":1,"on":true,"scope":"users"}`},
		{"cachebus.drain.node.n1", `{"v":1,"on":true}`},
		{"cachebus.drain.db.n1", `{"v":1,"on":true}`},
		{"cachebus.hb.node.n1", `{"v":1,"id":"n1","role":"node","state":"up"}`},
		{"cachebus.rec.get", `{}`},
		{"other.expire.users", "k"},
	} {
		f.Add(c.subject, []byte(c.payload))
	}
	subjects, err := bus.NewSubjects("")
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, subject string, data []byte) {
		ev, err := bus.DecodeEvent(subjects, subject, data)
		if err != nil {
			checkRejected(t, err)
			return
		}
		tg, err := subjects.Parse(subject)
		if err != nil {
			t.Fatalf("event decoded from %q, a subject Parse rejects: %v", subject, err)
		}
		if ev.Kind != tg.Kind || ev.NS != tg.NS || ev.Role != tg.Role || ev.ID != tg.ID || ev.Subject != subject {
			t.Fatalf("event %+v does not match its subject %+v", ev, tg)
		}
		var enc []byte
		ok := true
		switch {
		case ev.Kind == bus.KindExpire && ev.Expire != nil:
			enc, ok = encodeAgain(t, ev.Expire.Encode)
		case ev.Kind == bus.KindSeed && ev.Seed != nil:
			enc, ok = encodeAgain(t, ev.Seed.Encode)
		case ev.Kind == bus.KindFallback && ev.Fallback != nil:
			enc, ok = encodeAgain(t, ev.Fallback.Encode)
		case ev.Kind == bus.KindDrain && ev.Drain != nil:
			enc, ok = encodeAgain(t, ev.Drain.Encode)
		default:
			t.Fatalf("event of kind %q carries no matching payload: %+v", ev.Kind, ev)
		}
		if !ok {
			return
		}
		back, err := bus.DecodeEvent(subjects, subject, enc)
		if err != nil {
			t.Fatalf("re-encoded %q rejected: %v", enc, err)
		}
		if !reflect.DeepEqual(normEvent(back), normEvent(ev)) {
			t.Fatalf("round trip changed %+v into %+v", ev, back)
		}
	})
}

func normEvent(ev bus.Event) bus.Event {
	if ev.Expire != nil {
		e := normExpire(*ev.Expire)
		ev.Expire = &e
	}
	if ev.Seed != nil {
		s := normSeed(*ev.Seed)
		ev.Seed = &s
	}
	if ev.Fallback != nil {
		f := normFallback(*ev.Fallback)
		ev.Fallback = &f
	}
	if ev.Drain != nil {
		d := normDrain(*ev.Drain)
		ev.Drain = &d
	}
	return ev
}

func FuzzSubjectsParse(f *testing.F) {
	for _, c := range []struct{ prefix, subject string }{
		{"", "cachebus.expire.users"},
		{"", "cachebus.seed.users"},
		{"", "cachebus.fallback"},
		{"", "cachebus.drain.node.n1"},
		{"", "cachebus.hb.gateway.gw-1"},
		{"", "cachebus.expire.bad!ns"},
		{"", "cachebus.drain.db.n1"},
		{"", "cachebus.expire.a.b"},
		{"", "cachebus..expire"},
		{"acme.cb", "acme.cb.expire.users"},
		{"acme.cb", "acme.cb.hb.app.a"},
		{"a.b.c.d.e.f.g.h", "a.b.c.d.e.f.g.h.fallback"},
		{"bad prefix", "bad prefix.fallback"},
		{"cachebus", "cachebus"},
	} {
		f.Add(c.prefix, c.subject)
	}
	f.Fuzz(func(t *testing.T, prefix, subject string) {
		s, err := bus.NewSubjects(prefix)
		if err != nil {
			return
		}
		tg, err := s.Parse(subject)
		if err != nil {
			checkRejected(t, err)
			return
		}
		var built string
		switch tg.Kind {
		case bus.KindExpire:
			built = s.Expire(tg.NS)
		case bus.KindSeed:
			built = s.Seed(tg.NS)
		case bus.KindFallback:
			built = s.Fallback()
		case bus.KindDrain:
			built = s.Drain(tg.Role, tg.ID)
		case bus.KindHeartbeat:
			built = s.Heartbeat(tg.Role, tg.ID)
		default:
			t.Fatalf("parsed %q into unknown kind %+v", subject, tg)
		}
		if built != subject {
			t.Fatalf("parsed %q into %+v, which builds %q", subject, tg, built)
		}
		switch tg.Kind {
		case bus.KindExpire, bus.KindSeed:
			if !bus.ValidName(tg.NS) || tg.Role != "" || tg.ID != "" {
				t.Fatalf("parsed %q into %+v", subject, tg)
			}
		case bus.KindDrain, bus.KindHeartbeat:
			if !bus.ValidRole(tg.Role) || !bus.ValidName(tg.ID) || tg.NS != "" {
				t.Fatalf("parsed %q into %+v", subject, tg)
			}
		}
	})
}
