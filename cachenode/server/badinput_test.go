package server_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus/bustest"
	"github.com/cachebus/cachebus/cachenode"
	"github.com/cachebus/cachebus/cachenode/partition"
	"github.com/cachebus/cachebus/cachenode/server"
	"github.com/cachebus/cachebus/cachenode/wire"
	"github.com/nats-io/nats.go"
)

// Limits of the nodes of the bad input tests.
var smallLimits = wire.Limits{MaxKey: 16, MaxValue: 64, MaxKeys: 4}

func smallCluster(t *testing.T, ids ...string) *cluster {
	cl := newClusterWith(t, func(c *server.Config) {
		c.MaxKey, c.MaxValue, c.MaxKeys = smallLimits.MaxKey, smallLimits.MaxValue, smallLimits.MaxKeys
	}, ids...)
	cl.waitSettled()
	return cl
}

// errCode returns the code of an "ERR <code> <message>" reply, failing t
// for any other reply.
func errCode(t *testing.T, data []byte) wire.Code {
	t.Helper()
	rest, ok := bytes.CutPrefix(data, []byte("ERR "))
	if !ok {
		t.Fatalf("reply %q, want ERR <code> <message>", clipped(data))
	}
	code, msg, _ := bytes.Cut(rest, []byte{' '})
	if len(msg) == 0 || bytes.ContainsRune(msg, '\n') {
		t.Fatalf("reply %q: the message must be one non-empty line", clipped(data))
	}
	return wire.Code(code)
}

// TestBadRequests sends malformed and oversize requests over NATS, as a
// client in another language might, to a node's own subject and to the
// any-node subject: each gets an ERR reply with its code, and nothing is
// stored anywhere.
func TestBadRequests(t *testing.T) {
	cl := smallCluster(t, "n1", "n2")
	long := strings.Repeat("k", smallLimits.MaxKey+1)
	big := strings.Repeat("v", smallLimits.MaxValue+1)
	for _, tc := range []struct {
		name    string
		payload string
		code    wire.Code
		key     string // must stay absent
	}{
		{"oversize key", "put sessions " + long + "\nv", wire.CodeTooLarge, long},
		{"oversize key get", "get sessions " + long, wire.CodeTooLarge, ""},
		{"oversize value", "put sessions bigval\n" + big, wire.CodeTooLarge, "bigval"},
		{"oversize mget key", "mget sessions\na\n" + long, wire.CodeTooLarge, ""},
		{"too many keys", "mget sessions\na\nb\nc\nd\ne", wire.CodeTooLarge, ""},
		{"bad namespace", "put ses.sions badns\nv", wire.CodeBadRequest, "badns"},
		{"wildcard namespace", "put * badns\nv", wire.CodeBadRequest, "badns"},
		{"long namespace", "put " + strings.Repeat("n", 65) + " badns\nv", wire.CodeBadRequest, "badns"},
		{"unknown operation", "set sessions unknownop\nv", wire.CodeBadRequest, "unknownop"},
		{"upper-case operation", "PUT sessions upperop\nv", wire.CodeBadRequest, "upperop"},
		{"truncated put", "put sessions truncated", wire.CodeBadRequest, "truncated"},
		{"truncated put with ttl", "put sessions truncttl ttl=1000", wire.CodeBadRequest, "truncttl"},
		{"namespace missing", "put", wire.CodeBadRequest, ""},
		{"key missing", "get sessions", wire.CodeBadRequest, ""},
		{"empty key in mget", "mget sessions\n\n", wire.CodeBadRequest, ""},
		{"bad ttl", "put sessions badttl ttl=soon\nv", wire.CodeBadRequest, "badttl"},
		{"negative ttl", "put sessions negttl ttl=-5\nv", wire.CodeBadRequest, "negttl"},
		{"unknown option", "put sessions badopt fast=1\nv", wire.CodeBadRequest, "badopt"},
		{"replica on a put", "put sessions replput replica\nv", wire.CodeBadRequest, "replput"},
		{"too many hops", "put sessions hops hop=9\nv", wire.CodeBadRequest, "hops"},
		{"data after a get", "get sessions k\nextra", wire.CodeBadRequest, ""},
		{"data after a delete", "del sessions k\nextra", wire.CodeBadRequest, ""},
		{"control byte in key", "put sessions ctl\x01key\nv", wire.CodeBadRequest, "ctl\x01key"},
		{"empty payload", "", wire.CodeBadRequest, ""},
		{"blank line", " \r\n", wire.CodeBadRequest, ""},
		{"garbage", "\xff\xfe\x00\x13\x80garbage\n\x00\x01", wire.CodeBadRequest, ""},
		{"binary batch as a request", "\x01\x00\x08sessions", wire.CodeBadRequest, ""},
		{"truncated frame", "batch 2\n13\nget sessions a\n40\nget", wire.CodeBadRequest, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			subjects := []string{cl.conn().Subjects.RecordAny(), cl.conn().Subjects.RecordNode("n1"), cl.conn().Subjects.RecordNode("n2")}
			for _, subj := range subjects {
				before := cl.records()
				if code := errCode(t, cl.raw(subj, []byte(tc.payload))); code != tc.code {
					t.Fatalf("%s: code %s, want %s", subj, code, tc.code)
				}
				if tc.key != "" {
					if rep := cl.nodes["n1"].Do(context.Background(), &wire.Request{Op: wire.OpGet, NS: "sessions", Key: tc.key}); rep.Status != wire.StatusNotFound {
						t.Fatalf("%s: %q stored after a refused request: %+v", subj, tc.key, rep)
					}
				}
				if after := cl.records(); after != before {
					t.Fatalf("%s: records went from %d to %d", subj, before, after)
				}
			}
		})
	}

	// The nodes still serve: a valid request at the limits is stored.
	maxKey, maxVal := strings.Repeat("m", smallLimits.MaxKey), strings.Repeat("v", smallLimits.MaxValue)
	rep := parseReply(t, cl.raw(cl.conn().Subjects.RecordAny(), []byte("put sessions "+maxKey+"\n"+maxVal)), wire.OpPut)
	if rep.Status != wire.StatusOK {
		t.Fatalf("put at the limits: %+v", rep)
	}
	rep = parseReply(t, cl.raw(cl.conn().Subjects.RecordNode("n2"), []byte("get sessions "+maxKey)), wire.OpGet)
	if rep.Status != wire.StatusOK || string(rep.Item.Value) != maxVal {
		t.Fatalf("get at the limits: %+v", rep)
	}
	// A node's Do refuses what it cannot serve the same way.
	for _, req := range []wire.Request{
		{Op: wire.OpGet, Key: "k"},
		{Op: wire.Op(42), NS: "sessions", Key: "k"},
	} {
		if rep := cl.nodes["n1"].Do(context.Background(), &req); rep.Status != wire.StatusError || rep.Err.Code != wire.CodeBadRequest {
			t.Errorf("Do(%+v) = %+v, want a bad_request error", req, rep)
		}
	}
}

// batch encodes entries as one replication batch.
func batch(entries ...wire.Entry) []byte {
	b := wire.NewBatch(nil, 0)
	for i := range entries {
		b = wire.AppendEntry(b, &entries[i])
	}
	return b
}

// TestBadPeerMessages sends malformed replication batches and partition
// copy requests to a node's peer subjects: each gets an ERR reply, nothing
// is stored, and the node keeps serving.
func TestBadPeerMessages(t *testing.T) {
	cl := smallCluster(t, "n1", "n2", "n3")
	ctx := context.Background()
	client := cl.client()
	if _, err := client.Put(ctx, "sessions", "before", []byte("v"), time.Minute); err != nil {
		t.Fatal(err)
	}
	good := wire.Entry{NS: "sessions", Key: "injected", Version: 1, Writer: 1, Deadline: time.Now().Add(time.Hour).UnixNano(), Value: []byte("v")}
	valid := batch(good)
	truncated := valid[:len(valid)-3]
	lying := bytes.Clone(valid)
	binary.LittleEndian.PutUint32(lying[len(lying)-5:], 1<<20) // value length past the end
	badFlag := bytes.Clone(valid)
	badFlag[len(badFlag)-6] = 7 // deleted flag
	entry := func(edit func(*wire.Entry)) []byte {
		e := good
		edit(&e)
		return batch(e)
	}
	repl := cl.conn().Subjects.RecordReplicate("n1")
	for _, tc := range []struct {
		name    string
		payload []byte
		code    wire.Code
	}{
		{"empty", nil, wire.CodeBadRequest},
		{"one byte", []byte{1}, wire.CodeBadRequest},
		{"unknown version", append([]byte{9}, valid[1:]...), wire.CodeBadRequest},
		{"text request", []byte("put sessions injected\nv"), wire.CodeBadRequest},
		{"truncated entry", truncated, wire.CodeBadRequest},
		{"value length past the end", lying, wire.CodeBadRequest},
		{"bad deleted flag", badFlag, wire.CodeBadRequest},
		{"bad namespace", entry(func(e *wire.Entry) { e.NS = "bad.ns" }), wire.CodeBadRequest},
		{"empty key", entry(func(e *wire.Entry) { e.Key = "" }), wire.CodeBadRequest},
		{"empty namespace", entry(func(e *wire.Entry) { e.NS = "" }), wire.CodeBadRequest},
		{"key with a space", entry(func(e *wire.Entry) { e.Key = "in jected" }), wire.CodeBadRequest},
	} {
		t.Run("replicate/"+tc.name, func(t *testing.T) {
			before := cl.records()
			if code := errCode(t, cl.raw(repl, tc.payload)); code != tc.code {
				t.Fatalf("code %s, want %s", code, tc.code)
			}
			if after := cl.records(); after != before {
				t.Fatalf("records went from %d to %d", before, after)
			}
			if _, err := client.Get(ctx, "sessions", "injected"); !errors.Is(err, cachenode.ErrNotFound) {
				t.Fatalf("injected record: %v", err)
			}
		})
	}

	// Partitions n2 holds and does not hold, to ask n2 for.
	held, notHeld := -1, -1
	for p := range partition.Partitions {
		if cl.nodes["n2"].Held(p) {
			held = p
		} else if notHeld < 0 {
			notHeld = p
		}
	}
	if held < 0 || notHeld < 0 {
		t.Fatalf("n2 holds partition %d, not %d", held, notHeld)
	}
	sync := cl.conn().Subjects.RecordSync("n2")
	for _, tc := range []struct {
		name    string
		payload string
		code    wire.Code
	}{
		{"empty", "", wire.CodeBadRequest},
		{"not JSON", "give me everything", wire.CodeBadRequest},
		{"unknown version", `{"v":2,"node":"n1","partitions":[1],"inbox":"_INBOX.x"}`, wire.CodeBadRequest},
		{"bad node id", `{"v":1,"node":"n 1","partitions":[1],"inbox":"_INBOX.x"}`, wire.CodeBadRequest},
		{"no partitions", `{"v":1,"node":"n1","partitions":[],"inbox":"_INBOX.x"}`, wire.CodeBadRequest},
		{"no inbox", `{"v":1,"node":"n1","partitions":[1]}`, wire.CodeBadRequest},
		{"partition out of range", `{"v":1,"node":"n1","partitions":[1024],"inbox":"_INBOX.x"}`, wire.CodeBadRequest},
		{"negative partition", `{"v":1,"node":"n1","partitions":[-1],"inbox":"_INBOX.x"}`, wire.CodeBadRequest},
		{"partition not held", `{"v":1,"node":"n1","partitions":[` + strconv.Itoa(notHeld) + `],"inbox":"_INBOX.x"}`, wire.CodeNoOwner},
		{"requester not live", `{"v":1,"node":"ghost","partitions":[` + strconv.Itoa(held) + `],"inbox":"_INBOX.x"}`, wire.CodeUnavailable},
	} {
		t.Run("sync/"+tc.name, func(t *testing.T) {
			if code := errCode(t, cl.raw(sync, []byte(tc.payload))); code != tc.code {
				t.Fatalf("code %s, want %s", code, tc.code)
			}
		})
	}

	// The nodes still serve, replicate and stay ready.
	for _, id := range []string{"n1", "n2", "n3"} {
		if err := cl.nodes[id].Ready(); err != nil {
			t.Fatalf("%s after bad peer messages: %v", id, err)
		}
	}
	if _, err := client.Put(ctx, "sessions", "after", []byte("w"), time.Minute); err != nil {
		t.Fatal(err)
	}
	p := partition.PartitionOf("after")
	for _, id := range cl.holders(p) {
		if v, ok := replyValue(t, localGet(t, cl.nodes[id], "sessions", "after")); !ok || v != "w" {
			t.Fatalf("%s's copy after bad peer messages: %q found=%v", id, v, ok)
		}
	}
}

// TestClientRefusesUnsent checks that the client refuses what breaks its
// limits and the protocol's rules with ErrTooLarge or ErrBadRequest before
// sending anything, and maps a node's refusal of what it let through (its
// limits above the node's) to the same errors.
func TestClientRefusesUnsent(t *testing.T) {
	cl := smallCluster(t, "n1", "n2")
	ctx := context.Background()
	// Every record request any client sends crosses this subscription.
	var mu sync.Mutex
	var seen [][]byte
	sub, err := cl.conn().NC.Subscribe(cl.conn().Subjects.Records()+".>", func(m *nats.Msg) {
		mu.Lock()
		seen = append(seen, bytes.Clone(m.Data))
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := cl.conn().NC.Flush(); err != nil {
		t.Fatal(err)
	}
	client := cl.clientWith(cachenode.ClientOptions{Limits: smallLimits})
	long := strings.Repeat("x", smallLimits.MaxKey+1)
	const marker = "unsent-marker"
	for _, tc := range []struct {
		name string
		call func() error
		want error
	}{
		{"oversize value", func() error {
			_, err := client.Put(ctx, "sessions", marker, []byte(strings.Repeat("v", smallLimits.MaxValue+1)), 0)
			return err
		}, cachenode.ErrTooLarge},
		{"oversize key get", func() error { _, err := client.Get(ctx, "sessions", long+marker); return err }, cachenode.ErrTooLarge},
		{"oversize key put", func() error { _, err := client.Put(ctx, "sessions", long+marker, nil, 0); return err }, cachenode.ErrTooLarge},
		{"oversize key delete", func() error { return client.Delete(ctx, "sessions", long+marker) }, cachenode.ErrTooLarge},
		{"too many keys", func() error {
			_, err := client.GetMulti(ctx, "sessions", []string{marker + "1", marker + "2", marker + "3", marker + "4", marker + "5"})
			return err
		}, cachenode.ErrTooLarge},
		{"oversize key in a multi-get", func() error { _, err := client.GetMulti(ctx, "sessions", []string{marker, long}); return err }, cachenode.ErrTooLarge},
		{"bad namespace", func() error { _, err := client.Get(ctx, "ses.sions", marker); return err }, cachenode.ErrBadRequest},
		{"empty namespace", func() error { _, err := client.Put(ctx, "", marker, []byte("v"), 0); return err }, cachenode.ErrBadRequest},
		{"empty key", func() error { _, err := client.Get(ctx, "sessions", ""); return err }, cachenode.ErrBadRequest},
		{"key with a space", func() error { _, err := client.Put(ctx, "sessions", marker+" x", []byte("v"), 0); return err }, cachenode.ErrBadRequest},
		{"key with a newline", func() error { _, err := client.Put(ctx, "sessions", "bad\nkey", []byte("v"), 0); return err }, cachenode.ErrBadRequest},
		{"newline in a multi-get key", func() error { _, err := client.GetMulti(ctx, "sessions", []string{marker + "\nx"}); return err }, cachenode.ErrBadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.call(); !errors.Is(err, tc.want) {
				t.Fatalf("error %v, want %v", err, tc.want)
			}
		})
	}
	// A request sent after those arrives after them, were they sent.
	if _, err := client.Get(ctx, "sessions", "after-"+marker[:4]); !errors.Is(err, cachenode.ErrNotFound) {
		t.Fatal(err)
	}
	bustest.WaitFor(t, 5*time.Second, "the last request seen", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, d := range seen {
			if bytes.Contains(d, []byte("after-unse")) {
				return true
			}
		}
		return false
	})
	mu.Lock()
	for _, d := range seen {
		if bytes.Contains(d, []byte(marker)) {
			t.Errorf("refused request sent: %q", clipped(d))
		}
	}
	mu.Unlock()

	// A client with the default limits sends what the nodes' smaller
	// limits refuse: the same errors, nothing stored.
	loose := cl.client()
	before := cl.records()
	if _, err := loose.Put(ctx, "sessions", "loose", []byte(strings.Repeat("v", smallLimits.MaxValue+1)), 0); !errors.Is(err, cachenode.ErrTooLarge) {
		t.Fatalf("oversize value past the client's limits: %v", err)
	}
	if _, err := loose.Get(ctx, "sessions", long); !errors.Is(err, cachenode.ErrTooLarge) {
		t.Fatalf("oversize key past the client's limits: %v", err)
	}
	if _, err := loose.Get(ctx, "sessions", "loose"); !errors.Is(err, cachenode.ErrNotFound) {
		t.Fatalf("refused record: %v", err)
	}
	if after := cl.records(); after != before {
		t.Fatalf("records went from %d to %d", before, after)
	}
}
