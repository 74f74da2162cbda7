package bench

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/cachebus/cachebus/persistence"
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

// RawOrderedReadParallel reads the messages of filter (none: the whole
// stream) up to its last sequence with readers ordered consumers at once,
// each over its own share of the stream's sequences, as Replay with
// ReplayReaders splits them: the ceiling of such a replay. Each reader
// only reads the stream sequence of its messages, to stop at the end of
// its share; it returns how many messages they read in all, and an error
// unless that is want.
func RawOrderedReadParallel(ctx context.Context, js jetstream.JetStream, stream, filter string, readers, want int) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	st, err := js.Stream(ctx, stream)
	if err != nil {
		return 0, err
	}
	info, err := st.Info(ctx)
	if err != nil {
		return 0, err
	}
	first, last := max(info.State.FirstSeq, 1), info.State.LastSeq
	if info.State.Msgs == 0 || first > last {
		return 0, checkRaw(stream, 0, want)
	}
	n := uint64(max(readers, 1))
	span := last - first + 1
	n = min(n, span)
	var got atomic.Int64
	done := make(chan struct{}, n)
	var ccs []jetstream.ConsumeContext
	defer func() {
		for _, cc := range ccs {
			cc.Stop()
		}
	}()
	for i := range n {
		lo, hi := first+i*span/n, first+(i+1)*span/n-1
		cfg := jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: lo}
		if filter != "" {
			cfg.FilterSubjects = []string{filter}
		}
		cons, err := js.OrderedConsumer(ctx, stream, cfg)
		if err != nil {
			return 0, err
		}
		var finished bool // touched by the consumer's one handler goroutine
		cc, err := cons.Consume(func(m jetstream.Msg) {
			if finished {
				return
			}
			seq, pending, _ := persistence.AckSeqPending(m.Reply())
			if seq <= hi {
				got.Add(1)
			}
			if seq >= hi || pending == 0 {
				finished = true
				done <- struct{}{}
			}
		}, jetstream.PullMaxMessages(4096))
		if err != nil {
			return 0, err
		}
		ccs = append(ccs, cc)
	}
	for range n {
		select {
		case <-done:
		case <-ctx.Done():
			return got.Load(), fmt.Errorf("raw read of %s: %d of %d messages: %w", stream, got.Load(), want, ctx.Err())
		}
	}
	return got.Load(), checkRaw(stream, got.Load(), want)
}

func checkRaw(stream string, got int64, want int) error {
	if got != int64(want) {
		return fmt.Errorf("raw read of %s: %d messages, want %d", stream, got, want)
	}
	return nil
}
