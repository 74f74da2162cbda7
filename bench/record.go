package bench

import (
	"bytes"
	"math/bits"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cachebus/cachebus/bus"
)

// A bench message is an ordinary expire whose first key says what it is:
// "m:<seq>:<sent unix ns>" for a measured message, "w:…" for a warm-up one.
// Further keys (throughput batches) are "user:<n>".
const (
	kindMeasured = 'm'
	kindWarmup   = 'w'
)

// payloadHead is how every bench payload starts; the publisher's ack
// handler finds the first key right after it.
const payloadHead = `{"v":1,"keys":["`

// AppendPayload appends the JSON expire of message seq, sent at sent, with
// batch keys in all (at least one), to buf. It is what the publisher sends
// on every path, so that every path decodes the same bytes.
func AppendPayload(buf []byte, kind byte, seq uint64, sent time.Time, batch int) []byte {
	buf = append(buf, payloadHead...)
	buf = AppendKey(buf, kind, seq, sent)
	buf = append(buf, '"')
	base := seq * uint64(batch)
	for i := 1; i < batch; i++ {
		buf = append(buf, `,"user:`...)
		buf = strconv.AppendUint(buf, base+uint64(i), 10)
		buf = append(buf, '"')
	}
	return append(buf, `],"origin":"bench"}`...)
}

// AppendKey appends the first key of message seq, sent at sent, to buf:
// the key ParseKey reads.
func AppendKey(buf []byte, kind byte, seq uint64, sent time.Time) []byte {
	buf = append(buf, kind, ':')
	buf = strconv.AppendUint(buf, seq, 10)
	buf = append(buf, ':')
	return strconv.AppendInt(buf, sent.UnixNano(), 10)
}

// ParseKey reads the first key of a bench message.
func ParseKey(key string) (kind byte, seq uint64, sentNS int64, ok bool) {
	if len(key) < 5 || key[1] != ':' {
		return 0, 0, 0, false
	}
	kind = key[0]
	rest := key[2:]
	i := strings.IndexByte(rest, ':')
	if i < 0 {
		return 0, 0, 0, false
	}
	seq, err := strconv.ParseUint(rest[:i], 10, 64)
	if err != nil {
		return 0, 0, 0, false
	}
	sentNS, err = strconv.ParseInt(rest[i+1:], 10, 64)
	if err != nil {
		return 0, 0, 0, false
	}
	return kind, seq, sentNS, true
}

// payloadKey finds the first key in a payload built by AppendPayload.
func payloadKey(data []byte) string {
	rest, ok := bytes.CutPrefix(data, []byte(payloadHead))
	if !ok {
		return ""
	}
	end := bytes.IndexByte(rest, '"')
	if end < 0 {
		return ""
	}
	return string(rest[:end])
}

// bitset is a growable set of message sequences.
type bitset []uint64

// set adds i and reports whether it was already there.
func (b *bitset) set(i uint64) bool {
	w := int(i / 64)
	if w >= len(*b) {
		*b = append(*b, make([]uint64, w-len(*b)+1+len(*b)/2)...)
	}
	m := uint64(1) << (i % 64)
	was := (*b)[w]&m != 0
	(*b)[w] |= m
	return was
}

// countAnd counts the members of b also in o.
func (b bitset) countAnd(o bitset) uint64 {
	var n uint64
	for i := range min(len(b), len(o)) {
		n += uint64(bits.OnesCount64(b[i] & o[i]))
	}
	return n
}

// recorder is what one subscriber saw on one path: latency, which
// messages arrived (and twice), how many keys, and when the last one did.
type recorder struct {
	mu      sync.Mutex
	hist    Histogram
	phase   Histogram // since the current phase began
	byLog   Histogram // the bus path's events applied from their log copy
	seen    bitset
	dups    uint64
	keys    uint64
	viaCore uint64
	viaLog  uint64
	flushes uint64
	first   time.Time
	last    time.Time
	n       atomic.Uint64 // distinct measured messages, read while running
}

// apply records one delivered expire.
func (r *recorder) apply(keys []string, via string) {
	now := time.Now()
	if len(keys) == 0 {
		return
	}
	kind, seq, sent, ok := ParseKey(keys[0])
	if !ok || kind != kindMeasured {
		return
	}
	r.mu.Lock()
	if r.seen.set(seq) {
		r.dups++
		r.mu.Unlock()
		return
	}
	r.hist.Record(time.Duration(now.UnixNano() - sent))
	r.phase.Record(time.Duration(now.UnixNano() - sent))
	r.keys += uint64(len(keys))
	switch via {
	case bus.ViaCore:
		r.viaCore++
	case bus.ViaLog:
		r.viaLog++
		r.byLog.Record(time.Duration(now.UnixNano() - sent))
	}
	if r.first.IsZero() {
		r.first = now
	}
	r.last = now
	r.mu.Unlock()
	r.n.Add(1)
}

// Apply implements bus.Handler.
func (r *recorder) Apply(ev bus.Event) {
	if ev.Expire != nil {
		r.apply(ev.Expire.Keys, ev.Via)
	}
}

// Flush implements bus.Handler; a bench run must never need one.
func (r *recorder) Flush([]string) {
	r.mu.Lock()
	r.flushes++
	r.mu.Unlock()
}

var _ bus.Handler = (*recorder)(nil)

// published is the set of messages a path published (for the bus path:
// that the event log acknowledged), the reference received sets are
// checked against.
type published struct {
	mu     sync.Mutex
	set    bitset
	n      atomic.Uint64
	failed atomic.Uint64
	maxSeq atomic.Uint64 // highest event-log sequence acknowledged
}

func (p *published) add(seq uint64) {
	p.mu.Lock()
	dup := p.set.set(seq)
	p.mu.Unlock()
	if !dup {
		p.n.Add(1)
	}
}

func (p *published) logSeq(seq uint64) {
	for {
		cur := p.maxSeq.Load()
		if seq <= cur || p.maxSeq.CompareAndSwap(cur, seq) {
			return
		}
	}
}

// takePhase returns what was recorded since the last call and starts over.
func (r *recorder) takePhase(into *Histogram) {
	r.mu.Lock()
	into.Merge(&r.phase)
	r.phase = Histogram{}
	r.mu.Unlock()
}
