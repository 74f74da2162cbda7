package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/cachebus/cachebus/bus"
)

// maxListed is how many keys, prefixes or tags a one-line summary shows.
const maxListed = 5

// describe summarizes an event on one line, as commands print what they
// sent and watch prints what it sees.
func describe(ev bus.Event) string {
	switch {
	case ev.Expire != nil:
		return describeExpire(*ev.Expire)
	case ev.Seed != nil:
		s := ev.Seed
		out := fmt.Sprintf("key=%s bytes=%d", s.Key, len(s.Value))
		if s.TTL > 0 {
			out += " ttl=" + s.TTL.String()
		}
		return out
	case ev.Fallback != nil:
		return describeFallback(*ev.Fallback)
	case ev.Drain != nil:
		return describeDrain(ev.Role, ev.ID, *ev.Drain)
	}
	return ""
}

func describeExpire(e bus.Expire) string {
	var parts []string
	for _, l := range []struct {
		name  string
		items []string
	}{{"keys", e.Keys}, {"prefixes", e.Prefixes}, {"tags", e.Tags}} {
		if len(l.items) > 0 {
			parts = append(parts, l.name+"="+listed(l.items))
		}
	}
	if e.All {
		parts = append(parts, "all")
	}
	return strings.Join(parts, " ")
}

func describeFallback(f bus.Fallback) string {
	state := "off"
	if f.On {
		state = "on"
	}
	out := state + " scope=" + f.Scope
	if f.Reason != "" {
		out += fmt.Sprintf(" reason=%q", f.Reason)
	}
	if !f.Until.IsZero() {
		out += " until=" + f.Until.UTC().Format(time.RFC3339)
	}
	return out
}

func describeDrain(role, id string, d bus.Drain) string {
	state := "off"
	if d.On {
		state = "on"
	}
	out := role + "/" + id + " " + state
	if !d.Deadline.IsZero() {
		out += " deadline=" + d.Deadline.UTC().Format(time.RFC3339)
	}
	return out
}

func listed(items []string) string {
	if len(items) <= maxListed {
		return strings.Join(items, ",")
	}
	return strings.Join(items[:maxListed], ",") + fmt.Sprintf(",…(+%d)", len(items)-maxListed)
}
