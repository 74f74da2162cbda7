package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/bits"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/persistence"
)

// drainConfig configures `cachebus drain`.
type drainConfig struct {
	ClientConfig
	FailureTimeout time.Duration `envconfig:"FAILURE_TIMEOUT" default:"5s" desc:"a member silent this long is dead (for --wait)"`
	Off            bool          `ignored:"true"`
	Deadline       string        `ignored:"true"`
	Wait           bool          `ignored:"true"`
	WaitFor        time.Duration `ignored:"true"`
}

func init() {
	register(&command{
		name:    "drain",
		summary: "take a member out of service (no new work), or put it back with --off",
		usage:   "<node|gateway|app|client> <id> [--off] [--deadline T] [--wait [--timeout D]]",
		config:  func() any { return &drainConfig{} },
		flags: func(fs *flag.FlagSet, cfg any) {
			c := cfg.(*drainConfig)
			fs.BoolVar(&c.Off, "off", false, "cancel the drain: the member takes new work again")
			fs.StringVar(&c.Deadline, "deadline", "", "when the member should be drained by: an RFC 3339 time or a duration such as 10m")
			fs.BoolVar(&c.Wait, "wait", false, "wait until the member reports it is drained or leaves, printing progress")
			fs.DurationVar(&c.WaitFor, "timeout", 10*time.Minute, "how long --wait waits before it gives up")
		},
		run: runDrain,
	})
}

func runDrain(ctx context.Context, env *runEnv, cfgAny any, args []string) error {
	cfg := cfgAny.(*drainConfig)
	if len(args) != 2 {
		return usagef("want <role> <id>, got %d arguments", len(args))
	}
	role, id := args[0], args[1]
	if err := bus.CheckMember(role, id); err != nil {
		return usageFromValidation(err)
	}
	d := bus.Drain{On: !cfg.Off}
	var err error
	if d.Deadline, err = parseWhen("deadline", cfg.Deadline, time.Now()); err != nil {
		return err
	}
	if cfg.Off && (cfg.Wait || !d.Deadline.IsZero()) {
		return usagef("--wait and --deadline apply to a drain, not to --off")
	}
	if cfg.Wait && cfg.WaitFor <= 0 {
		return usagef("--timeout: must be positive, got %s", cfg.WaitFor)
	}

	conn, pub, err := cfg.publisher(ctx, env, "drain")
	if err != nil {
		return err
	}
	defer closeConn(env, conn)
	pctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	state, err := bindState(pctx, conn)
	if err != nil {
		return err
	}

	// Watch before publishing, so no step of the drain is missed.
	var w *drainWatch
	if cfg.Wait {
		if w, err = watchDrain(pctx, conn, state, cfg.FailureTimeout, role, id); err != nil {
			return err
		}
		defer w.stop()
	}
	sent := time.Now().UTC()
	seq, err := state.SetDrain(pctx, pub, role, id, d)
	if err != nil {
		return fmt.Errorf("drain: %w", err)
	}
	fmt.Fprintf(env.stdout, "sent drain %s origin=%s seq=%d\n", describeDrain(role, id, d), pub.Origin(), seq)
	if w == nil {
		return nil
	}
	return w.wait(ctx, env, sent, cfg.FailureTimeout, cfg.WaitFor)
}

// drainWatch follows one member's drain in the state bucket and its
// heartbeats, for --wait.
type drainWatch struct {
	role, id string
	members  *bus.Membership
	follower *persistence.Follower
	changed  chan struct{}
	left     chan string
}

func watchDrain(ctx context.Context, conn *bus.Conn, state *persistence.State, failure time.Duration, role, id string) (*drainWatch, error) {
	w := &drainWatch{role: role, id: id, changed: make(chan struct{}, 1), left: make(chan string, 1)}
	poke := func() {
		select {
		case w.changed <- struct{}{}:
		default:
		}
	}
	mine := func(m bus.Member) bool { return m.Role == role && m.ID == id }
	var err error
	w.members, err = bus.TrackMembers(conn, failure, bus.MembershipEvents{
		Join:   func(m bus.Member) { poke() },
		Change: func(_, m bus.Member) { poke() },
		// A draining cache node's partitions held go down beat by beat.
		Beat: func(m bus.Member) {
			if mine(m) {
				poke()
			}
		},
		Leave: func(m bus.Member, reason string) {
			if mine(m) {
				select {
				case w.left <- reason:
				default:
				}
			}
		},
	})
	if err != nil {
		return nil, err
	}
	w.follower, err = state.Follow(ctx, func(persistence.ClusterState) { poke() })
	if err != nil {
		w.members.Stop()
		return nil, err
	}
	return w, nil
}

func (w *drainWatch) stop() {
	w.follower.Stop()
	w.members.Stop()
}

// wait returns once the member is marked drained (by a drain begun at or
// after sent), leaves, or is not alive at all; it prints what changes.
func (w *drainWatch) wait(ctx context.Context, env *runEnv, sent time.Time, failure, limit time.Duration) error {
	key := w.role + "/" + w.id
	start := time.Now()
	giveUp := time.NewTimer(limit)
	defer giveUp.Stop()
	progress := time.NewTicker(5 * time.Second)
	defer progress.Stop()
	// A member that heartbeats is seen within the failure timeout.
	notAlive := time.NewTimer(failure)
	defer notAlive.Stop()
	seen, last, lastState := false, "", ""
	var printed time.Time
	fmt.Fprintf(env.stdout, "waiting for %s to drain (up to %s)\n", key, limit)
	for {
		if ds, ok := w.follower.Current().Drains[key]; ok && ds.On && ds.Drained && !ds.Since.Before(sent.Add(-time.Second)) {
			fmt.Fprintf(env.stdout, "%s drained after %s\n", key, time.Since(start).Round(100*time.Millisecond))
			return nil
		}
		if m, ok := w.members.Get(w.role, w.id); ok {
			seen = true
			// At most a line a second while only the progress changes.
			if now := memberProgress(m); now != last && (m.State != lastState || time.Since(printed) >= time.Second) {
				fmt.Fprintf(env.stdout, "%s %s\n", key, now)
				last, lastState, printed = now, m.State, time.Now()
			}
		}
		select {
		case reason := <-w.left:
			fmt.Fprintf(env.stdout, "%s left (%s) after %s\n", key, reason, time.Since(start).Round(100*time.Millisecond))
			return nil
		case <-notAlive.C:
			if !seen {
				fmt.Fprintf(env.stdout, "%s is not alive (no heartbeat within %s): nothing to wait for\n", key, failure)
				return nil
			}
		case <-w.changed:
		case <-progress.C:
			fmt.Fprintf(env.stdout, "%s still draining after %s (%s)\n", key, time.Since(start).Round(time.Second), last)
		case <-giveUp.C:
			return fmt.Errorf("%s still draining after %s (the drain stays on)", key, limit)
		case <-ctx.Done():
			return errors.New("stopped waiting: the drain stays on")
		}
	}
}

// memberProgress is what --wait prints of a draining member: a cache
// node's partitions still held (each goes once its new owners hold it),
// another member's sessions and load.
func memberProgress(m bus.Member) string {
	if m.Role != "node" {
		return fmt.Sprintf("state=%s sessions=%d load=%.2f", m.State, m.Sessions, m.Load)
	}
	held := 0
	if b, err := bus.DecodeHolds(m.Holds); err == nil {
		for _, x := range b {
			held += bits.OnesCount8(x)
		}
	}
	return fmt.Sprintf("state=%s partitions_held=%d", m.State, held)
}
