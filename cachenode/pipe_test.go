package cachenode

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/bus/bustest"
	"github.com/cachebus/cachebus/cachenode/wire"
	"github.com/nats-io/nats.go"
)

// fakeNode answers record requests on a subject the way a node does,
// framed or not: a get of key k finds the value k. hold, when set, is
// called with each message's request count before it is answered, and
// may withhold the answer by returning false.
type fakeNode struct {
	sub      *nats.Subscription
	messages atomic.Int64
	requests atomic.Int64
	hold     func(n int) bool
	// full lists keys whose reply does not fit a frame.
	full map[string]bool
}

func startFakeNode(t *testing.T, c *bus.Conn, subject string, hold func(int) bool) *fakeNode {
	t.Helper()
	f := &fakeNode{hold: hold, full: map[string]bool{}}
	sub, err := c.NC.Subscribe(subject, func(m *nats.Msg) {
		parts := [][]byte{m.Data}
		framed := wire.IsFrame(m.Data)
		if framed {
			var err error
			if parts, err = wire.ParseFrame(m.Data, false); err != nil {
				t.Errorf("fake node: %v", err)
				return
			}
		}
		f.messages.Add(1)
		f.requests.Add(int64(len(parts)))
		if f.hold != nil && !f.hold(len(parts)) {
			return
		}
		replies := make([][]byte, len(parts))
		for i, p := range parts {
			req, err := wire.ParseRequest(p, wire.DefaultLimits)
			rep := wire.Reply{Status: wire.StatusOK, Item: wire.Item{Found: true, Version: 1, Value: []byte(req.Key)}}
			switch {
			case err != nil:
				rep = wire.ErrorReply(err)
			case framed && f.full[req.Key]:
				rep = wire.ErrorReply(wire.Errorf(wire.CodeFrameFull, "send it alone"))
			}
			replies[i] = rep.Append(nil, req.Op)
		}
		data := replies[0]
		if framed {
			data = wire.AppendFrame(nil, true, replies)
		}
		_ = m.Respond(data)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.NC.Flush(); err != nil {
		t.Fatal(err)
	}
	f.sub = sub
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return f
}

// pipeClient is a client on an embedded server with no cache node: its
// requests go to the any-node subject, which the test's fake node answers.
func pipeClient(t *testing.T, opts ClientOptions) (*Client, *bus.Conn) {
	t.Helper()
	srv := bustest.Embedded(t)
	c := bustest.Connect(t, srv.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl, err := NewClient(ctx, c, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cl, c
}

// pendingOn is how many requests wait behind the message in flight to
// subject.
func (cl *Client) pendingOn(subject string) int {
	p := cl.pipe(subject)
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.pending)
}

// startHeldNode starts a fake node that holds its first message until
// release is called.
func startHeldNode(t *testing.T, c *bus.Conn, subject string) (node *fakeNode, release func()) {
	held := make(chan struct{})
	var first atomic.Bool
	node = startFakeNode(t, c, subject, func(int) bool {
		if first.CompareAndSwap(false, true) {
			<-held
		}
		return true
	})
	var once sync.Once
	release = func() { once.Do(func() { close(held) }) }
	t.Cleanup(release)
	return node, release
}

// getBehindFirst gets keys at once through cl, whose requests go to
// subject, answered by node as held by startHeldNode: the first alone,
// the others once it is out and held, all of them pending behind it
// before it is released. Each caller must get its own key's value.
func getBehindFirst(t *testing.T, cl *Client, subject string, node *fakeNode, release func(), keys []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, len(keys))
	for i, key := range keys {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := cl.Get(ctx, "ns", key)
			if err == nil && string(r.Value) != key {
				err = fmt.Errorf("get %s: value %q", key, r.Value)
			}
			errs <- err
		}()
		for i == 0 && node.messages.Load() == 0 {
			waitBriefly(t, ctx)
		}
	}
	for cl.pendingOn(subject) < len(keys)-1 {
		waitBriefly(t, ctx)
	}
	release()
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}

// TestPipeGathersRequests holds the first message until the others have
// queued behind it: they must leave together in one frame, each caller
// getting its own reply.
func TestPipeGathersRequests(t *testing.T) {
	cl, c := pipeClient(t, ClientOptions{})
	cl.stall = time.Hour // the held message must not count as stalled
	anyNode := c.Subjects.RecordAny()
	node, release := startHeldNode(t, c, anyNode)
	keys := []string{"first"}
	for i := range 20 {
		keys = append(keys, fmt.Sprintf("k%d", i))
	}
	getBehindFirst(t, cl, anyNode, node, release, keys)
	if m, r := node.messages.Load(), node.requests.Load(); m != 2 || r != 21 {
		t.Errorf("%d requests in %d messages; want 21 in 2", r, m)
	}
}

// TestPipeStalledMessage leaves the first message unanswered, as a node
// that crashed with it would: the requests behind it must still be
// answered, and the first one's caller gets its deadline.
func TestPipeStalledMessage(t *testing.T) {
	cl, c := pipeClient(t, ClientOptions{})
	var first atomic.Bool
	node := startFakeNode(t, c, c.Subjects.RecordAny(), func(int) bool { return !first.CompareAndSwap(false, true) })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	lost := make(chan error, 1)
	go func() {
		short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		_, err := cl.Get(short, "ns", "lost")
		lost <- err
	}()
	for node.messages.Load() == 0 {
		waitBriefly(t, ctx)
	}
	for i := range 5 {
		key := fmt.Sprintf("k%d", i)
		if r, err := cl.Get(ctx, "ns", key); err != nil || string(r.Value) != key {
			t.Fatalf("get %s behind a stalled message: %q, %v", key, r.Value, err)
		}
	}
	if err := <-lost; !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("stalled get: %v, want its context's deadline", err)
	}
}

// TestPipeEnds covers the ways a call ends without a reply.
func TestPipeEnds(t *testing.T) {
	silent := func(int) bool { return false }
	for _, tc := range []struct {
		name string
		opts ClientOptions
		hold func(int) bool // nil: no node at all
		end  func(*Client)  // called once the request is out
		want error
	}{
		{"no node answers", ClientOptions{}, nil, nil, ErrNoOwner},
		{"default timeout", ClientOptions{Timeout: 200 * time.Millisecond}, silent, nil, context.DeadlineExceeded},
		{"client closed", ClientOptions{}, silent, (*Client).Close, ErrUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cl, c := pipeClient(t, tc.opts)
			var node *fakeNode
			if tc.hold != nil {
				node = startFakeNode(t, c, c.Subjects.RecordAny(), tc.hold)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			done := make(chan error, 1)
			go func() {
				_, err := cl.Get(context.Background(), "ns", "k")
				done <- err
			}()
			if tc.end != nil {
				for node.messages.Load() == 0 {
					waitBriefly(t, ctx)
				}
				tc.end(cl)
			}
			select {
			case err := <-done:
				if !errors.Is(err, tc.want) {
					t.Errorf("get: %v, want %v", err, tc.want)
				}
			case <-ctx.Done():
				t.Fatal("get never returned")
			}
		})
	}
}

// TestPipeReadAttempt: a read addressed to a node that does not answer is
// asked again, after half the failure timeout, of any node.
func TestPipeReadAttempt(t *testing.T) {
	cl, c := pipeClient(t, ClientOptions{FailureTimeout: 200 * time.Millisecond})
	dead := startFakeNode(t, c, c.Subjects.RecordNode("dead"), func(int) bool { return false })
	anyNode := startFakeNode(t, c, c.Subjects.RecordAny(), nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req := wire.Request{Op: wire.OpGet, NS: "ns", Key: "k"}
	rep, err := cl.do(ctx, &req, c.Subjects.RecordNode("dead"))
	if err != nil || string(rep.Item.Value) != "k" {
		t.Fatalf("read past a silent node: %q, %v", rep.Item.Value, err)
	}
	if dead.messages.Load() != 1 || anyNode.messages.Load() != 1 {
		t.Errorf("messages: %d to the silent node, %d to any node; want 1 and 1", dead.messages.Load(), anyNode.messages.Load())
	}
}

// TestPipeFrameFull: requests whose replies did not fit the frame's reply
// are asked again alone, and every caller gets its own reply.
func TestPipeFrameFull(t *testing.T) {
	cl, c := pipeClient(t, ClientOptions{})
	cl.stall = time.Hour // the held message must not count as stalled
	anyNode := c.Subjects.RecordAny()
	node, release := startHeldNode(t, c, anyNode)
	node.full["k1"], node.full["k3"] = true, true
	getBehindFirst(t, cl, anyNode, node, release, []string{"k0", "k1", "k2", "k3", "k4"})
	// k0 alone, k1..k4 in a frame, then k1 and k3 again alone.
	if m, r := node.messages.Load(), node.requests.Load(); m != 4 || r != 7 {
		t.Errorf("%d requests in %d messages; want 7 in 4", r, m)
	}
}

// waitBriefly yields for a moment while a test waits on a condition, and
// fails the test once ctx is done.
func waitBriefly(t *testing.T, ctx context.Context) {
	t.Helper()
	select {
	case <-ctx.Done():
		t.Fatal("condition not met in time")
	case <-time.After(time.Millisecond):
	}
}
