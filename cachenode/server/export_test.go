package server

import "github.com/prometheus/client_golang/prometheus/testutil"

// Held reports whether s holds the data of partition p: what its heartbeat
// announces next. For tests, which compare the copies of every holder.
func (s *Server) Held(p int) bool { return s.held(p) }

// HandedOut is how many records the node sent to peers taking partitions.
func (s *Server) HandedOut() float64 { return testutil.ToFloat64(s.m.handedOut) }

// ReplBatches is how many replication messages the node has sent.
func (s *Server) ReplBatches() float64 { return testutil.ToFloat64(s.m.replBatches) }
