package bus

import (
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
)

// logCopy is the event log's republished copy of an event, as the server
// sends it: the original headers plus the stored subject and sequence.
func logCopy(s *Subscriber, subject string, data []byte, h nats.Header, seq uint64) *nats.Msg {
	lh := nats.Header{MsgIDHeader: h[MsgIDHeader]}
	lh.Set(jetstream.SubjectHeader, subject)
	lh.Set(jetstream.SequenceHeader, strconv.FormatUint(seq, 10))
	return &nats.Msg{Subject: s.logPre + subject, Data: data, Header: lh}
}

// benchSubscriber is a Subscriber with no connection behind it, for
// measuring what it does per message: pairing, decoding, dispatch.
func benchSubscriber(b *testing.B, h Handler) *Subscriber {
	b.Helper()
	subjects, err := NewSubjects(DefaultPrefix)
	if err != nil {
		b.Fatal(err)
	}
	c := &Conn{Subjects: subjects, Log: slog.New(slog.DiscardHandler), Metrics: NewMetrics(nil)}
	return &Subscriber{c: c, h: h, opts: SubscriberOptions{Name: "bench", PairWindow: time.Minute},
		stream: subjects.EventStream(), logPre: subjects.LogPrefix(), done: make(chan struct{}),
		pairs: newPairing(time.Minute)}
}

func expirePayload(keys int) []byte {
	e := Expire{Origin: "bench", TS: time.Now().UTC()}
	for i := range keys {
		e.Keys = append(e.Keys, "user:"+strconv.Itoa(1_000_000+i))
	}
	data, err := e.Encode()
	if err != nil {
		panic(err)
	}
	return data
}

// BenchmarkSubscriberCorePath measures the subscriber's own cost per event
// on the live path: the core copy applied (paired, decoded, handed to the
// handler) and its log copy paired and dropped. One op is one event, both
// copies; the network and the NATS client are not in it.
func BenchmarkSubscriberCorePath(b *testing.B) {
	for _, keys := range []int{1, 100} {
		b.Run(fmt.Sprintf("keys=%d", keys), func(b *testing.B) {
			applied := 0
			s := benchSubscriber(b, HandlerFuncs{ApplyFunc: func(Event) { applied++ }})
			subject := s.c.Subjects.Expire("users")
			data := expirePayload(keys)
			b.ReportAllocs()
			b.SetBytes(int64(len(data)))
			seq := uint64(0)
			for b.Loop() {
				seq++
				h := nats.Header{MsgIDHeader: []string{nuid.Next()}}
				s.onCore(&nats.Msg{Subject: subject, Data: data, Header: h})
				s.onLog(logCopy(s, subject, data, h, seq))
			}
			if applied != int(seq) {
				b.Fatalf("applied %d of %d", applied, seq)
			}
		})
	}
}

// BenchmarkSubscriberLogFirst is the other order: the log copy arrives
// first and is applied, the core copy is dropped.
func BenchmarkSubscriberLogFirst(b *testing.B) {
	applied := 0
	s := benchSubscriber(b, HandlerFuncs{ApplyFunc: func(Event) { applied++ }})
	subject := s.c.Subjects.Expire("users")
	data := expirePayload(1)
	b.ReportAllocs()
	seq := uint64(0)
	for b.Loop() {
		seq++
		h := nats.Header{MsgIDHeader: []string{nuid.Next()}}
		s.onLog(logCopy(s, subject, data, h, seq))
		s.onCore(&nats.Msg{Subject: subject, Data: data, Header: h})
	}
	if applied != int(seq) {
		b.Fatalf("applied %d of %d", applied, seq)
	}
}

// BenchmarkDecodeExpire measures decoding an expire payload, JSON and the
// plain-text key list, by number of keys.
func BenchmarkDecodeExpire(b *testing.B) {
	for _, keys := range []int{1, 100} {
		js := expirePayload(keys)
		var text strings.Builder
		for i := range keys {
			fmt.Fprintf(&text, "user:%d\n", 1_000_000+i)
		}
		for _, c := range []struct {
			name string
			data []byte
		}{{"json", js}, {"text", []byte(text.String())}} {
			b.Run(fmt.Sprintf("%s/keys=%d", c.name, keys), func(b *testing.B) {
				b.ReportAllocs()
				b.SetBytes(int64(len(c.data)))
				for b.Loop() {
					if _, err := DecodeExpire(c.data); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
