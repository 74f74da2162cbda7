//go:build unix

package harness

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/bus/bustest"
	"github.com/cachebus/cachebus/cachenode/partition"
	"github.com/cachebus/cachebus/persistence"
	"github.com/nats-io/nats.go/jetstream"
)

// LeadStream waits at most timeout until stream name is led by server
// leader and current on every server of names, asking its leader to step
// down in favour of leader meanwhile, and returns the stream's cluster
// view: a test that cuts a server off puts the leader where it wants it.
func LeadStream(ctx context.Context, t testing.TB, c *bus.Conn, name, leader string, timeout time.Duration, names ...string) *jetstream.ClusterInfo {
	t.Helper()
	st, err := c.JS.Stream(ctx, name)
	if err != nil {
		t.Fatalf("stream %s: %v", name, err)
	}
	stepdown := fmt.Sprintf(`{"placement":{"preferred":%q}}`, leader)
	var ci *jetstream.ClusterInfo
	var last string
	defer func() {
		if t.Failed() {
			t.Logf("stream %s, last seen: %s", name, last)
		}
	}()
	bustest.WaitFor(t, timeout, fmt.Sprintf("stream %s led by %s and current on every server", name, leader), func() bool {
		ictx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		info, err := st.Info(ictx)
		if err != nil {
			last = err.Error()
			return false
		}
		ci = info.Cluster
		last = Describe(ci)
		if ci != nil && ci.Leader != "" && ci.Leader != leader {
			_, _ = c.NC.RequestWithContext(ictx, "$JS.API.STREAM.LEADER.STEPDOWN."+name, []byte(stepdown))
			return false
		}
		return AllCurrent(ci, names...)
	})
	return ci
}

// RecordLogValues replays namespace RecordsNS from the record log through
// c: the value of every live record, by key.
func RecordLogValues(ctx context.Context, t testing.TB, c *bus.Conn) map[string]string {
	t.Helper()
	values := map[string]string{}
	replayRecordLog(ctx, t, c, "", func(r persistence.Record) {
		if r.Deleted {
			delete(values, r.Key)
		} else {
			values[r.Key] = string(r.Value)
		}
	})
	return values
}

// RecordLogSnapshots is how many partitions a replay of namespace
// RecordsNS through c reads from a snapshot of the record log: 1024 once
// the cache nodes have built every one, and while they keep them fresh.
// key is the nodes' CACHEBUS_RECORD_KEY: a snapshot that does not open
// does not count.
func RecordLogSnapshots(ctx context.Context, t testing.TB, c *bus.Conn, key string) int {
	t.Helper()
	return replayRecordLog(ctx, t, c, key, func(persistence.Record) {}).Snapshots
}

// replayRecordLog replays every partition of namespace RecordsNS through
// c, opening values with key, and hands each record to fn.
func replayRecordLog(ctx context.Context, t testing.TB, c *bus.Conn, key string, fn func(persistence.Record)) persistence.ReplayStats {
	t.Helper()
	rl, err := persistence.BindRecordLog(ctx, c, persistence.RecordLogConfig{LongTerm: []string{RecordsNS}, Key: key})
	if err != nil {
		t.Fatalf("record log: %v", err)
	}
	// Just after a heal or a restart JetStream may answer 503 for a
	// moment: the replay, which changes nothing, is tried again until the
	// log reads, for a while.
	deadline := time.Now().Add(30 * time.Second)
	for attempt := 1; ; attempt++ {
		var recs []persistence.Record
		st, err := rl.Replay(ctx, RecordsNS, partition.All(), func(r persistence.Record) error {
			r.Value = bytes.Clone(r.Value) // kept past the call
			recs = append(recs, r)
			return nil
		}, nil)
		if err == nil {
			for _, r := range recs {
				fn(r)
			}
			return st
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			t.Fatalf("replay of the record log, attempt %d: %v", attempt, err)
		}
		t.Logf("replay of the record log, attempt %d: %v; trying again", attempt, err)
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
}
