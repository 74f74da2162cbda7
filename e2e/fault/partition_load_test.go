//go:build linux

package fault

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cachebus/cachebus/cachenode"
	"github.com/cachebus/cachebus/e2e/harness"
)

// Results of the operations of splitLoad.
const (
	resOK      = "ok"                 // a write acknowledged; a read of the last acknowledged value or a later one
	resRefused = "refused"            // a write answered with an error: not acknowledged
	resFailed  = "failed"             // no answer (a timeout, a transport error); for a write, in doubt
	resStale   = "stale"              // a read of a value older than the last one acknowledged when it began
	resLost    = "lost"               // a read that found nothing of a key acknowledged before it began
	resUndone  = "refused value read" // a read of the value of a refused write
	resForeign = "foreign"            // a read of a value the test never wrote
)

// splitOp is one operation of splitLoad, as it went.
type splitOp struct {
	minority bool // through the cut-off node's HTTP API, else the majority's client
	write    bool // a put, else a get
	own      bool // the key's partition was served by the cut-off node before the cut
	key      string
	begun    time.Time
	ended    time.Time
	result   string // one of the res… constants
	detail   string // the error, or what was read
}

// splitKey is what the test wrote to one key. Values are "<key>@<seq>",
// seq counting the key's writes from 1, so that a read tells which write
// it returns; each key is written by one goroutine at a time.
type splitKey struct {
	name    string
	own     bool         // its partition was served by the cut-off node before the cut
	seq     int          // of the last write tried
	acked   int          // of the last write acknowledged; 0 for none
	ackedAt time.Time    // when
	refused map[int]bool // writes the cut-off node refused for certain: by its contract, never stored
	doubt   map[int]bool // writes left without an answer, or refused after a timeout: stored or not
}

// value is the value of the key's write seq.
func (k *splitKey) value(seq int) string { return k.name + "@" + strconv.Itoa(seq) }

// judge says what a read of k that found value (found false: nothing)
// returns, want being the last write acknowledged when it began. With
// final set no write is under way any more: a value later than want must
// be one left in doubt.
func (k *splitKey) judge(want int, value string, found, final bool) string {
	if !found {
		if want > 0 {
			return resLost
		}
		return resOK
	}
	s, ok := strings.CutPrefix(value, k.name+"@")
	seq, err := strconv.Atoi(s)
	switch {
	case !ok || err != nil || seq < 1 || seq > k.seq:
		return resForeign
	case seq < want:
		return resStale
	case seq == want:
		return resOK
	case k.refused[seq]:
		return resUndone
	case final && !k.doubt[seq]:
		return resForeign
	}
	return resOK // a later write, acknowledged since or under way
}

// splitLoad is the load of TestNetworkPartition: writers and readers
// through the majority's client and through the HTTP API of the node on
// the host that is cut off.
type splitLoad struct {
	cl       *cachenode.Client
	minority *harness.CacheNode
	own      func(key string) bool // served by the cut-off node before the cut

	stopWrites chan struct{} // closed: writers finish the write under way and stop
	abort      chan struct{} // closed: writers give up the write under way
	stopReads  chan struct{} // closed: readers stop
	cut, heal  chan struct{} // closed when the host is cut off and when it is back
	writers    sync.WaitGroup
	readers    sync.WaitGroup
	stopOnce   sync.Once

	mu       sync.Mutex
	cutAt    time.Time
	healAt   time.Time
	keys     map[string]*splitKey
	ackedSet []*splitKey // keys with an acknowledged write, for the readers
	ops      []splitOp
}

// startSplitLoad starts splitWriters majority writers of the keys
// s0000…, each its share, and after the heal of new keys a0000…; one
// writer through the cut-off node of the keys of minorityKeys, a new
// value each attempt; splitReaders majority readers of every
// acknowledged key; and, during the cut, one reader through the cut-off
// node.
func startSplitLoad(cl *cachenode.Client, minority *harness.CacheNode, own func(string) bool, minorityKeys []string) *splitLoad {
	l := &splitLoad{cl: cl, minority: minority, own: own,
		stopWrites: make(chan struct{}), abort: make(chan struct{}), stopReads: make(chan struct{}),
		cut: make(chan struct{}), heal: make(chan struct{}), keys: map[string]*splitKey{}}
	shared := make([][]*splitKey, splitWriters)
	for i := range splitSharedKeys {
		k := l.key(fmt.Sprintf("s%04d", i))
		shared[i%splitWriters] = append(shared[i%splitWriters], k)
	}
	var mk []*splitKey
	for _, name := range minorityKeys {
		mk = append(mk, l.key(name))
	}
	for w := range splitWriters {
		l.writers.Add(1)
		go l.majorityWriter(w, shared[w])
	}
	l.writers.Add(1)
	go l.minorityWriter(mk)
	for r := range splitReaders {
		l.readers.Add(1)
		go l.majorityReader(uint64(r))
	}
	l.readers.Add(1)
	go l.minorityReader()
	return l
}

// key returns the state of key name, new if need be.
func (l *splitLoad) key(name string) *splitKey {
	l.mu.Lock()
	defer l.mu.Unlock()
	k := l.keys[name]
	if k == nil {
		k = &splitKey{name: name, own: l.own(name), refused: map[int]bool{}, doubt: map[int]bool{}}
		l.keys[name] = k
	}
	return k
}

// markCut and markHeal record the cut and the heal.
func (l *splitLoad) markCut(at time.Time) {
	l.mu.Lock()
	l.cutAt = at
	l.mu.Unlock()
	close(l.cut)
}

func (l *splitLoad) markHeal(at time.Time) {
	l.mu.Lock()
	l.healAt = at
	l.mu.Unlock()
	close(l.heal)
}

func closed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// pause waits d, or less when c closes.
func pause(c chan struct{}, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-c:
	case <-t.C:
	}
}

// record adds op and, for an acknowledged write, makes seq the key's last
// acknowledged write.
func (l *splitLoad) record(op splitOp, k *splitKey, seq int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ops = append(l.ops, op)
	if !op.write {
		return
	}
	switch op.result {
	case resOK:
		if k.acked == 0 {
			l.ackedSet = append(l.ackedSet, k)
		}
		if seq > k.acked {
			k.acked, k.ackedAt = seq, op.ended
		}
		delete(k.doubt, seq)
	case resRefused:
		if op.minority && definiteRefusal(op.detail) {
			// By the node's contract nothing of it is kept.
			k.refused[seq] = true
		} else {
			// A node's timeout, forwarding or writing to the log, may
			// have left the write stored; the majority's writers try the
			// same value again.
			k.doubt[seq] = true
		}
	default:
		k.doubt[seq] = true
	}
}

// definiteRefusal reports whether the error answer detail (from the
// records API, as refusalText renders it) says that the write was not
// stored: a refusal of the record log gate or of a node cut off from the
// NATS majority, or no owner to send it to.
func definiteRefusal(detail string) bool {
	return strings.Contains(detail, "long-term write refused: the record log (JetStream) is unreachable or has no quorum") ||
		strings.Contains(detail, "is cut off from the NATS majority") ||
		strings.Contains(detail, " no_owner: ")
}

// next starts write seq of k.
func (l *splitLoad) next(k *splitKey) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	k.seq++
	return k.seq
}

// majorityWriter writes the keys of its share over and over through the
// majority's client, each write until it is acknowledged, as an
// application would: a refused write is tried again after a back-off,
// with the same value. After the heal it writes new keys instead, so that
// the values written during the cut stay the last ones, for the checks.
func (l *splitLoad) majorityWriter(w int, share []*splitKey) {
	defer l.writers.Done()
	for i := 0; !closed(l.stopWrites); i++ {
		k := share[i%len(share)]
		if closed(l.heal) {
			k = l.key(fmt.Sprintf("a%04d", w+splitWriters*i))
		}
		seq := l.next(k)
		for {
			begun := time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), splitOpTimeout)
			_, err := l.cl.Put(ctx, harness.RecordsNS, k.name, []byte(k.value(seq)), time.Hour)
			cancel()
			op := splitOp{write: true, own: k.own, key: k.name, begun: begun, ended: time.Now(), result: resOK}
			switch {
			case err == nil:
			case errors.Is(err, cachenode.ErrUnavailable), errors.Is(err, cachenode.ErrNoOwner):
				op.result, op.detail = resRefused, err.Error()
			default:
				op.result, op.detail = resFailed, err.Error()
			}
			l.record(op, k, seq)
			if err == nil || closed(l.abort) {
				break
			}
			pause(l.abort, splitBackoff)
		}
		pause(l.stopWrites, splitWritePace)
	}
}

// minorityWriter writes its keys through the cut-off node's HTTP API, a
// new value each attempt, all along: acknowledged before the cut, refused
// during it, acknowledged again after the heal.
func (l *splitLoad) minorityWriter(keys []*splitKey) {
	defer l.writers.Done()
	for i := 0; !closed(l.stopWrites); i++ {
		k := keys[i%len(keys)]
		seq := l.next(k)
		begun := time.Now()
		code, _, body := l.minority.Record(http.MethodPut, k.name, k.value(seq), harness.NodeAdminToken)
		op := splitOp{minority: true, write: true, own: k.own, key: k.name, begun: begun, ended: time.Now(), result: resOK}
		switch {
		case code == http.StatusNoContent:
		case code == 0:
			op.result, op.detail = resFailed, body
		default:
			op.result, op.detail = resRefused, fmt.Sprintf("%d %s", code, refusalText(body))
		}
		l.record(op, k, seq)
		pause(l.stopWrites, splitMinorityPace)
	}
}

// refusalText is the message of an error answer of the records API, or
// the body as it is.
func refusalText(body string) string {
	var e struct{ Error, Code string }
	if json.Unmarshal([]byte(body), &e) != nil || e.Error == "" {
		return strings.TrimSpace(body)
	}
	return e.Code + ": " + e.Error
}

// pick returns an acknowledged key at random and its last acknowledged
// write, or nil when there is none yet.
func (l *splitLoad) pick(rnd *rand.Rand, shared bool) (*splitKey, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.ackedSet) == 0 {
		return nil, 0
	}
	for range 20 {
		k := l.ackedSet[rnd.IntN(len(l.ackedSet))]
		if !shared || strings.HasPrefix(k.name, "s") {
			return k, k.acked
		}
	}
	return nil, 0
}

// judge is k.judge under the lock.
func (l *splitLoad) judge(k *splitKey, want int, value string, found, final bool) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return k.judge(want, value, found, final)
}

// majorityReader reads acknowledged keys at random through the majority's
// client, from the start to the end, and judges what it reads.
func (l *splitLoad) majorityReader(seed uint64) {
	defer l.readers.Done()
	rnd := rand.New(rand.NewPCG(seed, 77))
	for !closed(l.stopReads) {
		k, want := l.pick(rnd, false)
		if k == nil {
			pause(l.stopReads, 10*time.Millisecond)
			continue
		}
		begun := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), splitOpTimeout)
		rec, err := l.cl.Get(ctx, harness.RecordsNS, k.name)
		cancel()
		op := splitOp{own: k.own, key: k.name, begun: begun, ended: time.Now()}
		switch {
		case err == nil:
			op.result, op.detail = l.judge(k, want, string(rec.Value), true, false), fmt.Sprintf("%q, want %s", rec.Value, k.value(want))
		case errors.Is(err, cachenode.ErrNotFound):
			op.result, op.detail = l.judge(k, want, "", false, false), "not found, want "+k.value(want)
		default:
			op.result, op.detail = resFailed, err.Error()
		}
		l.record(op, k, 0)
		pause(l.stopReads, splitReadPace)
	}
}

// minorityReader reads, during the cut only, keys the majority writes
// through the cut-off node, which answers from what it holds.
func (l *splitLoad) minorityReader() {
	defer l.readers.Done()
	select {
	case <-l.cut:
	case <-l.stopReads:
		return
	}
	rnd := rand.New(rand.NewPCG(99, 77))
	for !closed(l.heal) && !closed(l.stopReads) {
		k, want := l.pick(rnd, true)
		if k == nil {
			pause(l.stopReads, 10*time.Millisecond)
			continue
		}
		begun := time.Now()
		code, _, body := l.minority.Record(http.MethodGet, k.name, "", harness.NodeAdminToken)
		op := splitOp{minority: true, own: k.own, key: k.name, begun: begun, ended: time.Now()}
		switch code {
		case http.StatusOK:
			op.result, op.detail = l.judge(k, want, body, true, false), fmt.Sprintf("%q, want %s", body, k.value(want))
		case http.StatusNotFound:
			op.result, op.detail = l.judge(k, want, "", false, false), "not found, want "+k.value(want)
		default:
			op.result, op.detail = resFailed, fmt.Sprintf("%d %s", code, refusalText(body))
		}
		l.record(op, k, 0)
		pause(l.stopReads, splitReadPace)
	}
}

// stop stops the writers, which finish the write under way for at most
// drain, then the readers.
func (l *splitLoad) stop(drain time.Duration) {
	l.stopOnce.Do(func() {
		close(l.stopWrites)
		done := make(chan struct{})
		go func() { l.writers.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(drain):
			close(l.abort)
			<-done
		}
		close(l.stopReads)
		l.readers.Wait()
	})
}

// splitFilter selects operations: minority or majority, writes or reads.
type splitFilter struct{ minority, write bool }

// count counts the operations of f begun in [from, to) with result res
// ("" for any); a zero to is no bound.
func (l *splitLoad) count(f splitFilter, res string, from, to time.Time) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, op := range l.ops {
		if op.minority == f.minority && op.write == f.write && (res == "" || op.result == res) &&
			!op.begun.Before(from) && (to.IsZero() || op.begun.Before(to)) {
			n++
		}
	}
	return n
}

// opsOf returns a copy of the operations of f begun in [from, to); a
// zero to is no bound.
func (l *splitLoad) opsOf(f splitFilter, from, to time.Time) []splitOp {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []splitOp
	for _, op := range l.ops {
		if op.minority == f.minority && op.write == f.write && !op.begun.Before(from) && (to.IsZero() || op.begun.Before(to)) {
			out = append(out, op)
		}
	}
	return out
}

// firstOK is when the first successful operation of f on keys of the
// group own, begun at or after from, ended.
func (l *splitLoad) firstOK(f splitFilter, own bool, from time.Time) (time.Time, bool) {
	var first time.Time
	for _, op := range l.opsOf(f, from, time.Time{}) {
		if op.own == own && op.result == resOK && (first.IsZero() || op.ended.Before(first)) {
			first = op.ended
		}
	}
	return first, !first.IsZero()
}

// snapshot returns a copy of the state of every key.
func (l *splitLoad) snapshot() []splitKey {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]splitKey, 0, len(l.keys))
	for _, k := range l.keys {
		c := *k
		c.refused, c.doubt = make(map[int]bool, len(k.refused)), make(map[int]bool, len(k.doubt))
		for s := range k.refused {
			c.refused[s] = true
		}
		for s := range k.doubt {
			c.doubt[s] = true
		}
		out = append(out, c)
	}
	return out
}
