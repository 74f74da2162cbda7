package persistence

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/cachenode/partition"
	"github.com/nats-io/nats.go/jetstream"
)

// NodesConfig configures the bucket of the cache tier's baseline and
// assignment. Its envconfig tags are read under CACHEBUS_.
type NodesConfig struct {
	Replicas int `envconfig:"NODES_REPLICAS" default:"1" desc:"JetStream replicas of the baseline and assignment bucket (3 on a three-node NATS cluster)"`
}

// Keys of the nodes bucket.
const (
	baselineKey   = "baseline"
	assignmentKey = "assignment"
)

// Errors of baseline changes that no retry can fix.
var (
	ErrMemberExists  = errors.New("persistence: member already in the baseline")
	ErrMemberMissing = errors.New("persistence: member not in the baseline")
)

// Nodes reads and changes the baseline of the cache tier and its partition
// assignment, kept in the KV bucket Subjects.NodesBucket under the keys
// "baseline" and "assignment" (JSON partition.Baseline and
// partition.Assignment). Every change is a compare-and-set on both keys, so
// concurrent operators never lose each other's changes.
type Nodes struct {
	c  *bus.Conn
	kv jetstream.KeyValue
}

// OpenNodes opens the nodes bucket, creating it or updating its replicas.
func OpenNodes(ctx context.Context, c *bus.Conn, cfg NodesConfig) (*Nodes, error) {
	if cfg.Replicas <= 0 {
		cfg.Replicas = 1
	}
	kv, err := ensure(ctx, c, "nodes bucket", func(ctx context.Context) (jetstream.KeyValue, error) {
		return c.JS.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:      c.Subjects.NodesBucket(),
			Description: "cachebus cache tier: baseline and partition assignment",
			History:     10,
			Storage:     jetstream.FileStorage,
			Replicas:    cfg.Replicas,
		})
	})
	if err != nil {
		return nil, err
	}
	return &Nodes{c: c, kv: kv}, nil
}

// BindNodes opens the nodes bucket without creating or reconfiguring it.
// When it does not exist the error wraps jetstream.ErrBucketNotFound.
func BindNodes(ctx context.Context, c *bus.Conn) (*Nodes, error) {
	kv, err := ensure(ctx, c, "nodes bucket "+c.Subjects.NodesBucket(),
		func(ctx context.Context) (jetstream.KeyValue, error) {
			return c.JS.KeyValue(ctx, c.Subjects.NodesBucket())
		})
	if err != nil {
		return nil, err
	}
	return &Nodes{c: c, kv: kv}, nil
}

// OpenOrBindNodes opens the nodes bucket as a daemon left it, creating it
// with default settings only when none exists yet: the baseline may be set
// before the first node starts.
func OpenOrBindNodes(ctx context.Context, c *bus.Conn) (*Nodes, error) {
	n, err := BindNodes(ctx, c)
	if err == nil {
		return n, nil
	}
	if !errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, err
	}
	return OpenNodes(ctx, c, NodesConfig{})
}

// Bucket is the name of the KV bucket.
func (n *Nodes) Bucket() string { return n.c.Subjects.NodesBucket() }

// StreamInfo asks JetStream about the bucket's stream: its leader and
// replicas say whether this side of the NATS cluster has a quorum.
func (n *Nodes) StreamInfo(ctx context.Context) (*jetstream.StreamInfo, error) {
	st, err := n.kv.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("persistence: nodes bucket %s: %w", n.Bucket(), err)
	}
	kvs, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok {
		return nil, fmt.Errorf("persistence: nodes bucket %s: no stream status", n.Bucket())
	}
	return kvs.StreamInfo(), nil
}

// get reads key into v and returns its revision; a missing key leaves v
// alone and returns revision 0.
func (n *Nodes) get(ctx context.Context, key string, v any) (uint64, error) {
	e, err := n.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("persistence: read %s: %w", key, err)
	}
	if err := json.Unmarshal(e.Value(), v); err != nil {
		return 0, fmt.Errorf("persistence: decode %s (revision %d): %w", key, e.Revision(), err)
	}
	return e.Revision(), nil
}

// Baseline reads the current baseline; Version 0 and no members when none
// was ever set.
func (n *Nodes) Baseline(ctx context.Context) (partition.Baseline, error) {
	var b partition.Baseline
	_, err := n.get(ctx, baselineKey, &b)
	return b, err
}

// Assignment reads the current assignment; Version 0 and no owners when
// none was ever written.
func (n *Nodes) Assignment(ctx context.Context) (partition.Assignment, error) {
	var a partition.Assignment
	_, err := n.get(ctx, assignmentKey, &a)
	return a, err
}

// Change is what a baseline change did.
type Change struct {
	// Baseline is the new baseline.
	Baseline partition.Baseline
	// Assignment is the assignment computed from it. When another writer
	// changed the baseline again before this one wrote its assignment, the
	// newer assignment was kept and Superseded is set.
	Assignment partition.Assignment
	Superseded bool
	// Previous is the assignment in force before the change.
	Previous partition.Assignment
}

// Moved counts the partitions the change moved: primaries and replica sets
// (see partition.Moved).
func (c Change) Moved() (primaries, replicaSets int) {
	return partition.Moved(c.Previous, c.Assignment)
}

// Edit computes a new member list and assignment options from the current
// baseline and assignment. It may be called more than once: again with
// fresh values whenever another writer changed the baseline in between.
type Edit func(cur partition.Baseline, curAssign partition.Assignment) (members []partition.Member, backups int, crossDC bool, err error)

// SetBaseline replaces the baseline's members and recomputes the
// assignment with backups backups per partition, a cross-DC backup when
// crossDC is set.
func (n *Nodes) SetBaseline(ctx context.Context, members []partition.Member, backups int, crossDC bool) (Change, error) {
	return n.Update(ctx, func(partition.Baseline, partition.Assignment) ([]partition.Member, int, bool, error) {
		return members, backups, crossDC, nil
	})
}

// AddMember adds m to the baseline, keeping the backup settings of the
// current assignment (one backup, no cross-DC requirement, when there is
// none yet). It fails with ErrMemberExists when m's id is a member already.
func (n *Nodes) AddMember(ctx context.Context, m partition.Member) (Change, error) {
	return n.Update(ctx, Add(m))
}

// RemoveMember removes member id from the baseline, keeping the backup
// settings of the current assignment. It fails with ErrMemberMissing when
// id is not a member.
func (n *Nodes) RemoveMember(ctx context.Context, id string) (Change, error) {
	return n.Update(ctx, Remove(id))
}

// Add is the edit of AddMember.
func Add(m partition.Member) Edit {
	return func(cur partition.Baseline, a partition.Assignment) ([]partition.Member, int, bool, error) {
		if _, ok := cur.Member(m.ID); ok {
			return nil, 0, false, fmt.Errorf("%w: %s (version %d)", ErrMemberExists, m.ID, cur.Version)
		}
		backups, crossDC := currentOptions(a)
		return append(slices.Clone(cur.Members), m), backups, crossDC, nil
	}
}

// Remove is the edit of RemoveMember.
func Remove(id string) Edit {
	return func(cur partition.Baseline, a partition.Assignment) ([]partition.Member, int, bool, error) {
		if _, ok := cur.Member(id); !ok {
			return nil, 0, false, fmt.Errorf("%w: %s (version %d)", ErrMemberMissing, id, cur.Version)
		}
		backups, crossDC := currentOptions(a)
		return slices.DeleteFunc(slices.Clone(cur.Members), func(m partition.Member) bool { return m.ID == id }),
			backups, crossDC, nil
	}
}

// WithOptions returns e with its backup settings replaced by backups and
// crossDC: an add or remove that also changes the settings.
func (e Edit) WithOptions(backups int, crossDC bool) Edit {
	return func(cur partition.Baseline, a partition.Assignment) ([]partition.Member, int, bool, error) {
		members, _, _, err := e(cur, a)
		return members, backups, crossDC, err
	}
}

// currentOptions returns the backup settings of a, or the defaults when a
// is the zero assignment.
func currentOptions(a partition.Assignment) (backups int, crossDC bool) {
	if a.Version == 0 {
		return 1, false
	}
	return a.Backups, a.CrossDC
}

// Update applies edit to the baseline: it reads the baseline and the
// assignment, calls edit, and writes the baseline with its version bumped
// by compare-and-set on the revision it read, then the assignment computed
// from it with partition.Assign. When another writer changed the baseline
// in between, it reads again and calls edit again, so that no change is
// lost. An error from edit or from Assign ends it with nothing written.
func (n *Nodes) Update(ctx context.Context, edit Edit) (Change, error) {
	for {
		var cur partition.Baseline
		bRev, err := n.get(ctx, baselineKey, &cur)
		if err != nil {
			return Change{}, err
		}
		var prev partition.Assignment
		if _, err := n.get(ctx, assignmentKey, &prev); err != nil {
			return Change{}, err
		}
		members, backups, crossDC, err := edit(cur, prev)
		if err != nil {
			return Change{}, err
		}
		// Past the assignment's baseline too, should someone have deleted
		// the baseline key by hand: versions only increase.
		next := partition.Baseline{Version: max(cur.Version, prev.BaselineVersion) + 1, Members: normalize(members)}
		assign, err := partition.Assign(next, backups, crossDC)
		if err != nil {
			return Change{}, err
		}
		data, err := json.Marshal(next)
		if err != nil {
			return Change{}, err
		}
		if conflict, err := n.compareAndSet(ctx, baselineKey, data, bRev); err != nil {
			return Change{}, fmt.Errorf("persistence: write baseline: %w", err)
		} else if conflict {
			n.c.Log.Debug("baseline changed meanwhile, retrying", "version", cur.Version)
			continue
		}
		ch := Change{Baseline: next, Assignment: assign, Previous: prev}
		ch.Assignment.Version, ch.Superseded, err = n.writeAssignment(ctx, assign)
		if err != nil {
			return ch, fmt.Errorf("persistence: baseline version %d written, its assignment not: %w", next.Version, err)
		}
		n.c.Log.Info("baseline changed", "version", next.Version, "members", len(next.Members),
			"assignment", ch.Assignment.Version)
		return ch, nil
	}
}

// normalize writes each member's default weight explicitly.
func normalize(ms []partition.Member) []partition.Member {
	out := slices.Clone(ms)
	for i := range out {
		if out[i].Weight == 0 {
			out[i].Weight = 1
		}
	}
	return out
}

// writeAssignment writes a, computed from baseline version
// a.BaselineVersion, unless the stored assignment comes from that baseline
// or a newer one already. It returns the version a was written as, or
// superseded.
func (n *Nodes) writeAssignment(ctx context.Context, a partition.Assignment) (version uint64, superseded bool, err error) {
	for {
		var cur partition.Assignment
		rev, err := n.get(ctx, assignmentKey, &cur)
		if err != nil {
			return 0, false, err
		}
		if rev != 0 && cur.BaselineVersion >= a.BaselineVersion {
			return cur.Version, true, nil
		}
		a.Version = cur.Version + 1
		data, err := json.Marshal(a)
		if err != nil {
			return 0, false, err
		}
		conflict, err := n.compareAndSet(ctx, assignmentKey, data, rev)
		if err != nil {
			return 0, false, err
		}
		if !conflict {
			return a.Version, false, nil
		}
	}
}

// compareAndSet writes key if its revision is still rev, where 0 means
// absent (never written, or deleted); conflict reports that it was not.
func (n *Nodes) compareAndSet(ctx context.Context, key string, data []byte, rev uint64) (conflict bool, err error) {
	if rev == 0 {
		_, err = n.kv.Create(ctx, key, data)
		if errors.Is(err, jetstream.ErrKeyExists) {
			return true, nil
		}
		return false, err
	}
	_, err = n.kv.Update(ctx, key, data, rev)
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return true, nil
	}
	return false, err
}

// Watcher follows the baseline and the assignment; see Nodes.Watch.
type Watcher struct {
	w       jetstream.KeyWatcher
	done    chan struct{}
	stopped chan struct{}
	once    sync.Once
}

// Watch calls fn with the current baseline and assignment, before it
// returns, and then with both again after every change until ctx ends or
// Stop is called. The values are zero when none was ever set.
//
// A change writes the baseline first and its assignment next; fn is called
// once the two match (Assignment.BaselineVersion == Baseline.Version), so
// it never sees a baseline with the previous assignment. Only the first
// call may see them differ: when a writer stopped between its two writes,
// until the next change repairs it. Calls are sequential, from one
// goroutine; fn must not block for long, nor call Stop.
func (n *Nodes) Watch(ctx context.Context, fn func(partition.Baseline, partition.Assignment)) (*Watcher, error) {
	// WatchAll rather than WatchFiltered: servers before 2.10 cannot filter
	// a consumer on two subjects, and the bucket holds nothing else.
	kw, err := n.kv.WatchAll(context.Background(), jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("persistence: watch baseline: %w", err)
	}
	w := &Watcher{w: kw, done: make(chan struct{}), stopped: make(chan struct{})}
	var b partition.Baseline
	var a partition.Assignment
	for initial := true; initial; {
		select {
		case e := <-kw.Updates():
			if e == nil {
				initial = false
				continue
			}
			n.decode(e, &b, &a)
		case <-ctx.Done():
			_ = kw.Stop()
			return nil, fmt.Errorf("persistence: watch baseline: %w", ctx.Err())
		}
	}
	fn(b, a)
	go w.run(ctx, n, fn, b, a)
	return w, nil
}

// decode applies a watched entry to b or a, logging one it cannot read.
func (n *Nodes) decode(e jetstream.KeyValueEntry, b *partition.Baseline, a *partition.Assignment) bool {
	var err error
	switch e.Key() {
	case baselineKey:
		var nb partition.Baseline
		if err = json.Unmarshal(e.Value(), &nb); err == nil {
			*b = nb
		}
	case assignmentKey:
		var na partition.Assignment
		if err = json.Unmarshal(e.Value(), &na); err == nil {
			*a = na
		}
	default:
		return false
	}
	if err != nil {
		n.c.Log.Warn("bad record in nodes bucket", "key", e.Key(), "revision", e.Revision(), "err", err)
		return false
	}
	return true
}

func (w *Watcher) run(ctx context.Context, n *Nodes, fn func(partition.Baseline, partition.Assignment), b partition.Baseline, a partition.Assignment) {
	defer close(w.stopped)
	defer func() { _ = w.w.Stop() }()
	lastB, lastA := b.Version, a.Version
	for {
		select {
		case <-w.done:
			return
		case <-ctx.Done():
			return
		case e, ok := <-w.w.Updates():
			if !ok {
				return
			}
			if e == nil || !n.decode(e, &b, &a) {
				continue
			}
			if a.BaselineVersion != b.Version || (b.Version == lastB && a.Version == lastA) {
				continue
			}
			lastB, lastA = b.Version, a.Version
			fn(b, a)
		}
	}
}

// Stop ends the watch; fn is not called after Stop returns.
func (w *Watcher) Stop() {
	w.once.Do(func() { close(w.done) })
	<-w.stopped
}

// Done is closed when the watch has ended, by Stop or by its context.
func (w *Watcher) Done() <-chan struct{} { return w.stopped }
