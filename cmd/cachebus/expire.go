package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/cachebus/cachebus/bus"
)

// expireConfig configures `cachebus expire`.
type expireConfig struct {
	ClientConfig
	Prefixes stringList `ignored:"true"`
	Tags     stringList `ignored:"true"`
	All      bool       `ignored:"true"`
}

// expireBatchBytes bounds the keys of one published expire, well inside
// bus.MaxPayload once encoded; longer key lists go out in several.
const expireBatchBytes = 256 << 10

// expireBatchKeys bounds the number of keys of one published expire.
const expireBatchKeys = 5000

func init() {
	register(&command{
		name:    "expire",
		summary: "expire keys, key prefixes or tags of a namespace on every member",
		usage:   "<ns> [key... | - (keys from standard input, one per line)] [--prefix P]... [--tag T]... [--all]",
		config:  func() any { return &expireConfig{} },
		flags: func(fs *flag.FlagSet, cfg any) {
			c := cfg.(*expireConfig)
			fs.Var(&c.Prefixes, "prefix", "expire every key starting with `P` (repeatable)")
			fs.Var(&c.Tags, "tag", "expire every entry tagged `T`, a surrogate key (repeatable)")
			fs.BoolVar(&c.All, "all", false, "expire the whole namespace")
		},
		run: runExpire,
	})
}

func runExpire(ctx context.Context, env *runEnv, cfgAny any, args []string) error {
	cfg := cfgAny.(*expireConfig)
	if len(args) == 0 {
		return usagef("missing namespace")
	}
	ns := args[0]
	if err := bus.CheckNamespace(ns); err != nil {
		return usageFromValidation(err)
	}
	var keys []string
	for _, a := range args[1:] {
		if a != "-" {
			keys = append(keys, a)
			continue
		}
		in, err := readLines(env.stdin)
		if err != nil {
			return fmt.Errorf("reading keys from standard input: %w", err)
		}
		keys = append(keys, in...)
	}
	first := bus.Expire{Prefixes: cfg.Prefixes, Tags: cfg.Tags, All: cfg.All}
	if len(keys) == 0 && !first.All && len(first.Prefixes) == 0 && len(first.Tags) == 0 {
		return usagef("nothing to expire: give keys, -, --prefix, --tag or --all")
	}
	batches := batchKeys(keys)
	if len(batches) == 0 {
		batches = [][]string{nil}
	}
	exps := make([]bus.Expire, len(batches))
	for i, b := range batches {
		exps[i].Keys = b
	}
	exps[0].Prefixes, exps[0].Tags, exps[0].All = first.Prefixes, first.Tags, first.All
	for _, e := range exps {
		if err := e.Validate(); err != nil {
			return usageFromValidation(err)
		}
	}

	conn, pub, err := cfg.publisher(ctx, env, "expire")
	if err != nil {
		return err
	}
	defer closeConn(env, conn)
	for _, e := range exps {
		pctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
		seq, err := pub.Expire(pctx, ns, e)
		cancel()
		if err != nil {
			return fmt.Errorf("expire %s: %w", ns, err)
		}
		fmt.Fprintf(env.stdout, "sent expire ns=%s %s origin=%s seq=%d\n", ns, describeExpire(e), pub.Origin(), seq)
	}
	return nil
}

// readLines reads non-empty, trimmed lines.
func readLines(r io.Reader) ([]string, error) {
	var out []string
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), bus.MaxKeyLen*4)
	for sc.Scan() {
		if line := strings.TrimSpace(sc.Text()); line != "" {
			out = append(out, line)
		}
	}
	return out, sc.Err()
}

// batchKeys splits keys into lists that each fit one expire.
func batchKeys(keys []string) [][]string {
	var out [][]string
	var cur []string
	size := 0
	for _, k := range keys {
		if len(cur) > 0 && (len(cur) >= expireBatchKeys || size+len(k) > expireBatchBytes) {
			out = append(out, cur)
			cur, size = nil, 0
		}
		cur = append(cur, k)
		size += len(k) + 8 // quotes, comma and some escaping
	}
	if len(cur) > 0 {
		out = append(out, cur)
	}
	return out
}
