package bus_test

import (
	"strings"
	"testing"

	"github.com/cachebus/cachebus/bus"
)

func TestNewSubjects(t *testing.T) {
	tests := []struct {
		prefix string
		want   string // "" means rejected
	}{
		{"", bus.DefaultPrefix},
		{"cachebus", "cachebus"},
		{"acme.cachebus", "acme.cachebus"},
		{"a-b_c.D9", "a-b_c.D9"},
		{"a.b.c.d.e.f.g.h", "a.b.c.d.e.f.g.h"}, // eight tokens
		{strings.Repeat("p", 64), strings.Repeat("p", 64)},

		{"a.b.c.d.e.f.g.h.i", ""}, // nine tokens
		{strings.Repeat("p", 65), ""},
		{"cache bus", ""},
		{"cachebus.", ""},
		{".cachebus", ""},
		{"a..b", ""},
		{"cachebus.*", ""},
		{"cachebus.>", ""},
		{">", ""},
		{"cache/bus", ""},
		{"cachébus", ""},
		{"cachebus\n", ""},
	}
	for _, tt := range tests {
		s, err := bus.NewSubjects(tt.prefix)
		switch {
		case tt.want == "" && err == nil:
			t.Errorf("NewSubjects(%q) accepted, want an error", tt.prefix)
		case tt.want == "" && !strings.Contains(err.Error(), "prefix"):
			t.Errorf("NewSubjects(%q) error %q does not name the prefix", tt.prefix, err)
		case tt.want != "" && err != nil:
			t.Errorf("NewSubjects(%q): %v", tt.prefix, err)
		case tt.want != "" && s.Prefix != tt.want:
			t.Errorf("NewSubjects(%q).Prefix = %q, want %q", tt.prefix, s.Prefix, tt.want)
		}
	}
}

func TestSubjectsBuild(t *testing.T) {
	for _, prefix := range []string{"cachebus", "acme.cb"} {
		s, err := bus.NewSubjects(prefix)
		if err != nil {
			t.Fatal(err)
		}
		p := prefix + "."
		got := map[string]string{
			s.Expire("users"):               p + "expire.users",
			s.Seed("users"):                 p + "seed.users",
			s.Fallback():                    p + "fallback",
			s.Drain(bus.RoleNode, "n1"):     p + "drain.node.n1",
			s.Heartbeat(bus.RoleApp, "a-1"): p + "hb.app.a-1",
			s.AllHeartbeats():               p + "hb.>",
			s.Records():                     p + "rec",
		}
		for subject, want := range got {
			if subject != want {
				t.Errorf("built %q, want %q", subject, want)
			}
		}
		want := p + "expire.* " + p + "seed.* " + p + "fallback " + p + "drain.*.*"
		if ev := strings.Join(s.Events(), " "); ev != want {
			t.Errorf("Events() = %q, want %q", ev, want)
		}
	}
}

func TestSubjectsParse(t *testing.T) {
	s, _ := bus.NewSubjects("")
	acme, _ := bus.NewSubjects("acme.cb")
	long := strings.Repeat("n", 64)
	tests := []struct {
		subjects bus.Subjects
		subject  string
		want     bus.Target
		field    string // rejected field; "" means accepted
	}{
		{s, "cachebus.expire.users", bus.Target{Kind: bus.KindExpire, NS: "users"}, ""},
		{s, "cachebus.expire." + long, bus.Target{Kind: bus.KindExpire, NS: long}, ""},
		{s, "cachebus.seed.Sessions_2-b", bus.Target{Kind: bus.KindSeed, NS: "Sessions_2-b"}, ""},
		{s, "cachebus.fallback", bus.Target{Kind: bus.KindFallback}, ""},
		{s, "cachebus.drain.node.n1", bus.Target{Kind: bus.KindDrain, Role: bus.RoleNode, ID: "n1"}, ""},
		{s, "cachebus.drain.gateway.gw-1", bus.Target{Kind: bus.KindDrain, Role: bus.RoleGateway, ID: "gw-1"}, ""},
		{s, "cachebus.hb.app.a_1", bus.Target{Kind: bus.KindHeartbeat, Role: bus.RoleApp, ID: "a_1"}, ""},
		{s, "cachebus.hb.client.c", bus.Target{Kind: bus.KindHeartbeat, Role: bus.RoleClient, ID: "c"}, ""},
		{acme, "acme.cb.expire.users", bus.Target{Kind: bus.KindExpire, NS: "users"}, ""},
		{acme, "acme.cb.drain.node.n1", bus.Target{Kind: bus.KindDrain, Role: bus.RoleNode, ID: "n1"}, ""},

		{s, "cachebus.expire.bad!ns", bus.Target{}, "ns"},
		{s, "cachebus.expire." + long + "n", bus.Target{}, "ns"},
		{s, "cachebus.expire.*", bus.Target{}, "ns"},
		{s, "cachebus.expire.>", bus.Target{}, "ns"},
		{s, "cachebus.expire.", bus.Target{}, "ns"},
		{s, "cachebus.seed.ns with space", bus.Target{}, "ns"},
		{s, "cachebus.drain.db.n1", bus.Target{}, "role"},
		{s, "cachebus.drain.Node.n1", bus.Target{}, "role"},
		{s, "cachebus.drain..n1", bus.Target{}, "role"},
		{s, "cachebus.hb.node.n!1", bus.Target{}, "id"},
		{s, "cachebus.hb.node.", bus.Target{}, "id"},
		{s, "cachebus.expire", bus.Target{}, "subject"},
		{s, "cachebus.expire.users.eu", bus.Target{}, "subject"},
		{s, "cachebus.fallback.users", bus.Target{}, "subject"},
		{s, "cachebus.drain.node", bus.Target{}, "subject"},
		{s, "cachebus.drain.node.n1.x", bus.Target{}, "subject"},
		{s, "cachebus.hb.node", bus.Target{}, "subject"},
		{s, "cachebus.rec.get", bus.Target{}, "subject"},
		{s, "cachebus.purge.users", bus.Target{}, "subject"},
		{s, "cachebus", bus.Target{}, "subject"},
		{s, "cachebus.", bus.Target{}, "subject"},
		{s, "", bus.Target{}, "subject"},
		{s, "cachebusx.expire.users", bus.Target{}, "subject"},
		{s, "other.expire.users", bus.Target{}, "subject"},
		{s, "acme.cb.expire.users", bus.Target{}, "subject"},
		{acme, "cachebus.expire.users", bus.Target{}, "subject"},
		{acme, "acme.expire.users", bus.Target{}, "subject"},
	}
	for _, tt := range tests {
		t.Run(tt.subjects.Prefix+"/"+tt.subject, func(t *testing.T) {
			got, err := tt.subjects.Parse(tt.subject)
			if tt.field != "" {
				wantField(t, err, tt.field)
				return
			}
			if err != nil {
				t.Fatalf("rejected: %v", err)
			}
			if got != tt.want {
				t.Fatalf("parsed %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestNames(t *testing.T) {
	for _, ok := range []string{"a", "A-z_0-9", strings.Repeat("x", 64)} {
		if !bus.ValidName(ok) || bus.CheckNamespace(ok) != nil {
			t.Errorf("%q rejected as a name", ok)
		}
	}
	for _, bad := range []string{"", strings.Repeat("x", 65), "a.b", "a b", "*", ">", "ü", "a\x00"} {
		if bus.ValidName(bad) {
			t.Errorf("%q accepted as a name", bad)
		}
		wantField(t, bus.CheckNamespace(bad), "ns")
	}
	for _, role := range []string{bus.RoleNode, bus.RoleGateway, bus.RoleApp, bus.RoleClient} {
		if !bus.ValidRole(role) || bus.CheckMember(role, "m1") != nil {
			t.Errorf("role %q rejected", role)
		}
	}
	for _, role := range []string{"", "nodes", "NODE", "db"} {
		if bus.ValidRole(role) {
			t.Errorf("role %q accepted", role)
		}
		wantField(t, bus.CheckMember(role, "m1"), "role")
	}
	wantField(t, bus.CheckMember(bus.RoleNode, "m.1"), "id")
}

func TestStoreNames(t *testing.T) {
	tests := []struct{ prefix, events, state string }{
		{"cachebus", "CACHEBUS_EVENTS", "CACHEBUS_STATE"},
		{"acme.cache-bus", "CACHEBUS_EVENTS_acme_cache-bus", "CACHEBUS_STATE_acme_cache-bus"},
		{"acme_cache.bus", "CACHEBUS_EVENTS_acme__cache_bus", "CACHEBUS_STATE_acme__cache_bus"},
		{"acme.cache_bus", "CACHEBUS_EVENTS_acme_cache__bus", "CACHEBUS_STATE_acme_cache__bus"},
	}
	for _, tt := range tests {
		s, err := bus.NewSubjects(tt.prefix)
		if err != nil {
			t.Fatal(err)
		}
		if s.EventStream() != tt.events || s.StateBucket() != tt.state {
			t.Errorf("prefix %q: stream %q bucket %q, want %q %q", tt.prefix, s.EventStream(), s.StateBucket(), tt.events, tt.state)
		}
	}
}
