package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/nats-io/nats.go/jetstream"
)

// watchConfig configures `cachebus watch`.
type watchConfig struct {
	ClientConfig
	From uint64 `ignored:"true"`
	NS   string `ignored:"true"`
}

func init() {
	register(&command{
		name:    "watch",
		summary: "tail the event log: one line per event with its origin, until Ctrl-C",
		usage:   "[--from SEQ] [--ns NS]",
		config:  func() any { return &watchConfig{} },
		flags: func(fs *flag.FlagSet, cfg any) {
			c := cfg.(*watchConfig)
			fs.Uint64Var(&c.From, "from", 0, "start at this sequence of the log (default: new events only)")
			fs.StringVar(&c.NS, "ns", "", "only expires and seeds of this namespace, and fallbacks that cover it")
		},
		run: runWatch,
	})
}

func runWatch(ctx context.Context, env *runEnv, cfgAny any, args []string) error {
	cfg := cfgAny.(*watchConfig)
	if len(args) > 0 {
		return usagef("unexpected arguments %q", args)
	}
	if cfg.NS != "" {
		if err := bus.CheckNamespace(cfg.NS); err != nil {
			return usageFromValidation(err)
		}
	}
	conn, err := cfg.connect(ctx, env, "watch")
	if err != nil {
		return err
	}
	defer closeConn(env, conn)
	subj := conn.Subjects
	name := subj.EventStream()

	occ := jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverNewPolicy, InactiveThreshold: 30 * time.Second}
	if cfg.From > 0 {
		occ.DeliverPolicy, occ.OptStartSeq = jetstream.DeliverByStartSequencePolicy, cfg.From
	}
	if cfg.NS != "" {
		occ.FilterSubjects = []string{subj.Expire(cfg.NS), subj.Seed(cfg.NS), subj.Fallback()}
	}
	sctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	stream, err := conn.JS.Stream(sctx, name)
	if err != nil {
		return fmt.Errorf("event log %s: %w", name, err)
	}
	info, err := stream.Info(sctx)
	if err != nil {
		return fmt.Errorf("event log %s: %w", name, err)
	}
	cons, err := stream.OrderedConsumer(sctx, occ)
	if err != nil {
		return fmt.Errorf("event log %s: %w", name, err)
	}
	from := fmt.Sprintf("after seq %d", info.State.LastSeq)
	if cfg.From > 0 {
		from = fmt.Sprintf("from seq %d", cfg.From)
	}
	fmt.Fprintf(env.stderr, "watching %s %s (Ctrl-C to stop)\n", name, from)

	cc, err := cons.Consume(func(m jetstream.Msg) {
		line := watchLine(subj, m, cfg.NS)
		if line != "" {
			fmt.Fprintln(env.stdout, line)
		}
	}, jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
		if !errors.Is(err, jetstream.ErrNoHeartbeat) {
			env.log.Debug("event log consumer", "err", err)
		}
	}))
	if err != nil {
		return fmt.Errorf("event log %s: %w", name, err)
	}
	<-ctx.Done()
	cc.Stop()
	<-cc.Closed()
	return nil
}

// watchLine formats one event: seq, time, kind, subject, origin, summary.
// A message that does not decode is shown as kind "invalid" with the reason.
func watchLine(subj bus.Subjects, m jetstream.Msg, ns string) string {
	var seq uint64
	var ts time.Time
	if meta, err := m.Metadata(); err == nil {
		seq, ts = meta.Sequence.Stream, meta.Timestamp
	}
	kind, origin, summary := "invalid", "-", ""
	ev, err := bus.DecodeEvent(subj, m.Subject(), m.Data())
	if err != nil {
		summary = err.Error()
	} else {
		if ns != "" && ev.Fallback != nil && !ev.Fallback.Covers(ns) {
			return ""
		}
		kind, summary = ev.Kind, describe(ev)
		if o := ev.Origin(); o != "" {
			origin = o
		}
	}
	return fmt.Sprintf("%-7d %s  %-8s %-30s %-20s %s", seq, ts.UTC().Format("2006-01-02T15:04:05.000Z"), kind, m.Subject(), origin, summary)
}
