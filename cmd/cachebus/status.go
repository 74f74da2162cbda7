package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/cachebus/cachebus/admin"
	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/cachenode/topology"
	"github.com/cachebus/cachebus/persistence"
	"github.com/nats-io/nats.go/jetstream"
)

// statusConfig configures `cachebus status`.
type statusConfig struct {
	ClientConfig
	bus.HeartbeatConfig
	JSON bool `ignored:"true"`
}

func init() {
	register(&command{
		name:    "status",
		summary: "show members, fallback, drains, the event log's position and the cache tier",
		usage:   "[--json]",
		config:  func() any { return &statusConfig{} },
		flags: func(fs *flag.FlagSet, cfg any) {
			fs.BoolVar(&cfg.(*statusConfig).JSON, "json", false, "print JSON (the same document as GET /v1/status)")
		},
		run: runStatus,
	})
}

func runStatus(ctx context.Context, env *runEnv, cfgAny any, args []string) error {
	cfg := cfgAny.(*statusConfig)
	if len(args) > 0 {
		return usagef("unexpected arguments %q", args)
	}
	if cfg.Interval <= 0 {
		return usagef("CACHEBUS_HEARTBEAT_INTERVAL: must be positive, got %s", cfg.Interval)
	}
	conn, err := cfg.connect(ctx, env, "status")
	if err != nil {
		return err
	}
	defer closeConn(env, conn)
	// The cache tier, when there is one: its tracker follows the
	// assignment and tracks the members of every role from heartbeats.
	tier, tierErr := trackTier(ctx, conn, cfg.FailureTimeout)
	var members *bus.Membership
	if tier != nil {
		defer tier.Stop()
		members = tier.Members()
	} else {
		if members, err = bus.TrackMembers(conn, cfg.FailureTimeout, bus.MembershipEvents{}); err != nil {
			return err
		}
		defer members.Stop()
	}
	if err := hearBeats(ctx, cfg.Interval); err != nil {
		return err
	}

	cctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	var stateFn admin.StateFunc
	state, stateErr := bindState(cctx, conn)
	if stateErr == nil {
		stateFn = state.Load
	}
	st, err := admin.Collect(cctx, conn, stateFn, members)
	for _, e := range []error{stateErr, tierErr} {
		if e != nil {
			st.Errors = append(st.Errors, e.Error())
			if err == nil {
				err = e
			}
		}
	}
	var sum *topology.Summary
	if tier != nil {
		if s := tier.Table().Summary(tier.Baseline()); s.BaselineVersion != 0 || len(s.Nodes) > 0 {
			sum = &s
		}
	}
	if cfg.JSON {
		if sum != nil {
			if st.Sections == nil {
				st.Sections = map[string]any{}
			}
			st.Sections["cache"] = sum
		}
		enc := json.NewEncoder(env.stdout)
		enc.SetIndent("", "  ")
		if encErr := enc.Encode(st); encErr != nil {
			return fmt.Errorf("status: %w", encErr)
		}
	} else {
		if tblErr := admin.WriteTable(env.stdout, st); tblErr != nil {
			return fmt.Errorf("status: %w", tblErr)
		}
		if sum != nil {
			if tblErr := writeTier(env.stdout, sum); tblErr != nil {
				return fmt.Errorf("status: %w", tblErr)
			}
		}
		if tblErr := writeReplays(env.stdout, st.Members); tblErr != nil {
			return fmt.Errorf("status: %w", tblErr)
		}
	}
	if err != nil {
		return fmt.Errorf("status incomplete: %w", err)
	}
	return nil
}

// hearBeats waits a heartbeat interval and a half: every live member
// heartbeats within an interval, so by then each one has been heard.
func hearBeats(ctx context.Context, interval time.Duration) error {
	select {
	case <-time.After(interval * 3 / 2):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// trackTier follows the cache tier's assignment and heartbeats; nil
// without an error when no cache tier was ever set up on this NATS.
func trackTier(ctx context.Context, conn *bus.Conn, failureTimeout time.Duration) (*topology.Tracker, error) {
	nodes, err := persistence.BindNodes(ctx, conn)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("cache tier: %w", err)
	}
	t, err := topology.Track(ctx, conn, nodes, failureTimeout, nil)
	if err != nil {
		return nil, fmt.Errorf("cache tier: %w", err)
	}
	return t, nil
}

// writeTier prints the cache tier: whether every partition is served by a
// live owner holding it, and each node's share.
func writeTier(w io.Writer, s *topology.Summary) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	p := func(format string, args ...any) { fmt.Fprintf(tw, format, args...) }
	ready := "ready"
	switch {
	case s.BaselineVersion == 0:
		ready = "not ready: no baseline (cachebus baseline set ID...)"
	case !s.Ready:
		ready = fmt.Sprintf("not ready: %d partitions uncovered, %d moving", s.Uncovered, s.Moving)
	}
	p("CACHE TIER\t%s  baseline v%d  assignment v%d  %s  cross-dc %s\n", ready, s.BaselineVersion, s.AssignmentVersion,
		plural(s.Backups, "backup", "backups"), onOff(s.CrossDC))
	p("  NODE\tDC\tBASELINE\tSTATE\tPRIMARY\tBACKUP\tSERVING\tHELD\tMISSING\n")
	for _, n := range s.Nodes {
		state := "down"
		switch {
		case n.Draining:
			state = "draining"
		case n.Live && n.Missing > 0:
			state = "copying"
		case n.Live:
			state = "up"
		}
		p("  %s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\n", n.ID, dashIfEmpty(n.DC), yesNo(n.InBaseline), state,
			n.Primary, n.Backup, n.Serving, n.Held, n.Missing)
	}
	return tw.Flush()
}

// writeReplays prints the replays of long-term records under way, one
// line per cache node from its heartbeat; nothing when none runs.
func writeReplays(w io.Writer, members []bus.Member) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	header := false
	for _, m := range members {
		if m.Role != bus.RoleNode || m.Replay == nil {
			continue
		}
		if !header {
			fmt.Fprintf(tw, "REPLAYS\n")
			header = true
		}
		fmt.Fprintf(tw, "  %s\t%s\n", m.ID, describeReplay(m.Replay))
	}
	return tw.Flush()
}

func dashIfEmpty(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
