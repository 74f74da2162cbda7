package server

// Held reports whether s holds the data of partition p: what its heartbeat
// announces next. For tests, which compare the copies of every holder.
func (s *Server) Held(p int) bool { return s.held(p) }
