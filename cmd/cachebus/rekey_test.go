package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus/bustest"
	"github.com/cachebus/cachebus/cachenode/partition"
	"github.com/cachebus/cachebus/persistence"
)

// TestRekey: records sealed with the previous key are rewritten under the
// current one, after which the current key alone opens every record; the
// stream's settings are left as the nodes made them.
func TestRekey(t *testing.T) {
	const (
		oldKey = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
		newKey = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA="
	)
	tg := bustest.Embedded(t)
	conn := bustest.Connect(t, tg.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	old, err := persistence.OpenRecordLog(ctx, conn, persistence.RecordLogConfig{LongTerm: []string{"sessions"}, Key: oldKey, MaxAge: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	const n = 50
	for i := range n {
		key := fmt.Sprintf("s%d", i)
		if _, err := old.Put(ctx, "sessions", partition.PartitionOf(key), key, []byte("v"+key), time.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
	}

	t.Setenv("CACHEBUS_NATS_URL", tg.URL)
	t.Setenv("CACHEBUS_LONG_TERM", "sessions")
	checkUsage(t, []usageCase{
		{map[string]string{"CACHEBUS_RECORD_KEY": ""}, []string{"rekey"}, "CACHEBUS_RECORD_KEY"},
		{map[string]string{"CACHEBUS_RECORD_KEY": newKey, "CACHEBUS_LONG_TERM": ""}, []string{"rekey"}, "CACHEBUS_LONG_TERM"},
		{nil, []string{"rekey", "a.b"}, "namespace"},
	})
	t.Setenv("CACHEBUS_RECORD_KEY", newKey)
	t.Setenv("CACHEBUS_RECORD_KEY_PREVIOUS", oldKey)
	code, out, errs := cmdRun(t, "", "rekey")
	if code != 0 || !strings.Contains(out, fmt.Sprintf("rekeyed ns=sessions records=%d", n)) {
		t.Fatalf("rekey = %d\n%s%s", code, out, errs)
	}

	cur, err := persistence.BindRecordLog(ctx, conn, persistence.RecordLogConfig{LongTerm: []string{"sessions"}, Key: newKey})
	if err != nil {
		t.Fatal(err)
	}
	all := make([]int, partition.Partitions)
	for i := range all {
		all[i] = i
	}
	got := map[string]string{}
	st, err := cur.Replay(ctx, "sessions", all, func(r persistence.Record) error {
		got[r.Key] = string(r.Value)
		return nil
	}, nil)
	if err != nil || st.Rejected != 0 || len(got) != n || got["s7"] != "vs7" {
		t.Fatalf("replay with the new key alone: %v, %d rejected, %d records (s7=%q), want %d", err, st.Rejected, len(got), got["s7"], n)
	}
	info, err := conn.JS.Stream(ctx, cur.Stream())
	if err != nil || info.CachedInfo().Config.MaxAge != time.Hour {
		t.Fatalf("stream max age after rekey: %v %v, want the nodes' 1h kept", err, info.CachedInfo().Config.MaxAge)
	}
}
