package server_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/bus/bustest"
	"github.com/cachebus/cachebus/cachenode"
	"github.com/cachebus/cachebus/cachenode/partition"
	"github.com/cachebus/cachebus/cachenode/server"
	"github.com/cachebus/cachebus/cachenode/wire"
	"github.com/cachebus/cachebus/persistence"
)

// reader is one way of reading a record: a client, a node's Do, or a raw
// request on a subject. It returns the value, or found false.
type reader struct {
	name string
	get  func(t *testing.T, ns, key string) (value string, found bool)
	mget func(t *testing.T, ns string, keys []string) map[string]string
}

// readers lists every path a record can be read by in cl: each client,
// each node's Do, the any-node subject and each node's own subject.
func readers(cl *cluster, clients ...*cachenode.Client) []reader {
	var out []reader
	for i, c := range clients {
		out = append(out, reader{
			name: fmt.Sprintf("client%d", i+1),
			get: func(t *testing.T, ns, key string) (string, bool) {
				t.Helper()
				r, err := c.Get(context.Background(), ns, key)
				if errors.Is(err, cachenode.ErrNotFound) {
					return "", false
				}
				if err != nil {
					t.Fatalf("get %s/%s: %v", ns, key, err)
				}
				return string(r.Value), true
			},
			mget: func(t *testing.T, ns string, keys []string) map[string]string {
				t.Helper()
				rs, err := c.GetMulti(context.Background(), ns, keys)
				if err != nil {
					t.Fatalf("get multi %s %v: %v", ns, keys, err)
				}
				out := map[string]string{}
				for k, r := range rs {
					out[k] = string(r.Value)
				}
				return out
			},
		})
	}
	for _, id := range slices.Sorted(maps.Keys(cl.nodes)) {
		s := cl.nodes[id]
		out = append(out, reader{
			name: "do@" + id,
			get: func(t *testing.T, ns, key string) (string, bool) {
				t.Helper()
				return replyValue(t, s.Do(context.Background(), &wire.Request{Op: wire.OpGet, NS: ns, Key: key}))
			},
			mget: func(t *testing.T, ns string, keys []string) map[string]string {
				t.Helper()
				return replyItems(t, keys, s.Do(context.Background(), &wire.Request{Op: wire.OpMGet, NS: ns, Keys: keys}))
			},
		})
	}
	subjects := []string{cl.conn().Subjects.RecordAny()}
	for _, id := range slices.Sorted(maps.Keys(cl.nodes)) {
		subjects = append(subjects, cl.conn().Subjects.RecordNode(id))
	}
	for _, subj := range subjects {
		out = append(out, reader{
			name: "raw@" + subj,
			get: func(t *testing.T, ns, key string) (string, bool) {
				t.Helper()
				return replyValue(t, parseReply(t, cl.raw(subj, []byte("get "+ns+" "+key)), wire.OpGet))
			},
			mget: func(t *testing.T, ns string, keys []string) map[string]string {
				t.Helper()
				data := cl.raw(subj, []byte("mget "+ns+"\n"+strings.Join(keys, "\n")))
				return replyItems(t, keys, parseReply(t, data, wire.OpMGet))
			},
		})
	}
	return out
}

func parseReply(t *testing.T, data []byte, op wire.Op) wire.Reply {
	t.Helper()
	rep, err := wire.ParseReply(data, op)
	if err != nil {
		t.Fatalf("reply %q to %s: %v", clipped(data), op, err)
	}
	return rep
}

func replyValue(t *testing.T, rep wire.Reply) (string, bool) {
	t.Helper()
	switch rep.Status {
	case wire.StatusOK:
		return string(rep.Item.Value), true
	case wire.StatusNotFound:
		return "", false
	}
	t.Fatalf("error reply: %v", rep.Err)
	return "", false
}

func replyItems(t *testing.T, keys []string, rep wire.Reply) map[string]string {
	t.Helper()
	if rep.Status != wire.StatusOK {
		t.Fatalf("mget: status %d, %v", rep.Status, rep.Err)
	}
	if len(rep.Items) != len(keys) {
		t.Fatalf("mget: %d items for %d keys", len(rep.Items), len(keys))
	}
	out := map[string]string{}
	for i, it := range rep.Items {
		if it.Found {
			out[keys[i]] = string(it.Value)
		}
	}
	return out
}

// keysOverPrimaries returns at least n keys of the form prefix<i>, as many
// more as it takes for their partitions' primaries to include every node.
func keysOverPrimaries(t *testing.T, cl *cluster, prefix string, n int) []string {
	t.Helper()
	tab := cl.nodes[slices.Sorted(maps.Keys(cl.nodes))[0]].Table()
	seen := map[string]bool{}
	var keys []string
	for i := 0; len(keys) < n || len(seen) < len(cl.nodes); i++ {
		k := prefix + strconv.Itoa(i)
		keys = append(keys, k)
		seen[tab.Primary(partition.PartitionOf(k))] = true
		if i > 10000 {
			t.Fatalf("keys cover the primaries %v only", seen)
		}
	}
	return keys
}

// TestEveryPathReadsEveryKey writes through one client and reads, multi-gets
// and deletes through every path: several clients, every node's Do, the
// any-node subject and every node's own subject in the wire text format.
func TestEveryPathReadsEveryKey(t *testing.T) {
	cl := newCluster(t, "n1", "n2", "n3")
	cl.waitSettled()
	clients := []*cachenode.Client{cl.client(), cl.client(), cl.client()}
	ctx := context.Background()
	keys := keysOverPrimaries(t, cl, "user-", 60)
	want := map[string]string{}
	for i, k := range keys {
		v := "value of " + k
		switch i % 3 {
		case 0: // a client
			if _, err := clients[i%len(clients)].Put(ctx, "sessions", k, []byte(v), time.Minute); err != nil {
				t.Fatalf("put %s: %v", k, err)
			}
		case 1: // a node's Do, forwarding to the primary when needed
			s := cl.nodes[fmt.Sprintf("n%d", 1+(i/3)%3)]
			if rep := s.Do(ctx, &wire.Request{Op: wire.OpPut, NS: "sessions", Key: k, Value: []byte(v)}); rep.Status != wire.StatusOK {
				t.Fatalf("put %s through %s: %v", k, s.ID(), rep.Err)
			}
		case 2: // the any-node subject, as a client in any language
			rep := parseReply(t, cl.raw(cl.conn().Subjects.RecordAny(), []byte("put sessions "+k+" ttl=60000\n"+v)), wire.OpPut)
			if rep.Status != wire.StatusOK || rep.Item.Version == 0 {
				t.Fatalf("raw put %s: %+v", k, rep)
			}
		}
		want[k] = v
	}

	// Primaries of the keys: the multi-get below spans all three nodes.
	tab := cl.nodes["n1"].Table()
	prims := map[string]int{}
	for _, k := range keys {
		prims[tab.Primary(partition.PartitionOf(k))]++
	}
	if len(prims) != 3 {
		t.Fatalf("keys' primaries: %v", prims)
	}
	mkeys := append(slices.Clone(keys[:20]), "missing-1", "missing-2")
	for _, r := range readers(cl, clients...) {
		t.Run("read/"+r.name, func(t *testing.T) {
			for _, k := range keys {
				if v, ok := r.get(t, "sessions", k); !ok || v != want[k] {
					t.Fatalf("get %s: %q found=%v, want %q", k, v, ok, want[k])
				}
			}
			if v, ok := r.get(t, "sessions", "missing-1"); ok {
				t.Fatalf("missing key found: %q", v)
			}
			if v, ok := r.get(t, "other", keys[0]); ok {
				t.Fatalf("key found in another namespace: %q", v)
			}
			got := r.mget(t, "sessions", mkeys)
			wantM := map[string]string{}
			for _, k := range mkeys[:20] {
				wantM[k] = want[k]
			}
			if !maps.Equal(got, wantM) {
				t.Fatalf("mget: got %v, want %v", got, wantM)
			}
		})
	}

	// Delete a third of the keys, by each path.
	deleted := map[string]bool{}
	for i, k := range keys {
		if i%3 != 0 {
			continue
		}
		switch i % 9 {
		case 0:
			if err := clients[1].Delete(ctx, "sessions", k); err != nil {
				t.Fatalf("delete %s: %v", k, err)
			}
		case 3:
			if rep := cl.nodes["n2"].Do(ctx, &wire.Request{Op: wire.OpDelete, NS: "sessions", Key: k}); rep.Status != wire.StatusOK {
				t.Fatalf("delete %s through n2: %v", k, rep.Err)
			}
		case 6:
			if rep := parseReply(t, cl.raw(cl.conn().Subjects.RecordAny(), []byte("del sessions "+k)), wire.OpDelete); rep.Status != wire.StatusOK {
				t.Fatalf("raw delete %s: %+v", k, rep)
			}
		}
		deleted[k] = true
	}
	if err := clients[2].Delete(ctx, "sessions", "never-written"); err != nil {
		t.Fatalf("delete of an absent key: %v", err)
	}
	for _, r := range readers(cl, clients...) {
		t.Run("deleted/"+r.name, func(t *testing.T) {
			for _, k := range keys {
				v, ok := r.get(t, "sessions", k)
				switch {
				case deleted[k] && ok:
					t.Fatalf("deleted %s still read: %q", k, v)
				case !deleted[k] && (!ok || v != want[k]):
					t.Fatalf("get %s: %q found=%v, want %q", k, v, ok, want[k])
				}
			}
			got := r.mget(t, "sessions", keys[:30])
			for _, k := range keys[:30] {
				if _, ok := got[k]; ok == deleted[k] {
					t.Fatalf("mget %s: found=%v, deleted=%v", k, ok, deleted[k])
				}
			}
		})
	}
	// Every holder's own copy agrees: deleted on the backups as well.
	for _, k := range keys {
		p := partition.PartitionOf(k)
		hs := cl.holders(p)
		if len(hs) != 2 {
			t.Fatalf("partition %d held by %v, want primary and backup", p, hs)
		}
		for _, id := range hs {
			v, ok := replyValue(t, localGet(t, cl.nodes[id], "sessions", k))
			if ok == deleted[k] || (ok && v != want[k]) {
				t.Fatalf("%s's copy of %s: %q found=%v, deleted=%v", id, k, v, ok, deleted[k])
			}
		}
	}
	// Client errors by errors.Is.
	if _, err := clients[0].Get(ctx, "sessions", keys[0]); !errors.Is(err, cachenode.ErrNotFound) {
		t.Fatalf("deleted key through the client: %v, want ErrNotFound", err)
	}
}

// TestConcurrentWritersConverge has many writers race on a few keys
// through several clients and several nodes' Do. When the load stops,
// every holder of a key's partition (the primary and both backups) has the
// same value and version, and it is the acknowledged write with the
// highest version.
func TestConcurrentWritersConverge(t *testing.T) {
	cl := newClusterWith(t, func(c *server.Config) { c.Backups = 2 }, "n1", "n2", "n3")
	cl.waitSettled()
	clients := []*cachenode.Client{cl.client(), cl.client(), cl.client()}
	hot := []string{"hot-a", "hot-b", "hot-c"}

	type ack struct {
		version uint64
		value   string
	}
	var mu sync.Mutex
	acked := map[string][]ack{}
	var failures []error
	put := func(key, value string, fn func() (uint64, error)) {
		v, err := fn()
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			failures = append(failures, fmt.Errorf("put %s=%s: %w", key, value, err))
			return
		}
		acked[key] = append(acked[key], ack{v, value})
	}
	const perWriter = 60
	var wg sync.WaitGroup
	for c, client := range clients {
		for g := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range perWriter {
					key, value := hot[(i+g)%len(hot)], fmt.Sprintf("client%d-g%d-%d", c, g, i)
					put(key, value, func() (uint64, error) {
						r, err := client.Put(context.Background(), "sessions", key, []byte(value), time.Minute)
						return r.Version, err
					})
				}
			}()
		}
	}
	for _, id := range []string{"n1", "n2", "n3"} {
		s := cl.nodes[id]
		for g := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range perWriter {
					key, value := hot[(i+g)%len(hot)], fmt.Sprintf("do%s-g%d-%d", id, g, i)
					put(key, value, func() (uint64, error) {
						rep := s.Do(context.Background(), &wire.Request{Op: wire.OpPut, NS: "sessions", Key: key, Value: []byte(value)})
						if rep.Status != wire.StatusOK {
							return 0, rep.Err
						}
						return rep.Item.Version, nil
					})
				}
			}()
		}
	}
	wg.Wait()
	if len(failures) > 0 {
		t.Fatalf("%d writes failed on a steady cluster, first: %v", len(failures), failures[0])
	}
	for _, key := range hot {
		acks := acked[key]
		versions := map[uint64]string{}
		last := acks[0]
		for _, a := range acks {
			if prev, dup := versions[a.version]; dup {
				t.Errorf("%s: writes %q and %q acknowledged with the same version %d", key, prev, a.value, a.version)
			}
			versions[a.version] = a.value
			if a.version > last.version {
				last = a
			}
		}
		p := partition.PartitionOf(key)
		hs := cl.holders(p)
		if len(hs) != 3 {
			t.Fatalf("%s: partition %d held by %v, want all three", key, p, hs)
		}
		for _, id := range hs {
			rep := localGet(t, cl.nodes[id], "sessions", key)
			if rep.Status != wire.StatusOK || string(rep.Item.Value) != last.value || rep.Item.Version != last.version {
				t.Errorf("%s on %s: %q version %d (status %d), want the last acknowledged %q version %d",
					key, id, rep.Item.Value, rep.Item.Version, rep.Status, last.value, last.version)
			}
		}
		for i, c := range clients {
			r, err := c.Get(context.Background(), "sessions", key)
			if err != nil || string(r.Value) != last.value || r.Version != last.version {
				t.Errorf("%s through client %d: %q version %d, %v; want %q version %d", key, i, r.Value, r.Version, err, last.value, last.version)
			}
		}
		t.Logf("%s: %d acknowledged writes, the last %q version %d agreed by %v", key, len(acks), last.value, last.version, hs)
	}
}

// TestExpireFromTheBus publishes expires as an app or the gateway would:
// by key, by prefix and for the whole namespace. Every node drops what they
// cover from its copy, the other namespaces untouched.
func TestExpireFromTheBus(t *testing.T) {
	cl := newCluster(t, "n1", "n2", "n3")
	cl.waitSettled()
	client := cl.client()
	ctx := context.Background()
	pub, err := bus.NewPublisher(cl.conn(), "expire-test")
	if err != nil {
		t.Fatal(err)
	}
	keys := []string{"user-1", "user-2", "cart-1", "cart-2", "token-1"}
	for _, ns := range []string{"sessions", "other"} {
		for _, k := range keys {
			if _, err := client.Put(ctx, ns, k, []byte(ns+"/"+k), time.Minute); err != nil {
				t.Fatal(err)
			}
		}
	}
	// gone reports whether no path finds ns/key: no holder's own copy, no
	// node's Do, no client.
	gone := func(ns, key string) bool {
		for _, s := range cl.nodes {
			if s.Held(partition.PartitionOf(key)) {
				if _, ok := replyValue(t, localGet(t, s, ns, key)); ok {
					return false
				}
			}
			if _, ok := replyValue(t, s.Do(ctx, &wire.Request{Op: wire.OpGet, NS: ns, Key: key})); ok {
				return false
			}
		}
		_, err := client.Get(ctx, ns, key)
		return errors.Is(err, cachenode.ErrNotFound)
	}
	present := func(ns string, ks ...string) {
		t.Helper()
		for _, k := range ks {
			r, err := client.Get(ctx, ns, k)
			if err != nil || string(r.Value) != ns+"/"+k {
				t.Fatalf("%s/%s after an expire that does not cover it: %q %v", ns, k, r.Value, err)
			}
		}
	}
	for _, tc := range []struct {
		name    string
		expire  bus.Expire
		gone    []string
		present []string
	}{
		{"keys", bus.Expire{Keys: []string{"user-1", "token-1"}}, []string{"user-1", "token-1"}, []string{"user-2", "cart-1", "cart-2"}},
		{"prefix", bus.Expire{Prefixes: []string{"cart-"}}, []string{"cart-1", "cart-2"}, []string{"user-2"}},
		{"all", bus.Expire{All: true}, []string{"user-2"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := pub.Expire(ctx, "sessions", tc.expire); err != nil {
				t.Fatal(err)
			}
			for _, k := range tc.gone {
				bustest.WaitFor(t, 5*time.Second, "sessions/"+k+" expired on every node", func() bool { return gone("sessions", k) })
			}
			present("sessions", tc.present...)
			present("other", keys...)
		})
	}
	// The namespace still takes writes after a whole-namespace expire.
	if _, err := client.Put(ctx, "sessions", "user-1", []byte("again"), time.Minute); err != nil {
		t.Fatal(err)
	}
	if r, err := client.Get(ctx, "sessions", "user-1"); err != nil || string(r.Value) != "again" {
		t.Fatalf("write after expire: %q %v", r.Value, err)
	}
}

// TestFallbackServesStale checks that a record past its TTL is not found,
// and is served marked stale, on every path, while fallback is on for its
// namespace.
func TestFallbackServesStale(t *testing.T) {
	cl := newClusterWith(t, func(c *server.Config) {
		// Long enough that the read right after the put finds the record
		// fresh on a loaded machine; 300ms was not.
		c.DefaultTTL, c.StaleGrace = 2*time.Second, time.Minute
	}, "n1", "n2")
	cl.waitSettled()
	client := cl.client()
	ctx := context.Background()
	for _, ns := range []string{"sessions", "other"} {
		if _, err := client.Put(ctx, ns, "k", []byte("old"), 0); err != nil { // the node's default TTL
			t.Fatal(err)
		}
	}
	if r, err := client.Get(ctx, "sessions", "k"); err != nil || string(r.Value) != "old" || r.Stale {
		t.Fatalf("fresh record: %+v %v", r, err)
	}
	// paths reads sessions/k through the client, each node and the
	// any-node subject; it returns how many found it and how many of those
	// were marked stale.
	paths := func(ns string) (found, stale int) {
		r, err := client.Get(ctx, ns, "k")
		if err == nil {
			found++
			if r.Stale && string(r.Value) == "old" {
				stale++
			}
		} else if !errors.Is(err, cachenode.ErrNotFound) {
			t.Fatalf("client get: %v", err)
		}
		for _, s := range cl.nodes {
			for _, replica := range []bool{false, true} {
				rep := s.Do(ctx, &wire.Request{Op: wire.OpGet, NS: ns, Key: "k", Replica: replica})
				if rep.Status == wire.StatusOK {
					found++
					if rep.Item.Stale && string(rep.Item.Value) == "old" {
						stale++
					}
				}
			}
		}
		rep := parseReply(t, cl.raw(cl.conn().Subjects.RecordAny(), []byte("get "+ns+" k")), wire.OpGet)
		if rep.Status == wire.StatusOK {
			found++
			if rep.Item.Stale {
				stale++
			}
		}
		return found, stale
	}
	const all = 1 + 2*2 + 1
	bustest.WaitFor(t, 10*time.Second, "the records past their TTL", func() bool {
		found, _ := paths("sessions")
		other, _ := paths("other")
		return found == 0 && other == 0
	})

	state, err := persistence.OpenOrBindState(ctx, cl.conn())
	if err != nil {
		t.Fatal(err)
	}
	pub, err := bus.NewPublisher(cl.conn(), "fallback-test")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := state.SetFallback(ctx, pub, bus.Fallback{On: true, Scope: "sessions", Reason: "test"}); err != nil {
		t.Fatal(err)
	}
	bustest.WaitFor(t, 5*time.Second, "the stale record served on every path", func() bool {
		found, stale := paths("sessions")
		return found == all && stale == all
	})
	if found, _ := paths("other"); found != 0 {
		t.Fatalf("a namespace without fallback served its expired record on %d paths", found)
	}
	// A record written during fallback is fresh.
	if _, err := client.Put(ctx, "sessions", "new", []byte("fresh"), time.Minute); err != nil {
		t.Fatal(err)
	}
	if r, err := client.Get(ctx, "sessions", "new"); err != nil || r.Stale {
		t.Fatalf("fresh record during fallback: %+v %v", r, err)
	}
	rs, err := client.GetMulti(ctx, "sessions", []string{"k", "new"})
	if err != nil || !rs["k"].Stale || rs["new"].Stale || string(rs["k"].Value) != "old" {
		t.Fatalf("multi-get during fallback: %+v %v", rs, err)
	}

	if _, err := state.SetFallback(ctx, pub, bus.Fallback{On: false, Scope: "sessions"}); err != nil {
		t.Fatal(err)
	}
	bustest.WaitFor(t, 5*time.Second, "the stale record hidden again", func() bool {
		found, _ := paths("sessions")
		return found == 0
	})
}
