package server

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"strings"

	"golang.org/x/time/rate"
)

// MigrateRate bounds how fast a node sends partitions' records to a peer
// taking them over (a drain, a baseline change, a node coming back): so
// many records and so many bytes per second, across every copy it serves
// at once. Zero means no bound on that measure.
type MigrateRate struct {
	Records int64
	Bytes   int64
}

// Decode reads "RECORDS[,BYTES]" for envconfig: records per second, then
// bytes per second with an optional unit (KB, MB, GB, KiB, MiB, GiB), e.g.
// "50000,16MiB"; "0" is unbounded.
func (r *MigrateRate) Decode(value string) error {
	recs, size, hasSize := strings.Cut(strings.TrimSpace(value), ",")
	var out MigrateRate
	var err error
	if out.Records, err = strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(recs), "/s"), 10, 64); err != nil || out.Records < 0 {
		return fmt.Errorf("migrate rate %q: records per second must be a whole number, 0 or more (as in 50000,16MiB)", value)
	}
	if hasSize {
		if out.Bytes, err = parseBytes(strings.TrimSuffix(strings.TrimSpace(size), "/s")); err != nil {
			return fmt.Errorf("migrate rate %q: bytes per second: %w", value, err)
		}
	}
	*r = out
	return nil
}

// String is the form Decode reads.
func (r MigrateRate) String() string { return fmt.Sprintf("%d,%d", r.Records, r.Bytes) }

// parseBytes reads a byte count with an optional decimal or binary unit.
func parseBytes(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"B", 1}}
	mult := int64(1)
	for _, u := range units {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSpace(strings.TrimSuffix(s, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > math.MaxInt64/mult {
		return 0, fmt.Errorf("want a size such as 16MiB or 20000000, 0 or more, got %q", s)
	}
	return n * mult, nil
}

// migrator paces the records a node sends to peers taking partitions
// over. Its limiters are shared by every copy the node serves, so two
// peers pulling at once share the rate rather than double it.
type migrator struct {
	records *rate.Limiter // nil: unbounded
	bytes   *rate.Limiter
	// maxRecords and maxBytes cap one batch, so that a batch is a tenth of
	// a second's worth and the receiver hears from the sender often.
	maxRecords int
	maxBytes   int
}

// newMigrator paces at r, with batches of at most batchBytes; an entry of
// up to maxEntry bytes always fits one batch.
func newMigrator(r MigrateRate, batchBytes, maxEntry int) *migrator {
	m := &migrator{maxRecords: math.MaxInt, maxBytes: batchBytes}
	if r.Records > 0 {
		m.maxRecords = int(max(r.Records/10, 1))
		m.records = rate.NewLimiter(rate.Limit(r.Records), m.maxRecords)
	}
	if r.Bytes > 0 {
		m.maxBytes = int(min(int64(batchBytes), max(r.Bytes/10, int64(maxEntry))))
		m.bytes = rate.NewLimiter(rate.Limit(r.Bytes), max(m.maxBytes, maxEntry))
	}
	return m
}

// exceeds reports whether a batch of records entries and size bytes is
// larger than a batch may be.
func (m *migrator) exceeds(records, size int) bool {
	return records > m.maxRecords || size > m.maxBytes
}

// wait blocks until a batch of records entries and size bytes may go.
func (m *migrator) wait(ctx context.Context, records, size int) error {
	if m.records != nil && records > 0 {
		if err := m.records.WaitN(ctx, min(records, m.records.Burst())); err != nil {
			return fmt.Errorf("migrate rate: %w", err)
		}
	}
	if m.bytes != nil && size > 0 {
		if err := m.bytes.WaitN(ctx, min(size, m.bytes.Burst())); err != nil {
			return fmt.Errorf("migrate rate: %w", err)
		}
	}
	return nil
}
