package bus_test

import (
	"bufio"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	neturl "net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/bus/bustest"
	"github.com/cachebus/cachebus/persistence"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
)

// The tests of this file start embedded servers with the options the
// `cachebus nats` daemon passes through: TLS, users with permissions, and
// clustering.

func startServer(t *testing.T, cfg bus.ServerConfig) *bus.Server {
	t.Helper()
	if cfg.Host == "" {
		cfg.Host, cfg.Port = "127.0.0.1", -1
	}
	if cfg.StoreDir == "" {
		cfg.StoreDir = t.TempDir()
	}
	srv, err := bus.StartServer(cfg, bustest.Logger(t))
	if err != nil {
		t.Fatalf("start server: %v", err)
	}
	t.Cleanup(srv.Shutdown)
	return srv
}

func connectCfg(t *testing.T, cfg bus.ConnConfig, timeout time.Duration, opts ...bus.Option) (*bus.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if cfg.Prefix == "" {
		cfg.Prefix = bus.DefaultPrefix
	}
	cfg.Name = t.Name()
	c, err := bus.Connect(ctx, cfg, append([]bus.Option{bus.WithLogger(bustest.Logger(t))}, opts...)...)
	if err == nil {
		t.Cleanup(c.NC.Close)
	}
	return c, err
}

// expireRoundTrip publishes an expire through the guaranteed path on pubConn
// and checks the subscriber on subConn applies it.
func expireRoundTrip(t *testing.T, pubConn, subConn *bus.Conn, key string) {
	t.Helper()
	bustest.EnsureEvents(t, pubConn, persistence.EventLogConfig{})
	s, rec := bustest.Subscribe(t, subConn, bus.SubscriberOptions{Name: "tls"})
	pub, err := bus.NewPublisher(pubConn, "tester")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	seq, err := pub.Expire(ctx, "users", bus.Expire{Keys: []string{key}})
	if err != nil {
		t.Fatal(err)
	}
	bustest.WaitSeq(t, s, seq)
	if got := rec.Keys(); len(got) != 1 || got[0] != key {
		t.Fatalf("applied %v, want [%s]", got, key)
	}
}

// TestServerTLS starts the embedded server with TLS and client
// verification: a client with the CA and a client certificate works end to
// end; a plaintext client, a client that does not trust the CA and a client
// without a certificate are refused.
func TestServerTLS(t *testing.T) {
	pki := bustest.NewPKI(t)
	srv := startServer(t, bus.ServerConfig{TLSCert: pki.ServerCert, TLSKey: pki.ServerKey, TLSCA: pki.CA})
	url := srv.ClientURL()

	good := bus.ConnConfig{URL: url, TLSCA: pki.CA, TLSCert: pki.ClientCert, TLSKey: pki.ClientKey}
	c, err := connectCfg(t, good, 10*time.Second)
	if err != nil {
		t.Fatalf("TLS client with a certificate refused: %v", err)
	}
	state, err := c.NC.TLSConnectionState()
	if err != nil || !state.HandshakeComplete || len(state.VerifiedChains) == 0 {
		t.Fatalf("connection not verified TLS: %+v, %v", state, err)
	}
	c2, err := connectCfg(t, good, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	expireRoundTrip(t, c, c2, "over-tls")

	t.Run("in process", func(t *testing.T) {
		// A daemon's own connection to the server it embeds: no socket,
		// so no TLS, and no certificate to show (`cachebus nats` with
		// client verification could not get ready without it).
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		own, err := bus.Connect(ctx, bus.ConnConfig{URL: url, Prefix: bus.DefaultPrefix, Name: t.Name()}, bus.WithServer(srv))
		if err != nil {
			t.Fatalf("in-process connection to a TLS server: %v", err)
		}
		t.Cleanup(func() { own.NC.Close() })
		expireRoundTrip(t, own, c2, "in-process")
	})
	t.Run("plaintext", func(t *testing.T) {
		// Speak the plain protocol, as a client without TLS would.
		u, err := neturl.Parse(url)
		if err != nil {
			t.Fatal(err)
		}
		conn, err := net.DialTimeout("tcp", u.Host, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		r := bufio.NewReader(conn)
		info, err := r.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(info, `"tls_required":true`) {
			t.Fatalf("server INFO does not require TLS: %s", info)
		}
		if _, err := conn.Write([]byte("CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPING\r\nSUB cachebus.> 1\r\nPING\r\n")); err != nil {
			t.Fatal(err)
		}
		rest, err := io.ReadAll(r)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("plaintext connection still open after 5s; read %q", rest)
		}
		if strings.Contains(string(rest), "PONG") {
			t.Fatalf("plaintext client served: %q", rest)
		}
	})
	t.Run("untrusted server", func(t *testing.T) {
		// No CA: the client cannot verify the server's certificate.
		_, err := nats.Connect(url, nats.Timeout(2*time.Second), nats.NoReconnect())
		if err == nil {
			t.Fatal("client without the CA connected")
		}
		var unknown x509.UnknownAuthorityError
		if !errors.As(err, &unknown) && !strings.Contains(err.Error(), "certificate") {
			t.Fatalf("error %v, want a certificate verification failure", err)
		}
	})
	t.Run("no client certificate", func(t *testing.T) {
		_, err := connectCfg(t, bus.ConnConfig{URL: url, TLSCA: pki.CA}, 500*time.Millisecond)
		if err == nil {
			t.Fatal("client without a certificate connected to a server that verifies clients")
		}
		// TLS 1.3 lets the server refuse the missing certificate after the
		// client's side of the handshake, so the client may only see the
		// connection closed; the good client above differs only by its
		// certificate.
		if msg := err.Error(); !strings.Contains(msg, "certificate") && !strings.Contains(msg, "tls") {
			t.Fatalf("refusal %v is not a TLS failure", err)
		}
	})
}

// TestServerUserPermissions gives one user no right to publish expires:
// neither its core publish nor its guaranteed publish reaches a subscriber,
// both are refused visibly, while the admin's expires apply.
func TestServerUserPermissions(t *testing.T) {
	srv := startServer(t, bus.ServerConfig{Users: []bus.ServerUser{
		{Name: "admin", Password: "admin-pw"},
		{Name: "member", Password: "member-pw",
			Publish: []string{"cachebus.hb.>", "$JS.API.>", "_INBOX.>"}},
	}})
	url := srv.ClientURL()

	for _, cfg := range []bus.ConnConfig{{URL: url}, {URL: url, User: "admin", Password: "wrong"}} {
		if _, err := connectCfg(t, cfg, 500*time.Millisecond); err == nil {
			t.Fatalf("connected as %q with password %q", cfg.User, cfg.Password)
		} else if !strings.Contains(strings.ToLower(err.Error()), "authorization") {
			t.Fatalf("refusal %v does not say authorization", err)
		}
	}

	admin, err := connectCfg(t, bus.ConnConfig{URL: url, User: "admin", Password: "admin-pw"}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	bustest.EnsureEvents(t, admin, persistence.EventLogConfig{})
	subConn, err := connectCfg(t, bus.ConnConfig{URL: url, User: "admin", Password: "admin-pw"}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	s, rec := bustest.Subscribe(t, subConn, bus.SubscriberOptions{Name: "guarded"})

	var mu sync.Mutex
	var violations []error
	member, err := connectCfg(t, bus.ConnConfig{URL: url, User: "member", Password: "member-pw"}, 5*time.Second,
		bus.WithNATSOptions(nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			mu.Lock()
			defer mu.Unlock()
			violations = append(violations, err)
		})))
	if err != nil {
		t.Fatal(err)
	}
	violationsFor := func(subject string) int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, err := range violations {
			if errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(err.Error(), subject) {
				n++
			}
		}
		return n
	}

	if err := member.NC.Publish("cachebus.expire.users", []byte("forged-core")); err != nil {
		t.Fatal(err)
	}
	bustest.WaitFor(t, 5*time.Second, "permission violation for the core publish", func() bool {
		return violationsFor("cachebus.expire.users") >= 1
	})
	pub, err := bus.NewPublisher(member, "member")
	if err != nil {
		t.Fatal(err)
	}
	pub.AttemptTimeout = 300 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := pub.Expire(ctx, "users", bus.Expire{Keys: []string{"forged-js"}}); err == nil {
		t.Fatal("guaranteed publish without permission acknowledged")
	} else if !errors.Is(err, bus.ErrNotAcked) && !errors.Is(err, nats.ErrPermissionViolation) {
		t.Fatalf("guaranteed publish without permission: %v", err)
	}
	bustest.WaitFor(t, 5*time.Second, "permission violation for the guaranteed publish", func() bool {
		return violationsFor("cachebus.expire.users") >= 2
	})
	// Through a connection of its own, whose error handler is the bus's:
	// the refusal, which the server reports on the side, ends the publish
	// at its first attempt rather than at the caller's deadline.
	plain, err := connectCfg(t, bus.ConnConfig{URL: url, User: "member", Password: "member-pw"}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	plainPub, err := bus.NewPublisher(plain, "member")
	if err != nil {
		t.Fatal(err)
	}
	plainPub.AttemptTimeout = 300 * time.Millisecond
	long, cancelLong := context.WithTimeout(context.Background(), time.Minute)
	defer cancelLong()
	if _, err := plainPub.Expire(long, "users", bus.Expire{Keys: []string{"forged-plain"}}); !errors.Is(err, nats.ErrPermissionViolation) || errors.Is(err, bus.ErrNotAcked) {
		t.Fatalf("publish without permission: %v, want a permissions violation, not a wait for the deadline", err)
	}
	// What the member may publish still goes through.
	if err := member.NC.Publish("cachebus.hb.app.member", []byte(`{"v":1,"id":"member","role":"app","state":"up"}`)); err != nil {
		t.Fatal(err)
	}
	if err := member.NC.Flush(); err != nil {
		t.Fatal(err)
	}

	// The server dropped both before the admin publishes, so had either
	// been delivered it would be applied before the admin's.
	adminPub, err := bus.NewPublisher(admin, "admin")
	if err != nil {
		t.Fatal(err)
	}
	if err := admin.NC.Publish("cachebus.expire.users", []byte("admin-core")); err != nil {
		t.Fatal(err)
	}
	seq, err := adminPub.Expire(context.Background(), "users", bus.Expire{Keys: []string{"admin-js"}})
	if err != nil {
		t.Fatal(err)
	}
	bustest.WaitSeq(t, s, seq)
	if got := rec.Keys(); strings.Join(got, ",") != "admin-core,admin-js" {
		t.Fatalf("applied %v, want only the admin's two expires", got)
	}
	if seq != 2 {
		t.Fatalf("the admin's expire is event %d of the log, want 2: the member's were stored", seq)
	}
}

// TestServerCluster forms a three-server cluster in process, keeps the
// event log with three replicas, and shuts down the server leading it:
// publishes after that are acknowledged, the subscriber on a survivor
// applies them, and the log still holds every event.
func TestServerCluster(t *testing.T) {
	const n = 3
	routePorts := make([]int, n)
	for i := range routePorts {
		routePorts[i] = bustest.FreePort(t)
	}
	servers := make([]*bus.Server, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		var routes []string
		for j, p := range routePorts {
			if j != i {
				routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", p))
			}
		}
		cfg := bus.ServerConfig{
			Host: "127.0.0.1", Port: -1, StoreDir: t.TempDir(),
			ServerName:    fmt.Sprintf("n%d", i+1),
			ClusterName:   "cachebus-test",
			ClusterListen: fmt.Sprintf("127.0.0.1:%d", routePorts[i]),
			Routes:        routes,
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			servers[i], errs[i] = bus.StartServer(cfg, nil)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("server %d: %v", i+1, err)
		}
		t.Cleanup(servers[i].Shutdown)
	}
	started := time.Now()
	byName := map[string]int{}
	for i, s := range servers {
		byName[s.Name()] = i
	}

	// Wait for the meta leader before asking for a stream: a request sent
	// before there is one goes unanswered until the client's timeout.
	bustest.WaitFor(t, 20*time.Second, "JetStream meta leader with 3 peers", func() bool {
		for _, s := range servers {
			if s.NATS().JetStreamIsLeader() && len(s.NATS().JetStreamClusterPeers()) == n {
				return true
			}
		}
		return false
	})
	t.Logf("cluster formed after %s", time.Since(started))
	setup := bustest.Connect(t, servers[0].ClientURL())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := persistence.EnsureEvents(ctx, setup, persistence.EventLogConfig{MaxAge: time.Hour, Replicas: 3})
	if err != nil {
		t.Fatalf("R3 event log: %v", err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Config.Replicas != 3 || info.Cluster == nil || info.Cluster.Name != "cachebus-test" {
		t.Fatalf("event log config %+v cluster %+v", info.Config, info.Cluster)
	}
	victim, ok := byName[info.Cluster.Leader]
	if !ok {
		t.Fatalf("log leader %q is none of our servers", info.Cluster.Leader)
	}
	t.Logf("cluster and R3 log ready after %s; log leader %s", time.Since(started), info.Cluster.Leader)
	survivors := []int{(victim + 1) % n, (victim + 2) % n}
	pubConn := bustest.Connect(t, servers[survivors[0]].ClientURL())
	subConn := bustest.Connect(t, servers[survivors[1]].ClientURL())
	s, rec := bustest.Subscribe(t, subConn, bus.SubscriberOptions{Name: "survivor"})
	pub, err := bus.NewPublisher(pubConn, "tester")
	if err != nil {
		t.Fatal(err)
	}
	// A publish in flight while the leader hands over gets no answer; retry
	// it soon (the log drops the copy if the first was stored after all).
	pub.AttemptTimeout = 250 * time.Millisecond
	var want []string
	publish := func(key string) uint64 {
		t.Helper()
		want = append(want, key)
		seq, err := pub.Expire(ctx, "users", bus.Expire{Keys: []string{key}})
		if err != nil {
			t.Fatalf("publish %s: %v", key, err)
		}
		return seq
	}
	for i := range 5 {
		publish(fmt.Sprintf("before-%d", i))
	}
	bustest.WaitSeq(t, s, 5)

	killed := time.Now()
	servers[victim].Shutdown()
	var last uint64
	for i := range 5 {
		last = publish(fmt.Sprintf("after-%d", i))
	}
	t.Logf("5 publishes acknowledged %s after shutting down %s", time.Since(killed), servers[victim].Name())
	if last != 10 {
		t.Fatalf("last event is sequence %d, want 10", last)
	}
	bustest.WaitFor(t, 15*time.Second, "survivor applies all 10 expires", func() bool { return len(rec.Keys()) >= 10 })
	if got := rec.Keys(); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("survivor applied %v, want %v", got, want)
	}

	// The log itself kept every event: a subscriber that resumes from the
	// start on the other survivor replays them all.
	replayConn := bustest.Connect(t, servers[survivors[0]].ClientURL())
	replay, replayed := bustest.Subscribe(t, replayConn, bus.SubscriberOptions{Name: "replay", ResumeAfter: 1})
	bustest.WaitSeq(t, replay, 10)
	if got := replayed.Keys(); strings.Join(got, ",") != strings.Join(want[1:], ",") {
		t.Fatalf("replay applied %v, want %v", got, want[1:])
	}
	if _, flushes := replayed.Snapshot(); flushes != 0 {
		t.Fatalf("replay flushed %d times, want 0", flushes)
	}
	jsInfo, err := jetstreamInfo(ctx, pubConn)
	if err != nil {
		t.Fatal(err)
	}
	if jsInfo.State.Msgs != 10 || jsInfo.Cluster.Leader == servers[victim].Name() || jsInfo.Cluster.Leader == "" {
		t.Fatalf("after the shutdown the log holds %d events led by %q", jsInfo.State.Msgs, jsInfo.Cluster.Leader)
	}
}

func jetstreamInfo(ctx context.Context, c *bus.Conn) (*jetstream.StreamInfo, error) {
	st, err := c.JS.Stream(ctx, c.Subjects.EventStream())
	if err != nil {
		return nil, err
	}
	return st.Info(ctx)
}

// TestStartServerPortTaken checks that a server that cannot listen fails
// at once with the reason, instead of waiting out its start timeout.
func TestStartServerPortTaken(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	start := time.Now()
	srv, err := bus.StartServer(bus.ServerConfig{Host: "127.0.0.1", Port: port, StoreDir: t.TempDir()}, nil)
	if err == nil {
		srv.Shutdown()
		t.Fatal("StartServer on a taken port succeeded")
	}
	if !strings.Contains(err.Error(), "listen") {
		t.Errorf("error %q does not say it could not listen", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("StartServer took %s to fail", d)
	}
}

// TestNKeyAuth starts the embedded server from a configuration file that
// admits one nkey user, and checks that ConnConfig.NKeyFile gets in while a
// client without the seed is refused.
func TestNKeyAuth(t *testing.T) {
	user, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := user.PublicKey()
	seed, _ := user.Seed()
	dir := t.TempDir()
	seedFile := filepath.Join(dir, "user.nk")
	if err := os.WriteFile(seedFile, seed, 0o600); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "nats.conf")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf("authorization { users = [ { nkey: %q } ] }\n", pub)), 0o600); err != nil {
		t.Fatal(err)
	}
	srv, err := bus.StartServer(bus.ServerConfig{Host: "127.0.0.1", Port: -1, StoreDir: t.TempDir(), ConfigFile: conf}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := bus.Connect(ctx, bus.ConnConfig{URL: srv.ClientURL(), Prefix: bus.DefaultPrefix, NKeyFile: seedFile})
	if err != nil {
		t.Fatalf("connect with the nkey seed: %v", err)
	}
	c.NC.Close()

	short, cancel2 := context.WithTimeout(context.Background(), 600*time.Millisecond)
	defer cancel2()
	if c, err := bus.Connect(short, bus.ConnConfig{URL: srv.ClientURL(), Prefix: bus.DefaultPrefix}); err == nil {
		c.NC.Close()
		t.Fatal("a client without the nkey seed got in")
	}
}
