package persistence

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/nats-io/nats.go/jetstream"
)

// StateConfig configures the cluster state bucket. Its envconfig tags are
// read under CACHEBUS_.
type StateConfig struct {
	Replicas int `envconfig:"STATE_REPLICAS" default:"1" desc:"JetStream replicas of the cluster state bucket (3 on a three-node NATS cluster)"`
}

// DrainState is a drain as kept in the state bucket: the command, and
// whether the member has finished draining.
type DrainState struct {
	Role      string    `json:"role"`
	ID        string    `json:"id"`
	On        bool      `json:"on"`
	Deadline  time.Time `json:"deadline,omitzero"`
	Origin    string    `json:"origin,omitempty"`
	Since     time.Time `json:"since"`
	Drained   bool      `json:"drained"`
	DrainedAt time.Time `json:"drained_at,omitzero"`
}

// ClusterState is the state every member must know before it serves.
type ClusterState struct {
	// Fallbacks by scope ("*" or a namespace), including ones turned off.
	Fallbacks map[string]bus.Fallback `json:"fallbacks"`
	// Drains by "role/id", including cancelled ones.
	Drains map[string]DrainState `json:"drains"`
}

// FallbackActive reports whether fallback is on for namespace ns at now,
// through its own scope or through "*".
func (cs ClusterState) FallbackActive(ns string, now time.Time) bool {
	if f, ok := cs.Fallbacks["*"]; ok && f.Active(now) {
		return true
	}
	f, ok := cs.Fallbacks[ns]
	return ok && ns != "" && f.Active(now)
}

// Draining returns the drain of member role/id when one is on.
func (cs ClusterState) Draining(role, id string) (DrainState, bool) {
	d, ok := cs.Drains[role+"/"+id]
	return d, ok && d.On
}

// ActiveDrains lists the drains that are on, sorted by member.
func (cs ClusterState) ActiveDrains() []DrainState {
	var out []DrainState
	for _, d := range cs.Drains {
		if d.On {
			out = append(out, d)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Role+out[i].ID < out[j].Role+out[j].ID })
	return out
}

// State reads and writes the cluster state bucket.
type State struct {
	c  *bus.Conn
	kv jetstream.KeyValue
}

// OpenState opens the cluster state bucket, creating it when missing.
func OpenState(ctx context.Context, c *bus.Conn, cfg StateConfig) (*State, error) {
	if cfg.Replicas <= 0 {
		cfg.Replicas = 1
	}
	kv, err := ensure(ctx, c, "state bucket", func(ctx context.Context) (jetstream.KeyValue, error) {
		return c.JS.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:      c.Subjects.StateBucket(),
			Description: "cachebus cluster state: fallback and drains",
			History:     5,
			Storage:     jetstream.FileStorage,
			Replicas:    cfg.Replicas,
		})
	})
	if err != nil {
		return nil, err
	}
	return &State{c: c, kv: kv}, nil
}

// BindState opens the cluster state bucket without creating or
// reconfiguring it, for commands that must not change what a daemon set up
// (such as its replicas). When no daemon has created the bucket yet the
// error wraps jetstream.ErrBucketNotFound.
func BindState(ctx context.Context, c *bus.Conn) (*State, error) {
	kv, err := ensure(ctx, c, "state bucket "+c.Subjects.StateBucket()+" (created by a cachebus daemon at start)",
		func(ctx context.Context) (jetstream.KeyValue, error) {
			return c.JS.KeyValue(ctx, c.Subjects.StateBucket())
		})
	if err != nil {
		return nil, err
	}
	return &State{c: c, kv: kv}, nil
}

func fallbackKey(scope string) string {
	if scope == "*" || scope == "" {
		return "fallback"
	}
	return "fallback." + scope
}

func drainKey(role, id string) string { return "drain." + role + "." + id }

// SetFallback records f as the fallback state of its scope, then publishes
// it to every member. The record comes first so that a member starting in
// between reads it; it returns the event's sequence in the log.
func (s *State) SetFallback(ctx context.Context, pub *bus.Publisher, f bus.Fallback) (uint64, error) {
	if f.Scope == "" {
		f.Scope = "*"
	}
	if f.Origin == "" {
		f.Origin = pub.Origin()
	}
	if f.TS.IsZero() {
		f.TS = time.Now().UTC()
	}
	if err := f.Validate(); err != nil {
		return 0, err
	}
	data, err := json.Marshal(f)
	if err != nil {
		return 0, err
	}
	if _, err := s.kv.Put(ctx, fallbackKey(f.Scope), data); err != nil {
		return 0, fmt.Errorf("persistence: record fallback: %w", err)
	}
	return pub.Fallback(ctx, f)
}

// SetDrain records the drain of member role/id, then publishes it.
func (s *State) SetDrain(ctx context.Context, pub *bus.Publisher, role, id string, d bus.Drain) (uint64, error) {
	if err := bus.CheckMember(role, id); err != nil {
		return 0, err
	}
	if d.Origin == "" {
		d.Origin = pub.Origin()
	}
	ds := DrainState{Role: role, ID: id, On: d.On, Deadline: d.Deadline, Origin: d.Origin, Since: time.Now().UTC()}
	data, err := json.Marshal(ds)
	if err != nil {
		return 0, err
	}
	if _, err := s.kv.Put(ctx, drainKey(role, id), data); err != nil {
		return 0, fmt.Errorf("persistence: record drain: %w", err)
	}
	return pub.Drain(ctx, role, id, d)
}

// ClearOwnDrain turns off the drain a previous run of member role/id left
// on when it stopped: one whose origin is pub's (the member's own id) and
// that began before started, this run's start. A drain an operator set
// stays as it is. It reports the drain it cleared, if any, so a restarted
// member does not stay draining in the state bucket and on status pages.
func (s *State) ClearOwnDrain(ctx context.Context, cs ClusterState, pub *bus.Publisher, role, id string, started time.Time) (DrainState, bool, error) {
	ds, on := cs.Draining(role, id)
	if !on || ds.Origin != pub.Origin() || ds.Since.After(started) {
		return DrainState{}, false, nil
	}
	if _, err := s.SetDrain(ctx, pub, role, id, bus.Drain{On: false}); err != nil {
		return ds, false, fmt.Errorf("persistence: clear the drain of %s/%s left by its previous run: %w", role, id, err)
	}
	return ds, true, nil
}

// MarkDrained records that member role/id has finished draining, for
// `cachebus drain --wait` and the status page.
func (s *State) MarkDrained(ctx context.Context, role, id string) error {
	entry, err := s.kv.Get(ctx, drainKey(role, id))
	if err != nil {
		return fmt.Errorf("persistence: drain of %s/%s: %w", role, id, err)
	}
	var ds DrainState
	if err := json.Unmarshal(entry.Value(), &ds); err != nil {
		return fmt.Errorf("persistence: drain of %s/%s: %w", role, id, err)
	}
	if ds.Drained || !ds.On {
		return nil
	}
	ds.Drained, ds.DrainedAt = true, time.Now().UTC()
	data, _ := json.Marshal(ds)
	if _, err := s.kv.Update(ctx, drainKey(role, id), data, entry.Revision()); err != nil {
		return fmt.Errorf("persistence: mark %s/%s drained: %w", role, id, err)
	}
	return nil
}

// Load reads the whole cluster state once.
func (s *State) Load(ctx context.Context) (ClusterState, error) {
	w, err := s.kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return ClusterState{}, fmt.Errorf("persistence: read state: %w", err)
	}
	defer func() { _ = w.Stop() }()
	cs := emptyState()
	for {
		select {
		case e := <-w.Updates():
			if e == nil {
				return cs, nil
			}
			s.apply(&cs, e)
		case <-ctx.Done():
			return ClusterState{}, fmt.Errorf("persistence: read state: %w", ctx.Err())
		}
	}
}

func emptyState() ClusterState {
	return ClusterState{Fallbacks: map[string]bus.Fallback{}, Drains: map[string]DrainState{}}
}

func (s *State) apply(cs *ClusterState, e jetstream.KeyValueEntry) {
	key := e.Key()
	deleted := e.Operation() != jetstream.KeyValuePut
	switch {
	case key == "fallback" || strings.HasPrefix(key, "fallback."):
		scope := strings.TrimPrefix(strings.TrimPrefix(key, "fallback"), ".")
		if scope == "" {
			scope = "*"
		}
		if deleted {
			delete(cs.Fallbacks, scope)
			return
		}
		var f bus.Fallback
		if err := json.Unmarshal(e.Value(), &f); err != nil {
			s.c.Log.Warn("bad fallback record in state bucket", "key", key, "err", err)
			return
		}
		cs.Fallbacks[scope] = f
	case strings.HasPrefix(key, "drain."):
		parts := strings.SplitN(key, ".", 3)
		if len(parts) != 3 {
			return
		}
		if deleted {
			delete(cs.Drains, parts[1]+"/"+parts[2])
			return
		}
		var ds DrainState
		if err := json.Unmarshal(e.Value(), &ds); err != nil {
			s.c.Log.Warn("bad drain record in state bucket", "key", key, "err", err)
			return
		}
		cs.Drains[parts[1]+"/"+parts[2]] = ds
	}
}

// Follower keeps a current copy of the cluster state, updated as it
// changes.
type Follower struct {
	s       *State
	w       jetstream.KeyWatcher
	mu      sync.RWMutex
	cs      ClusterState
	notify  []func(ClusterState)
	done    chan struct{}
	stopped chan struct{}
}

// Follow reads the current cluster state and returns once it has it, so a
// member that starts late knows the fallback and drains before it reports
// ready. The state then follows every change until Stop.
func (s *State) Follow(ctx context.Context, onChange ...func(ClusterState)) (*Follower, error) {
	// A watch begun while JetStream elects the bucket's leader (a NATS
	// server just died) may never deliver its first entries: each attempt
	// is bounded, and a stuck one is replaced by a new watch.
	f := &Follower{s: s, notify: onChange, done: make(chan struct{}), stopped: make(chan struct{})}
	attempt := 5 * time.Second
	for {
		w, cs, err := s.watchInitial(ctx, attempt)
		if err == nil {
			f.w, f.cs = w, cs
			go f.run()
			return f, nil
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("persistence: follow state: %w (last error: %v)", ctx.Err(), err)
		}
		s.c.Log.Info("cluster state not read yet, retrying", "err", err)
		attempt = min(2*attempt, 30*time.Second)
	}
}

// watchInitial starts a watch of the whole bucket and reads its current
// entries, within limit.
func (s *State) watchInitial(ctx context.Context, limit time.Duration) (jetstream.KeyWatcher, ClusterState, error) {
	cs := emptyState()
	w, err := s.kv.WatchAll(context.Background(), jetstream.IgnoreDeletes())
	if err != nil {
		return nil, cs, fmt.Errorf("watch: %w", err)
	}
	t := time.NewTimer(limit)
	defer t.Stop()
	for {
		select {
		case e := <-w.Updates():
			if e == nil {
				return w, cs, nil
			}
			s.apply(&cs, e)
		case <-t.C:
			_ = w.Stop()
			return nil, cs, fmt.Errorf("no current entries within %s", limit)
		case <-ctx.Done():
			_ = w.Stop()
			return nil, cs, ctx.Err()
		}
	}
}

func (f *Follower) run() {
	defer close(f.stopped)
	for {
		select {
		case <-f.done:
			return
		case e, ok := <-f.w.Updates():
			if !ok {
				return
			}
			if e == nil {
				continue
			}
			f.mu.Lock()
			next := ClusterState{Fallbacks: maps.Clone(f.cs.Fallbacks), Drains: maps.Clone(f.cs.Drains)}
			f.s.apply(&next, e)
			f.cs = next
			f.mu.Unlock()
			for _, fn := range f.notify {
				fn(next)
			}
		}
	}
}

// Current returns the latest cluster state; callers must not modify it.
func (f *Follower) Current() ClusterState {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.cs
}

// Stop ends following.
func (f *Follower) Stop() {
	select {
	case <-f.done:
		return
	default:
	}
	close(f.done)
	_ = f.w.Stop()
	<-f.stopped
}

// OpenOrBindState opens the state bucket as a daemon left it, creating it
// with default settings only when no daemon has yet.
func OpenOrBindState(ctx context.Context, c *bus.Conn) (*State, error) {
	s, err := BindState(ctx, c)
	if err == nil {
		return s, nil
	}
	if !errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, err
	}
	return OpenState(ctx, c, StateConfig{})
}
