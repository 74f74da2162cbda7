package bus

import (
	"context"
	"net"
	"os"
	"sync"
	"time"
)

// HeartbeatConfig configures heartbeats and failure detection. Its envconfig
// tags are read under CACHEBUS_.
type HeartbeatConfig struct {
	Interval       time.Duration `envconfig:"HEARTBEAT_INTERVAL" default:"1s" desc:"how often a member announces itself"`
	FailureTimeout time.Duration `envconfig:"FAILURE_TIMEOUT" default:"5s" desc:"a member silent this long is dead"`
}

// Heartbeater announces one member on its heartbeat subject at a fixed
// interval until stopped; Stop announces state "gone" so that trackers
// remove the member at once.
type Heartbeater struct {
	c        *Conn
	interval time.Duration
	subject  string

	mu sync.Mutex
	hb Heartbeat
	// Status, when set, is called before each beat to refresh the fields
	// that change (state, sessions, load).
	status func(*Heartbeat)

	kick    chan struct{}
	done    chan struct{}
	stopped chan struct{}
}

// StartHeartbeat begins announcing hb every interval. status, when not nil,
// is called before each beat to update the fields that change.
func StartHeartbeat(c *Conn, hb Heartbeat, interval time.Duration, status func(*Heartbeat)) (*Heartbeater, error) {
	if hb.State == "" {
		hb.State = StateUp
	}
	if hb.Started.IsZero() {
		hb.Started = time.Now().UTC()
	}
	if err := hb.Validate(); err != nil {
		return nil, err
	}
	if interval <= 0 {
		interval = time.Second
	}
	h := &Heartbeater{c: c, interval: interval, subject: c.Subjects.Heartbeat(hb.Role, hb.ID), hb: hb,
		status: status, kick: make(chan struct{}, 1), done: make(chan struct{}), stopped: make(chan struct{})}
	h.beat()
	go h.run()
	return h, nil
}

func (h *Heartbeater) run() {
	defer close(h.stopped)
	t := time.NewTicker(h.interval)
	defer t.Stop()
	for {
		select {
		case <-h.done:
			return
		case <-t.C:
		case <-h.kick:
		}
		h.beat()
	}
}

func (h *Heartbeater) beat() {
	h.mu.Lock()
	if h.status != nil {
		h.status(&h.hb)
	}
	data, err := h.hb.Encode()
	h.mu.Unlock()
	if err != nil {
		h.c.Log.Error("heartbeat not sent", "err", err)
		return
	}
	if err := h.c.NC.Publish(h.subject, data); err != nil {
		h.c.Log.Warn("heartbeat not sent", "err", err)
	}
}

// SetState changes the announced state and announces it at once.
func (h *Heartbeater) SetState(state string) {
	h.mu.Lock()
	h.hb.State = state
	h.mu.Unlock()
	h.Announce()
}

// Announce sends a heartbeat now rather than at the next tick, calling the
// status function first: for a change others must learn at once.
func (h *Heartbeater) Announce() {
	select {
	case h.kick <- struct{}{}:
	default:
	}
}

// Stop stops the beats and announces state "gone", flushed to the server
// before it returns (bounded by ctx).
func (h *Heartbeater) Stop(ctx context.Context) {
	select {
	case <-h.done:
		return
	default:
	}
	close(h.done)
	<-h.stopped
	h.mu.Lock()
	h.status = nil
	h.hb.State = StateGone
	h.mu.Unlock()
	h.beat()
	if err := h.c.NC.FlushWithContext(ctx); err != nil {
		h.c.Log.Warn("gone heartbeat not flushed", "err", err)
	}
}

// Reachable is the host:port others reach a listener at, for the addr of
// a heartbeat: its address, or the host name with its port when it
// listens on every interface (0.0.0.0 or [::], as in a container).
func Reachable(addr net.Addr) string {
	host, port, err := net.SplitHostPort(addr.String())
	if err != nil {
		return addr.String()
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		if h, err := os.Hostname(); err == nil && h != "" {
			host = h
		}
	}
	return net.JoinHostPort(host, port)
}
