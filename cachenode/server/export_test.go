package server

import "github.com/prometheus/client_golang/prometheus/testutil"

// Held reports whether s holds the data of partition p: what its heartbeat
// announces next. For tests, which compare the copies of every holder.
func (s *Server) Held(p int) bool { return s.held(p) }

// HandedOut is how many records the node sent to peers taking partitions.
func (s *Server) HandedOut() float64 { return testutil.ToFloat64(s.m.handedOut) }

// ReplBatches is how many replication messages the node has sent.
func (s *Server) ReplBatches() float64 { return testutil.ToFloat64(s.m.replBatches) }

// SetIsolated marks the node cut off from the NATS majority, or not, as
// its reconcile would; a node that sees a minority of its baseline stays
// as set (its JetStream probe only ever ends an isolation it sees the
// majority again for).
func (s *Server) SetIsolated(v bool) { s.isolated.Store(v) }
