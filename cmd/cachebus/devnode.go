package main

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/cachebus/cachebus/cachenode/server"
	"github.com/kelseyhightower/envconfig"
)

// The cache nodes of `cachebus dev`: node1..nodeN in the dev process, each
// on its own connection to the embedded server as separate processes
// would be, the baseline set to all of them on the first start.
func init() {
	registerDevPart(devPart{name: "cache nodes", order: 10, start: startDevNodes})
}

func startDevNodes(ctx context.Context, d *devStack) error {
	if d.cfg.Nodes == 0 {
		return nil
	}
	// The node variables apply (record limits, TTLs, backups); the ids,
	// the baseline and the heartbeat timing are dev's.
	var base server.Config
	if err := envconfig.Process(envPrefix, &base); err != nil {
		return usagef("%v", err)
	}
	ids := make([]string, d.cfg.Nodes)
	for i := range ids {
		ids[i] = fmt.Sprintf("node%d", i+1)
	}
	base.Baseline = ids
	// The demo's logins are long-term unless the variable says otherwise:
	// kept in JetStream and read back by a node that restarts.
	if _, set := os.LookupEnv(envPrefix + "_LONG_TERM"); !set {
		base.LongTerm = []string{"sessions"}
	}
	base.HeartbeatConfig = d.cfg.HeartbeatConfig

	nodes := make([]*server.Server, 0, len(ids))
	for _, id := range ids {
		conn, err := d.connect(ctx, id)
		if err != nil {
			return err
		}
		cfg := base
		cfg.ID = id
		s, err := server.Start(ctx, cfg, server.Options{Conn: conn, Registerer: d.reg, Log: d.env.log})
		if err != nil {
			return err
		}
		d.onStop(func(ctx context.Context) { s.Shutdown(ctx) })
		nodes = append(nodes, s)
		if !s.Status().InBaseline {
			d.env.log.Warn("cache node not in the baseline kept in the data directory: it holds nothing",
				"node", id, "fix", "cachebus baseline set "+strings.Join(ids, " "))
		}
	}

	d.admin.Handle(server.RecordsPattern, nodes[0].RecordsHandler())
	d.readies = append(d.readies, func() error {
		for _, s := range nodes {
			if err := s.Ready(); err != nil {
				return fmt.Errorf("cache node %s: %w", s.ID(), err)
			}
		}
		return nil
	})
	d.sections["nodes"] = func() any {
		out := make([]server.Status, len(nodes))
		for i, s := range nodes {
			out[i] = s.Status()
		}
		return out
	}
	d.say("nodes      %s (records at /v1/records/{ns}/{key}, served through %s; long-term: %s)", strings.Join(ids, " "), ids[0],
		strings.Join(base.LongTerm, ","))
	d.examples = append(d.examples, func() []string {
		url := d.adminURL + server.RecordsPattern + "sessions/s1"
		auth := "-H 'Authorization: Bearer " + d.token + "'"
		return []string{
			"Put and get a record of the cache tier (any node answers for any key):",
			fmt.Sprintf("  curl -X PUT %s --data-binary 'hello' '%s?ttl=10m'", auth, url),
			fmt.Sprintf("  curl %s %s", auth, url),
		}
	})
	return nil
}
