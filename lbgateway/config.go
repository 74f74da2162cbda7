package lbgateway

import (
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/cachebus/cachebus/bus"
)

// Config configures a gateway. Its envconfig tags are read under
// CACHEBUS_ by `cachebus gateway`.
type Config struct {
	ID         string   `envconfig:"GATEWAY_ID" desc:"this gateway's id in its heartbeat and in the expires it publishes (default: the host name)"`
	Addr       string   `envconfig:"GATEWAY_ADDR" default:"127.0.0.1:8080" desc:"address the gateway serves the app pool on"`
	TLSCert    string   `envconfig:"GATEWAY_TLS_CERT" desc:"certificate chain (PEM) to serve HTTPS with; with GATEWAY_TLS_KEY, the gateway speaks TLS to clients and sets its cookie Secure"`
	TLSKey     string   `envconfig:"GATEWAY_TLS_KEY" desc:"private key (PEM) of GATEWAY_TLS_CERT"`
	Backends   []string `envconfig:"GATEWAY_BACKENDS" desc:"static backends, comma-separated: ID=URL, or URL alone (its id is then made from host and port)"`
	Heartbeats bool     `envconfig:"GATEWAY_HEARTBEATS" default:"true" desc:"also take backends from app heartbeats (<prefix>.hb.app.<id>, sent by apps or by cachebus announce)"`

	Cookie         string        `envconfig:"GATEWAY_COOKIE" default:"cbroute" desc:"name of the sticky cookie"`
	Secret         string        `envconfig:"GATEWAY_SECRET" desc:"key the sticky cookie is signed with (HMAC-SHA256, 16 bytes or more; the same on every gateway). Empty: a random key, so cookies do not survive a restart"`
	SecretPrevious string        `envconfig:"GATEWAY_SECRET_PREVIOUS" desc:"previous key, still accepted while a new one is rolled out"`
	CookieMode     string        `envconfig:"GATEWAY_COOKIE_MODE" default:"session" desc:"when the sticky cookie is set: insert (on every response that has none) or session (only when the backend's response sets a session cookie)"`
	SessionCookie  string        `envconfig:"GATEWAY_SESSION_COOKIE" desc:"with COOKIE_MODE=session, the backend cookie that starts a session; empty: any cookie the backend sets"`
	MaxIdle        time.Duration `envconfig:"GATEWAY_COOKIE_MAX_IDLE" desc:"a sticky cookie unused this long is ignored (0: no limit)"`
	MaxLife        time.Duration `envconfig:"GATEWAY_COOKIE_MAX_LIFE" desc:"a sticky cookie issued this long ago is ignored (0: no limit)"`

	HealthPath     string        `envconfig:"GATEWAY_HEALTH_PATH" desc:"path of the active health check (GET, 2xx or 3xx is healthy); empty: no active checks, passive ones only"`
	HealthInterval time.Duration `envconfig:"GATEWAY_HEALTH_INTERVAL" default:"2s" desc:"time between two active checks of a backend"`
	HealthTimeout  time.Duration `envconfig:"GATEWAY_HEALTH_TIMEOUT" default:"1s" desc:"how long an active check may take"`
	HealthRise     int           `envconfig:"GATEWAY_HEALTH_RISE" default:"2" desc:"consecutive good checks that bring a backend up"`
	HealthFall     int           `envconfig:"GATEWAY_HEALTH_FALL" default:"3" desc:"consecutive bad checks that take a backend down"`
	HealthDrain404 bool          `envconfig:"GATEWAY_HEALTH_DRAIN_404" desc:"a health check answering 404 means the backend is draining (no new sessions), not down"`
	EjectAfter     int           `envconfig:"GATEWAY_EJECT_AFTER" default:"3" desc:"consecutive connect errors or 5xx answers that eject a backend (0: never)"`
	EjectTime      time.Duration `envconfig:"GATEWAY_EJECT_TIME" default:"1s" desc:"first ejection; each one in a row doubles it"`
	EjectMax       time.Duration `envconfig:"GATEWAY_EJECT_MAX" default:"30s" desc:"longest ejection"`
	SlowStart      time.Duration `envconfig:"GATEWAY_SLOW_START" default:"10s" desc:"a backend that just came up gets a growing share of new sessions over this long"`

	Retries      int           `envconfig:"GATEWAY_RETRIES" default:"2" desc:"how many other backends a failed request is tried on"`
	RetryBodyMax int           `envconfig:"GATEWAY_RETRY_BODY_MAX" default:"65536" desc:"largest request body kept to be replayed on a retry, bytes"`
	DrainIdle    time.Duration `envconfig:"GATEWAY_DRAIN_IDLE" default:"30s" desc:"a draining backend that got no sticky request for this long is drained"`

	ConnectTimeout  time.Duration `envconfig:"GATEWAY_CONNECT_TIMEOUT" default:"2s" desc:"how long connecting to a backend may take"`
	ResponseTimeout time.Duration `envconfig:"GATEWAY_RESPONSE_TIMEOUT" default:"30s" desc:"how long a backend may take to send its response headers"`
	BodyTimeout     time.Duration `envconfig:"GATEWAY_BODY_TIMEOUT" default:"30s" desc:"longest silence while a backend sends its response body"`
	HeaderTimeout   time.Duration `envconfig:"GATEWAY_CLIENT_HEADER_TIMEOUT" default:"10s" desc:"how long a client may take to send its request headers"`
	ReadTimeout     time.Duration `envconfig:"GATEWAY_CLIENT_READ_TIMEOUT" default:"60s" desc:"how long a client may take to send its whole request, or to take each piece of its answer"`
	IdleTimeout     time.Duration `envconfig:"GATEWAY_CLIENT_IDLE_TIMEOUT" default:"120s" desc:"how long an idle keep-alive client connection is kept"`
	MaxHeaderBytes  int           `envconfig:"GATEWAY_MAX_HEADER_BYTES" default:"65536" desc:"largest request header block a client may send"`
	ShutdownTimeout time.Duration `envconfig:"GATEWAY_SHUTDOWN_TIMEOUT" default:"30s" desc:"on SIGTERM, how long requests in flight may take to finish"`

	Cache          []string      `envconfig:"GATEWAY_CACHE" desc:"path prefixes whose responses are cached (comma-separated, e.g. /static/,/api/catalog/); empty: no cache"`
	CacheNS        string        `envconfig:"GATEWAY_CACHE_NS" default:"http" desc:"namespace whose expires purge the cache: keys are request URIs, prefixes URI prefixes, tags Surrogate-Key values"`
	CacheMB        int           `envconfig:"GATEWAY_CACHE_MB" default:"64" desc:"memory bound of the response cache, MiB"`
	CacheMaxObject int           `envconfig:"GATEWAY_CACHE_MAX_OBJECT" default:"1048576" desc:"largest response body cached, bytes"`
	CacheKeep      time.Duration `envconfig:"GATEWAY_CACHE_KEEP" default:"1h" desc:"how long a cached copy is kept once stale, for stale-while-revalidate, stale-if-error and fallback"`
	AutoFallback   bool          `envconfig:"GATEWAY_AUTO_FALLBACK" default:"true" desc:"serve from the cache, however stale, while no backend of the pool is up"`
	RetryAfter     time.Duration `envconfig:"GATEWAY_RETRY_AFTER" default:"10s" desc:"Retry-After of the 503 answered in fallback"`

	bus.HeartbeatConfig
}

// Cookie modes.
const (
	// ModeInsert sets the sticky cookie on every response to a request
	// that came without a valid one (HAProxy's "insert").
	ModeInsert = "insert"
	// ModeSession sets it only when the backend starts a session: its
	// response sets a cookie (SessionCookie, or any).
	ModeSession = "session"
)

// StaticBackend is one entry of GATEWAY_BACKENDS.
type StaticBackend struct {
	ID  string
	URL *url.URL
}

// ParseBackends parses GATEWAY_BACKENDS entries: "ID=URL" or a URL whose
// id is made from its host and port.
func ParseBackends(entries []string) ([]StaticBackend, error) {
	var out []StaticBackend
	seen := map[string]bool{}
	for _, e := range entries {
		e = strings.TrimSpace(e)
		if e == "" {
			continue
		}
		id, raw, named := strings.Cut(e, "=")
		if !named || strings.Contains(id, "/") {
			id, raw = "", e
		}
		u, err := ParseBackendURL(raw)
		if err != nil {
			return nil, fmt.Errorf("lbgateway: CACHEBUS_GATEWAY_BACKENDS entry %q: %w", e, err)
		}
		if id == "" {
			id = bus.SanitizeName(strings.NewReplacer(":", "-", ".", "-").Replace(u.Host), "backend")
		}
		if !bus.ValidName(id) {
			return nil, fmt.Errorf("lbgateway: CACHEBUS_GATEWAY_BACKENDS entry %q: id must match [A-Za-z0-9_-]{1,64}", e)
		}
		if seen[id] {
			return nil, fmt.Errorf("lbgateway: CACHEBUS_GATEWAY_BACKENDS: id %q given twice", id)
		}
		seen[id] = true
		out = append(out, StaticBackend{ID: id, URL: u})
	}
	return out, nil
}

// ParseBackendURL checks a backend's address: an absolute http or https
// URL naming a host, with no query; its path, if any, is prefixed to
// every request path.
func ParseBackendURL(raw string) (*url.URL, error) {
	u, err := url.Parse(strings.TrimSpace(raw))
	if err != nil {
		return nil, fmt.Errorf("not a URL: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("want an http:// or https:// URL, got %q", raw)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("no host in %q", raw)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return nil, fmt.Errorf("a backend URL has no query, fragment or user: %q", raw)
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	u.RawPath = ""
	return u, nil
}

// check validates c and fills zero values a caller not reading the
// environment may leave.
func (c *Config) check() error {
	if c.ID == "" {
		c.ID = "gateway"
	}
	if !bus.ValidName(c.ID) {
		return fmt.Errorf("lbgateway: CACHEBUS_GATEWAY_ID must match [A-Za-z0-9_-]{1,64}, got %q", c.ID)
	}
	if c.Cookie == "" {
		c.Cookie = "cbroute"
	}
	switch c.CookieMode {
	case "":
		c.CookieMode = ModeSession
	case ModeInsert, ModeSession:
	default:
		return fmt.Errorf("lbgateway: CACHEBUS_GATEWAY_COOKIE_MODE must be insert or session, got %q", c.CookieMode)
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return fmt.Errorf("lbgateway: CACHEBUS_GATEWAY_TLS_CERT and CACHEBUS_GATEWAY_TLS_KEY go together")
	}
	if c.HealthPath != "" && !strings.HasPrefix(c.HealthPath, "/") {
		return fmt.Errorf("lbgateway: CACHEBUS_GATEWAY_HEALTH_PATH must start with /, got %q", c.HealthPath)
	}
	if c.CacheNS == "" {
		c.CacheNS = "http"
	}
	if err := bus.CheckNamespace(c.CacheNS); err != nil {
		return fmt.Errorf("lbgateway: CACHEBUS_GATEWAY_CACHE_NS: %w", err)
	}
	for _, p := range c.Cache {
		if !strings.HasPrefix(p, "/") {
			return fmt.Errorf("lbgateway: CACHEBUS_GATEWAY_CACHE prefix %q must start with /", p)
		}
	}
	defaults := []struct {
		v *time.Duration
		d time.Duration
	}{
		{&c.HealthInterval, 2 * time.Second}, {&c.HealthTimeout, time.Second},
		{&c.EjectTime, time.Second}, {&c.EjectMax, 30 * time.Second},
		{&c.DrainIdle, 30 * time.Second}, {&c.ConnectTimeout, 2 * time.Second},
		{&c.ResponseTimeout, 30 * time.Second}, {&c.BodyTimeout, 30 * time.Second},
		{&c.HeaderTimeout, 10 * time.Second}, {&c.ReadTimeout, 60 * time.Second},
		{&c.IdleTimeout, 120 * time.Second}, {&c.ShutdownTimeout, 30 * time.Second},
		{&c.CacheKeep, time.Hour}, {&c.RetryAfter, 10 * time.Second},
		{&c.Interval, time.Second}, {&c.FailureTimeout, 5 * time.Second},
	}
	for _, d := range defaults {
		if *d.v <= 0 {
			*d.v = d.d
		}
	}
	ints := []struct {
		v *int
		d int
	}{
		{&c.HealthRise, 2}, {&c.HealthFall, 3}, {&c.MaxHeaderBytes, 64 << 10},
		{&c.CacheMB, 64}, {&c.CacheMaxObject, 1 << 20},
	}
	for _, d := range ints {
		if *d.v <= 0 {
			*d.v = d.d
		}
	}
	if c.Retries < 0 || c.RetryBodyMax < 0 || c.EjectAfter < 0 || c.SlowStart < 0 {
		return fmt.Errorf("lbgateway: GATEWAY_RETRIES, _RETRY_BODY_MAX, _EJECT_AFTER and _SLOW_START cannot be negative")
	}
	if c.FailureTimeout <= c.Interval {
		return fmt.Errorf("lbgateway: CACHEBUS_FAILURE_TIMEOUT (%s) must be longer than CACHEBUS_HEARTBEAT_INTERVAL (%s)", c.FailureTimeout, c.Interval)
	}
	if _, err := ParseBackends(c.Backends); err != nil {
		return err
	}
	return nil
}
