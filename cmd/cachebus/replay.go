package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/cachenode/partition"
	"github.com/cachebus/cachebus/cachenode/server"
	"github.com/nats-io/nats.go"
)

// replayConfig configures `cachebus replay`.
type replayConfig struct {
	ClientConfig
	bus.HeartbeatConfig
	NS         string        `ignored:"true"`
	Partitions string        `ignored:"true"`
	WaitFor    time.Duration `ignored:"true"`
}

func init() {
	register(&command{
		name:    "replay",
		summary: "have every live cache node read a long-term namespace back from the record log for the partitions it holds",
		usage:   "--ns NS [--partitions LIST] [--timeout D]",
		config:  func() any { return &replayConfig{} },
		flags: func(fs *flag.FlagSet, cfg any) {
			c := cfg.(*replayConfig)
			fs.StringVar(&c.NS, "ns", "", "the long-term namespace to read back (required)")
			fs.StringVar(&c.Partitions, "partitions", "", "only these partitions, such as 0-99,512,700-710 (default: every partition a node holds)")
			fs.DurationVar(&c.WaitFor, "timeout", 5*time.Minute, "how long to wait for every live cache node to answer")
		},
		run: runReplay,
	})
}

func runReplay(ctx context.Context, env *runEnv, cfgAny any, args []string) error {
	cfg := cfgAny.(*replayConfig)
	if len(args) > 0 {
		return usagef("unexpected arguments %q", args)
	}
	if cfg.NS == "" {
		return usagef("--ns: name the long-term namespace to read back")
	}
	if err := bus.CheckNamespace(cfg.NS); err != nil {
		return usageFromValidation(err)
	}
	parts, err := parsePartitionList(cfg.Partitions)
	if err != nil {
		return err
	}
	if cfg.WaitFor <= 0 {
		return usagef("--timeout: must be positive, got %s", cfg.WaitFor)
	}
	if cfg.Interval <= 0 {
		return usagef("CACHEBUS_HEARTBEAT_INTERVAL: must be positive, got %s", cfg.Interval)
	}
	origin, err := cfg.origin()
	if err != nil {
		return err
	}
	req, err := json.Marshal(server.ReplayRequest{V: 1, NS: cfg.NS, Partitions: parts, Origin: origin})
	if err != nil {
		return fmt.Errorf("replay: %w", err)
	}
	conn, err := cfg.connect(ctx, env, "replay")
	if err != nil {
		return err
	}
	defer closeConn(env, conn)
	tctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	tier, err := trackTier(tctx, conn, cfg.FailureTimeout)
	cancel()
	if err != nil {
		return fmt.Errorf("replay: %w", err)
	}
	if tier == nil {
		return fmt.Errorf("replay: no cache tier on this NATS (no %s bucket): start cache nodes first", conn.Subjects.NodesBucket())
	}
	defer tier.Stop()
	if err := hearBeats(ctx, cfg.Interval); err != nil {
		return err
	}
	live := slices.Sorted(maps.Keys(tier.Table().Nodes))
	if len(live) == 0 {
		return fmt.Errorf("replay: no live cache node")
	}

	replies := make(chan *nats.Msg, 64)
	inbox := conn.NC.NewInbox()
	sub, err := conn.NC.ChanSubscribe(inbox, replies)
	if err != nil {
		return fmt.Errorf("replay: subscribe %s: %w", inbox, err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	_ = sub.SetPendingLimits(-1, -1)
	start := time.Now()
	if err := conn.NC.PublishRequest(conn.Subjects.RecordReplay(), inbox, req); err != nil {
		return fmt.Errorf("replay: publish: %w", err)
	}
	what := "every partition each holds"
	if len(parts) > 0 {
		what = fmt.Sprintf("the partitions each holds among %s (%s)", cfg.Partitions, plural(len(parts), "partition", "partitions"))
	}
	fmt.Fprintf(env.stdout, "replaying %s on %s: %s\n", cfg.NS, plural(len(live), "live node", "live nodes"), what)

	w := replayWait{env: env, ns: cfg.NS, expected: live, got: map[string]*server.ReplayReply{}, gone: map[string]bool{}}
	limit := time.NewTimer(cfg.WaitFor)
	defer limit.Stop()
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	for !w.done() {
		select {
		case m := <-replies:
			w.reply(m.Data)
		case <-tick.C:
			tab := tier.Table()
			for _, id := range w.pending() {
				if !tab.Live(id) {
					w.gone[id] = true
					continue
				}
				if mem, ok := tier.Members().Get(bus.RoleNode, id); ok && mem.Replay != nil {
					fmt.Fprintf(env.stdout, "%s %s\n", id, describeReplay(mem.Replay))
				}
			}
		case <-limit.C:
			return w.finish(time.Since(start), fmt.Sprintf("no answer within %s", cfg.WaitFor))
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return w.finish(time.Since(start), "")
}

// replayWait collects the nodes' answers to a replay request.
type replayWait struct {
	env      *runEnv
	ns       string
	expected []string                       // live nodes when the request went
	got      map[string]*server.ReplayReply // by node
	gone     map[string]bool                // expected nodes that died unanswered
	bad      int                            // answers that could not be read
}

// reply records one answer.
func (w *replayWait) reply(data []byte) {
	var rep server.ReplayReply
	if err := json.Unmarshal(data, &rep); err != nil || !bus.ValidName(rep.Node) {
		w.bad++
		w.env.log.Warn("unreadable replay answer", "bytes", len(data), "err", err)
		return
	}
	w.got[rep.Node] = &rep
}

// pending lists the expected nodes that have not answered and are not
// known gone.
func (w *replayWait) pending() []string {
	var out []string
	for _, id := range w.expected {
		if w.got[id] == nil && !w.gone[id] {
			out = append(out, id)
		}
	}
	return out
}

func (w *replayWait) done() bool { return len(w.pending()) == 0 }

// finish prints each node's answer and the total, and fails when a node
// refused, failed or did not answer.
func (w *replayWait) finish(elapsed time.Duration, missing string) error {
	ids := slices.Clone(w.expected)
	for id := range w.got {
		if !slices.Contains(ids, id) {
			ids = append(ids, id) // a node that came up meanwhile
		}
	}
	slices.Sort(ids)
	failed := writeReplayReplies(w.env.stdout, ids, w.got, w.gone, missing, elapsed)
	failed += w.bad
	if failed > 0 {
		return fmt.Errorf("replay of %s: %d of %s failed or did not answer", w.ns, failed, plural(len(ids)+w.bad, "node", "nodes"))
	}
	return nil
}

// writeReplayReplies prints the answers as a table with a total and
// returns how many nodes failed or did not answer.
func writeReplayReplies(out io.Writer, ids []string, got map[string]*server.ReplayReply, gone map[string]bool, missing string, elapsed time.Duration) int {
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "NODE\tPARTITIONS\tRECORDS\tAPPLIED\tDELETED\tOLDER\tBYTES\tTOOK\tRATE\tREJECTED\tRESULT\n")
	var total server.ReplayReply
	failed, ok := 0, 0
	for _, id := range ids {
		rep := got[id]
		if rep == nil {
			why := missing
			if gone[id] {
				why = "left before answering"
			}
			if why == "" {
				why = "no answer"
			}
			fmt.Fprintf(tw, "%s\t-\t-\t-\t-\t-\t-\t-\t-\t-\t%s\n", id, why)
			failed++
			continue
		}
		result := "ok"
		if err := rep.Err(); err != nil {
			result = "error: " + err.Error()
			failed++
		} else {
			ok++
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%s\t%d\t%s\n", id, rep.Partitions, rep.Records, rep.Applied,
			rep.Deleted, rep.Older, rep.Bytes, rep.Took, formatRate(rep.Rate), rep.Rejected, result)
		total.Partitions += rep.Partitions
		total.Records += rep.Records
		total.Applied += rep.Applied
		total.Deleted += rep.Deleted
		total.Older += rep.Older
		total.Bytes += rep.Bytes
		total.Rejected += rep.Rejected
	}
	result := fmt.Sprintf("%d of %d ok", ok, len(ids))
	fmt.Fprintf(tw, "total\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%s\t%d\t%s\n", total.Partitions, total.Records, total.Applied,
		total.Deleted, total.Older, total.Bytes, elapsed.Round(time.Millisecond), formatRate(float64(total.Records)/max(elapsed.Seconds(), 1e-9)),
		total.Rejected, result)
	_ = tw.Flush()
	return failed
}

// formatRate prints records per second.
func formatRate(r float64) string { return strconv.FormatInt(int64(r), 10) + "/s" }

// describeReplay is one line of a node's replay under way, from its
// heartbeat.
func describeReplay(r *bus.HeartbeatReplay) string {
	return fmt.Sprintf("replaying %s %.0f%% %d records %s %s %s", r.NS, r.Percent, r.Records, formatBytes(r.Bytes),
		formatRate(r.Rate), plural(r.Partitions, "partition", "partitions"))
}

// formatBytes prints a byte count in B, KiB, MiB or GiB.
func formatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	f, suffix := float64(n), ""
	for _, s := range []string{"KiB", "MiB", "GiB", "TiB"} {
		f /= unit
		suffix = s
		if f < unit {
			break
		}
	}
	return fmt.Sprintf("%.1f%s", f, suffix)
}

// parsePartitionList reads a partition list such as 0-99,512,700-710:
// partitions and inclusive ranges, comma-separated, each 0 to 1023. It
// returns them sorted, without repeats; an empty list is nil (every
// partition).
func parsePartitionList(s string) ([]int, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var set [partition.Partitions]bool
	num := func(tok string) (int, error) {
		n, err := strconv.Atoi(strings.TrimSpace(tok))
		if err != nil {
			return 0, usagef("--partitions: %q is not a partition number", strings.TrimSpace(tok))
		}
		if n < 0 || n >= partition.Partitions {
			return 0, usagef("--partitions: partition %d out of range 0 to %d", n, partition.Partitions-1)
		}
		return n, nil
	}
	for item := range strings.SplitSeq(s, ",") {
		if strings.TrimSpace(item) == "" {
			return nil, usagef("--partitions: empty item in %q (want a list such as 0-99,512,700-710)", s)
		}
		lo, hi, isRange := strings.Cut(item, "-")
		a, err := num(lo)
		if err != nil {
			return nil, err
		}
		b := a
		if isRange {
			if b, err = num(hi); err != nil {
				return nil, err
			}
			if b < a {
				return nil, usagef("--partitions: range %s runs backwards", strings.TrimSpace(item))
			}
		}
		for p := a; p <= b; p++ {
			set[p] = true
		}
	}
	var out []int
	for p, ok := range set {
		if ok {
			out = append(out, p)
		}
	}
	return out, nil
}
