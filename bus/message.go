package bus

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"
	"unicode/utf8"
)

// Version is the payload version this package writes and accepts.
const Version = 1

// Limits enforced on every decoded message.
const (
	// MaxPayload is the largest payload accepted, in bytes.
	MaxPayload = 512 << 10
	// MaxKeyLen is the longest key, prefix or tag accepted, in bytes.
	MaxKeyLen = 1024
	// MaxItems is the largest number of keys, prefixes and tags in one expire.
	MaxItems = 10000
)

// States a member reports in its heartbeat.
const (
	StateUp       = "up"
	StateDraining = "draining"
	StateGone     = "gone"
)

// Expire removes entries of one namespace everywhere: by exact key, by key
// prefix, by tag (surrogate key), or all of them.
type Expire struct {
	Keys     []string  `json:"keys,omitempty"`
	Prefixes []string  `json:"prefixes,omitempty"`
	Tags     []string  `json:"tags,omitempty"`
	All      bool      `json:"all,omitempty"`
	Origin   string    `json:"origin,omitempty"`
	TS       time.Time `json:"ts,omitzero"`
}

// Seed sets a key's value on every member that holds the namespace.
type Seed struct {
	Key    string        `json:"key"`
	Value  []byte        `json:"value"`
	TTL    time.Duration `json:"-"`
	Origin string        `json:"origin,omitempty"`
	TS     time.Time     `json:"ts,omitzero"`
}

// Fallback turns serve-stale mode on or off for one namespace or all ("*").
type Fallback struct {
	On     bool      `json:"on"`
	Scope  string    `json:"scope"`
	Reason string    `json:"reason,omitempty"`
	Until  time.Time `json:"until,omitzero"`
	Origin string    `json:"origin,omitempty"`
	TS     time.Time `json:"ts,omitzero"`
}

// Active reports whether the fallback is in force at now.
func (f Fallback) Active(now time.Time) bool {
	return f.On && (f.Until.IsZero() || now.Before(f.Until))
}

// Covers reports whether the fallback applies to namespace ns.
func (f Fallback) Covers(ns string) bool { return f.Scope == "*" || f.Scope == ns }

// Drain asks one member to stop taking new work; On false cancels it.
type Drain struct {
	On       bool      `json:"on"`
	Deadline time.Time `json:"deadline,omitzero"`
	Origin   string    `json:"origin,omitempty"`
	TS       time.Time `json:"ts,omitzero"`
}

// Heartbeat announces a member, its address and its state.
type Heartbeat struct {
	ID       string    `json:"id"`
	Role     string    `json:"role"`
	Addr     string    `json:"addr,omitempty"`
	DC       string    `json:"dc,omitempty"`
	State    string    `json:"state"`
	Started  time.Time `json:"started,omitzero"`
	Sessions int       `json:"sessions"`
	Load     float64   `json:"load"`
	Version  string    `json:"version,omitempty"`
	// Holds is set by cache nodes: the partitions whose data the node
	// holds, as the base64 (standard, padded) of a 128-byte bitmap where
	// partition p is bit p%8 (least significant first) of byte p/8. A node
	// serves a partition only once it holds it.
	Holds string `json:"holds,omitempty"`
	// Replay is set by a cache node while it reads long-term records back
	// from the record log (when it takes partitions no live node holds,
	// or on demand, `cachebus replay`); nil otherwise.
	Replay *HeartbeatReplay `json:"replay,omitempty"`
}

// HeartbeatReplay is the progress of a cache node's replay of long-term
// records from the record log, as its heartbeat announces it.
type HeartbeatReplay struct {
	// NS is the namespace being read back.
	NS string `json:"ns"`
	// Partitions is how many partitions the replay reads, 0 to 1024.
	Partitions int `json:"partitions"`
	// Records and Bytes count what was read so far.
	Records int64 `json:"records"`
	Bytes   int64 `json:"bytes"`
	// Percent of the messages to read that are read, 0 to 100.
	Percent float64 `json:"percent"`
	// Rate is records read per second so far.
	Rate float64 `json:"rate"`
}

// MaxReplayPartitions is the most partitions a heartbeat's replay counts:
// all of the cache tier's.
const MaxReplayPartitions = HoldsLen * 8

// Validate checks a replay's progress: a valid namespace, counts that are
// not negative, a percent from 0 to 100 and a finite rate.
func (r HeartbeatReplay) Validate() error {
	if !ValidName(r.NS) {
		return fieldErr("replay.ns", "must match [A-Za-z0-9_-]{1,64}, got %q", r.NS)
	}
	if r.Partitions < 0 || r.Partitions > MaxReplayPartitions {
		return fieldErr("replay.partitions", "must be 0 to %d, got %d", MaxReplayPartitions, r.Partitions)
	}
	if r.Records < 0 {
		return fieldErr("replay.records", "must not be negative, got %d", r.Records)
	}
	if r.Bytes < 0 {
		return fieldErr("replay.bytes", "must not be negative, got %d", r.Bytes)
	}
	if !(r.Percent >= 0 && r.Percent <= 100) { // NaN too
		return fieldErr("replay.percent", "must be 0 to 100, got %v", r.Percent)
	}
	if !(r.Rate >= 0) || math.IsInf(r.Rate, 1) {
		return fieldErr("replay.rate", "must be a finite number, 0 or more, got %v", r.Rate)
	}
	return nil
}

// The wire forms below carry pointers where a field is required, so that a
// missing field can be told from a zero value, and strings where the Go type
// is richer (durations, times), so that the error names the field.

type expireWire struct {
	V        *int     `json:"v"`
	Keys     []string `json:"keys"`
	Prefixes []string `json:"prefixes"`
	Tags     []string `json:"tags"`
	All      bool     `json:"all"`
	Origin   string   `json:"origin"`
	TS       string   `json:"ts"`
}

type seedWire struct {
	V      *int    `json:"v"`
	Key    *string `json:"key"`
	Value  *string `json:"value"` // base64, decoded by DecodeSeed so an error names the field
	TTL    string  `json:"ttl"`
	Origin string  `json:"origin"`
	TS     string  `json:"ts"`
}

type fallbackWire struct {
	V      *int   `json:"v"`
	On     *bool  `json:"on"`
	Scope  string `json:"scope"`
	Reason string `json:"reason"`
	Until  string `json:"until"`
	Origin string `json:"origin"`
	TS     string `json:"ts"`
}

type drainWire struct {
	V        *int   `json:"v"`
	On       *bool  `json:"on"`
	Deadline string `json:"deadline"`
	Origin   string `json:"origin"`
	TS       string `json:"ts"`
}

type heartbeatWire struct {
	V        *int    `json:"v"`
	ID       *string `json:"id"`
	Role     *string `json:"role"`
	Addr     string  `json:"addr"`
	DC       string  `json:"dc"`
	State    *string `json:"state"`
	Started  string  `json:"started"`
	Sessions int     `json:"sessions"`
	Load     float64 `json:"load"`
	Version  string  `json:"version"`
	Holds    string  `json:"holds"`
	// Replay is decoded as it is: its fields are checked by Validate.
	Replay *HeartbeatReplay `json:"replay"`
}

// DecodeExpire parses an expire payload: a JSON object, or, when the first
// non-space byte is not '{', a newline-separated list of exact keys.
func DecodeExpire(data []byte) (Expire, error) {
	if err := checkSize(data); err != nil {
		return Expire{}, err
	}
	trimmed := bytes.TrimLeft(data, " \t\r\n")
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return decodeKeyList(data)
	}
	var w expireWire
	if err := unmarshal(data, &w); err != nil {
		return Expire{}, err
	}
	if err := checkVersion(w.V); err != nil {
		return Expire{}, err
	}
	e := Expire{Keys: w.Keys, Prefixes: w.Prefixes, Tags: w.Tags, All: w.All, Origin: w.Origin}
	var err error
	if e.TS, err = parseTime("ts", w.TS); err != nil {
		return Expire{}, err
	}
	return e, e.Validate()
}

func decodeKeyList(data []byte) (Expire, error) {
	if !utf8.Valid(data) {
		return Expire{}, fieldErr("keys", "text payload is not valid UTF-8")
	}
	var e Expire
	for line := range strings.SplitSeq(string(data), "\n") {
		if k := strings.Trim(line, " \t\r"); k != "" {
			e.Keys = append(e.Keys, k)
		}
	}
	return e, e.Validate()
}

// Validate checks an expire before it is published or applied.
func (e Expire) Validate() error {
	if len(e.Keys) == 0 && len(e.Prefixes) == 0 && len(e.Tags) == 0 && !e.All {
		return fieldErr("keys", "an expire needs at least one of keys, prefixes, tags or all")
	}
	if n := len(e.Keys) + len(e.Prefixes) + len(e.Tags); n > MaxItems {
		return fieldErr("keys", "%d keys, prefixes and tags exceed the limit of %d", n, MaxItems)
	}
	for _, list := range []struct {
		field string
		items []string
	}{{"keys", e.Keys}, {"prefixes", e.Prefixes}, {"tags", e.Tags}} {
		for i, k := range list.items {
			if k == "" || len(k) > MaxKeyLen { // name the field only on error: this runs per key
				return checkKey(fmt.Sprintf("%s[%d]", list.field, i), k)
			}
		}
	}
	return checkOrigin(e.Origin)
}

// Encode returns the JSON payload of e with "v":1.
func (e Expire) Encode() ([]byte, error) {
	if err := e.Validate(); err != nil {
		return nil, err
	}
	return marshal(struct {
		V int `json:"v"`
		Expire
	}{Version, e})
}

// DecodeSeed parses a seed payload.
func DecodeSeed(data []byte) (Seed, error) {
	if err := checkSize(data); err != nil {
		return Seed{}, err
	}
	var w seedWire
	if err := unmarshal(data, &w); err != nil {
		return Seed{}, err
	}
	if err := checkVersion(w.V); err != nil {
		return Seed{}, err
	}
	if w.Key == nil {
		return Seed{}, fieldErr("key", "required")
	}
	if w.Value == nil {
		return Seed{}, fieldErr("value", "required (base64)")
	}
	value, err := base64.StdEncoding.DecodeString(*w.Value)
	if err != nil {
		return Seed{}, fieldErr("value", "not standard base64: %v", err)
	}
	s := Seed{Key: *w.Key, Value: value, Origin: w.Origin}
	if w.TTL != "" {
		d, err := time.ParseDuration(w.TTL)
		if err != nil {
			return Seed{}, fieldErr("ttl", "not a duration such as \"30s\": %q", w.TTL)
		}
		s.TTL = d
	}
	if s.TS, err = parseTime("ts", w.TS); err != nil {
		return Seed{}, err
	}
	return s, s.Validate()
}

// Validate checks a seed before it is published or applied.
func (s Seed) Validate() error {
	if err := checkKey("key", s.Key); err != nil {
		return err
	}
	if s.TTL < 0 {
		return fieldErr("ttl", "must not be negative, got %s", s.TTL)
	}
	return checkOrigin(s.Origin)
}

// Encode returns the JSON payload of s with "v":1.
func (s Seed) Encode() ([]byte, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	var ttl string
	if s.TTL > 0 {
		ttl = s.TTL.String()
	}
	value := s.Value
	if value == nil {
		value = []byte{}
	}
	return marshal(struct {
		V      int       `json:"v"`
		Key    string    `json:"key"`
		Value  []byte    `json:"value"`
		TTL    string    `json:"ttl,omitempty"`
		Origin string    `json:"origin,omitempty"`
		TS     time.Time `json:"ts,omitzero"`
	}{Version, s.Key, value, ttl, s.Origin, s.TS})
}

// DecodeFallback parses a fallback payload; a missing scope means "*".
func DecodeFallback(data []byte) (Fallback, error) {
	if err := checkSize(data); err != nil {
		return Fallback{}, err
	}
	var w fallbackWire
	if err := unmarshal(data, &w); err != nil {
		return Fallback{}, err
	}
	if err := checkVersion(w.V); err != nil {
		return Fallback{}, err
	}
	if w.On == nil {
		return Fallback{}, fieldErr("on", "required (true or false)")
	}
	f := Fallback{On: *w.On, Scope: w.Scope, Reason: w.Reason, Origin: w.Origin}
	if f.Scope == "" {
		f.Scope = "*"
	}
	var err error
	if f.Until, err = parseTime("until", w.Until); err != nil {
		return Fallback{}, err
	}
	if f.TS, err = parseTime("ts", w.TS); err != nil {
		return Fallback{}, err
	}
	return f, f.Validate()
}

// Validate checks a fallback before it is published or applied.
func (f Fallback) Validate() error {
	if f.Scope != "*" && !ValidName(f.Scope) {
		return fieldErr("scope", "must be \"*\" or a namespace, got %q", f.Scope)
	}
	if len(f.Reason) > MaxKeyLen {
		return fieldErr("reason", "longer than %d bytes", MaxKeyLen)
	}
	return checkOrigin(f.Origin)
}

// Encode returns the JSON payload of f with "v":1.
func (f Fallback) Encode() ([]byte, error) {
	if f.Scope == "" {
		f.Scope = "*"
	}
	if err := f.Validate(); err != nil {
		return nil, err
	}
	return marshal(struct {
		V int `json:"v"`
		Fallback
	}{Version, f})
}

// DecodeDrain parses a drain payload.
func DecodeDrain(data []byte) (Drain, error) {
	if err := checkSize(data); err != nil {
		return Drain{}, err
	}
	var w drainWire
	if err := unmarshal(data, &w); err != nil {
		return Drain{}, err
	}
	if err := checkVersion(w.V); err != nil {
		return Drain{}, err
	}
	if w.On == nil {
		return Drain{}, fieldErr("on", "required (true or false)")
	}
	d := Drain{On: *w.On, Origin: w.Origin}
	var err error
	if d.Deadline, err = parseTime("deadline", w.Deadline); err != nil {
		return Drain{}, err
	}
	if d.TS, err = parseTime("ts", w.TS); err != nil {
		return Drain{}, err
	}
	return d, d.Validate()
}

// Validate checks a drain before it is published or applied.
func (d Drain) Validate() error { return checkOrigin(d.Origin) }

// Encode returns the JSON payload of d with "v":1.
func (d Drain) Encode() ([]byte, error) {
	if err := d.Validate(); err != nil {
		return nil, err
	}
	return marshal(struct {
		V int `json:"v"`
		Drain
	}{Version, d})
}

// DecodeHeartbeat parses a heartbeat payload.
func DecodeHeartbeat(data []byte) (Heartbeat, error) {
	if err := checkSize(data); err != nil {
		return Heartbeat{}, err
	}
	var w heartbeatWire
	if err := unmarshal(data, &w); err != nil {
		return Heartbeat{}, err
	}
	if err := checkVersion(w.V); err != nil {
		return Heartbeat{}, err
	}
	switch {
	case w.ID == nil:
		return Heartbeat{}, fieldErr("id", "required")
	case w.Role == nil:
		return Heartbeat{}, fieldErr("role", "required")
	case w.State == nil:
		return Heartbeat{}, fieldErr("state", "required (up, draining or gone)")
	}
	h := Heartbeat{ID: *w.ID, Role: *w.Role, Addr: w.Addr, DC: w.DC, State: *w.State,
		Sessions: w.Sessions, Load: w.Load, Version: w.Version, Holds: w.Holds, Replay: w.Replay}
	var err error
	if h.Started, err = parseTime("started", w.Started); err != nil {
		return Heartbeat{}, err
	}
	return h, h.Validate()
}

// Validate checks a heartbeat before it is published or applied.
func (h Heartbeat) Validate() error {
	if err := CheckMember(h.Role, h.ID); err != nil {
		return err
	}
	switch h.State {
	case StateUp, StateDraining, StateGone:
	default:
		return fieldErr("state", "must be up, draining or gone, got %q", h.State)
	}
	if h.Sessions < 0 {
		return fieldErr("sessions", "must not be negative, got %d", h.Sessions)
	}
	if len(h.Addr) > MaxKeyLen {
		return fieldErr("addr", "longer than %d bytes", MaxKeyLen)
	}
	if len(h.DC) > 64 {
		return fieldErr("dc", "longer than 64 bytes")
	}
	if len(h.Version) > 64 {
		return fieldErr("version", "longer than 64 bytes")
	}
	if h.Holds != "" {
		if _, err := DecodeHolds(h.Holds); err != nil {
			return err
		}
	}
	if h.Replay != nil {
		return h.Replay.Validate()
	}
	return nil
}

// HoldsLen is the length of the decoded Holds bitmap: one bit for each of
// the cache tier's 1024 partitions.
const HoldsLen = 128

// DecodeHolds decodes a heartbeat's Holds field.
func DecodeHolds(s string) ([HoldsLen]byte, error) {
	var out [HoldsLen]byte
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return out, fieldErr("holds", "not base64: %v", err)
	}
	if len(b) != HoldsLen {
		return out, fieldErr("holds", "%d bytes, want %d", len(b), HoldsLen)
	}
	copy(out[:], b)
	return out, nil
}

// EncodeHolds encodes a partition bitmap for a heartbeat's Holds field.
func EncodeHolds(b [HoldsLen]byte) string { return base64.StdEncoding.EncodeToString(b[:]) }

// Encode returns the JSON payload of h with "v":1.
func (h Heartbeat) Encode() ([]byte, error) {
	if err := h.Validate(); err != nil {
		return nil, err
	}
	return marshal(struct {
		V int `json:"v"`
		Heartbeat
	}{Version, h})
}

func checkSize(data []byte) error {
	if len(data) > MaxPayload {
		return fieldErr("payload", "%d bytes exceed the limit of %d", len(data), MaxPayload)
	}
	if len(data) == 0 {
		return fieldErr("payload", "empty")
	}
	return nil
}

// marshal encodes a payload and rejects one its decoder would refuse for
// its size, so that Encode never hands a publisher what no member accepts.
func marshal(v any) ([]byte, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	if len(data) > MaxPayload {
		return nil, fieldErr("payload", "encodes to %d bytes, over the limit of %d", len(data), MaxPayload)
	}
	return data, nil
}

func unmarshal(data []byte, v any) error {
	err := json.Unmarshal(data, v)
	if err == nil {
		return nil
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		field := te.Field
		if field == "" {
			field = "payload"
		}
		return fieldErr(field, "wrong type: %s where %s was expected", te.Value, te.Type)
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fieldErr("payload", "malformed JSON at byte %d: %v", se.Offset, err)
	}
	return fieldErr("payload", "malformed JSON: %v", err)
}

func checkVersion(v *int) error {
	if v == nil {
		return fieldErr("v", "required (1)")
	}
	if *v != Version {
		return fieldErr("v", "unknown version %d, this build speaks %d", *v, Version)
	}
	return nil
}

func checkKey(field, k string) error {
	if k == "" {
		return fieldErr(field, "must not be empty")
	}
	if len(k) > MaxKeyLen {
		return fieldErr(field, "%d bytes exceed the limit of %d", len(k), MaxKeyLen)
	}
	return nil
}

func checkOrigin(origin string) error {
	if origin != "" && !ValidName(origin) {
		return fieldErr("origin", "must match [A-Za-z0-9_-]{1,64}, got %q", origin)
	}
	return nil
}

func parseTime(field, s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fieldErr(field, "not an RFC 3339 time: %q", s)
	}
	// time.Parse takes offsets up to 24:00 that no RFC 3339 writer can
	// write back; refuse them here rather than fail when re-encoding.
	if _, err := t.MarshalText(); err != nil {
		return time.Time{}, fieldErr(field, "offset out of range in %q", s)
	}
	return t, nil
}
