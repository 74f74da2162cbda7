// Command redisfanout measures Redis pub/sub fan-out the way `cachebus
// bench fanout` measures NATS: N subscribers, each on its own connection,
// a publisher paced at a fixed rate by an absolute schedule, the same
// expire payload carrying its send time, decoded by each subscriber, and
// publish→received latency in the same histogram. It speaks RESP by hand
// (PUBLISH and SUBSCRIBE only), so it needs no Redis client library.
//
//	redisfanout -addr 127.0.0.1:6379 -subscribers 8 -rate 10000 -duration 10s
//
// It prints a row in the table format of `cachebus bench fanout`, for
// e2e/bench/fanout.sh to put beside the NATS figures.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/cachebus/cachebus/bench"
	"github.com/cachebus/cachebus/bus"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:6379", "Redis address (host:port)")
	subs := flag.Int("subscribers", 8, "subscribers, each on its own connection")
	rate := flag.Int("rate", 10000, "publish rate in messages per second")
	dur := flag.Duration("duration", 10*time.Second, "measured publishing time")
	warmup := flag.Duration("warmup", 500*time.Millisecond, "unrecorded publishing before the measure")
	channel := flag.String("channel", "cachebus-bench", "pub/sub channel")
	drain := flag.Duration("drain", 10*time.Second, "how long to wait for the last deliveries")
	flag.Parse()
	if *subs < 1 || *subs > 1000 || *rate < 1 || *rate > 1_000_000 || *dur <= 0 || *dur > time.Hour {
		fmt.Fprintln(os.Stderr, "redisfanout: subscribers 1..1000, rate 1..1,000,000, duration up to 1h")
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *warmup+*dur+*drain+30*time.Second)
	defer cancel()
	if err := run(ctx, *addr, *channel, *subs, *rate, *warmup, *dur, *drain); err != nil {
		fmt.Fprintln(os.Stderr, "redisfanout:", err)
		os.Exit(1)
	}
}

// subscriber is one SUBSCRIBE connection and what it received.
type subscriber struct {
	conn net.Conn
	r    *bufio.Reader
	mu   sync.Mutex
	hist bench.Histogram
	seen []bool
	dups uint64
	n    atomic.Uint64
	err  atomic.Value
}

func run(ctx context.Context, addr, channel string, nsubs, rate int, warmup, dur, drain time.Duration) error {
	total := int(float64(rate) * dur.Seconds())
	var subs []*subscriber
	defer func() {
		for _, s := range subs {
			_ = s.conn.Close()
		}
	}()
	for range nsubs {
		s, err := subscribe(addr, channel, total)
		if err != nil {
			return err
		}
		subs = append(subs, s)
		go s.read()
	}
	pub, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return fmt.Errorf("publisher: %w", err)
	}
	defer pub.Close()
	// Replies to PUBLISH are the number of receivers: read and check them.
	var replies, short atomic.Uint64
	go func() {
		r := bufio.NewReader(pub)
		for {
			line, err := readLine(r)
			if err != nil {
				return
			}
			if n, err := strconv.Atoi(string(line[1:])); line[0] != ':' || err != nil || n < nsubs {
				short.Add(1)
			}
			replies.Add(1)
		}
	}()
	w := bufio.NewWriter(pub)
	var buf []byte
	publish := func(kind byte) func(int) error {
		return func(i int) error {
			buf = bench.AppendPayload(buf[:0], kind, uint64(i), time.Now(), 1)
			fmt.Fprintf(w, "*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n$%d\r\n", len(channel), channel, len(buf))
			w.Write(buf)
			w.WriteString("\r\n")
			return w.Flush()
		}
	}
	if warmup > 0 {
		if _, _, err := bench.Pace(ctx, float64(rate), int(float64(rate)*warmup.Seconds()), publish('w')); err != nil {
			return fmt.Errorf("publish: %w", err)
		}
	}
	sent, behind, err := bench.Pace(ctx, float64(rate), total, publish('m'))
	if err != nil {
		return fmt.Errorf("publish: %w", err)
	}
	deadline := time.Now().Add(drain)
	for time.Now().Before(deadline) {
		done := true
		for _, s := range subs {
			if s.n.Load() < uint64(sent) {
				done = false
			}
		}
		if done {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	var all bench.Histogram
	var received, dups uint64
	for i, s := range subs {
		if err, _ := s.err.Load().(error); err != nil {
			fmt.Fprintf(os.Stderr, "redisfanout: subscriber %d: %v\n", i, err)
		}
		s.mu.Lock()
		all.Merge(&s.hist)
		received += s.n.Load()
		dups += s.dups
		s.mu.Unlock()
	}
	expected := uint64(sent) * uint64(nsubs)
	fmt.Printf("redisfanout: %d subscribers, %d msg/s, %s (after %s warm-up)\n", nsubs, rate, dur, warmup)
	fmt.Printf("server: redis-server %s (external process)\n\n", addr)
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	bench.LatencyHeader(tw)
	bench.LatencyRow(tw, "redis", uint64(sent), expected, received, expected-min(received, expected), dups, -1, &all)
	_ = tw.Flush()
	fmt.Printf("\npublisher behind schedule at worst: %s; PUBLISH replies %d, with fewer receivers than subscribers %d\n",
		behind.Round(time.Microsecond), replies.Load(), short.Load())
	return nil
}

// subscribe connects and subscribes to channel, and waits for Redis to
// confirm it.
func subscribe(addr, channel string, total int) (*subscriber, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, fmt.Errorf("subscriber: %w", err)
	}
	if _, err := fmt.Fprintf(c, "*2\r\n$9\r\nSUBSCRIBE\r\n$%d\r\n%s\r\n", len(channel), channel); err != nil {
		c.Close()
		return nil, fmt.Errorf("subscribe: %w", err)
	}
	s := &subscriber{conn: c, r: bufio.NewReaderSize(c, 64<<10), seen: make([]bool, total)}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	parts, err := readArray(s.r)
	if err != nil || len(parts) != 3 || string(parts[0]) != "subscribe" {
		c.Close()
		return nil, fmt.Errorf("subscribe: want a confirmation, got %q (%v)", parts, err)
	}
	_ = c.SetReadDeadline(time.Time{})
	return s, nil
}

// read parses pushes, ["message", channel, payload], until the
// connection closes.
func (s *subscriber) read() {
	for {
		parts, err := readArray(s.r)
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				s.err.Store(err)
			}
			return
		}
		if len(parts) != 3 || string(parts[0]) != "message" {
			continue
		}
		s.apply(parts[2])
	}
}

func (s *subscriber) apply(payload []byte) {
	now := time.Now()
	e, err := bus.DecodeExpire(payload)
	if err != nil || len(e.Keys) == 0 {
		return
	}
	kind, seq, sent, ok := bench.ParseKey(e.Keys[0])
	if !ok || kind != 'm' || seq >= uint64(len(s.seen)) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.seen[seq] {
		s.dups++
		return
	}
	s.seen[seq] = true
	s.hist.Record(time.Duration(now.UnixNano() - sent))
	s.n.Add(1)
}

// readArray reads one RESP array of bulk strings or integers.
func readArray(r *bufio.Reader) ([][]byte, error) {
	line, err := readLine(r)
	if err != nil {
		return nil, err
	}
	if line[0] != '*' {
		return nil, fmt.Errorf("want an array, got %q", line)
	}
	n, err := strconv.Atoi(string(line[1:]))
	if err != nil || n < 0 {
		return nil, fmt.Errorf("bad array length %q", line)
	}
	parts := make([][]byte, 0, n)
	for range n {
		line, err := readLine(r)
		if err != nil {
			return nil, err
		}
		switch line[0] {
		case ':':
			parts = append(parts, append([]byte(nil), line[1:]...))
		case '$':
			size, err := strconv.Atoi(string(line[1:]))
			if err != nil || size < 0 {
				return nil, fmt.Errorf("bad bulk length %q", line)
			}
			b := make([]byte, size+2)
			if _, err := io.ReadFull(r, b); err != nil {
				return nil, err
			}
			parts = append(parts, b[:size])
		default:
			return nil, fmt.Errorf("unexpected %q", line)
		}
	}
	return parts, nil
}

// readLine reads one CRLF-terminated line, without the CRLF.
func readLine(r *bufio.Reader) ([]byte, error) {
	line, err := r.ReadSlice('\n')
	if err != nil {
		return nil, err
	}
	if len(line) < 3 || line[len(line)-2] != '\r' {
		return nil, fmt.Errorf("malformed line %q", line)
	}
	return line[:len(line)-2], nil
}
