package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/persistence"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// DefaultRequestTimeout bounds how long an admin verb waits for NATS and
// JetStream to acknowledge it before it answers 503.
const DefaultRequestTimeout = 5 * time.Second

// Config configures the admin API. Its envconfig tags are read under
// CACHEBUS_ by every daemon.
type Config struct {
	HTTPAddr string   `envconfig:"HTTP_ADDR" default:"127.0.0.1:7380" desc:"address the HTTP admin API (/v1/, /healthz, /readyz, /metrics) listens on; port 0 picks a free one, empty turns it off"`
	Token    string   `envconfig:"ADMIN_TOKEN" desc:"bearer token the admin verbs (POST /v1/..., and record writes on a cache node) require; without one they are refused"`
	Allow    []string `envconfig:"ADMIN_ALLOW" default:"127.0.0.1/32,::1/128" desc:"comma-separated CIDRs allowed to call /v1/ (the connection's source address; X-Forwarded-For is ignored)"`
}

// Options are the parts of a daemon the admin API works with.
type Options struct {
	// Conn is the daemon's NATS connection. Required.
	Conn *bus.Conn
	// Publisher sends the admin verbs through the acknowledged path.
	// Required.
	Publisher *bus.Publisher
	// State records fallback and drain before they are published; without
	// it (or SetState) those verbs answer 503.
	State *persistence.State
	// Follower, when set, gives status the followed cluster state instead
	// of a read of the state bucket per request.
	Follower *persistence.Follower
	// Members, when set, lists the members in status.
	Members *bus.Membership
	// Gatherer is what /metrics exposes; nil means prometheus.DefaultGatherer.
	Gatherer prometheus.Gatherer
	// Registerer, when set, receives cachebus_admin_requests_total.
	Registerer prometheus.Registerer
	// Ready says whether the daemon is ready; nil means ready while NATS is
	// connected.
	Ready func() error
	// Extra returns daemon-specific sections of the status, by name.
	Extra func() map[string]any
	// Log receives a line per admin call; nil means the connection's logger.
	Log *slog.Logger
	// RequestTimeout bounds each verb; zero means DefaultRequestTimeout.
	RequestTimeout time.Duration
}

// Server is the admin API of one daemon: an http.Handler, with Serve to
// run it on a listener.
type Server struct {
	cfg      Config
	allow    []netip.Prefix
	opts     Options
	log      *slog.Logger
	mux      *http.ServeMux
	state    atomic.Pointer[persistence.State]
	requests *prometheus.CounterVec
}

var _ http.Handler = (*Server)(nil)

// New builds the admin API; it fails when the allow-list does not parse or
// a required option is missing.
func New(cfg Config, opts Options) (*Server, error) {
	if opts.Conn == nil {
		return nil, errors.New("admin: Options.Conn is required")
	}
	if opts.Publisher == nil {
		return nil, errors.New("admin: Options.Publisher is required")
	}
	allow, err := ParseAllow(cfg.Allow)
	if err != nil {
		return nil, err
	}
	if opts.Log == nil {
		opts.Log = opts.Conn.Log
	}
	if opts.Gatherer == nil {
		opts.Gatherer = prometheus.DefaultGatherer
	}
	if opts.RequestTimeout <= 0 {
		opts.RequestTimeout = DefaultRequestTimeout
	}
	s := &Server{cfg: cfg, allow: allow, opts: opts, log: opts.Log.With("component", "admin"), mux: http.NewServeMux()}
	s.state.Store(opts.State)
	s.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "cachebus_admin_requests_total",
		Help: "Admin API calls by verb and HTTP status code.",
	}, []string{"verb", "code"})
	if opts.Registerer != nil {
		if err := opts.Registerer.Register(s.requests); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return nil, fmt.Errorf("admin: metrics: %w", err)
			}
			s.requests = are.ExistingCollector.(*prometheus.CounterVec)
		}
	}
	if len(allow) == 0 {
		s.log.Warn("CACHEBUS_ADMIN_ALLOW is empty: every /v1/ call will be refused")
	}

	s.route(http.MethodPost, "/v1/expire/{ns}", s.expire)
	s.route(http.MethodPost, "/v1/seed/{ns}", s.seed)
	s.route(http.MethodPost, "/v1/fallback", s.fallback)
	s.route(http.MethodPost, "/v1/drain/{role}/{id}", s.drain)
	s.route(http.MethodGet, "/v1/status", s.status)
	s.route(http.MethodGet, "/healthz", s.healthz)
	s.route(http.MethodGet, "/readyz", s.readyz)
	metrics := promhttp.HandlerFor(opts.Gatherer, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)})
	s.route(http.MethodGet, "/metrics", metrics.ServeHTTP)
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no route "+r.URL.Path+" (see /v1/status, /healthz, /readyz, /metrics)", "")
	})
	return s, nil
}

// Handle adds a daemon's own route, such as a cache node's records. Routes
// under /v1/ get the same checks as the built-in ones: GET and HEAD those
// of GET /v1/status (an allowed address, and the token when one is set),
// every other method those of the POST verbs (an allowed address and the
// token, which must be set).
func (s *Server) Handle(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

// Guard wraps a daemon's own pages served outside the admin API (a
// gateway's status page on its public port) with the checks of
// GET /v1/status: an allowed address, and the token when one is set. A
// browser may give the token as the password of HTTP basic auth, since
// it cannot be told to send a bearer header.
func (s *Server) Guard(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if ref := s.authorize(r, pageAccess); ref != nil {
			if ref.status == http.StatusUnauthorized {
				w.Header().Set("WWW-Authenticate", `Basic realm="cachebus"`)
			}
			s.log.Warn("status page refused", "path", r.URL.Path, "remote", r.RemoteAddr, "status", ref.status, "reason", ref.msg)
			writeError(w, ref.status, ref.msg, "")
			return
		}
		h.ServeHTTP(w, r)
	})
}

// SetState sets the cluster state for a daemon that opens it after the
// admin API is already serving (a NATS node waiting for its cluster).
func (s *Server) SetState(st *persistence.State) { s.state.Store(st) }

// ServeHTTP checks access to /v1/ routes, then dispatches.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if strings.HasPrefix(r.URL.Path, "/v1/") {
		level := adminAccess
		if r.Method == http.MethodGet || r.Method == http.MethodHead {
			level = readAccess
		}
		if ref := s.authorize(r, level); ref != nil {
			if ref.status == http.StatusUnauthorized {
				w.Header().Set("WWW-Authenticate", `Bearer realm="cachebus"`)
			}
			verb := verbOf(r.URL.Path)
			s.log.Warn("admin call refused", "verb", verb, "method", r.Method, "path", r.URL.Path,
				"remote", r.RemoteAddr, "status", ref.status, "reason", ref.msg)
			s.requests.WithLabelValues(verb, strconv.Itoa(ref.status)).Inc()
			writeError(w, ref.status, ref.msg, "")
			return
		}
	}
	s.mux.ServeHTTP(w, r)
}

// verbOf names the verb of a /v1/ path for logs and metrics.
func verbOf(path string) string {
	rest := strings.TrimPrefix(path, "/v1/")
	verb, _, _ := strings.Cut(rest, "/")
	switch verb {
	case "expire", "seed", "fallback", "drain", "status", "records":
		return verb
	}
	return "other"
}

// Listen opens the listener for addr (CACHEBUS_HTTP_ADDR).
func Listen(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("admin: listen on %s (CACHEBUS_HTTP_ADDR): %w", addr, err)
	}
	return ln, nil
}

// URL is the http:// URL a listener answers on; an unspecified address
// (0.0.0.0, ::) is given as the loopback address.
func URL(addr net.Addr) string {
	ap, err := netip.ParseAddrPort(addr.String())
	if err != nil {
		return "http://" + addr.String()
	}
	a := ap.Addr().Unmap()
	if a.IsUnspecified() {
		a = netip.AddrFrom4([4]byte{127, 0, 0, 1})
		if ap.Addr().Is6() && !ap.Addr().Is4In6() {
			a = netip.IPv6Loopback()
		}
	}
	return "http://" + netip.AddrPortFrom(a, ap.Port()).String()
}

// Serve serves the admin API on ln until ctx ends, then shuts down
// gracefully, letting calls in flight finish.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	hs := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      s.opts.RequestTimeout + 30*time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("admin: serve on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), s.opts.RequestTimeout+time.Second)
	defer cancel()
	err := hs.Shutdown(sctx)
	<-errc
	if err != nil {
		_ = hs.Close()
		return fmt.Errorf("admin: shutdown: %w", err)
	}
	return nil
}

// route registers h for one method on pattern (GET also answers HEAD); any
// other method gets a JSON 405.
func (s *Server) route(method, pattern string, h http.HandlerFunc) {
	s.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		if r.Method != method && (method != http.MethodGet || r.Method != http.MethodHead) {
			allow := method
			if method == http.MethodGet {
				allow += ", " + http.MethodHead
			}
			w.Header().Set("Allow", allow)
			if strings.HasPrefix(r.URL.Path, "/v1/") {
				s.requests.WithLabelValues(verbOf(r.URL.Path), "405").Inc()
			}
			writeError(w, http.StatusMethodNotAllowed,
				fmt.Sprintf("method %s not allowed on %s; use %s", r.Method, r.URL.Path, method), "")
			return
		}
		h(w, r)
	})
}

// call is one admin verb being served: it reads the body, and answers and
// logs the outcome once.
type call struct {
	s     *Server
	w     http.ResponseWriter
	r     *http.Request
	verb  string
	attrs []any
}

func (s *Server) begin(w http.ResponseWriter, r *http.Request, verb string, attrs ...any) *call {
	return &call{s: s, w: w, r: r, verb: verb, attrs: attrs}
}

// body reads the request body, refusing more than bus.MaxPayload bytes.
func (c *call) body() ([]byte, bool) {
	if c.r.ContentLength > bus.MaxPayload {
		c.refuse(http.StatusRequestEntityTooLarge, fmt.Sprintf("payload of %d bytes exceeds the limit of %d", c.r.ContentLength, bus.MaxPayload), "payload")
		return nil, false
	}
	data, err := io.ReadAll(http.MaxBytesReader(c.w, c.r.Body, bus.MaxPayload))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			c.refuse(http.StatusRequestEntityTooLarge, fmt.Sprintf("payload exceeds the limit of %d bytes", bus.MaxPayload), "payload")
			return nil, false
		}
		c.refuse(http.StatusBadRequest, "reading body: "+err.Error(), "payload")
		return nil, false
	}
	return data, true
}

// fail answers an error: 400 naming the field for a rejected payload, 503
// when NATS or JetStream did not acknowledge in time.
func (c *call) fail(err error) {
	var ve *bus.ValidationError
	if errors.As(err, &ve) {
		c.refuse(http.StatusBadRequest, "invalid "+ve.Field+": "+ve.Reason, ve.Field)
		return
	}
	c.refuse(http.StatusServiceUnavailable, "not acknowledged by NATS/JetStream: "+err.Error(), "")
}

func (c *call) refuse(status int, msg, field string) {
	args := append([]any{"verb", c.verb}, c.attrs...)
	args = append(args, "remote", c.r.RemoteAddr, "status", status, "reason", msg)
	c.s.log.Warn("admin call refused", args...)
	c.s.requests.WithLabelValues(c.verb, strconv.Itoa(status)).Inc()
	writeError(c.w, status, msg, field)
}

func (c *call) ok(origin string, seq uint64) {
	args := append([]any{"verb", c.verb}, c.attrs...)
	args = append(args, "origin", origin, "seq", seq, "remote", c.r.RemoteAddr)
	c.s.log.Info("admin call accepted", args...)
	c.s.requests.WithLabelValues(c.verb, "200").Inc()
	writeJSON(c.w, http.StatusOK, map[string]any{"ok": true, "seq": seq})
}

func (c *call) origin(o string) string {
	if o != "" {
		return o
	}
	return c.s.opts.Publisher.Origin()
}

func (s *Server) timeout(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), s.opts.RequestTimeout)
}

func (s *Server) expire(w http.ResponseWriter, r *http.Request) {
	publishNS(s, w, r, bus.KindExpire, bus.DecodeExpire,
		func(ctx context.Context, ns string, e bus.Expire) (uint64, string, error) {
			seq, err := s.opts.Publisher.Expire(ctx, ns, e)
			return seq, e.Origin, err
		})
}

func (s *Server) seed(w http.ResponseWriter, r *http.Request) {
	publishNS(s, w, r, bus.KindSeed, bus.DecodeSeed,
		func(ctx context.Context, ns string, sd bus.Seed) (uint64, string, error) {
			seq, err := s.opts.Publisher.Seed(ctx, ns, sd)
			return seq, sd.Origin, err
		})
}

// publishNS serves a verb that publishes one payload to the namespace in
// the path: check the namespace, decode the body, publish through the
// acknowledged path, answer with the sequence.
func publishNS[T any](s *Server, w http.ResponseWriter, r *http.Request, kind string,
	decode func([]byte) (T, error), publish func(context.Context, string, T) (uint64, string, error)) {
	ns := r.PathValue("ns")
	c := s.begin(w, r, kind, "ns", ns)
	if err := bus.CheckNamespace(ns); err != nil {
		c.fail(err)
		return
	}
	data, ok := c.body()
	if !ok {
		return
	}
	v, err := decode(data)
	if err != nil {
		c.fail(err)
		return
	}
	ctx, cancel := s.timeout(r)
	defer cancel()
	seq, origin, err := publish(ctx, ns, v)
	if err != nil {
		c.fail(err)
		return
	}
	c.ok(c.origin(origin), seq)
}

func (s *Server) fallback(w http.ResponseWriter, r *http.Request) {
	c := s.begin(w, r, bus.KindFallback)
	data, ok := c.body()
	if !ok {
		return
	}
	if len(bytes.TrimSpace(data)) == 0 {
		c.refuse(http.StatusBadRequest, `invalid payload: a Fallback payload is required, such as {"v":1,"on":true,"scope":"*","reason":"db down"}`, "payload")
		return
	}
	f, err := bus.DecodeFallback(data)
	if err != nil {
		c.fail(err)
		return
	}
	c.attrs = append(c.attrs, "on", f.On, "scope", f.Scope)
	st := s.state.Load()
	if st == nil {
		c.refuse(http.StatusServiceUnavailable, "cluster state not available yet (the state bucket is not open)", "")
		return
	}
	ctx, cancel := s.timeout(r)
	defer cancel()
	seq, err := st.SetFallback(ctx, s.opts.Publisher, f)
	if err != nil {
		c.fail(err)
		return
	}
	c.ok(c.origin(f.Origin), seq)
}

func (s *Server) drain(w http.ResponseWriter, r *http.Request) {
	role, id := r.PathValue("role"), r.PathValue("id")
	c := s.begin(w, r, bus.KindDrain, "role", role, "id", id)
	if err := bus.CheckMember(role, id); err != nil {
		c.fail(err)
		return
	}
	data, ok := c.body()
	if !ok {
		return
	}
	d := bus.Drain{On: true}
	if len(bytes.TrimSpace(data)) > 0 {
		var err error
		if d, err = bus.DecodeDrain(data); err != nil {
			c.fail(err)
			return
		}
	}
	c.attrs = append(c.attrs, "on", d.On)
	st := s.state.Load()
	if st == nil {
		c.refuse(http.StatusServiceUnavailable, "cluster state not available yet (the state bucket is not open)", "")
		return
	}
	ctx, cancel := s.timeout(r)
	defer cancel()
	seq, err := st.SetDrain(ctx, s.opts.Publisher, role, id, d)
	if err != nil {
		c.fail(err)
		return
	}
	c.ok(c.origin(d.Origin), seq)
}

// statusTimeout bounds what the status waits for JetStream: the status is
// most wanted when JetStream is in trouble, and must answer then, saying
// what it could not learn, rather than hold its caller.
const statusTimeout = 2 * time.Second

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), min(s.opts.RequestTimeout, statusTimeout))
	defer cancel()
	var sf StateFunc
	if s.opts.Follower != nil {
		sf = Following(s.opts.Follower)
	} else if st := s.state.Load(); st != nil {
		sf = st.Load
	}
	st, err := Collect(ctx, s.opts.Conn, sf, s.opts.Members)
	if err != nil {
		s.log.Debug("status incomplete", "err", err)
	}
	if s.opts.Extra != nil {
		st.Sections = s.opts.Extra()
	}
	s.requests.WithLabelValues("status", "200").Inc()
	writeJSON(w, http.StatusOK, st)
}

func (s *Server) healthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = io.WriteString(w, "ok\n")
}

func (s *Server) readyz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if err := s.ready(); err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = io.WriteString(w, "not ready: "+err.Error()+"\n")
		return
	}
	_, _ = io.WriteString(w, "ready\n")
}

func (s *Server) ready() error {
	if s.opts.Ready != nil {
		return s.opts.Ready()
	}
	return ConnReady(s.opts.Conn)
}

// ConnReady returns nil while c is connected to NATS, and says why not
// otherwise; it is the default readiness of a daemon.
func ConnReady(c *bus.Conn) error {
	if c.NC.IsConnected() {
		return nil
	}
	return fmt.Errorf("nats %s", strings.ToLower(c.NC.Status().String()))
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		status = http.StatusInternalServerError
		data, _ = json.Marshal(map[string]string{"error": "encoding answer: " + err.Error()})
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(append(data, '\n'))
}

func writeError(w http.ResponseWriter, status int, msg, field string) {
	body := map[string]string{"error": msg}
	if field != "" {
		body["field"] = field
	}
	writeJSON(w, status, body)
}
