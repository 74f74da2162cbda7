package bus_test

import (
	"bytes"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/cachebus/cachebus/bus"
)

// FuzzDecodeExpireText holds the plain-text form of an expire (a payload
// whose first non-space byte is not '{': one exact key per line, what
// `nats pub cachebus.expire.users user:42` sends) to what PROTOCOL.md
// says of it, beyond FuzzDecodeExpire's round trip through JSON:
//
//   - it is accepted exactly when it is valid UTF-8, within the size limit,
//     and has from 1 to bus.MaxItems non-blank lines of at most
//     bus.MaxKeyLen bytes each once trimmed; otherwise the rejection is a
//     *bus.ValidationError naming payload or keys;
//   - what it accepts is the list of its non-blank lines, trimmed, in order,
//     and nothing else (no prefixes, tags, all, origin or time);
//   - those keys written back one per line decode to the same keys (unless
//     the first starts with '{', which the protocol says only JSON can
//     carry), and so does their JSON encoding.
//
// Lines are trimmed of the spaces, tabs and \r PROTOCOL.md names, and of
// nothing else: a no-break space is part of a key.
func FuzzDecodeExpireText(f *testing.F) {
	for _, s := range []string{
		"user:42",
		"user:1\nuser:2\n",
		"  user:1 \r\n\tuser:2\t\n\n",
		"\n\n\n",
		"a\n{not json\nb",
		"\xff",
		"\u00a0user:1\u00a0",
		"\v{user:1",
		"k\x00ey",
		"caf\u00e9\n\u65e5\u672c",
		strings.Repeat("k", bus.MaxKeyLen),
		strings.Repeat("k", bus.MaxKeyLen+1),
		"\u00a0user:1\u00a0",
		"\v\f{x",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if t := bytes.TrimLeft(data, " \t\r\n"); len(t) > 0 && t[0] == '{' {
			return // the JSON form: FuzzDecodeExpire
		}
		e, err := bus.DecodeExpire(data)
		want, wantErr := textKeys(data)
		if err != nil {
			checkRejected(t, err)
			if wantErr == "" {
				t.Fatalf("%q rejected (%v), but it is a valid list of %d keys", data, err, len(want))
			}
			if f := bus.Reason(err); f != "payload" && f != "keys" && !strings.HasPrefix(f, "keys[") {
				t.Fatalf("%q rejected naming field %q, want payload or keys", data, f)
			}
			return
		}
		if wantErr != "" {
			t.Fatalf("%q accepted as %+v, but %s", data, e, wantErr)
		}
		if !slices.Equal(e.Keys, want) {
			t.Fatalf("%q decoded to keys %q, want %q", data, e.Keys, want)
		}
		if e.Prefixes != nil || e.Tags != nil || e.All || e.Origin != "" || !e.TS.IsZero() {
			t.Fatalf("%q decoded to more than keys: %+v", data, e)
		}
		for i, k := range e.Keys {
			if strings.ContainsRune(k, '\n') || strings.Trim(k, " \t\r") != k || !utf8.ValidString(k) {
				t.Fatalf("%q: key %d %q holds a newline, surrounding space or bad UTF-8", data, i, k)
			}
		}
		// Written back one key per line, the text says the same.
		if !strings.HasPrefix(e.Keys[0], "{") {
			again := []byte(strings.Join(e.Keys, "\n"))
			back, err := bus.DecodeExpire(again)
			if err != nil || !slices.Equal(back.Keys, e.Keys) {
				t.Fatalf("%q: keys %q written back as %q decode to %+v, %v", data, e.Keys, again, back, err)
			}
		}
		// And so does its JSON form, when it fits the size limit.
		enc, ok := encodeAgain(t, e.Encode)
		if !ok {
			return
		}
		back, err := bus.DecodeExpire(enc)
		if err != nil || !slices.Equal(back.Keys, e.Keys) {
			t.Fatalf("%q: JSON %q decodes to %+v, %v", data, enc, back, err)
		}
	})
}

// textKeys is the model of a text expire, written from PROTOCOL.md: the
// keys it carries, or why it is to be rejected.
func textKeys(data []byte) ([]string, string) {
	switch {
	case len(data) == 0:
		return nil, "it is empty"
	case len(data) > bus.MaxPayload:
		return nil, "it is over the size limit"
	case !utf8.Valid(data):
		return nil, "it is not valid UTF-8"
	}
	var keys []string
	for _, line := range strings.Split(string(data), "\n") {
		k := strings.Trim(line, " \t\r")
		if k == "" {
			continue
		}
		if len(k) > bus.MaxKeyLen {
			return nil, "a key is too long"
		}
		keys = append(keys, k)
	}
	switch {
	case len(keys) == 0:
		return nil, "it has no key"
	case len(keys) > bus.MaxItems:
		return nil, "it has too many keys"
	}
	return keys, ""
}
