package admin_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/cachebus/cachebus/admin"
	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/bus/bustest"
	"github.com/cachebus/cachebus/persistence"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// fuzzOrigin is the publisher's origin: what the admin API stamps on an
// event that names none.
const fuzzOrigin = "admin-fuzz"

// fuzzRoles are the roles a drain's path may name: the four of the
// protocol, and one it refuses.
var fuzzRoles = []string{"node", "gateway", "app", "client", "db"}

// FuzzAdminBody posts what a caller may send to the admin verbs (POST
// /v1/expire/{ns}, /v1/seed/{ns}, /v1/fallback, /v1/drain/{role}/{id}),
// with the token, from an allowed address, to an admin server on an
// embedded NATS with the event log and state bucket, and holds every
// answer to the receivers' rules:
//
//   - a bad namespace, role or id in the path, a body over bus.MaxPayload
//     or a body the bus decoders refuse is refused with a 4xx, never a 5xx,
//     and nothing is published; a refused body is answered 400 with the
//     decoder's field and reason, {"error":"invalid <field>: <reason>",
//     "field":"<field>"};
//   - an accepted one is answered 200 {"ok":true,"seq":N}, and event N of
//     the log, on the verb's subject, decodes to what the body said, with
//     the admin's origin and a time stamped when it named none; a drain is
//     recorded in the state bucket too.
//
// An empty body is an error for fallback and "on" for a drain, as the
// API documents. verb%4 picks the verb (expire, seed, fallback, drain) and,
// for a drain, verb/4 the role in fuzzRoles; name is the namespace or the
// drain's id. Each fuzzing worker starts its own NATS server.
func FuzzAdminBody(f *testing.F) {
	for _, c := range []struct {
		verb uint8
		name string
		body string
	}{
		{0, "users", `{"v":1,"keys":["user:42"],"prefixes":["cart:4"],"tags":["t1"]}`},
		{0, "users", "user:1\nuser:2\n"},
		{0, "users", `{"v":2,"keys":["user:42"]}`},
		{0, "bad!ns", "user:1"},
		{1, "users", `{"v":1,"key":"user:42","value":"aGk=","ttl":"30s"}`},
		{1, "users", `{"v":1,"key":"user:42","value":"not base64"}`},
		{2, "", `{"v":1,"on":true,"scope":"*","reason":"db failover","until":"2030-01-02T03:04:05Z"}`},
		{2, "", ``},
		{2, "", `{"v":1,"on":"yes"}`},
		{3, "n1", `{"v":1,"on":true,"deadline":"2030-01-02T03:04:05Z"}`},
		{3, "n1", ``},
		{7, "app-1", `{"v":1,"on":false}`},
		{19, "n1", `{"v":1,"on":true}`},
	} {
		f.Add(c.verb, c.name, []byte(c.body))
	}
	fx := newFuzzFixture(f)
	f.Fuzz(func(t *testing.T, verb uint8, name string, body []byte) {
		fx.check(t, verb, name, body)
	})
}

// fuzzFixture is an admin server on an embedded NATS.
type fuzzFixture struct {
	conn   *bus.Conn
	state  *persistence.State
	srv    *admin.Server
	stream jetstream.Stream // the event log
}

func newFuzzFixture(tb testing.TB) *fuzzFixture {
	tg := bustest.Embedded(tb)
	// Logs go nowhere: a fuzzing worker makes thousands of calls.
	quiet := slog.New(slog.DiscardHandler)
	conn := bustest.Connect(tb, tg.URL, bus.WithLogger(quiet))
	bustest.EnsureEvents(tb, conn, persistence.EventLogConfig{})
	state := bustest.OpenState(tb, conn)
	pub, err := bus.NewPublisher(conn, fuzzOrigin)
	if err != nil {
		tb.Fatal(err)
	}
	srv, err := admin.New(admin.Config{Token: testToken, Allow: []string{"127.0.0.1/32"}},
		admin.Options{Conn: conn, Publisher: pub, State: state, Gatherer: prometheus.NewRegistry(), Log: quiet})
	if err != nil {
		tb.Fatal(err)
	}
	stream, err := conn.JS.Stream(patient(tb), conn.Subjects.EventStream())
	if err != nil {
		tb.Fatal(err)
	}
	return &fuzzFixture{conn: conn, state: state, srv: srv, stream: stream}
}

// fuzzAnswer is any JSON answer of a verb.
type fuzzAnswer struct {
	OK    bool    `json:"ok"`
	Seq   *uint64 `json:"seq"`
	Error string  `json:"error"`
	Field string  `json:"field"`
}

func (fx *fuzzFixture) check(t *testing.T, verb uint8, name string, body []byte) {
	subjects := fx.conn.Subjects
	var (
		path, subject string
		pathErr       error
		decode        func() (bus.Event, error) // what the receivers make of body
	)
	switch verb % 4 {
	case 0:
		path, subject, pathErr = "/v1/expire/"+url.PathEscape(name), subjects.Expire(name), bus.CheckNamespace(name)
		decode = func() (bus.Event, error) {
			e, err := bus.DecodeExpire(body)
			return bus.Event{Kind: bus.KindExpire, NS: name, Expire: &e}, err
		}
	case 1:
		path, subject, pathErr = "/v1/seed/"+url.PathEscape(name), subjects.Seed(name), bus.CheckNamespace(name)
		decode = func() (bus.Event, error) {
			s, err := bus.DecodeSeed(body)
			return bus.Event{Kind: bus.KindSeed, NS: name, Seed: &s}, err
		}
	case 2:
		path, subject = "/v1/fallback", subjects.Fallback()
		decode = func() (bus.Event, error) {
			if len(bytes.TrimSpace(body)) == 0 {
				return bus.Event{}, &bus.ValidationError{Field: "payload", Reason: "a Fallback payload is required"}
			}
			fb, err := bus.DecodeFallback(body)
			return bus.Event{Kind: bus.KindFallback, Fallback: &fb}, err
		}
	default:
		role := fuzzRoles[int(verb/4)%len(fuzzRoles)]
		path, subject, pathErr = "/v1/drain/"+role+"/"+url.PathEscape(name), subjects.Drain(role, name), bus.CheckMember(role, name)
		decode = func() (bus.Event, error) {
			d := bus.Drain{On: true}
			if len(bytes.TrimSpace(body)) > 0 {
				var err error
				if d, err = bus.DecodeDrain(body); err != nil {
					return bus.Event{}, err
				}
			}
			return bus.Event{Kind: bus.KindDrain, Role: role, ID: name, Drain: &d}, nil
		}
	}

	before := fx.lastSeq(t)
	r := httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body))
	r.RemoteAddr = "127.0.0.1:40000"
	r.Header.Set("Authorization", "Bearer "+testToken)
	w := httptest.NewRecorder()
	fx.srv.ServeHTTP(w, r)
	code, raw := w.Code, w.Body.Bytes()
	var ans fuzzAnswer
	jsonErr := json.Unmarshal(raw, &ans)

	refused := func(why string) {
		t.Helper()
		if code < 300 || code >= 500 {
			t.Fatalf("POST %s %q (%s): %d %s, want a 3xx or 4xx", path, body, why, code, raw)
		}
		if after := fx.lastSeq(t); after != before {
			t.Fatalf("POST %s %q (%s) was refused with %d, but the log went from %d to %d", path, body, why, code, before, after)
		}
	}
	if pathErr != nil {
		refused("bad path: " + pathErr.Error())
		return
	}
	if jsonErr != nil {
		t.Fatalf("POST %s %q: %d, answer %q is not JSON: %v", path, body, code, raw, jsonErr)
	}
	if len(body) > bus.MaxPayload {
		refused("over the size limit")
		if code != http.StatusRequestEntityTooLarge || ans.Field != "payload" {
			t.Fatalf("POST %s of %d bytes: %d %s, want 413 naming payload", path, len(body), code, raw)
		}
		return
	}
	want, err := decode()
	if err == nil {
		// The publisher stamps origin and time, then encodes: an encoding
		// over the size limit (JSON escapes can grow text six times) is
		// refused there.
		stampOrigin(&want, fuzzOrigin)
		err = encodable(want)
	}
	if err != nil {
		var ve *bus.ValidationError
		if !errors.As(err, &ve) {
			t.Fatalf("decoding %q: %v is not a *bus.ValidationError", body, err)
		}
		refused("the receivers reject it: " + err.Error())
		if code != http.StatusBadRequest || ans.Field != ve.Field || ans.OK || ans.Error == "" {
			t.Fatalf("POST %s %q: %d %s, want 400 naming field %q (%v)", path, body, code, raw, ve.Field, err)
		}
		// The message is the decoder's own, except for an empty fallback,
		// which the API words for humans.
		if verb%4 != 2 || len(bytes.TrimSpace(body)) > 0 {
			if wantMsg := "invalid " + ve.Field + ": " + ve.Reason; ans.Error != wantMsg {
				t.Fatalf("POST %s %q: error %q, want %q", path, body, ans.Error, wantMsg)
			}
		}
		return
	}
	if code != http.StatusOK || !ans.OK || ans.Seq == nil {
		t.Fatalf("POST %s %q: %d %s, want 200 {\"ok\":true,\"seq\":N}: the receivers accept %+v", path, body, code, raw, want)
	}
	seq := *ans.Seq
	if after := fx.lastSeq(t); seq <= before || seq != after {
		t.Fatalf("POST %s %q: answered seq %d, the log went from %d to %d", path, body, seq, before, after)
	}
	stored, err := fx.stream.GetMsg(patient(t), seq)
	if err != nil {
		t.Fatalf("event %d of the log: %v", seq, err)
	}
	if stored.Subject != subject {
		t.Fatalf("POST %s %q: event %d on %q, want %q", path, body, seq, stored.Subject, subject)
	}
	got, err := bus.DecodeEvent(subjects, stored.Subject, stored.Data)
	if err != nil {
		t.Fatalf("POST %s %q: event %d %q is rejected by the receivers: %v", path, body, seq, stored.Data, err)
	}
	if ts := eventTime(got); ts.IsZero() || (eventTime(want).IsZero() && time.Since(ts) > time.Minute) {
		t.Fatalf("POST %s %q: event %d stamped with time %v", path, body, seq, ts)
	}
	if eventTime(want).IsZero() {
		setEventTime(&want, eventTime(got))
	}
	if g, w := encodeEvent(t, got), encodeEvent(t, want); !bytes.Equal(g, w) || got.Kind != want.Kind ||
		got.NS != want.NS || got.Role != want.Role || got.ID != want.ID {
		t.Fatalf("POST %s %q: the log holds %s %s, want %s %s", path, body, got.Subject, g, subject, w)
	}
	if want.Drain != nil {
		cs, err := fx.state.Load(patient(t))
		if err != nil {
			t.Fatal(err)
		}
		if ds, on := cs.Draining(want.Role, want.ID); on != want.Drain.On || !ds.Deadline.Equal(want.Drain.Deadline) {
			t.Fatalf("POST %s %q: state bucket says drain %v %+v, want %v", path, body, on, ds, want.Drain.On)
		}
	}
}

func (fx *fuzzFixture) lastSeq(t *testing.T) uint64 {
	info, err := fx.stream.Info(patient(t))
	if err != nil {
		t.Fatal(err)
	}
	return info.State.LastSeq
}

// stampOrigin sets the origin an event gets when it names none.
func stampOrigin(ev *bus.Event, origin string) {
	if o := originOf(ev); o != nil && *o == "" {
		*o = origin
	}
}

func originOf(ev *bus.Event) *string {
	switch {
	case ev.Expire != nil:
		return &ev.Expire.Origin
	case ev.Seed != nil:
		return &ev.Seed.Origin
	case ev.Fallback != nil:
		return &ev.Fallback.Origin
	case ev.Drain != nil:
		return &ev.Drain.Origin
	}
	return nil
}

func timeOf(ev *bus.Event) *time.Time {
	switch {
	case ev.Expire != nil:
		return &ev.Expire.TS
	case ev.Seed != nil:
		return &ev.Seed.TS
	case ev.Fallback != nil:
		return &ev.Fallback.TS
	case ev.Drain != nil:
		return &ev.Drain.TS
	}
	return nil
}

func eventTime(ev bus.Event) time.Time {
	if p := timeOf(&ev); p != nil {
		return *p
	}
	return time.Time{}
}

func setEventTime(ev *bus.Event, ts time.Time) {
	if p := timeOf(ev); p != nil {
		*p = ts
	}
}

// encodable reports the error Encode gives the event once stamped with a
// time of the longest form, as the publisher stamps it.
func encodable(ev bus.Event) error {
	// A copy of the payload: the event holds it by pointer.
	switch {
	case ev.Expire != nil:
		e := *ev.Expire
		ev.Expire = &e
	case ev.Seed != nil:
		s := *ev.Seed
		ev.Seed = &s
	case ev.Fallback != nil:
		f := *ev.Fallback
		ev.Fallback = &f
	case ev.Drain != nil:
		d := *ev.Drain
		ev.Drain = &d
	}
	if eventTime(ev).IsZero() {
		setEventTime(&ev, time.Date(2026, 11, 22, 10, 0, 0, 123456789, time.UTC))
	}
	_, err := encodeEventErr(ev)
	return err
}

func encodeEventErr(ev bus.Event) ([]byte, error) {
	switch {
	case ev.Expire != nil:
		return ev.Expire.Encode()
	case ev.Seed != nil:
		return ev.Seed.Encode()
	case ev.Fallback != nil:
		return ev.Fallback.Encode()
	case ev.Drain != nil:
		return ev.Drain.Encode()
	}
	return nil, errors.New("no payload")
}

func encodeEvent(t *testing.T, ev bus.Event) []byte {
	t.Helper()
	data, err := encodeEventErr(ev)
	if err != nil {
		t.Fatalf("encoding %+v: %v", ev, err)
	}
	return data
}

// patient is the context of the fixture's own reads of the log and the
// state bucket: longer than JetStream's default 5 s, since CI fuzzes while
// other packages' tests load the machine, and a slow answer there is not
// what the target checks.
func patient(tb testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	tb.Cleanup(cancel)
	return ctx
}
