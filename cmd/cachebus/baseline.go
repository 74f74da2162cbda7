package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/cachenode/partition"
	"github.com/cachebus/cachebus/persistence"
	"github.com/nats-io/nats.go/jetstream"
)

// baselineConfig configures `cachebus baseline`.
type baselineConfig struct {
	ClientConfig
	Backups int  `envconfig:"BACKUPS" default:"1" desc:"backups per partition besides the primary, for baseline set (add and remove keep the current number unless this or --backups is given)"`
	CrossDC bool `envconfig:"CROSS_DC_BACKUP" default:"false" desc:"require a backup in a data center other than the primary's (as CACHEBUS_BACKUPS for add and remove)"`
	JSON    bool `ignored:"true"`

	fs *flag.FlagSet // to tell flags given from defaults
}

func init() {
	register(&command{
		name:    "baseline",
		summary: "show or change the cache tier's baseline: the members partitions are assigned to",
		usage:   "show [--json] | set ID[@DC][:WEIGHT]... | add ID[@DC][:WEIGHT] | remove ID  [--backups N] [--cross-dc]",
		config:  func() any { return &baselineConfig{} },
		flags: func(fs *flag.FlagSet, cfg any) {
			c := cfg.(*baselineConfig)
			c.fs = fs
			fs.IntVar(&c.Backups, "backups", 1, "backups per partition besides the primary (as CACHEBUS_BACKUPS)")
			fs.BoolVar(&c.CrossDC, "cross-dc", false, "require a backup in another data center (as CACHEBUS_CROSS_DC_BACKUP)")
			fs.BoolVar(&c.JSON, "json", false, "show: print JSON")
		},
		run: runBaseline,
	})
}

// explicit reports whether the backup settings were given, by flag or by
// variable, rather than left to their defaults.
func (c *baselineConfig) explicit() bool {
	given := false
	c.fs.Visit(func(f *flag.Flag) { given = given || f.Name == "backups" || f.Name == "cross-dc" })
	for _, v := range []string{"BACKUPS", "CROSS_DC_BACKUP"} {
		if _, ok := os.LookupEnv(envPrefix + "_" + v); ok {
			given = true
		}
	}
	return given
}

// checkOptions rejects backup settings Assign would.
func (c *baselineConfig) checkOptions() error {
	_, err := partition.Assign(partition.Baseline{}, c.Backups, c.CrossDC)
	if err != nil {
		return usagef("--backups %d --cross-dc=%v: %v", c.Backups, c.CrossDC, strings.TrimPrefix(err.Error(), "cachenode: "))
	}
	return nil
}

func runBaseline(ctx context.Context, env *runEnv, cfgAny any, args []string) error {
	cfg := cfgAny.(*baselineConfig)
	if len(args) == 0 {
		return usagef("missing show, set, add or remove")
	}
	verb, args := args[0], args[1:]
	if cfg.JSON && verb != "show" {
		return usagef("--json applies to show")
	}
	var edit persistence.Edit
	switch verb {
	case "show":
		if len(args) > 0 {
			return usagef("unexpected arguments after show: %q", args)
		}
		return showBaseline(ctx, env, cfg)
	case "set":
		if len(args) == 0 {
			return usagef("set: want at least one member ID[@DC][:WEIGHT]")
		}
		members, err := parseMembers(args)
		if err != nil {
			return err
		}
		if err := cfg.checkOptions(); err != nil {
			return err
		}
		edit = func(partition.Baseline, partition.Assignment) ([]partition.Member, int, bool, error) {
			return members, cfg.Backups, cfg.CrossDC, nil
		}
	case "add":
		if len(args) != 1 {
			return usagef("add: want one member ID[@DC][:WEIGHT], got %d arguments", len(args))
		}
		members, err := parseMembers(args)
		if err != nil {
			return err
		}
		edit = persistence.Add(members[0])
	case "remove":
		if len(args) != 1 {
			return usagef("remove: want one member ID, got %d arguments", len(args))
		}
		if !bus.ValidName(args[0]) {
			return usagef("remove: id must match [A-Za-z0-9_-]{1,64}, got %q", args[0])
		}
		edit = persistence.Remove(args[0])
	default:
		return usagef("want show, set, add or remove, got %q", verb)
	}
	if verb != "set" && cfg.explicit() {
		if err := cfg.checkOptions(); err != nil {
			return err
		}
		edit = edit.WithOptions(cfg.Backups, cfg.CrossDC)
	}

	conn, err := cfg.connect(ctx, env, "baseline")
	if err != nil {
		return err
	}
	defer closeConn(env, conn)
	cctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	nodes, err := persistence.OpenOrBindNodes(cctx, conn)
	if err != nil {
		return err
	}
	ch, err := nodes.Update(cctx, edit)
	if err != nil {
		return fmt.Errorf("%s: %w", verb, err)
	}
	printChange(env.stdout, ch)
	return nil
}

// parseMembers reads ID[@DC][:WEIGHT] arguments and checks them as a
// baseline.
func parseMembers(args []string) ([]partition.Member, error) {
	members, err := partition.ParseMembers(args)
	if err != nil {
		return nil, usagef("%s", strings.TrimPrefix(err.Error(), "cachenode: bad baseline member "))
	}
	return members, nil
}

func plural(n int, one, many string) string {
	if n == 1 {
		return fmt.Sprintf("%d %s", n, one)
	}
	return fmt.Sprintf("%d %s", n, many)
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

func printChange(w io.Writer, ch persistence.Change) {
	ids := make([]string, len(ch.Baseline.Members))
	for i, m := range ch.Baseline.Members {
		ids[i] = m.String()
	}
	a := ch.Assignment
	fmt.Fprintf(w, "baseline version %d: %s (%s, cross-dc %s)\n",
		ch.Baseline.Version, strings.Join(ids, " "), plural(a.Backups, "backup", "backups"), onOff(a.CrossDC))
	prim, sets := ch.Moved()
	fmt.Fprintf(w, "moved %d of %d primaries and %d replica sets (assignment version %d)\n",
		prim, partition.Partitions, sets, a.Version)
	if ch.Superseded {
		fmt.Fprintln(w, "note: another change followed at once; its assignment is in force")
	}
}

// baselineReport is what `baseline show --json` prints.
type baselineReport struct {
	Bucket  string `json:"bucket"`
	Version uint64 `json:"version"`
	// Assignment: its version, the baseline it was computed from, its
	// settings.
	AssignmentVersion uint64         `json:"assignment_version"`
	AssignedFrom      uint64         `json:"assignment_baseline_version"`
	Backups           int            `json:"backups"`
	CrossDC           bool           `json:"cross_dc"`
	Members           []memberReport `json:"members"`
}

type memberReport struct {
	partition.Member
	partition.Share
}

func showBaseline(ctx context.Context, env *runEnv, cfg *baselineConfig) error {
	conn, err := cfg.connect(ctx, env, "baseline")
	if err != nil {
		return err
	}
	defer closeConn(env, conn)
	cctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	rep := baselineReport{Bucket: conn.Subjects.NodesBucket(), Members: []memberReport{}}
	nodes, err := persistence.BindNodes(cctx, conn)
	if err != nil && !errors.Is(err, jetstream.ErrBucketNotFound) {
		return err
	}
	if err == nil {
		b, err := nodes.Baseline(cctx)
		if err != nil {
			return err
		}
		a, err := nodes.Assignment(cctx)
		if err != nil {
			return err
		}
		shares := a.Shares()
		rep.Version, rep.AssignmentVersion, rep.AssignedFrom = b.Version, a.Version, a.BaselineVersion
		rep.Backups, rep.CrossDC = a.Backups, a.CrossDC
		for _, m := range b.Members {
			rep.Members = append(rep.Members, memberReport{Member: m, Share: shares[m.ID]})
		}
	}
	if cfg.JSON {
		enc := json.NewEncoder(env.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	if rep.Version == 0 {
		fmt.Fprintf(env.stdout, "no baseline in %s: set one with `cachebus baseline set ID[@DC][:WEIGHT]...`\n", rep.Bucket)
		return nil
	}
	fmt.Fprintf(env.stdout, "baseline version %d in %s; assignment version %d: %s, cross-dc %s\n",
		rep.Version, rep.Bucket, rep.AssignmentVersion, plural(rep.Backups, "backup", "backups"), onOff(rep.CrossDC))
	if rep.AssignedFrom != rep.Version {
		fmt.Fprintf(env.stdout, "warning: the assignment is of baseline version %d (a change stopped half-way); the next change rewrites it\n",
			rep.AssignedFrom)
	}
	tw := tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MEMBER\tDC\tWEIGHT\tPRIMARY\tBACKUP")
	for _, m := range rep.Members {
		dc := m.DC
		if dc == "" {
			dc = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%g\t%d\t%d\n", m.ID, dc, m.Weight, m.Primary, m.Backup)
	}
	return tw.Flush()
}
