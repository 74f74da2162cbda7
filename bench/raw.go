package bench

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// RawOrderedRead counts want messages of filter (none: the whole stream)
// with an ordered consumer set up as Replay sets up its own, touching
// nothing else: the ceiling of a replay.
func RawOrderedRead(ctx context.Context, js jetstream.JetStream, stream, filter string, want int) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	cfg := jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy}
	if filter != "" {
		cfg.FilterSubjects = []string{filter}
	}
	cons, err := js.OrderedConsumer(ctx, stream, cfg)
	if err != nil {
		return 0, err
	}
	var got atomic.Int64
	done := make(chan struct{})
	cc, err := cons.Consume(func(jetstream.Msg) {
		if got.Add(1) == int64(want) {
			close(done)
		}
	}, jetstream.PullMaxMessages(4096))
	if err != nil {
		return 0, err
	}
	defer cc.Stop()
	select {
	case <-done:
		return got.Load(), nil
	case <-ctx.Done():
		return got.Load(), fmt.Errorf("raw read of %s: %d of %d messages: %w", stream, got.Load(), want, ctx.Err())
	}
}
