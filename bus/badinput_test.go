package bus_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/bus/bustest"
	"github.com/cachebus/cachebus/persistence"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// counterSum adds up the series of a counter vector whose labels include
// every pair of match (all series when match is empty).
func counterSum(t *testing.T, c prometheus.Collector, match map[string]string) float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(c); err != nil {
		t.Fatal(err)
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range families {
	series:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if want, ok := match[lp.GetName()]; ok && want != lp.GetValue() {
					continue series
				}
			}
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

// badMessage is one malformed message and the field its rejection names.
type badMessage struct {
	name, subject string
	payload       []byte
	reason        string
	stored        bool // whether the event log accepts it (it does not judge payloads, only sizes)
}

func badMessages() []badMessage {
	oversize := []byte(strings.Repeat("k", bus.MaxPayload+1)) // under NATS's 1 MiB max_payload
	return []badMessage{
		{"malformed JSON", "cachebus.expire.users", []byte(`{"v":1,"keys":["x"]`), "payload", true},
		{"wrong v", "cachebus.expire.users", []byte(`{"v":2,"keys":["x"]}`), "v", true},
		{"missing v", "cachebus.seed.users", []byte(`{"key":"x","value":"eA=="}`), "v", true},
		{"missing required field", "cachebus.seed.users", []byte(`{"v":1,"value":"eA=="}`), "key", true},
		{"wrong type", "cachebus.fallback", []byte(`{"v":1,"on":"yes"}`), "on", true},
		{"bad namespace", "cachebus.expire.bad!ns", []byte("x"), "ns", true},
		{"oversize", "cachebus.expire.users", oversize, "payload", false},
		{"unknown role", "cachebus.drain.bogus.n1", []byte(`{"v":1,"on":true}`), "role", true},
		{"invalid id", "cachebus.drain.node.n!1", []byte(`{"v":1,"on":true}`), "id", true},
	}
}

// TestBadInputRejectedOnce interleaves malformed messages with good ones,
// through plain core publishes (what `nats pub` or any client sends) and
// through the guaranteed path, and checks that every bad one is rejected
// and counted exactly once while every good one, after it, applies once
// and in order.
func TestBadInputRejectedOnce(t *testing.T) {
	forEachTarget(t, func(t *testing.T, tg *bustest.Target) {
		pubConn := bustest.Connect(t, tg.URL)
		bustest.EnsureEvents(t, pubConn, persistence.EventLogConfig{})
		subConn := bustest.Connect(t, tg.URL)
		s, rec := bustest.Subscribe(t, subConn, bus.SubscriberOptions{Name: "victim"})
		pub, err := bus.NewPublisher(pubConn, "tester")
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()

		var (
			sent, good int
			wantKeys   []string
			wantReason = map[string]float64{}
			lastGood   uint64
		)
		sendGood := func(guaranteed bool) {
			good++
			key := fmt.Sprintf("good-%d", good)
			wantKeys = append(wantKeys, key)
			sent++
			if guaranteed {
				seq, err := pub.Publish(ctx, "cachebus.expire.users", []byte(key))
				if err != nil {
					t.Fatal(err)
				}
				lastGood = seq
				return
			}
			if err := pubConn.NC.Publish("cachebus.expire.users", []byte(key)); err != nil {
				t.Fatal(err)
			}
		}
		for _, guaranteed := range []bool{false, true} {
			for _, bad := range badMessages() {
				sendGood(guaranteed)
				sent++
				wantReason[bad.reason]++
				if !guaranteed {
					if err := pubConn.NC.Publish(bad.subject, bad.payload); err != nil {
						t.Fatalf("core publish %s: %v", bad.name, err)
					}
					continue
				}
				_, err := pub.Publish(ctx, bad.subject, bad.payload)
				switch {
				case bad.stored && err != nil:
					t.Fatalf("guaranteed publish of %s: %v", bad.name, err)
				case !bad.stored && !errors.Is(err, jetstream.ErrStreamMessageExceedsMaximum):
					t.Fatalf("guaranteed publish of %s: %v, want the log to refuse its size", bad.name, err)
				}
			}
		}
		sendGood(true) // the last word is a good one
		if err := pubConn.NC.Flush(); err != nil {
			t.Fatal(err)
		}

		// Every message reaches the subscriber by core, and those the log
		// stored reach it by the log too: one copy of each is applied or
		// rejected, the other is a duplicate. Wait until every copy is
		// accounted for, then check nothing was counted twice.
		bustest.WaitSeq(t, s, lastGood)
		stored := bustest.LastSeq(t, pubConn)
		m := subConn.Metrics
		bustest.WaitFor(t, 10*time.Second, "every copy of every message handled", func() bool {
			handled := counterSum(t, m.Applied, nil) + counterSum(t, m.Rejected, nil) + counterSum(t, m.Duplicates, nil)
			return handled >= float64(sent)+float64(stored)
		})
		if got, want := counterSum(t, m.Rejected, nil), float64(sent-good); got != want {
			t.Errorf("rejected %v messages, want %v", got, want)
		}
		for reason, want := range wantReason {
			if got := counterSum(t, m.Rejected, map[string]string{"reason": reason}); got != want {
				t.Errorf("rejected for %q %v times, want %v", reason, got, want)
			}
		}
		if got := counterSum(t, m.Rejected, map[string]string{"kind": "expire", "reason": "v"}); got != 2 {
			t.Errorf("expires rejected for v: %v, want 2", got)
		}
		if got := counterSum(t, m.Applied, nil); got != float64(good) {
			t.Errorf("applied %v events, want %v", got, good)
		}
		if got := counterSum(t, m.Duplicates, nil); got != float64(stored) {
			t.Errorf("dropped %v duplicates, want one per stored event, %d", got, stored)
		}
		if got := rec.Keys(); strings.Join(got, ",") != strings.Join(wantKeys, ",") {
			t.Errorf("applied %v, want %v", got, wantKeys)
		}
		if evs, flushes := rec.Snapshot(); len(evs) != good || flushes != 0 {
			t.Errorf("handler got %d events and %d flushes, want %d and 0", len(evs), flushes, good)
		}
		if s.LastSeq() != stored {
			t.Errorf("subscriber at sequence %d, log at %d", s.LastSeq(), stored)
		}
	})
}

// TestRetryCopiesAppliedOnce sends one event twice with the same
// message id, as the Publisher does when an acknowledgement is lost (a
// leader change, a timeout): the log keeps one copy, core delivers both, and
// the subscriber must apply it once, whichever copy comes first.
func TestRetryCopiesAppliedOnce(t *testing.T) {
	forEachTarget(t, func(t *testing.T, tg *bustest.Target) {
		pubConn := bustest.Connect(t, tg.URL)
		bustest.EnsureEvents(t, pubConn, persistence.EventLogConfig{})
		subConn := bustest.Connect(t, tg.URL)
		s, rec := bustest.Subscribe(t, subConn, bus.SubscriberOptions{Name: "retried"})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for i := range 20 {
			msg := nats.NewMsg("cachebus.expire.users")
			msg.Data = []byte(fmt.Sprintf("retried-%d", i))
			msg.Header.Set(bus.MsgIDHeader, fmt.Sprintf("retry-test-%d", i))
			if err := pubConn.NC.PublishMsg(msg); err != nil { // the attempt whose ack was lost
				t.Fatal(err)
			}
			if _, err := pubConn.JS.PublishMsg(ctx, msg); err != nil { // the retry
				t.Fatal(err)
			}
		}
		pub, err := bus.NewPublisher(pubConn, "tester")
		if err != nil {
			t.Fatal(err)
		}
		seq, err := pub.Publish(ctx, "cachebus.expire.users", []byte("last"))
		if err != nil {
			t.Fatal(err)
		}
		if seq != 21 {
			t.Fatalf("the log holds %d events, want the 20 retried ones once each and the last", seq)
		}
		bustest.WaitSeq(t, s, seq)
		// 41 copies reach core, 21 the log: wait for all 62.
		m := subConn.Metrics
		bustest.WaitFor(t, 10*time.Second, "every copy handled", func() bool {
			return counterSum(t, m.Applied, nil)+counterSum(t, m.Duplicates, nil) >= 62
		})
		got := rec.Keys()
		if len(got) != 21 {
			t.Fatalf("applied %d expires, want 21 (each retried event once): %v", len(got), got)
		}
		for i, k := range got[:20] {
			if k != fmt.Sprintf("retried-%d", i) {
				t.Fatalf("applied %v, want retried-0..19 in order, then last", got)
			}
		}
	})
}
