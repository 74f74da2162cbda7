//go:build unix

package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/bus/bustest"
	"github.com/cachebus/cachebus/e2e/harness"
	"github.com/nats-io/nats.go"
)

// TestRetriedPublishAppliedOnce sends what bus.Publisher sends when an
// acknowledgement is lost and it retries (it happens on every stream
// leader failover): the same event twice, under one Nats-Msg-Id. The log
// stores it once; every subscriber must apply it once, although its core
// copy arrives twice.
func TestRetriedPublishAppliedOnce(t *testing.T) {
	n := harn.StartNATS(t)
	var subs []*bus.Subscriber
	var recs []*recorder
	for i := range 3 {
		sub, rec := subscribe(t, harness.Connect(t, n.URL), bus.SubscriberOptions{Name: fmt.Sprintf("e2e-%d", i)})
		subs, recs = append(subs, sub), append(recs, rec)
	}
	c := harness.Connect(t, n.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	var want []string
	var last uint64
	for i := range 3 {
		key := fmt.Sprintf("user:%d", i)
		for attempt := 1; attempt <= 2; attempt++ {
			m := nats.NewMsg(c.Subjects.Expire("users"))
			m.Data = []byte(fmt.Sprintf(`{"v":1,"keys":[%q],"origin":"e2e-retry"}`, key))
			m.Header.Set(bus.MsgIDHeader, "e2e-retry-"+key)
			ack, err := c.JS.PublishMsg(ctx, m)
			if err != nil {
				t.Fatalf("publish %s, attempt %d: %v", key, attempt, err)
			}
			if attempt == 2 && !ack.Duplicate {
				t.Errorf("the log stored the retry of %s again, at seq %d", key, ack.Sequence)
			}
			last = ack.Sequence
		}
		want = append(want, key)
	}
	// A last, unrelated event: once it is applied, any second copy of the
	// retried ones has been too.
	m := nats.NewMsg(c.Subjects.Expire("users"))
	m.Data = []byte(`{"v":1,"keys":["user:end"],"origin":"e2e-retry"}`)
	m.Header.Set(bus.MsgIDHeader, "e2e-retry-end")
	ack, err := c.JS.PublishMsg(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	if ack.Sequence != last+1 {
		t.Errorf("the end marker is at seq %d, want %d", ack.Sequence, last+1)
	}
	want = append(want, "user:end")
	for i, sub := range subs {
		if err := sub.WaitSeq(ctx, ack.Sequence); err != nil {
			t.Fatalf("subscriber %d: %v", i, err)
		}
		bustest.WaitFor(t, 5*time.Second, "the end marker applied", func() bool {
			evs, _ := recs[i].snapshot()
			return len(evs) > 0 && evs[len(evs)-1].key == "user:end"
		})
		checkApplied(t, fmt.Sprintf("subscriber %d", i), recs[i], want)
	}
}
