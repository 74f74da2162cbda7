package bus

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// ServerConfig configures the embedded NATS server with JetStream. Its
// envconfig tags are read under CACHEBUS_ by the daemons that embed it.
type ServerConfig struct {
	Host          string   `envconfig:"NATS_HOST" default:"127.0.0.1" desc:"address the embedded NATS server listens on for clients"`
	Port          int      `envconfig:"NATS_PORT" default:"4222" desc:"client port of the embedded NATS server (-1 picks a free one)"`
	ServerName    string   `envconfig:"NATS_SERVER_NAME" desc:"unique server name within a NATS cluster (default: host name and port)"`
	StoreDir      string   `envconfig:"NATS_STORE_DIR" desc:"JetStream store directory (default: a temporary directory removed on exit)"`
	SyncAlways    bool     `envconfig:"NATS_SYNC_ALWAYS" default:"false" desc:"fsync every JetStream write (sync_interval: always)"`
	ClusterName   string   `envconfig:"NATS_CLUSTER_NAME" desc:"NATS cluster name; set it with a cluster listen address to cluster"`
	ClusterListen string   `envconfig:"NATS_CLUSTER_LISTEN" desc:"host:port this server listens on for routes from its cluster peers"`
	Routes        []string `envconfig:"NATS_ROUTES" desc:"comma-separated route URLs of the cluster peers (nats://host:port)"`
	TLSCert       string   `envconfig:"NATS_TLS_CERT" desc:"server certificate (PEM) for client and route TLS"`
	TLSKey        string   `envconfig:"NATS_TLS_KEY" desc:"server key (PEM) for client and route TLS"`
	TLSCA         string   `envconfig:"NATS_TLS_CA" desc:"CA (PEM) that client and route certificates must chain to; enables verification"`
	ConfigFile    string   `envconfig:"NATS_CONFIG" desc:"nats-server configuration file for everything else (accounts, users, permissions, leaf nodes, gateways); the variables above override it"`
	Debug         bool     `envconfig:"NATS_DEBUG" default:"false" desc:"log the embedded server's debug output"`

	// Users, when set, turns on user/password authentication with per-user
	// subject permissions. Set from Go (tests, embedding programs); the
	// daemons take users from ConfigFile.
	Users []ServerUser `ignored:"true"`
}

// ServerUser is one account of the embedded server's user list.
type ServerUser struct {
	Name      string
	Password  string
	Publish   []string // subjects the user may publish to; nil means all
	Subscribe []string // subjects the user may subscribe to; nil means all
}

// Server is an embedded nats-server with JetStream.
type Server struct {
	ns      *server.Server
	tempDir string
}

// StartServer starts an embedded NATS server and waits until it accepts
// connections and JetStream is ready.
func StartServer(cfg ServerConfig, log *slog.Logger) (*Server, error) {
	opts := &server.Options{}
	if cfg.ConfigFile != "" {
		var err error
		if opts, err = server.ProcessConfigFile(cfg.ConfigFile); err != nil {
			return nil, fmt.Errorf("bus: nats config %s: %w", cfg.ConfigFile, err)
		}
	}
	opts.Host, opts.Port = cfg.Host, cfg.Port
	opts.JetStream = true
	opts.NoSigs = true
	opts.MaxPayload = 1 << 20
	if cfg.ServerName != "" {
		opts.ServerName = cfg.ServerName
	}
	s := &Server{}
	opts.StoreDir = cfg.StoreDir
	if opts.StoreDir == "" {
		dir, err := os.MkdirTemp("", "cachebus-nats-")
		if err != nil {
			return nil, fmt.Errorf("bus: jetstream store: %w", err)
		}
		s.tempDir, opts.StoreDir = dir, dir
	}
	opts.SyncAlways = cfg.SyncAlways
	if cfg.ClusterListen != "" {
		host, port, err := splitHostPort(cfg.ClusterListen)
		if err != nil {
			return nil, fmt.Errorf("bus: cluster listen %q: %w", cfg.ClusterListen, err)
		}
		opts.Cluster.Name = cfg.ClusterName
		opts.Cluster.Host, opts.Cluster.Port = host, port
		if opts.ServerName == "" {
			hn, _ := os.Hostname()
			opts.ServerName = fmt.Sprintf("%s-%d", hn, port)
		}
	}
	if len(cfg.Routes) > 0 {
		opts.Routes = server.RoutesFromStr(strings.Join(cfg.Routes, ","))
	}
	if cfg.TLSCert != "" {
		tc, err := serverTLS(cfg)
		if err != nil {
			return nil, err
		}
		opts.TLSConfig, opts.TLS, opts.TLSVerify = tc, true, cfg.TLSCA != ""
		opts.TLSTimeout = 2
		if cfg.ClusterListen != "" {
			opts.Cluster.TLSConfig, opts.Cluster.TLSTimeout = tc.Clone(), 2
		}
	}
	for _, u := range cfg.Users {
		su := &server.User{Username: u.Name, Password: u.Password}
		if u.Publish != nil || u.Subscribe != nil {
			su.Permissions = &server.Permissions{}
			if u.Publish != nil {
				su.Permissions.Publish = &server.SubjectPermission{Allow: u.Publish}
			}
			if u.Subscribe != nil {
				su.Permissions.Subscribe = &server.SubjectPermission{Allow: u.Subscribe}
			}
		}
		opts.Users = append(opts.Users, su)
	}

	ns, err := server.NewServer(opts)
	if err != nil {
		s.cleanup()
		return nil, fmt.Errorf("bus: embedded nats: %w", err)
	}
	s.ns = ns
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	// The server reports a failure to listen through its logger's Fatalf and
	// then waits; catch it so start fails at once with the reason.
	fatal := make(chan string, 1)
	ns.SetLoggerV2(slogAdapter{log: log.With("component", "nats"), fatal: fatal}, cfg.Debug, false, false)
	ns.Start()
	deadline := time.Now().Add(30 * time.Second)
	for !ns.ReadyForConnections(50 * time.Millisecond) {
		select {
		case reason := <-fatal:
			s.Shutdown()
			return nil, fmt.Errorf("bus: embedded nats on %s:%d: %s", cfg.Host, cfg.Port, reason)
		default:
		}
		if time.Now().After(deadline) {
			s.Shutdown()
			return nil, fmt.Errorf("bus: embedded nats on %s:%d not ready after 30s", cfg.Host, cfg.Port)
		}
	}
	return s, nil
}

// ClientURL is the nats:// URL clients connect to.
func (s *Server) ClientURL() string { return s.ns.ClientURL() }

// ClusterAddr is the address routes from peers connect to, or "" when the
// server is not clustered.
func (s *Server) ClusterAddr() string {
	if a := s.ns.ClusterAddr(); a != nil {
		return a.String()
	}
	return ""
}

// Name is the server's name within its cluster.
func (s *Server) Name() string { return s.ns.Name() }

// InProcess is the connect option that reaches this server without a socket.
func (s *Server) InProcess() nats.Option { return nats.InProcessServer(s.ns) }

// NATS returns the underlying nats-server for monitoring.
func (s *Server) NATS() *server.Server { return s.ns }

// Shutdown stops the server and removes its temporary store, if any.
func (s *Server) Shutdown() {
	if s.ns != nil {
		s.ns.Shutdown()
		s.ns.WaitForShutdown()
	}
	s.cleanup()
}

func (s *Server) cleanup() {
	if s.tempDir != "" {
		_ = os.RemoveAll(s.tempDir)
	}
}

func serverTLS(cfg ServerConfig) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
	if err != nil {
		return nil, fmt.Errorf("bus: nats tls cert: %w", err)
	}
	tc := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if cfg.TLSCA != "" {
		pool, err := loadCA(cfg.TLSCA)
		if err != nil {
			return nil, err
		}
		tc.ClientCAs, tc.RootCAs = pool, pool
		tc.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return tc, nil
}

func loadCA(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("bus: tls ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("bus: tls ca %s: no certificate found", path)
	}
	return pool, nil
}

func splitHostPort(hp string) (string, int, error) {
	host, p, err := net.SplitHostPort(hp)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		return "", 0, fmt.Errorf("bad port %q", p)
	}
	return host, port, nil
}

// slogAdapter lets nats-server log through the daemon's slog logger.
type slogAdapter struct {
	log   *slog.Logger
	fatal chan<- string
}

// Notices (the start banner, connections) go to debug: our daemons log what matters.
func (a slogAdapter) Noticef(f string, v ...any) { a.log.Debug(fmt.Sprintf(f, v...)) }
func (a slogAdapter) Warnf(f string, v ...any)   { a.log.Warn(fmt.Sprintf(f, v...)) }
func (a slogAdapter) Fatalf(f string, v ...any) {
	msg := fmt.Sprintf(f, v...)
	a.log.Error(msg)
	select {
	case a.fatal <- msg:
	default:
	}
}
func (a slogAdapter) Errorf(f string, v ...any) { a.log.Error(fmt.Sprintf(f, v...)) }
func (a slogAdapter) Debugf(f string, v ...any) { a.log.Debug(fmt.Sprintf(f, v...)) }
func (a slogAdapter) Tracef(f string, v ...any) { a.log.Debug(fmt.Sprintf(f, v...)) }
