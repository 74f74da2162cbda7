package admin

import (
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// ParseAllow parses an allow-list of CIDRs such as "10.0.0.0/8"; a bare
// address stands for itself alone. Empty entries are skipped, so an empty
// list allows no address.
func ParseAllow(entries []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, e := range entries {
		e = strings.TrimSpace(e)
		if e == "" {
			continue
		}
		if p, err := netip.ParsePrefix(e); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(e)
		if err != nil {
			return nil, fmt.Errorf("admin: CACHEBUS_ADMIN_ALLOW entry %q: not a CIDR such as 10.0.0.0/8 or an address", e)
		}
		a = a.Unmap()
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

// access is what a route requires of its caller.
type access int

const (
	// readAccess needs an allowed address, and the token when one is set.
	readAccess access = iota
	// adminAccess needs an allowed address and the token, which must be set.
	adminAccess
	// pageAccess is readAccess for a page a browser opens: the token may
	// also come as the password of HTTP basic auth.
	pageAccess
)

// refusal is why a call was not let through.
type refusal struct {
	status int
	msg    string
}

// remoteAddr returns the address of the connection the request came on.
// X-Forwarded-For and similar headers are ignored on purpose: anyone can
// set them.
func remoteAddr(r *http.Request) (netip.Addr, bool) {
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		return ap.Addr().Unmap(), true
	}
	host := r.RemoteAddr
	if h, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		host = h
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}, false
	}
	return a.Unmap(), true
}

// authorize checks the caller's address and token for a route needing
// level; it returns nil when the call may proceed.
func (s *Server) authorize(r *http.Request, level access) *refusal {
	addr, ok := remoteAddr(r)
	if !ok {
		return &refusal{http.StatusForbidden, fmt.Sprintf("source %q is not an IP address", r.RemoteAddr)}
	}
	allowed := false
	for _, p := range s.allow {
		if p.Contains(addr) {
			allowed = true
			break
		}
	}
	if !allowed {
		return &refusal{http.StatusForbidden, fmt.Sprintf("source %s not in CACHEBUS_ADMIN_ALLOW", addr)}
	}
	if s.cfg.Token == "" {
		if level == adminAccess {
			return &refusal{http.StatusForbidden, "admin token not configured (set CACHEBUS_ADMIN_TOKEN)"}
		}
		return nil
	}
	if _, pass, ok := r.BasicAuth(); ok && level == pageAccess {
		if !tokenEqual(strings.TrimSpace(pass), s.cfg.Token) {
			return &refusal{http.StatusUnauthorized, "wrong admin token"}
		}
		return nil
	}
	auth := r.Header.Get("Authorization")
	scheme, token, found := strings.Cut(auth, " ")
	if auth == "" || !found || !strings.EqualFold(scheme, "Bearer") {
		return &refusal{http.StatusUnauthorized, "missing \"Authorization: Bearer <token>\" header (the token is CACHEBUS_ADMIN_TOKEN)"}
	}
	if !tokenEqual(strings.TrimSpace(token), s.cfg.Token) {
		return &refusal{http.StatusUnauthorized, "wrong admin token"}
	}
	return nil
}

// tokenEqual compares in constant time; hashing first hides the length too.
func tokenEqual(got, want string) bool {
	g, w := sha256.Sum256([]byte(got)), sha256.Sum256([]byte(want))
	return subtle.ConstantTimeCompare(g[:], w[:]) == 1
}
