package cachenode

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cachebus/cachebus/cachenode/wire"
	"github.com/nats-io/nats.go"
)

// A pipe carries the requests to one node. It keeps at most pipeDepth
// messages in flight; requests made meanwhile wait and leave together, in
// one frame (see wire.AppendFrame), when a reply comes back. So a client
// with many requests in flight pays for few messages, and alone a request
// waits for nothing. Replies come back on the client's own inbox
// subscription and are handed straight to the waiting callers: no
// goroutine, timer or channel per message besides the caller's own.

// pipeDepth is how many messages a client keeps in flight to one node.
// One is enough for throughput under load: while a frame is out the next
// gathers, and leaves the moment the reply is back.
const pipeDepth = 1

// pipeStall is how long requests wait behind a full pipe before they are
// sent anyway: a message stuck on a node that just crashed must not hold
// back what follows it. The client's watchdog checks this often.
const pipeStall = 10 * time.Millisecond

// maxFrameBytes bounds one frame, under NATS's default 1 MiB payload.
const maxFrameBytes = 768 << 10

// errAttempt ends a read's first try, at the node it addressed, so it is
// asked again through the any-node subject.
var errAttempt = errors.New("read attempt expired")

var (
	errClientClosed = fmt.Errorf("%w: client closed", ErrUnavailable)
	frameFull       = []byte("ERR " + wire.CodeFrameFull + " ")
)

type pipe struct {
	cl       *Client
	subject  string
	mu       sync.Mutex
	pending  []*call
	inflight int       // messages out
	lastSent time.Time // when the newest message left
}

// call is one request waiting for its reply. Whoever finishes it first
// (the reply, the watchdog, or its caller giving up) sets rep or err.
type call struct {
	req      []byte
	done     chan struct{}
	finished atomic.Bool
	rep      []byte
	err      error
	deadline time.Time // the watchdog ends the call with context.DeadlineExceeded
	attempt  time.Time // zero, or when a read's first try gives way (errAttempt)
}

func (c *call) finish(rep []byte, err error) {
	if c.finished.CompareAndSwap(false, true) {
		c.rep, c.err = rep, err
		close(c.done)
	}
}

// wait returns the call's outcome once it is finished, or ctx's error:
// then the call is finished with it unless something else finished it
// first, whose outcome it waits for.
func (c *call) wait(ctx context.Context) ([]byte, error) {
	select {
	case <-c.done:
	case <-ctx.Done():
		c.finish(nil, ctx.Err())
		<-c.done
	}
	return c.rep, c.err
}

// frame is one message in flight and the calls it carries.
type frame struct {
	p     *pipe
	calls []*call
}

func (cl *Client) pipe(subject string) *pipe {
	if p, ok := cl.pipes.Load(subject); ok {
		return p.(*pipe)
	}
	p, _ := cl.pipes.LoadOrStore(subject, &pipe{cl: cl, subject: subject})
	return p.(*pipe)
}

// call sends req and returns the reply's bytes; attempt, when not zero,
// bounds how long it waits (errAttempt once it has passed).
func (p *pipe) call(ctx context.Context, req []byte, attempt time.Duration) ([]byte, error) {
	now := time.Now()
	c := &call{req: req, done: make(chan struct{})}
	if d, ok := ctx.Deadline(); ok {
		c.deadline = d
	} else {
		c.deadline = now.Add(p.cl.opts.Timeout)
	}
	if attempt > 0 {
		c.attempt = now.Add(attempt)
	}
	p.mu.Lock()
	p.pending = append(p.pending, c)
	lead := p.inflight < pipeDepth
	if lead {
		p.inflight++
	}
	p.mu.Unlock()
	if lead {
		// Callers woken by the reply that freed the pipe are about to
		// make their next requests: let them, and take them along.
		runtime.Gosched()
		p.sendPending()
	}
	return c.wait(ctx)
}

// sendPending sends what is pending in one message, for the slot in
// flight its caller holds; with nothing pending it gives the slot back.
func (p *pipe) sendPending() {
	for {
		p.mu.Lock()
		batch := p.take()
		if len(batch) == 0 {
			p.inflight--
			p.mu.Unlock()
			return
		}
		p.lastSent = time.Now()
		p.mu.Unlock()
		if p.send(batch) {
			return
		}
		// Not sent: the slot is free for what is still pending.
	}
}

// take removes the next message's calls from pending, skipping those
// whose caller has given up: applied late, a write would overwrite what
// its caller wrote after it. Called with p.mu held.
func (p *pipe) take() []*call {
	for {
		n, size := 0, 0
		for n < len(p.pending) && n < wire.MaxFrame && (n == 0 || size+len(p.pending[n].req) <= maxFrameBytes) {
			size += len(p.pending[n].req) + 8
			n++
		}
		if n == 0 {
			p.pending = nil // drop the drained backing array
			return nil
		}
		batch := make([]*call, 0, n)
		for _, c := range p.pending[:n] {
			if !c.finished.Load() {
				batch = append(batch, c)
			}
		}
		clear(p.pending[:n])
		p.pending = p.pending[n:]
		if len(batch) > 0 {
			return batch
		}
	}
}

// send publishes calls as one message and reports whether it is out; if
// not, the calls are finished with the error.
func (p *pipe) send(calls []*call) bool {
	cl := p.cl
	f := &frame{p: p, calls: calls}
	var data []byte
	if len(calls) == 1 {
		data = calls[0].req
	} else {
		reqs := make([][]byte, len(calls))
		size := 16
		for i, c := range calls {
			reqs[i] = c.req
			size += len(c.req) + 8
		}
		data = wire.AppendFrame(make([]byte, 0, size), false, reqs)
	}
	seq, err := cl.track(f)
	if err == nil {
		reply := cl.replies.inbox + "." + strconv.FormatUint(seq, 10)
		err = cl.c.NC.PublishMsg(&nats.Msg{Subject: p.subject, Reply: reply, Data: data})
		if err != nil {
			cl.untrack(seq)
		}
	}
	if err != nil {
		for _, c := range calls {
			c.finish(nil, err)
		}
		return false
	}
	return true
}

// extra sends pending calls in a message of their own when the pipe has
// been full for pipeStall.
func (p *pipe) extra(now time.Time) {
	p.mu.Lock()
	stalled := len(p.pending) > 0 && p.inflight >= pipeDepth && now.Sub(p.lastSent) >= p.cl.stall
	if stalled {
		p.inflight++
	}
	p.mu.Unlock()
	if stalled {
		p.sendPending()
	}
}

// alone sends c in a message of its own, beside those in flight.
func (p *pipe) alone(c *call) {
	p.mu.Lock()
	p.inflight++
	p.lastSent = time.Now()
	p.mu.Unlock()
	if !p.send([]*call{c}) {
		p.sendPending() // the slot taken for c is free again
	}
}

// replies receives the replies of every pipe: the inbox subscription's
// state, and the messages in flight by reply subject.
type replies struct {
	inbox    string // reply subjects are inbox + "." + a sequence number
	sub      *nats.Subscription
	mu       sync.Mutex
	seq      uint64
	frames   map[uint64]*frame
	watching bool
	closed   bool
}

// listen subscribes the client's inbox.
func (cl *Client) listen() error {
	r := &cl.replies
	r.inbox = cl.c.NC.NewInbox()
	r.frames = map[uint64]*frame{}
	sub, err := cl.c.NC.Subscribe(r.inbox+".*", cl.onReply)
	if err != nil {
		return fmt.Errorf("cachenode: client: subscribe %s: %w", r.inbox, err)
	}
	_ = sub.SetPendingLimits(1<<20, 1<<30)
	r.sub = sub
	return nil
}

// track registers f and returns the sequence number of its message's
// reply subject.
func (cl *Client) track(f *frame) (uint64, error) {
	r := &cl.replies
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return 0, errClientClosed
	}
	r.seq++
	seq := r.seq
	r.frames[seq] = f
	watch := !r.watching
	r.watching = true
	r.mu.Unlock()
	if watch {
		go cl.watch()
	}
	return seq, nil
}

// untrack forgets message seq, which was not sent after all.
func (cl *Client) untrack(seq uint64) {
	cl.replies.mu.Lock()
	delete(cl.replies.frames, seq)
	cl.replies.mu.Unlock()
}

// onReply hands a reply to the calls of its message.
func (cl *Client) onReply(m *nats.Msg) {
	r := &cl.replies
	i := strings.LastIndexByte(m.Subject, '.')
	seq, err := strconv.ParseUint(m.Subject[i+1:], 10, 64)
	if err != nil {
		return
	}
	r.mu.Lock()
	f := r.frames[seq]
	delete(r.frames, seq)
	r.mu.Unlock()
	if f == nil {
		return // given up on already
	}
	cl.deliver(f, m)
	// The callers just woken are about to make their next requests: let
	// them, and take them along with what is pending.
	runtime.Gosched()
	f.p.sendPending() // in the slot f held
}

// deliver finishes the calls of f with the reply m.
func (cl *Client) deliver(f *frame, m *nats.Msg) {
	if len(m.Data) == 0 && m.Header.Get("Status") == "503" {
		for _, c := range f.calls {
			c.finish(nil, nats.ErrNoResponders)
		}
		return
	}
	if len(f.calls) == 1 {
		f.calls[0].finish(m.Data, nil)
		return
	}
	parts, err := wire.ParseFrame(m.Data, true)
	if err == nil && len(parts) != len(f.calls) {
		err = fmt.Errorf("%d replies to %d requests", len(parts), len(f.calls))
	}
	if err != nil {
		err = fmt.Errorf("%w: bad frame reply: %v", ErrUnavailable, err)
		for _, c := range f.calls {
			c.finish(nil, err)
		}
		return
	}
	for i, c := range f.calls {
		if bytes.HasPrefix(parts[i], frameFull) {
			f.p.alone(c) // the frame's reply was full
			continue
		}
		c.finish(parts[i], nil)
	}
}

// watch runs while messages are in flight, every pipeStall: it ends calls
// past their deadline or first attempt, gives up messages none of whose
// calls still waits, and unblocks stalled pipes.
func (cl *Client) watch() {
	r := &cl.replies
	t := time.NewTicker(pipeStall)
	defer t.Stop()
	var expired []*call
	var gone []*frame
	for now := range t.C {
		r.mu.Lock()
		if len(r.frames) == 0 || r.closed {
			r.watching = false
			r.mu.Unlock()
			return
		}
		for seq, f := range r.frames {
			waiting := false
			for _, c := range f.calls {
				if c.finished.Load() {
					continue
				}
				if now.After(c.deadline) || (!c.attempt.IsZero() && now.After(c.attempt)) {
					expired = append(expired, c)
					continue
				}
				waiting = true
			}
			if !waiting {
				delete(r.frames, seq)
				gone = append(gone, f)
			}
		}
		r.mu.Unlock()
		for _, c := range expired {
			if now.After(c.deadline) {
				c.finish(nil, context.DeadlineExceeded)
			} else {
				c.finish(nil, errAttempt)
			}
		}
		for _, f := range gone {
			f.p.sendPending() // in the slot f held
		}
		clear(expired)
		clear(gone)
		expired, gone = expired[:0], gone[:0]
		cl.pipes.Range(func(_, v any) bool {
			v.(*pipe).extra(now)
			return true
		})
	}
}

// closeReplies stops the inbox subscription and ends every call in flight.
func (cl *Client) closeReplies() {
	r := &cl.replies
	r.mu.Lock()
	r.closed = true
	frames := r.frames
	r.frames = map[uint64]*frame{}
	r.mu.Unlock()
	if r.sub != nil {
		_ = r.sub.Unsubscribe()
	}
	for _, f := range frames {
		for _, c := range f.calls {
			c.finish(nil, errClientClosed)
		}
	}
	cl.pipes.Range(func(_, v any) bool {
		p := v.(*pipe)
		p.mu.Lock()
		pending := p.pending
		p.pending = nil
		p.mu.Unlock()
		for _, c := range pending {
			c.finish(nil, errClientClosed)
		}
		return true
	})
}
