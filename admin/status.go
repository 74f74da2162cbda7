package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/persistence"
)

// Status is the state of the cluster as one process sees it: what GET
// /v1/status answers and `cachebus status` prints.
type Status struct {
	// Time is when the status was gathered.
	Time time.Time `json:"time"`
	// Server is the NATS server the process is connected to.
	Server string `json:"server,omitempty"`
	// Members are the live members from heartbeats, or nil when this
	// process does not track membership.
	Members []bus.Member `json:"members"`
	// Fallbacks are the recorded fallbacks by scope, on or off.
	Fallbacks []FallbackStatus `json:"fallbacks"`
	// Drains are the drains that are on.
	Drains []persistence.DrainState `json:"drains"`
	// EventLog is the position of the event log, when it could be read.
	EventLog *EventLog `json:"event_log,omitempty"`
	// Sections are daemon-specific parts, by name (Options.Extra).
	Sections map[string]any `json:"sections,omitempty"`
	// Errors say which parts could not be gathered.
	Errors []string `json:"errors,omitempty"`
}

// FallbackStatus is a recorded fallback and whether it is in force.
type FallbackStatus struct {
	bus.Fallback
	// Active is true when the fallback is on and its until has not passed.
	Active bool `json:"active"`
}

// EventLog is the position and size of the event log stream.
type EventLog struct {
	Stream    string    `json:"stream"`
	FirstSeq  uint64    `json:"first_seq"`
	LastSeq   uint64    `json:"last_seq"`
	Messages  uint64    `json:"messages"`
	Bytes     uint64    `json:"bytes"`
	Consumers int       `json:"consumers"`
	Replicas  int       `json:"replicas"`
	FirstTime time.Time `json:"first_time,omitzero"`
	LastTime  time.Time `json:"last_time,omitzero"`
}

// StateFunc gives Collect the cluster state: a *persistence.State's Load
// reads the bucket, Following returns what a Follower holds.
type StateFunc func(context.Context) (persistence.ClusterState, error)

// Following returns a StateFunc serving f's current state.
func Following(f *persistence.Follower) StateFunc {
	return func(context.Context) (persistence.ClusterState, error) { return f.Current(), nil }
}

// Collect gathers the status: the event log's position from JetStream,
// fallbacks and drains from state (skipped when nil), and members from
// members (nil when not tracked). A part that cannot be read is named in
// Status.Errors, and the returned error joins those failures; the rest of
// the status is still filled in.
func Collect(ctx context.Context, conn *bus.Conn, state StateFunc, members *bus.Membership) (Status, error) {
	st := Status{
		Time:      time.Now().UTC(),
		Server:    conn.NC.ConnectedUrlRedacted(),
		Fallbacks: []FallbackStatus{},
		Drains:    []persistence.DrainState{},
	}
	var errs []error
	if members != nil {
		st.Members = members.Members("")
	}
	if state != nil {
		cs, err := state(ctx)
		if err != nil {
			errs = append(errs, fmt.Errorf("cluster state: %w", err))
		} else {
			for _, f := range cs.Fallbacks {
				st.Fallbacks = append(st.Fallbacks, FallbackStatus{Fallback: f, Active: f.Active(st.Time)})
			}
			sort.Slice(st.Fallbacks, func(i, j int) bool { return st.Fallbacks[i].Scope < st.Fallbacks[j].Scope })
			if d := cs.ActiveDrains(); d != nil {
				st.Drains = d
			}
		}
	}
	name := conn.Subjects.EventStream()
	if stream, err := conn.JS.Stream(ctx, name); err != nil {
		errs = append(errs, fmt.Errorf("event log %s: %w", name, err))
	} else if info, err := stream.Info(ctx); err != nil {
		errs = append(errs, fmt.Errorf("event log %s: %w", name, err))
	} else {
		st.EventLog = &EventLog{
			Stream:    name,
			FirstSeq:  info.State.FirstSeq,
			LastSeq:   info.State.LastSeq,
			Messages:  info.State.Msgs,
			Bytes:     info.State.Bytes,
			Consumers: info.State.Consumers,
			Replicas:  info.Config.Replicas,
			FirstTime: info.State.FirstTime.UTC(),
			LastTime:  info.State.LastTime.UTC(),
		}
		if st.EventLog.Messages == 0 {
			st.EventLog.FirstTime, st.EventLog.LastTime = time.Time{}, time.Time{}
		}
	}
	for _, err := range errs {
		st.Errors = append(st.Errors, err.Error())
	}
	if len(errs) > 0 {
		return st, fmt.Errorf("admin: status: %w", errors.Join(errs...))
	}
	return st, nil
}

// WriteTable prints st for a terminal: the event log, fallbacks, drains
// and members, one section after another.
func WriteTable(w io.Writer, st Status) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	p := func(format string, args ...any) { fmt.Fprintf(tw, format, args...) }

	if st.Server != "" {
		p("NATS\t%s\n", st.Server)
	}
	if el := st.EventLog; el != nil {
		p("EVENT LOG\t%s  seq %d..%d  %d events  %s  %d consumers  R%d",
			el.Stream, el.FirstSeq, el.LastSeq, el.Messages, bytesString(el.Bytes), el.Consumers, el.Replicas)
		if !el.LastTime.IsZero() {
			p("  last %s ago", age(st.Time, el.LastTime))
		}
		p("\n")
	} else {
		p("EVENT LOG\tunknown\n")
	}

	active := 0
	for _, f := range st.Fallbacks {
		if f.Active {
			active++
		}
	}
	if len(st.Fallbacks) == 0 {
		p("FALLBACK\toff (never set)\n")
	} else {
		p("FALLBACK\t%d active\n", active)
		p("  SCOPE\tSTATE\tREASON\tUNTIL\tORIGIN\tSET\n")
		for _, f := range st.Fallbacks {
			state := "off"
			switch {
			case f.Active:
				state = "on"
			case f.On:
				state = "expired"
			}
			p("  %s\t%s\t%s\t%s\t%s\t%s\n", f.Scope, state, dash(f.Reason), timeString(f.Until), dash(f.Origin), timeString(f.TS))
		}
	}

	if len(st.Drains) == 0 {
		p("DRAINS\tnone\n")
	} else {
		p("DRAINS\t%d\n", len(st.Drains))
		p("  MEMBER\tDRAINED\tDEADLINE\tORIGIN\tSINCE\n")
		for _, d := range st.Drains {
			drained := "no"
			if d.Drained {
				drained = "yes, " + timeString(d.DrainedAt)
			}
			p("  %s/%s\t%s\t%s\t%s\t%s\n", d.Role, d.ID, drained, timeString(d.Deadline), dash(d.Origin), timeString(d.Since))
		}
	}

	switch {
	case st.Members == nil:
		p("MEMBERS\tnot tracked by this process\n")
	case len(st.Members) == 0:
		p("MEMBERS\tnone\n")
	default:
		p("MEMBERS\t%d\n", len(st.Members))
		p("  ROLE\tID\tSTATE\tADDR\tDC\tSESSIONS\tLOAD\tVERSION\tUP SINCE\tLAST SEEN\n")
		for _, m := range st.Members {
			p("  %s\t%s\t%s\t%s\t%s\t%d\t%.2f\t%s\t%s\t%s ago\n", m.Role, m.ID, m.State, dash(m.Addr), dash(m.DC),
				m.Sessions, m.Load, dash(m.Version), timeString(m.Started), age(st.Time, m.LastSeen))
		}
	}

	if len(st.Sections) > 0 {
		names := make([]string, 0, len(st.Sections))
		for n := range st.Sections {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			data, err := json.Marshal(st.Sections[n])
			if err != nil {
				data = []byte(err.Error())
			}
			p("%s\t%s\n", strings.ToUpper(n), data)
		}
	}
	for _, e := range st.Errors {
		p("ERROR\t%s\n", e)
	}
	return tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func timeString(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func age(now, t time.Time) string {
	d := now.Sub(t)
	if d < 0 {
		d = 0
	}
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

func bytesString(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
