package server

import (
	"fmt"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/cachenode"
	"github.com/cachebus/cachebus/cachenode/partition"
	"github.com/cachebus/cachebus/cachenode/wire"
	"github.com/cachebus/cachebus/persistence"
)

// Config configures a cache node. Its envconfig tags are read under
// CACHEBUS_.
type Config struct {
	ID       string   `envconfig:"NODE_ID" desc:"this node's id in the baseline and its heartbeat ([A-Za-z0-9_-]{1,64}; default: the host name)"`
	DC       string   `envconfig:"DC" desc:"this node's data center"`
	Weight   float64  `envconfig:"NODE_WEIGHT" default:"1" desc:"this node's share of partitions when it joins an empty baseline"`
	Baseline []string `envconfig:"BASELINE" desc:"baseline to set when none exists yet (ID[@DC][:WEIGHT],…); empty: this node alone"`
	Backups  int      `envconfig:"BACKUPS" default:"1" desc:"backups per partition when this node sets the first baseline"`
	CrossDC  bool     `envconfig:"CROSS_DC_BACKUP" desc:"require a backup in another data center when this node sets the first baseline"`

	MaxMB      int           `envconfig:"NODE_MAX_MB" default:"256" desc:"memory bound of each record namespace, MiB"`
	DefaultTTL time.Duration `envconfig:"RECORD_TTL" default:"1h" desc:"TTL of a record put without one"`
	MaxTTL     time.Duration `envconfig:"RECORD_MAX_TTL" default:"24h" desc:"longest TTL a record keeps"`
	StaleGrace time.Duration `envconfig:"RECORD_STALE_GRACE" default:"5m" desc:"how long an expired record is kept to be served while fallback is on"`
	MaxKey     int           `envconfig:"RECORD_MAX_KEY" default:"512" desc:"longest record key, bytes"`
	MaxValue   int           `envconfig:"RECORD_MAX_VALUE" default:"262144" desc:"largest record value, bytes"`
	MaxKeys    int           `envconfig:"RECORD_MAX_KEYS" default:"1000" desc:"most keys of one multi-get"`

	Workers            int           `envconfig:"NODE_WORKERS" default:"64" desc:"record requests served at once"`
	RequestTimeout     time.Duration `envconfig:"NODE_REQUEST_TIMEOUT" default:"2s" desc:"how long a forward or a replication to a peer may take"`
	HandoverBatchBytes int           `envconfig:"NODE_HANDOVER_BATCH" default:"262144" desc:"bytes per batch when a partition is copied to its new owner"`
	MigrateRate        MigrateRate   `envconfig:"MIGRATE_RATE" default:"100000,64MiB" desc:"records/s and bytes/s this node sends to peers taking partitions over, all at once (RECORDS[,BYTES]; 0 is unbounded)"`

	bus.HeartbeatConfig
	// RecordLogConfig names the long-term namespaces, whose writes are
	// also kept in JetStream and replayed when a node takes partitions no
	// live node holds.
	persistence.RecordLogConfig
}

// storeShards is the bigcache shard count of a node's namespaces.
const storeShards = 256

// limits are the request limits of c.
func (c *Config) limits() wire.Limits {
	return wire.Limits{MaxKey: c.MaxKey, MaxValue: c.MaxValue, MaxKeys: c.MaxKeys}
}

// check validates c and fills what has a default but may be left zero by
// a caller that does not read the environment.
func (c *Config) check() error {
	if !bus.ValidName(c.ID) {
		return fmt.Errorf("server: node id must match [A-Za-z0-9_-]{1,64}, got %q", c.ID)
	}
	if c.DC != "" && !bus.ValidName(c.DC) {
		return fmt.Errorf("server: data center must match [A-Za-z0-9_-]{1,64}, got %q", c.DC)
	}
	if _, err := partition.ParseMembers(c.Baseline); err != nil {
		return fmt.Errorf("server: CACHEBUS_BASELINE: %w", err)
	}
	def := wire.DefaultLimits
	setDefault(&c.MaxKey, def.MaxKey)
	setDefault(&c.MaxValue, def.MaxValue)
	setDefault(&c.MaxKeys, def.MaxKeys)
	setDefault(&c.MaxMB, 256)
	setDefault(&c.Workers, 64)
	setDefault(&c.HandoverBatchBytes, 256<<10)
	if len(c.LongTerm) > 0 && c.MaxKey > persistence.MaxRecordKeyLen {
		return fmt.Errorf("server: CACHEBUS_RECORD_MAX_KEY must be at most %d bytes with long-term namespaces (CACHEBUS_LONG_TERM), got %d",
			persistence.MaxRecordKeyLen, c.MaxKey)
	}
	if c.MaxKey > 4096 {
		return fmt.Errorf("server: CACHEBUS_RECORD_MAX_KEY must be at most 4096 bytes, got %d", c.MaxKey)
	}
	if fit := c.MaxMB<<20/storeShards/2 - envelopeLen - cachenode.Overhead - c.MaxKey; c.MaxValue > fit {
		return fmt.Errorf("server: CACHEBUS_RECORD_MAX_VALUE %d does not fit a namespace of CACHEBUS_NODE_MAX_MB=%d (at most %d bytes)",
			c.MaxValue, c.MaxMB, fit)
	}
	if c.Backups < 0 {
		return fmt.Errorf("server: CACHEBUS_BACKUPS must be 0 or more, got %d", c.Backups)
	}
	if c.Weight <= 0 {
		c.Weight = 1
	}
	if c.MaxTTL <= 0 {
		c.MaxTTL = 24 * time.Hour
	}
	if c.DefaultTTL <= 0 {
		c.DefaultTTL = time.Hour
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = 2 * time.Second
	}
	if c.Interval <= 0 {
		c.Interval = time.Second
	}
	if c.FailureTimeout <= 0 {
		c.FailureTimeout = 5 * time.Second
	}
	return nil
}

func setDefault(v *int, d int) {
	if *v <= 0 {
		*v = d
	}
}
