package persistence_test

import (
	"bytes"
	"errors"
	"slices"
	"testing"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/persistence"
	"github.com/nats-io/nats.go"
)

// FuzzDecodeRecord feeds the record decoder any subject, Cachebus-Record
// header and data, as a foreign publisher or a corruption may leave them
// on the stream: it returns a record or one of its errors, never panics,
// and a record it returns encodes back to a message that decodes to the
// same record. The seed corpus is in testdata/fuzz/FuzzDecodeRecord.
func FuzzDecodeRecord(f *testing.F) {
	s := bus.Subjects{Prefix: bus.DefaultPrefix}
	// Sealing with key 2 and opening with 2 or 1, the previous key.
	codec, err := persistence.NewRecordCodec(s, testKey(2), testKey(1))
	if err != nil {
		f.Fatal(err)
	}
	sealed, err := codec.Encode(persistence.Record{NS: "sessions", Partition: 450, Key: "user:42", Value: []byte("hello")})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(sealed.Subject, sealed.Header.Get(persistence.RecordHeader), sealed.Data)
	f.Add("cachebus.rec.log.sessions.0450.dXNlcjo0Mg", "1 put exp=1795322156159 ver=1795322096159769415", []byte("hello"))
	f.Add("cachebus.rec.log.sessions.0450.dXNlcjo0Mg", "1 del exp=1795322156159", []byte(nil))
	f.Add("cachebus.rec.log.s.0140.YQ", "", []byte("foreign"))
	f.Add("cachebus.rec.log.s.0000.YQ", "1 put", []byte("wrong partition"))
	f.Add("cachebus.rec.log.s.0140.YQ", "1 put kid=0123456789abcdef", []byte("unknown key"))

	f.Fuzz(func(t *testing.T, subject, hv string, data []byte) {
		var h nats.Header
		if hv != "" {
			h = nats.Header{persistence.RecordHeader: {hv}}
		}
		r, err := codec.Decode(subject, h, slices.Clone(data))
		if err != nil {
			if !errors.Is(err, persistence.ErrBadRecord) && !errors.Is(err, persistence.ErrRecordKeyUnknown) &&
				!errors.Is(err, persistence.ErrRecordSeal) {
				t.Fatalf("error %v wraps none of the record errors", err)
			}
			return
		}
		m, err := codec.Encode(r)
		if err != nil {
			t.Fatalf("decoded %+v does not encode: %v", r, err)
		}
		if m.Subject != subject {
			t.Fatalf("subject %q encodes back as %q", subject, m.Subject)
		}
		back, err := codec.Decode(m.Subject, m.Header, m.Data)
		if err != nil {
			t.Fatalf("re-encoded %+v does not decode: %v", r, err)
		}
		if back.NS != r.NS || back.Key != r.Key || back.Partition != r.Partition || back.Deleted != r.Deleted ||
			back.Version != r.Version || !back.Expires.Equal(r.Expires) || !bytes.Equal(back.Value, r.Value) {
			t.Fatalf("round trip changed %+v into %+v", r, back)
		}
	})
}
