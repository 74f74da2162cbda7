package demoapp

import (
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/cachebus/cachebus/bus"
)

// Config configures one demo app server. The variables carry the
// CACHEBUS_ prefix (CACHEBUS_DEMO_ID, ...).
type Config struct {
	bus.HeartbeatConfig
	ID           string        `envconfig:"DEMO_ID" default:"app1" desc:"member id of the app server in its heartbeats, [A-Za-z0-9_-]{1,64}"`
	Listen       string        `envconfig:"DEMO_LISTEN" default:"127.0.0.1:3000" desc:"address the app serves HTTP on"`
	AppURL       string        `envconfig:"DEMO_URL" desc:"URL the gateways reach the app at, announced in its heartbeats (default: http:// and the listen address)"`
	DrainTimeout time.Duration `envconfig:"DEMO_DRAIN_TIMEOUT" default:"1m" desc:"on SIGTERM, how long the app waits for its sessions to end before it exits"`
	SessionNS    string        `envconfig:"DEMO_SESSION_NS" default:"sessions" desc:"records namespace of the cache tier that keeps the sessions"`
	SessionTTL   time.Duration `envconfig:"DEMO_SESSION_TTL" default:"30m" desc:"how long a session lives after its last request"`
	SessionIdle  time.Duration `envconfig:"DEMO_SESSION_IDLE" default:"2m" desc:"a session with no request on this app for this long no longer counts as live here (heartbeat sessions, drain)"`
	PageNS       string        `envconfig:"DEMO_PAGE_NS" default:"demo-pages" desc:"memo namespace of the product pages"`
	PageTTL      time.Duration `envconfig:"DEMO_PAGE_TTL" default:"10m" desc:"how long a computed product page is served from memory"`
	ComputeDelay time.Duration `envconfig:"DEMO_COMPUTE_DELAY" default:"200ms" desc:"time a product page takes to compute, standing for a slow database query"`
	DBReplicas   int           `envconfig:"DEMO_DB_REPLICAS" default:"1" desc:"replicas of the demo's database, a JetStream KV bucket (3 on a three-node NATS cluster)"`
}

// check validates c before anything starts, naming the variable to fix.
func (c *Config) check() error {
	switch {
	case !bus.ValidName(c.ID):
		return fmt.Errorf("demoapp: CACHEBUS_DEMO_ID must match [A-Za-z0-9_-]{1,64}, got %q", c.ID)
	case bus.CheckNamespace(c.SessionNS) != nil:
		return fmt.Errorf("demoapp: CACHEBUS_DEMO_SESSION_NS: %w", bus.CheckNamespace(c.SessionNS))
	case bus.CheckNamespace(c.PageNS) != nil:
		return fmt.Errorf("demoapp: CACHEBUS_DEMO_PAGE_NS: %w", bus.CheckNamespace(c.PageNS))
	case c.DrainTimeout <= 0, c.SessionTTL <= 0, c.SessionIdle <= 0, c.PageTTL <= 0:
		return fmt.Errorf("demoapp: CACHEBUS_DEMO_DRAIN_TIMEOUT, _SESSION_TTL, _SESSION_IDLE and _PAGE_TTL must be positive")
	case c.ComputeDelay < 0:
		return fmt.Errorf("demoapp: CACHEBUS_DEMO_COMPUTE_DELAY must not be negative, got %s", c.ComputeDelay)
	case c.DBReplicas < 1 || c.DBReplicas > 5:
		return fmt.Errorf("demoapp: CACHEBUS_DEMO_DB_REPLICAS must be 1 to 5, got %d", c.DBReplicas)
	}
	if c.AppURL != "" {
		u, err := url.Parse(c.AppURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") {
			return fmt.Errorf("demoapp: CACHEBUS_DEMO_URL: want an http URL of a host and port, such as http://app1:3000, got %q", c.AppURL)
		}
		c.AppURL = strings.TrimSuffix(c.AppURL, "/")
	}
	return nil
}
