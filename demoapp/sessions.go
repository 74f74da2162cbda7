package demoapp

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/cachebus/cachebus/cachenode"
)

// sessionCookie is the app's own session cookie; the gateway's sticky
// cookie starts when a response sets it (CACHEBUS_GATEWAY_SESSION_COOKIE).
const sessionCookie = "demo_session"

// errNoSession is a request without a valid, live session.
var errNoSession = errors.New("no session: log in first")

// Session is what the cache tier keeps for one login, under its id.
type Session struct {
	User    string    `json:"user"`
	Counter int       `json:"counter"`
	Started time.Time `json:"started"`
	// By is the app server that started it, to show a session that moved.
	By string `json:"by"`
}

// sessions keeps sessions in the cache tier's records, so every app
// server reads the same ones, and tracks which are live on this app
// server: seen here within the idle time and not logged out.
type sessions struct {
	records *cachenode.Client
	ns      string
	ttl     time.Duration
	idle    time.Duration

	mu   sync.Mutex
	seen map[string]time.Time
}

func newSessions(records *cachenode.Client, ns string, ttl, idle time.Duration) *sessions {
	return &sessions{records: records, ns: ns, ttl: ttl, idle: idle, seen: map[string]time.Time{}}
}

// start creates a session for user and returns its id.
func (s *sessions) start(ctx context.Context, user, by string) (string, Session, error) {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	id := hex.EncodeToString(b[:])
	sess := Session{User: user, Started: time.Now().UTC(), By: by}
	if err := s.save(ctx, id, sess); err != nil {
		return "", Session{}, err
	}
	s.touch(id)
	return id, sess, nil
}

// get reads the session r's cookie names.
func (s *sessions) get(ctx context.Context, r *http.Request) (string, Session, error) {
	c, err := r.Cookie(sessionCookie)
	if err != nil || len(c.Value) != 32 {
		return "", Session{}, errNoSession
	}
	rec, err := s.records.Get(ctx, s.ns, c.Value)
	if errors.Is(err, cachenode.ErrNotFound) {
		s.forget(c.Value)
		return "", Session{}, errNoSession
	}
	if err != nil {
		return "", Session{}, fmt.Errorf("read session: %w", err)
	}
	var sess Session
	if err := json.Unmarshal(rec.Value, &sess); err != nil {
		return "", Session{}, fmt.Errorf("read session: %w", err)
	}
	s.touch(c.Value)
	return c.Value, sess, nil
}

// save writes sess under id; every write renews its TTL.
func (s *sessions) save(ctx context.Context, id string, sess Session) error {
	data, err := json.Marshal(sess)
	if err != nil {
		return err
	}
	if _, err := s.records.Put(ctx, s.ns, id, data, s.ttl); err != nil {
		return fmt.Errorf("save session: %w", err)
	}
	return nil
}

// end deletes session id.
func (s *sessions) end(ctx context.Context, id string) error {
	s.forget(id)
	if err := s.records.Delete(ctx, s.ns, id); err != nil && !errors.Is(err, cachenode.ErrNotFound) {
		return fmt.Errorf("end session: %w", err)
	}
	return nil
}

func (s *sessions) touch(id string) {
	s.mu.Lock()
	s.seen[id] = time.Now()
	s.mu.Unlock()
}

func (s *sessions) forget(id string) {
	s.mu.Lock()
	delete(s.seen, id)
	s.mu.Unlock()
}

// live counts the sessions live on this app server, dropping the idle.
func (s *sessions) live() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	cutoff := time.Now().Add(-s.idle)
	for id, at := range s.seen {
		if at.Before(cutoff) {
			delete(s.seen, id)
		}
	}
	return len(s.seen)
}
