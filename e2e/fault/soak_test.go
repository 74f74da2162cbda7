package fault

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/bus/bustest"
	"github.com/cachebus/cachebus/cachenode/memo"
	"github.com/cachebus/cachebus/persistence"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
)

// The soak's namespace, the one the victim memo client follows, and
// another one it does not.
const (
	soakNS  = "soak"
	otherNS = "other"
)

// soakSeed fixes the random malformed messages: the same run every time.
const soakSeed = 20261122

// soakWorkers publish in parallel, each waiting for its acknowledgements,
// as several programs publishing at once would.
const soakWorkers = 4

// Paths a message is published by.
const (
	viaPublisher = "bus.Publisher"              // good expires: the guaranteed path, with a message id
	viaJSID      = "JetStream, with an id"      // raw JetStream publish with a Nats-Msg-Id
	viaJS        = "JetStream, no id"           // raw JetStream publish without one
	viaCore      = "core (nats pub)"            // plain core publish: stored by the log while it keeps up
	viaCoreBig   = "core, over the log's limit" // too big for the log: core delivery only
)

// soakMsg is one message of the soak.
type soakMsg struct {
	subject string
	data    []byte
	via     string
	class   string // the malformation, "" for a good one
	key     int    // the good one's key index
	id      string // Nats-Msg-Id on viaJSID
	counted bool   // a bad one the victim must reject and count (not filtered)
}

// TestSoakMalformed is issue 9's bad-input soak: 100,000 good expires
// among 100,000 random malformed messages on the event subjects, to a memo
// client (a bus subscriber applying to its store): every good one applied,
// every bad one counted, no crash, memory flat.
func TestSoakMalformed(t *testing.T) {
	if testing.Short() {
		t.Skip("soak skipped under -short")
	}
	started := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	tg := bustest.Embedded(t)
	quiet := slog.New(slog.DiscardHandler)
	pubConn := bustest.Connect(t, tg.URL, bus.WithLogger(quiet))
	bustest.EnsureEvents(t, pubConn, persistence.EventLogConfig{})
	pub, err := bus.NewPublisher(pubConn, "soak-writer")
	if err != nil {
		t.Fatal(err)
	}

	// The victim: a memo client on its own connection, whose log lines are
	// counted rather than kept (a hundred thousand warnings would not fit
	// a test log).
	logs := &countingHandler{counts: map[string]int64{}}
	victimConn := bustest.Connect(t, tg.URL, bus.WithLogger(slog.New(logs)))
	var connEvents [3]atomic.Int64 // Disconnected, Reconnected, SlowConsumer
	victimConn.OnEvent(func(ev bus.ConnEvent) {
		if int(ev) >= 0 && int(ev) < len(connEvents) {
			connEvents[ev].Add(1)
		}
	})
	applied := make([]atomic.Uint32, soakGood) // expires applied, by key
	var appliedTotal, appliedOther atomic.Int64
	client, err := memo.New(ctx, victimConn, memo.Options{Namespace: soakNS, ID: "soak-victim", Log: quiet,
		Observe: func(ev bus.Event) {
			if ev.Expire == nil {
				return
			}
			for _, k := range ev.Expire.Keys {
				i, ok := keyIndex(k)
				if !ok {
					appliedOther.Add(1)
					continue
				}
				applied[i].Add(1)
				appliedTotal.Add(1)
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })

	// Every good key is in the client's memory before the soak.
	var fills atomic.Int64
	fill := func(context.Context) ([]byte, error) {
		fills.Add(1)
		return []byte("a value that an expire must remove"), nil
	}
	for i := range soakGood {
		if _, err := client.Do(ctx, soakKey(i), time.Hour, fill); err != nil {
			t.Fatal(err)
		}
	}
	fills.Store(0)
	for i := range soakGood {
		_, _ = client.Do(ctx, soakKey(i), time.Hour, fill)
	}
	if n := fills.Load(); n != 0 {
		t.Fatalf("%d of %d keys not held in memory before the soak", n, soakGood)
	}

	gen := newSoakGen(victimConn.Subjects)
	var sent soakCounts
	total := soakGood + soakBad
	checkpoints := []struct {
		name string
		at   int
	}{{"10%", total / 10}, {"55%", total * 55 / 100}, {"100%", total}}
	heap := map[string]heapUse{}
	pubStart := time.Now()
	for _, cp := range checkpoints {
		if err := publishSoak(ctx, pub, pubConn, gen, cp.at-sent.total(), &sent); err != nil {
			t.Fatal(err)
		}
		if err := pubConn.NC.FlushWithContext(ctx); err != nil {
			t.Fatal(err)
		}
		// Wait until the victim has handled every copy of every message:
		// each good one applied, each bad one rejected, or filtered when
		// it is of another namespace, and the second copy of each stored
		// one dropped as a duplicate.
		stored := bustest.LastSeq(t, pubConn)
		m := victimConn.Metrics
		deadline := time.Now().Add(3 * time.Minute)
		for {
			done := appliedTotal.Load() >= int64(sent.good) &&
				counterSum(t, m.Rejected) >= float64(sent.counted) &&
				counterSum(t, m.Duplicates) >= float64(stored)
			if done {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("at %s: after 3 minutes the victim applied %d of %d good expires, rejected %v of %d bad messages, dropped %v duplicates of %d stored",
					cp.name, appliedTotal.Load(), sent.good, counterSum(t, m.Rejected), sent.counted, counterSum(t, m.Duplicates), stored)
			}
			time.Sleep(20 * time.Millisecond)
		}
		h := measureHeap()
		heap[cp.name] = h
		writeHeapProfile(t, cp.name)
		Figure(t, "live heap at "+cp.name, fmt.Sprintf("%s outside NATS; NATS server %s; total %s", mib(h.ours()), mib(h.nats), mib(h.alloc)),
			fmt.Sprintf("after %s messages, GC run", formatValue(sent.total())))
		t.Logf("heap profile's estimate of the live heap at %s: %s (HeapAlloc %s)", cp.name, mib(h.sampled), mib(h.alloc))
	}
	pubTime := time.Since(pubStart)

	// Counted once, not more: a last look once every copy has long arrived.
	if err := client.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	stored := bustest.LastSeq(t, pubConn)
	m := victimConn.Metrics
	rejected := counterSum(t, m.Rejected)
	duplicates := counterSum(t, m.Duplicates)
	appliedMetric := counterSum(t, m.Applied)

	Figure(t, "good expires sent", sent.good, "through "+viaPublisher)
	Figure(t, "malformed messages sent", sent.bad, sent.describeBad())
	Figure(t, "malformed messages by path", sent.describeVia(), "")
	Figure(t, "malformed to another namespace", sent.bad-sent.counted,
		"filtered by the victim before decoding: it follows "+soakNS+" only, so they are not counted")
	big := sent.byVia[viaCoreBig]
	Figure(t, "events in the log", stored, fmt.Sprintf("malformed ones published by core and stored by the log: %s of %s (and none of the %s too big for it)",
		formatValue(int(stored)-sent.good-sent.viaJS), formatValue(sent.viaCore-big), formatValue(big)))
	Check(t, "good expires applied", appliedTotal.Load(), "= "+formatValue(sent.good), appliedTotal.Load() == int64(sent.good))
	twice, never := 0, 0
	for i := range sent.good {
		switch n := applied[i].Load(); {
		case n == 0:
			never++
		case n > 1:
			twice++
		}
	}
	Check(t, "good keys applied not exactly once", never+twice, "= 0", never+twice == 0)
	Check(t, "events applied by the subscriber", int64(appliedMetric), "= "+formatValue(sent.good),
		appliedMetric == float64(sent.good) && appliedOther.Load() == 0)
	Check(t, "malformed messages counted as rejected", int64(rejected), "= "+formatValue(sent.counted), rejected == float64(sent.counted))
	Figure(t, "rejections by field", reasons(t, m.Rejected), "cachebus_bus_messages_rejected_total{reason}")
	warned := logs.count("rejected message")
	Check(t, "rejections logged", warned, "= rejections counted (one WARN each)", warned == int64(rejected))
	Check(t, "second copies dropped", int64(duplicates), "= events in the log", duplicates == float64(stored))
	gaps := counterSum(t, m.Gaps)
	Check(t, "gaps and flushes", int64(gaps), "= 0", gaps == 0)
	Check(t, "slow-consumer drops and disconnects", connEvents[bus.SlowConsumer].Load()+connEvents[bus.Disconnected].Load(),
		"= 0", connEvents[bus.SlowConsumer].Load()+connEvents[bus.Disconnected].Load() == 0)

	// Every good key is gone from memory, and the client still works.
	fills.Store(0)
	for i := range sent.good {
		if _, err := client.Do(ctx, soakKey(i), time.Hour, fill); err != nil {
			t.Fatal(err)
		}
	}
	Check(t, "good keys still in memory after their expire", sent.good-int(fills.Load()), "= 0", fills.Load() == int64(sent.good))
	last := soakKey(sent.good) // one more, after everything
	if _, err := client.Do(ctx, last, time.Hour, fill); err != nil {
		t.Fatal(err)
	}
	seq, err := pub.Expire(ctx, soakNS, bus.Expire{Keys: []string{last}})
	if err != nil {
		t.Fatal(err)
	}
	alive := false
	if err := client.Sync(ctx); err == nil {
		fills.Store(0)
		_, _ = client.Do(ctx, last, time.Hour, fill)
		alive = fills.Load() == 1
	}
	Check(t, "victim alive after the soak", fmt.Sprintf("expire at seq %d applied: %v", seq, alive), "applied", alive)

	start, end := heap["10%"].ours(), heap["100%"].ours()
	limit := start + start/2 + heapSlack
	perMsg := (float64(end) - float64(start)) / float64(total-checkpoints[0].at)
	Check(t, "live heap outside NATS, 10% to 100%", fmt.Sprintf("%s -> %s (x%.2f, %+.0f bytes a message)",
		mib(start), mib(end), float64(end)/float64(start), perMsg),
		fmt.Sprintf("<= 1.5 x start + %s = %s", mib(heapSlack), mib(limit)), end <= limit)
	Figure(t, "live heap of the NATS server, 10% to 100%", fmt.Sprintf("%s -> %s", mib(heap["10%"].nats), mib(heap["100%"].nats)),
		"not held to a bound: JetStream's 2-minute duplicate window and block buffers")
	Figure(t, "publish and apply time", pubTime, fmt.Sprintf("%s messages, %d publishers, %.0f msg/s",
		formatValue(sent.total()), soakWorkers, float64(sent.total())/pubTime.Seconds()))
	Figure(t, "soak duration", time.Since(started), buildMode())
}

// heapSlack is the growth of the live heap outside the NATS server allowed
// beyond half of its size at 10%. What grows there is the subscriber's
// pairing of the two copies of each event, which remembers every message
// id for up to a minute: about 5 MiB for this soak's 180,000 messages
// after the 10% mark, all within that minute. The bound allows about
// 19 MiB of growth (the store's 18 MiB taken at 10%, halved, plus this),
// so a leak of more than about 110 bytes a message fails it (550 bytes
// under the race detector, which sends a fifth as many).
const heapSlack = 8 << 20

// soakKey is the key of good expire i.
func soakKey(i int) string { return "soak:" + strconv.Itoa(i) }

func keyIndex(k string) (int, bool) {
	s, ok := strings.CutPrefix(k, "soak:")
	if !ok {
		return 0, false
	}
	i, err := strconv.Atoi(s)
	return i, err == nil && i >= 0 && i < soakGood
}

// soakCounts is what was sent.
type soakCounts struct {
	mu                 sync.Mutex
	good, bad, counted int
	viaJS, viaCore     int // malformed ones by JetStream (stored) and by core
	byClass            map[string]int
	byVia              map[string]int
}

func (c *soakCounts) total() int { return c.good + c.bad }

func (c *soakCounts) add(m *soakMsg) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.byClass == nil {
		c.byClass, c.byVia = map[string]int{}, map[string]int{}
	}
	if m.class == "" {
		c.good++
		return
	}
	c.bad++
	c.byClass[m.class]++
	c.byVia[m.via]++
	if m.counted {
		c.counted++
	}
	switch m.via {
	case viaJS, viaJSID:
		c.viaJS++
	default:
		c.viaCore++
	}
}

func (c *soakCounts) describeBad() string { return describe(c.byClass) }
func (c *soakCounts) describeVia() string { return describe(c.byVia) }

func describe(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int { return m[b] - m[a] })
	var parts []string
	for _, k := range keys {
		parts = append(parts, k+" "+formatValue(m[k]))
	}
	return strings.Join(parts, ", ")
}

// publishSoak publishes the next n messages of gen with soakWorkers
// publishers, and counts them in sent once published.
func publishSoak(ctx context.Context, pub *bus.Publisher, conn *bus.Conn, gen *soakGen, n int, sent *soakCounts) error {
	msgs := make(chan *soakMsg, 256)
	var firstErr error
	var errOnce sync.Once
	fail := func(err error) { errOnce.Do(func() { firstErr = err }) }
	var wg sync.WaitGroup
	for range soakWorkers {
		wg.Go(func() {
			for m := range msgs {
				if err := publishOne(ctx, pub, conn, m); err != nil {
					fail(err)
					continue
				}
				sent.add(m)
			}
		})
	}
	for range n {
		m, err := gen.next()
		if err != nil {
			fail(err)
			break
		}
		msgs <- m
	}
	close(msgs)
	wg.Wait()
	return firstErr
}

func publishOne(ctx context.Context, pub *bus.Publisher, conn *bus.Conn, m *soakMsg) error {
	switch m.via {
	case viaPublisher:
		_, err := pub.Expire(ctx, soakNS, bus.Expire{Keys: []string{soakKey(m.key)}})
		return err
	case viaJSID, viaJS:
		msg := nats.NewMsg(m.subject)
		msg.Data = m.data
		if m.id != "" {
			msg.Header.Set(bus.MsgIDHeader, m.id)
		}
		if _, err := conn.JS.PublishMsg(ctx, msg); err != nil {
			return fmt.Errorf("JetStream publish of a %s message (%d bytes) on %s: %w", m.class, len(m.data), m.subject, err)
		}
		return nil
	default:
		return conn.NC.PublishMsg(&nats.Msg{Subject: m.subject, Data: m.data})
	}
}

// soakGen makes the soak's messages from a fixed seed: good expires of
// keys 0, 1, 2… interleaved at random with malformed messages.
type soakGen struct {
	rng          *rand.Rand
	subjects     bus.Subjects
	good, bad, n int // made so far
	big          int // the oversized payloads to send, spread over the run
	classes      []badClass
	weights      int
}

// badClass is a kind of malformation.
type badClass struct {
	name   string
	weight int
	make   func(g *soakGen) (subject string, data []byte)
}

func newSoakGen(s bus.Subjects) *soakGen {
	g := &soakGen{rng: rand.New(rand.NewPCG(soakSeed, soakSeed>>7)), subjects: s, big: max(soakBad/2000, 1)}
	g.classes = []badClass{
		{"random bytes", 14, (*soakGen).randomBytes},
		{"truncated JSON", 14, (*soakGen).truncatedJSON},
		{"wrong type", 12, (*soakGen).wrongType},
		{"oversized key", 8, (*soakGen).oversizedKey},
		{"bad UTF-8", 10, (*soakGen).badUTF8},
		{"unknown version", 10, (*soakGen).unknownVersion},
		{"missing field", 8, (*soakGen).missingField},
		{"bad subject", 8, (*soakGen).badSubject},
		{"bad value", 10, (*soakGen).badValue},
		{"empty or blank", 3, (*soakGen).blank},
		{"not an object", 2, (*soakGen).notObject},
	}
	for _, c := range g.classes {
		g.weights += c.weight
	}
	return g
}

// next makes the next message.
func (g *soakGen) next() (*soakMsg, error) {
	left := soakGood + soakBad - g.n
	if left <= 0 {
		return nil, errors.New("soak: no message left to make")
	}
	g.n++
	if g.rng.IntN(left) < soakGood-g.good {
		m := &soakMsg{subject: g.subjects.Expire(soakNS), via: viaPublisher, key: g.good}
		g.good++
		return m, nil
	}
	g.bad++
	m := &soakMsg{counted: true}
	switch {
	case g.big > 0 && g.rng.IntN(soakBad-g.bad+1) < g.big:
		// Over bus.MaxPayload and under NATS's max_payload: the log
		// refuses to store it, so only core carries it.
		g.big--
		m.class, m.via = "oversized payload", viaCoreBig
		m.subject = g.subjects.Expire(soakNS)
		m.data = []byte(strings.Repeat("k", bus.MaxPayload+1+g.rng.IntN(4096)))
	default:
		c := g.pick()
		m.class = c.name
		m.subject, m.data = c.make(g)
		if g.rng.IntN(100) == 0 {
			// A malformed payload for a namespace the victim does not
			// follow: it never decodes it.
			m.class, m.subject, m.counted = "other namespace", g.subjects.Expire(otherNS), false
			if len(m.data) == 0 || isValid(g.subjects, m.subject, m.data) {
				m.data = []byte{0xff}
			}
		}
		switch r := g.rng.IntN(100); {
		case r < 60:
			m.via, m.id = viaJSID, "soak-bad-"+strconv.Itoa(g.bad)
		case r < 75:
			m.via = viaJS
		default:
			m.via = viaCore
		}
	}
	if isValid(g.subjects, m.subject, m.data) {
		return nil, fmt.Errorf("soak generator bug: a %q message is valid: %s %q", m.class, m.subject, clip(m.data))
	}
	return m, nil
}

func isValid(s bus.Subjects, subject string, data []byte) bool {
	_, err := bus.DecodeEvent(s, subject, data)
	return err == nil
}

func clip(b []byte) []byte {
	if len(b) > 200 {
		return b[:200]
	}
	return b
}

func (g *soakGen) pick() badClass {
	w := g.rng.IntN(g.weights)
	for _, c := range g.classes {
		if w < c.weight {
			return c
		}
		w -= c.weight
	}
	return g.classes[0]
}

// Helpers of the classes.

func (g *soakGen) key() string { return "k" + strconv.Itoa(g.rng.IntN(1_000_000)) }

func (g *soakGen) anyKind() (kind, subject string) {
	switch g.rng.IntN(4) {
	case 0:
		return bus.KindSeed, g.subjects.Seed(soakNS)
	case 1:
		return bus.KindFallback, g.subjects.Fallback()
	case 2:
		return bus.KindDrain, g.subjects.Drain("node", "n1")
	}
	return bus.KindExpire, g.subjects.Expire(soakNS)
}

// validJSON is a valid payload of kind, to be broken.
func (g *soakGen) validJSON(kind string) []byte {
	var v any
	switch kind {
	case bus.KindSeed:
		v = map[string]any{"v": 1, "key": g.key(), "value": "aGVsbG8=", "ttl": "30s", "origin": "soak-bad"}
	case bus.KindFallback:
		v = map[string]any{"v": 1, "on": true, "scope": soakNS, "reason": "soak", "until": "2030-01-02T03:04:05Z"}
	case bus.KindDrain:
		v = map[string]any{"v": 1, "on": true, "deadline": "2030-01-02T03:04:05Z"}
	default:
		v = map[string]any{"v": 1, "keys": []string{g.key(), g.key()}, "prefixes": []string{"p:"}, "ts": "2026-11-22T10:00:00Z"}
	}
	data, _ := json.Marshal(v)
	return data
}

func (g *soakGen) randomBytes() (string, []byte) {
	data := make([]byte, 1+g.rng.IntN(256))
	for i := range data {
		data[i] = byte(g.rng.UintN(256))
	}
	if isValid(g.subjects, g.subjects.Expire(soakNS), data) {
		data[0] = 0xff // valid UTF-8 text would be a list of keys: make it invalid
	}
	return g.subjects.Expire(soakNS), data
}

func (g *soakGen) truncatedJSON() (string, []byte) {
	kind, subject := g.anyKind()
	data := g.validJSON(kind)
	return subject, data[:1+g.rng.IntN(len(data)-1)]
}

func (g *soakGen) wrongType() (string, []byte) {
	k := g.key()
	cases := []struct{ subject, payload string }{
		{g.subjects.Expire(soakNS), `{"v":1,"keys":"` + k + `"}`},
		{g.subjects.Expire(soakNS), `{"v":"1","keys":["` + k + `"]}`},
		{g.subjects.Expire(soakNS), `{"v":1,"keys":[42]}`},
		{g.subjects.Expire(soakNS), `{"v":1,"all":"yes"}`},
		{g.subjects.Expire(soakNS), `{"v":1,"prefixes":{"a":1}}`},
		{g.subjects.Expire(soakNS), `{"v":1,"keys":["` + k + `"],"ts":1700000000}`},
		{g.subjects.Expire(soakNS), `{"v":1.5,"keys":["` + k + `"]}`},
		{g.subjects.Seed(soakNS), `{"v":1,"key":42,"value":"eA=="}`},
		{g.subjects.Seed(soakNS), `{"v":1,"key":"` + k + `","value":[1,2]}`},
		{g.subjects.Seed(soakNS), `{"v":1,"key":"` + k + `","value":"eA==","ttl":30}`},
		{g.subjects.Fallback(), `{"v":1,"on":"yes"}`},
		{g.subjects.Drain("node", "n1"), `{"v":1,"on":1}`},
	}
	c := cases[g.rng.IntN(len(cases))]
	return c.subject, []byte(c.payload)
}

func (g *soakGen) oversizedKey() (string, []byte) {
	long := strings.Repeat("x", bus.MaxKeyLen+1+g.rng.IntN(4*bus.MaxKeyLen))
	switch g.rng.IntN(4) {
	case 0:
		return g.subjects.Expire(soakNS), []byte(g.key() + "\n" + long + "\n")
	case 1:
		return g.subjects.Seed(soakNS), []byte(`{"v":1,"key":"` + long + `","value":"eA=="}`)
	case 2:
		return g.subjects.Expire(soakNS), []byte(`{"v":1,"prefixes":["` + long + `"]}`)
	}
	return g.subjects.Expire(soakNS), []byte(`{"v":1,"keys":["` + g.key() + `","` + long + `"]}`)
}

func (g *soakGen) badUTF8() (string, []byte) {
	bad := []string{"\xff", "\xc3\x28", "\xed\xa0\x80", "\xf8\x88\x80\x80\x80", "\xe2\x82", "\xc0\xaf"}
	return g.subjects.Expire(soakNS), []byte(g.key() + "\n" + g.key() + bad[g.rng.IntN(len(bad))] + "\n")
}

func (g *soakGen) unknownVersion() (string, []byte) {
	kind, subject := g.anyKind()
	var v map[string]any
	_ = json.Unmarshal(g.validJSON(kind), &v)
	v["v"] = []int{0, 2, 3, 99, -1, 1 << 30}[g.rng.IntN(6)]
	data, _ := json.Marshal(v)
	return subject, data
}

func (g *soakGen) missingField() (string, []byte) {
	cases := []struct{ subject, payload string }{
		{g.subjects.Expire(soakNS), `{"v":1}`},
		{g.subjects.Expire(soakNS), `{"keys":["` + g.key() + `"]}`},
		{g.subjects.Seed(soakNS), `{"v":1,"value":"eA=="}`},
		{g.subjects.Seed(soakNS), `{"v":1,"key":"` + g.key() + `"}`},
		{g.subjects.Fallback(), `{"v":1,"scope":"*"}`},
		{g.subjects.Drain("app", "a1"), `{"v":1}`},
	}
	c := cases[g.rng.IntN(len(cases))]
	return c.subject, []byte(c.payload)
}

func (g *soakGen) badSubject() (string, []byte) {
	p := g.subjects.Prefix
	cases := []string{
		p + ".expire.bad!ns",
		p + ".expire." + strings.Repeat("n", 65),
		p + ".expire.caf\u00e9",
		p + ".seed.bad$ns",
		p + ".drain.db.n1",
		p + ".drain.node.n!1",
		p + ".drain.node." + strings.Repeat("i", 65),
	}
	subject := cases[g.rng.IntN(len(cases))]
	kind := bus.KindExpire
	if strings.HasPrefix(subject, p+".drain.") {
		kind = bus.KindDrain
	} else if strings.HasPrefix(subject, p+".seed.") {
		kind = bus.KindSeed
	}
	return subject, g.validJSON(kind)
}

func (g *soakGen) badValue() (string, []byte) {
	cases := []struct{ subject, payload string }{
		{g.subjects.Expire(soakNS), `{"v":1,"keys":[""]}`},
		{g.subjects.Expire(soakNS), `{"v":1,"all":true,"origin":"not an id!"}`},
		{g.subjects.Expire(soakNS), `{"v":1,"all":true,"ts":"yesterday"}`},
		{g.subjects.Seed(soakNS), `{"v":1,"key":"` + g.key() + `","value":"eA==","ttl":"-1s"}`},
		{g.subjects.Seed(soakNS), `{"v":1,"key":"` + g.key() + `","value":"not base64!"}`},
		{g.subjects.Seed(soakNS), `{"v":1,"key":"` + g.key() + `","value":"eA==","ttl":"soon"}`},
		{g.subjects.Fallback(), `{"v":1,"on":true,"scope":"a.b"}`},
		{g.subjects.Fallback(), `{"v":1,"on":true,"reason":"` + strings.Repeat("r", bus.MaxKeyLen+1) + `"}`},
		{g.subjects.Drain("node", "n1"), `{"v":1,"on":true,"deadline":"noon"}`},
	}
	if g.rng.IntN(50) == 0 {
		// More keys than one expire may carry.
		keys := make([]string, bus.MaxItems+1)
		for i := range keys {
			keys[i] = "k" + strconv.Itoa(i)
		}
		return g.subjects.Expire(soakNS), []byte(strings.Join(keys, "\n"))
	}
	c := cases[g.rng.IntN(len(cases))]
	return c.subject, []byte(c.payload)
}

func (g *soakGen) blank() (string, []byte) {
	if g.rng.IntN(2) == 0 {
		return g.subjects.Expire(soakNS), nil
	}
	return g.subjects.Expire(soakNS), []byte(" \r\n\t\n\n")
}

func (g *soakGen) notObject() (string, []byte) {
	// On an expire subject these would be lists of keys: only the other
	// kinds need an object.
	kind, subject := g.anyKind()
	for kind == bus.KindExpire {
		kind, subject = g.anyKind()
	}
	return subject, []byte([]string{"[]", "null", "42", `"on"`, "true"}[g.rng.IntN(5)])
}

// countingHandler is a slog.Handler that counts the records at WARN and
// above by message, and keeps nothing else.
type countingHandler struct {
	mu     sync.Mutex
	counts map[string]int64
}

func (h *countingHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }

func (h *countingHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	h.counts[r.Message]++
	h.mu.Unlock()
	return nil
}

func (h *countingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *countingHandler) WithGroup(string) slog.Handler      { return h }

func (h *countingHandler) count(msg string) int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.counts[msg]
}

// counterSum adds up every series of a counter (vector).
func counterSum(t *testing.T, c prometheus.Collector) float64 {
	t.Helper()
	var sum float64
	for _, s := range gather(t, c) {
		sum += s.value
	}
	return sum
}

type series struct {
	labels map[string]string
	value  float64
}

func gather(t *testing.T, c prometheus.Collector) []series {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(c); err != nil {
		t.Fatal(err)
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []series
	for _, mf := range families {
		for _, m := range mf.GetMetric() {
			s := series{labels: map[string]string{}, value: m.GetCounter().GetValue()}
			for _, lp := range m.GetLabel() {
				s.labels[lp.GetName()] = lp.GetValue()
			}
			out = append(out, s)
		}
	}
	return out
}

// reasons lists a rejection counter by reason, largest first.
func reasons(t *testing.T, c prometheus.Collector) string {
	by := map[string]int{}
	for _, s := range gather(t, c) {
		by[s.labels["reason"]] += int(s.value)
	}
	return describe(by)
}

// The embedded NATS server runs in the test's process, so its memory is
// in the heap beside the victim's. Its share is told apart by the heap
// profile: what was allocated with a nats-server function on the stack.
// The profile samples one allocation every memProfileRate bytes on
// average, finer than Go's default, set before any test runs.
const memProfileRate = 64 << 10

func init() { runtime.MemProfileRate = memProfileRate }

// heapUse is the live heap after a full collection.
type heapUse struct {
	alloc   uint64 // runtime.MemStats.HeapAlloc
	sampled uint64 // the heap profile's estimate of the same
	nats    uint64 // the profile's estimate of the NATS server's share
}

// ours is the live heap outside the NATS server: the test's publishers,
// the victim's subscriber and store.
func (h heapUse) ours() uint64 {
	if h.nats > h.alloc {
		return 0
	}
	return h.alloc - h.nats
}

func measureHeap() heapUse {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	h := heapUse{alloc: ms.HeapAlloc}
	n, _ := runtime.MemProfile(nil, false)
	var recs []runtime.MemProfileRecord
	for {
		recs = make([]runtime.MemProfileRecord, n+64)
		var ok bool
		if n, ok = runtime.MemProfile(recs, false); ok {
			recs = recs[:n]
			break
		}
	}
	rate := float64(runtime.MemProfileRate)
	inNATS := map[uintptr]bool{}
	var all, nats float64
	for i := range recs {
		r := &recs[i]
		b := float64(r.InUseBytes())
		if b <= 0 {
			continue
		}
		if rate > 1 && r.AllocObjects > 0 {
			// Undo the sampling, as pprof does.
			avg := float64(r.AllocBytes) / float64(r.AllocObjects)
			b /= 1 - math.Exp(-avg/rate)
		}
		all += b
		if natsServerStack(r.Stack(), inNATS) {
			nats += b
		}
	}
	h.sampled, h.nats = uint64(all), uint64(nats)
	return h
}

// natsServerStack reports whether a nats-server function is on stack.
func natsServerStack(stack []uintptr, cache map[uintptr]bool) bool {
	for _, pc := range stack {
		in, ok := cache[pc]
		if !ok {
			fn := runtime.FuncForPC(pc - 1)
			in = fn != nil && strings.Contains(fn.Name(), "/nats-io/nats-server/")
			cache[pc] = in
		}
		if in {
			return true
		}
	}
	return false
}

// writeHeapProfile writes a heap profile at a checkpoint when
// CACHEBUS_SOAK_HEAPPROFILE names a file prefix: <prefix>-<checkpoint>.pprof,
// to see what grows (go tool pprof -sample_index=inuse_space).
func writeHeapProfile(t *testing.T, checkpoint string) {
	prefix := os.Getenv("CACHEBUS_SOAK_HEAPPROFILE")
	if prefix == "" {
		return
	}
	name := prefix + "-" + strings.TrimSuffix(checkpoint, "%") + ".pprof"
	f, err := os.Create(name)
	if err == nil {
		err = pprof.WriteHeapProfile(f)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		t.Errorf("heap profile: %v", err)
		return
	}
	t.Logf("heap profile at %s written to %s", checkpoint, name)
}

func mib(b uint64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
