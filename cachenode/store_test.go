package cachenode

import (
	"fmt"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus"
)

func TestStoreExpiry(t *testing.T) {
	tests := []struct {
		name   string
		setup  func(s *Store)
		key    string
		expect Lookup
		value  string
	}{
		{"fresh", func(s *Store) { _ = s.Set("ns", "k", []byte("v"), time.Minute) }, "k", Hit, "v"},
		{"other key", func(s *Store) { _ = s.Set("ns", "k", []byte("v"), time.Minute) }, "x", Miss, ""},
		{"deleted", func(s *Store) {
			_ = s.Set("ns", "k", []byte("v"), time.Minute)
			s.Delete("ns", "k")
		}, "k", Miss, ""},
		{"prefix", func(s *Store) {
			_ = s.Set("ns", "user:1", []byte("v"), time.Minute)
			s.ExpirePrefix("ns", "user:")
		}, "user:1", Miss, ""},
		{"prefix spares others", func(s *Store) {
			_ = s.Set("ns", "cart:1", []byte("v"), time.Minute)
			s.ExpirePrefix("ns", "user:")
		}, "cart:1", Hit, "v"},
		{"set after prefix flush", func(s *Store) {
			s.Set("ns", "user:0", nil, time.Minute)
			s.ExpirePrefix("ns", "user:")
			_ = s.Set("ns", "user:1", []byte("new"), time.Minute)
		}, "user:1", Hit, "new"},
		{"tag", func(s *Store) {
			_ = s.Set("ns", "k", []byte("v"), time.Minute, "a", "b")
			s.ExpireTag("ns", "b")
		}, "k", Miss, ""},
		{"other tag", func(s *Store) {
			_ = s.Set("ns", "k", []byte("v"), time.Minute, "a")
			s.ExpireTag("ns", "b")
		}, "k", Hit, "v"},
		{"namespace", func(s *Store) {
			_ = s.Set("ns", "k", []byte("v"), time.Minute)
			s.Flush("ns")
		}, "k", Miss, ""},
		{"apply expire", func(s *Store) {
			_ = s.Set("ns", "k", []byte("v"), time.Minute)
			s.Apply("ns", bus.Expire{Keys: []string{"k"}})
		}, "k", Miss, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := NewStore(StoreConfig{MaxMB: 8, Shards: 16})
			defer s.Close()
			tt.setup(s)
			v, l := s.Get("ns", tt.key)
			if l != tt.expect || string(v) != tt.value {
				t.Fatalf("Get = %q, %v; want %q, %v", v, l, tt.value, tt.expect)
			}
		})
	}
}

// TestSetIfUnexpired: a value read from its source is not kept when an
// expire that may cover it came after the mark taken before the read, and
// is kept otherwise.
func TestSetIfUnexpired(t *testing.T) {
	tests := []struct {
		name    string
		between func(t *testing.T, s *Store) // after the mark, before the set
		key     string
		kept    bool
	}{
		{"nothing", func(_ *testing.T, s *Store) {}, "user:1", true},
		{"other namespace flushed", func(_ *testing.T, s *Store) { s.Set("other", "k", nil, 0); s.Flush("other") }, "user:1", true},
		{"a write", func(_ *testing.T, s *Store) { _ = s.Set("ns", "user:2", []byte("x"), time.Minute) }, "user:1", true},
		{"key deleted", func(_ *testing.T, s *Store) { s.Delete("ns", "user:1") }, "user:1", false},
		{"key expired from the bus", func(_ *testing.T, s *Store) { s.Apply("ns", bus.Expire{Keys: []string{"user:1"}}) }, "user:1", false},
		{"prefix", func(_ *testing.T, s *Store) { s.ExpirePrefix("ns", "user:") }, "user:1", false},
		{"tag", func(_ *testing.T, s *Store) { s.ExpireTag("ns", "t") }, "user:1", false},
		{"namespace", func(_ *testing.T, s *Store) { s.Flush("ns") }, "user:1", false},
		{"prefix swept before the set", func(t *testing.T, s *Store) {
			s.ExpirePrefix("ns", "user:")
			s.waitSwept(t, "ns")
		}, "user:1", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := NewStore(StoreConfig{MaxMB: 8, Shards: 16})
			defer s.Close()
			_ = s.Set("ns", tt.key, []byte("old"), time.Minute)
			mark, err := s.Mark("ns")
			if err != nil {
				t.Fatal(err)
			}
			tt.between(t, s)
			kept, err := s.SetIfUnexpired("ns", tt.key, []byte("read"), time.Minute, mark)
			if err != nil || kept != tt.kept {
				t.Fatalf("SetIfUnexpired = %v, %v; want %v", kept, err, tt.kept)
			}
			v, l := s.Get("ns", tt.key)
			switch {
			case tt.kept && (l != Hit || string(v) != "read"):
				t.Fatalf("Get = %q, %v; want the value set", v, l)
			case !tt.kept && l == Hit && string(v) == "read":
				t.Fatalf("Get = %q: the value read before the expire was kept", v)
			}
			// A read that begins after the expire is kept.
			mark, _ = s.Mark("ns")
			if kept, err := s.SetIfUnexpired("ns", tt.key, []byte("new"), time.Minute, mark); err != nil || !kept {
				t.Fatalf("SetIfUnexpired after the expire = %v, %v", kept, err)
			}
		})
	}
	s := NewStore(StoreConfig{MaxMB: 8, Shards: 16})
	defer s.Close()
	if _, err := s.Mark("bad namespace"); err == nil {
		t.Fatal("Mark of a bad namespace: no error")
	}
}

// TestSetIfUnexpiredAfterCheck: an expire that comes between
// SetIfUnexpired's check and its write still keeps the value out.
func TestSetIfUnexpiredAfterCheck(t *testing.T) {
	for _, expire := range []struct {
		name string
		do   func(s *Store)
	}{
		{"delete", func(s *Store) { s.Delete("ns", "k") }},
		{"prefix", func(s *Store) { s.ExpirePrefix("ns", "k") }},
		{"tag", func(s *Store) { s.ExpireTag("ns", "t") }},
		{"namespace", func(s *Store) { s.Flush("ns") }},
	} {
		t.Run(expire.name, func(t *testing.T) {
			s := NewStore(StoreConfig{MaxMB: 8, Shards: 16})
			defer s.Close()
			mark, _ := s.Mark("ns")
			beforeUnexpiredSet = func() { expire.do(s) }
			t.Cleanup(func() { beforeUnexpiredSet = nil })
			kept, err := s.SetIfUnexpired("ns", "k", []byte("read"), time.Minute, mark, "t")
			if err != nil || kept {
				t.Fatalf("SetIfUnexpired = %v, %v; want not kept", kept, err)
			}
			if v, l := s.Get("ns", "k"); l != Miss {
				t.Fatalf("Get = %q, %v: the value read before the expire was kept", v, l)
			}
		})
	}
}

// TestSetIfUnexpiredRace races reads that set a key with deletes of it:
// whenever the last delete began after a read's mark, no value of that
// read may be left in the store.
func TestSetIfUnexpiredRace(t *testing.T) {
	s := NewStore(StoreConfig{MaxMB: 8, Shards: 16})
	defer s.Close()
	for round := range 2000 {
		mark, _ := s.Mark("ns")
		done := make(chan struct{})
		go func() {
			defer close(done)
			_, _ = s.SetIfUnexpired("ns", "k", []byte(fmt.Sprint(round)), time.Minute, mark)
		}()
		s.Delete("ns", "k")
		<-done
		if v, l := s.Get("ns", "k"); l != Miss {
			t.Fatalf("round %d: %q left after a delete that came after the read began", round, v)
		}
	}
}

func TestStoreTTLAndStale(t *testing.T) {
	s := NewStore(StoreConfig{MaxMB: 8, Shards: 16, StaleGrace: time.Hour})
	defer s.Close()
	if err := s.Set("ns", "k", []byte("v"), time.Nanosecond); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Second)
	for {
		v, l := s.Get("ns", "k")
		if l == Stale && string(v) == "v" {
			break
		}
		if l != Hit || time.Now().After(deadline) {
			t.Fatalf("Get = %q, %v; want the entry to turn stale", v, l)
		}
	}
}

func BenchmarkStoreGetHit(b *testing.B) {
	s := NewStore(StoreConfig{MaxMB: 64})
	defer s.Close()
	keys := make([]string, 1024)
	for i := range keys {
		keys[i] = fmt.Sprintf("user:%d", i)
		_ = s.Set("ns", keys[i], make([]byte, 100), time.Hour)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, l := s.Get("ns", keys[i&1023]); l != Hit {
			b.Fatal("miss")
		}
	}
}

// waitSwept waits until the sweeper has applied and forgotten every prefix
// and tag flush of ns.
func (s *Store) waitSwept(t testing.TB, ns string) {
	t.Helper()
	sp := s.lookup(ns)
	for deadline := time.Now().Add(10 * time.Second); sp.rules.Load() != nil; {
		if time.Now().After(deadline) {
			t.Fatalf("flush rules of %s not swept in 10s", ns)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestExpireRaceWithSweep reads entries while the background sweep of an
// expire deletes them and then forgets its rule: a read that copied an
// entry before the sweep deleted it must still see it expired, not fresh
// once the rule is gone. Every round expires a new tag and reads its
// entries back at once, so reads keep meeting sweeps in progress.
func TestExpireRaceWithSweep(t *testing.T) {
	s := NewStore(StoreConfig{MaxMB: 8, Shards: 16})
	defer s.Close()
	const rounds, perRound = 3000, 8
	for i := range rounds {
		tag := fmt.Sprintf("t%d", i)
		for j := range perRound {
			if err := s.Set("ns", fmt.Sprintf("k%d-%d", i, j), []byte("v"), time.Hour, tag); err != nil {
				t.Fatal(err)
			}
		}
		s.ExpireTag("ns", tag)
		for j := range perRound {
			if _, l := s.Get("ns", fmt.Sprintf("k%d-%d", i, j)); l != Miss {
				t.Fatalf("round %d: k%d-%d of expired tag %s read as %v", i, i, j, tag, l)
			}
		}
	}
}
