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
