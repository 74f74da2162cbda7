package bus

import (
	"fmt"
	"regexp"
	"strings"
)

// DefaultPrefix is the subject prefix used when none is configured.
const DefaultPrefix = "cachebus"

// Roles a member may announce itself with.
const (
	RoleNode    = "node"
	RoleGateway = "gateway"
	RoleApp     = "app"
	RoleClient  = "client"
)

// Kinds of event carried on the bus.
const (
	KindExpire    = "expire"
	KindSeed      = "seed"
	KindFallback  = "fallback"
	KindDrain     = "drain"
	KindHeartbeat = "hb"
)

// prefixRE allows dotted prefixes such as "acme.cachebus" but no wildcards.
var prefixRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}(\.[A-Za-z0-9_-]{1,64}){0,7}$`)

// ValidName reports whether s may be used as a namespace or member id:
// [A-Za-z0-9_-]{1,64}. (A loop: it runs on every message.)
func ValidName(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !nameByte(s[i]) {
			return false
		}
	}
	return true
}

func nameByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

// SanitizeName turns s (a host name, say) into a valid name: bytes a name
// cannot hold become '-', it is cut to 64 bytes and stripped of dashes at
// either end; fallback is returned when nothing is left.
func SanitizeName(s, fallback string) string {
	b := []byte(s)
	for i, c := range b {
		if !nameByte(c) {
			b[i] = '-'
		}
	}
	out := strings.Trim(string(b[:min(len(b), 64)]), "-")
	if out == "" {
		return fallback
	}
	return out
}

// ValidRole reports whether role is one of the roles of DESIGN.md.
func ValidRole(role string) bool {
	switch role {
	case RoleNode, RoleGateway, RoleApp, RoleClient:
		return true
	}
	return false
}

// CheckNamespace returns a *ValidationError when ns is not a valid namespace.
func CheckNamespace(ns string) error {
	if !ValidName(ns) {
		return fieldErr("ns", "must match [A-Za-z0-9_-]{1,64}, got %q", ns)
	}
	return nil
}

// CheckMember returns a *ValidationError when role or id is not valid.
func CheckMember(role, id string) error {
	if !ValidRole(role) {
		return fieldErr("role", "must be node, gateway, app or client, got %q", role)
	}
	if !ValidName(id) {
		return fieldErr("id", "must match [A-Za-z0-9_-]{1,64}, got %q", id)
	}
	return nil
}

// Subjects builds every subject of the hierarchy from one prefix.
type Subjects struct {
	Prefix string
}

// NewSubjects returns the subjects under prefix, or an error when the prefix
// is empty or holds characters NATS subjects cannot carry.
func NewSubjects(prefix string) (Subjects, error) {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if !prefixRE.MatchString(prefix) {
		return Subjects{}, fmt.Errorf("bus: prefix %q: must be dot-separated tokens of [A-Za-z0-9_-]", prefix)
	}
	return Subjects{Prefix: prefix}, nil
}

// Expire is the subject an expire for namespace ns is published on.
func (s Subjects) Expire(ns string) string { return s.Prefix + ".expire." + ns }

// Seed is the subject a seed for namespace ns is published on.
func (s Subjects) Seed(ns string) string { return s.Prefix + ".seed." + ns }

// Fallback is the subject fallback commands are published on.
func (s Subjects) Fallback() string { return s.Prefix + ".fallback" }

// Drain is the subject a drain of member role/id is published on.
func (s Subjects) Drain(role, id string) string { return s.Prefix + ".drain." + role + "." + id }

// Heartbeat is the subject member role/id heartbeats on.
func (s Subjects) Heartbeat(role, id string) string { return s.Prefix + ".hb." + role + "." + id }

// AllHeartbeats matches every member's heartbeat.
func (s Subjects) AllHeartbeats() string { return s.Prefix + ".hb.>" }

// LogRepublish is where the event log republishes every stored event,
// with its sequence: <p>.log.<original subject>.
func (s Subjects) LogRepublish() string { return s.Prefix + ".log.>" }

// LogPrefix is the prefix of republished subjects, "<p>.log.".
func (s Subjects) LogPrefix() string { return s.Prefix + ".log." }

// Records is the root of the record request subjects.
func (s Subjects) Records() string { return s.Prefix + ".rec" }

// RecordAny is the record request subject any cache node answers (one of
// them, by queue group) and forwards to the key's owner: for clients that
// do not compute partitions.
func (s Subjects) RecordAny() string { return s.Prefix + ".rec.any" }

// RecordNode is cache node id's own record request subject, which smart
// clients address directly.
func (s Subjects) RecordNode(id string) string { return s.Prefix + ".rec.node." + id }

// RecordReplicate is where a primary sends node id the writes it must hold
// as a backup.
func (s Subjects) RecordReplicate(id string) string { return s.Prefix + ".rec.repl." + id }

// RecordSync is where a node asks holder id for the data of partitions it
// is taking over.
func (s Subjects) RecordSync(id string) string { return s.Prefix + ".rec.sync." + id }

// RecordReplay is where `cachebus replay` asks every live cache node (no
// queue group: each one answers) to read a long-term namespace back from
// the record log for the partitions it holds.
func (s Subjects) RecordReplay() string { return s.Prefix + ".rec.replay" }

// Events lists the subjects captured by the event log.
func (s Subjects) Events() []string {
	return []string{
		s.Prefix + ".expire.*",
		s.Prefix + ".seed.*",
		s.Prefix + ".fallback",
		s.Prefix + ".drain.*.*",
	}
}

// Target is what a subject names once the prefix is removed.
type Target struct {
	Kind string // one of the Kind constants
	NS   string // expire and seed
	Role string // drain and heartbeat
	ID   string // drain and heartbeat
}

// Parse splits a subject of this hierarchy into its parts and validates
// them; a subject outside the hierarchy or with a bad name is an error.
func (s Subjects) Parse(subject string) (Target, error) {
	rest, ok := strings.CutPrefix(subject, s.Prefix+".")
	if !ok {
		return Target{}, fieldErr("subject", "%q is not under prefix %q", subject, s.Prefix)
	}
	parts := strings.Split(rest, ".")
	t := Target{Kind: parts[0]}
	switch {
	case (t.Kind == KindExpire || t.Kind == KindSeed) && len(parts) == 2:
		t.NS = parts[1]
		return t, CheckNamespace(t.NS)
	case t.Kind == KindFallback && len(parts) == 1:
		return t, nil
	case (t.Kind == KindDrain || t.Kind == KindHeartbeat) && len(parts) == 3:
		t.Role, t.ID = parts[1], parts[2]
		return t, CheckMember(t.Role, t.ID)
	}
	return Target{}, fieldErr("subject", "%q is not an event subject", subject)
}

// EventStream is the name of the JetStream stream that keeps the event log:
// CACHEBUS_EVENTS for the default prefix, suffixed for any other so that two
// hierarchies can share one NATS.
func (s Subjects) EventStream() string { return streamName("CACHEBUS_EVENTS", s.Prefix) }

// StateBucket is the name of the KV bucket that keeps the cluster state
// (fallback and drains).
func (s Subjects) StateBucket() string { return streamName("CACHEBUS_STATE", s.Prefix) }

// NodesBucket is the name of the KV bucket that keeps the cache tier's
// baseline and partition assignment: CACHEBUS_NODES for the default prefix.
func (s Subjects) NodesBucket() string { return streamName("CACHEBUS_NODES", s.Prefix) }

// BucketName is the name of a stream or KV bucket named base in this
// hierarchy: base itself for the default prefix, else base with the prefix
// appended, so that two hierarchies on one NATS never share one.
func (s Subjects) BucketName(base string) string { return streamName(base, s.Prefix) }

func streamName(base, prefix string) string {
	if prefix == DefaultPrefix {
		return base
	}
	// Names allow [A-Za-z0-9_-] only. Doubling "_" before turning "." into
	// "_" keeps the mapping one-to-one: a.b, a_b and a-b stay distinct.
	return base + "_" + strings.NewReplacer("_", "__", ".", "_").Replace(prefix)
}
