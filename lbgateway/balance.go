package lbgateway

import (
	"math/rand/v2"
	"slices"
	"time"
)

// pickNew chooses the backend of a new session by the power of two
// choices: of two backends drawn at random among the live, non-draining
// ones, the one with fewer requests in flight, its count divided by its
// share while in slow start. Two draws are enough to keep the load even
// without the herd a global least-loaded choice causes when many gateways
// see the same counts. tried are backends that already failed this
// request.
func (v *view) pickNew(now time.Time, tried []*Backend) *Backend {
	ok := func(b *Backend) bool { return !b.ejected(now) && !slices.Contains(tried, b) }
	n := len(v.fresh)
	switch n {
	case 0:
		return nil
	case 1:
		if ok(v.fresh[0]) {
			return v.fresh[0]
		}
		return nil
	}
	i, j := rand.IntN(n), rand.IntN(n-1)
	if j >= i {
		j++
	}
	a, b := v.fresh[i], v.fresh[j]
	if ok(a) && ok(b) {
		return v.lighter(a, b, now)
	}
	// Some backend is out: draw among those left.
	cands := make([]*Backend, 0, n)
	for _, c := range v.fresh {
		if ok(c) {
			cands = append(cands, c)
		}
	}
	switch len(cands) {
	case 0:
		return nil
	case 1:
		return cands[0]
	}
	i, j = rand.IntN(len(cands)), rand.IntN(len(cands)-1)
	if j >= i {
		j++
	}
	return v.lighter(cands[i], cands[j], now)
}

// pickSticky returns the backend a cookie names when it can serve the
// request: live (draining is fine, that is the point of a drain) and not
// ejected.
func (v *view) pickSticky(id string, now time.Time) *Backend {
	b := v.sticky[id]
	if b == nil || b.ejected(now) {
		return nil
	}
	return b
}

// lighter returns the less loaded of a and b, ties to a.
func (v *view) lighter(a, b *Backend, now time.Time) *Backend {
	if v.cost(b, now) < v.cost(a, now) {
		return b
	}
	return a
}

// cost is a backend's requests in flight, plus the one to place, over its
// share: a backend in slow start begins at a tenth of a full share and
// grows to all of it, so a cold app is not handed a full load at once.
func (v *view) cost(b *Backend, now time.Time) float64 {
	c := float64(b.inflight.Load() + 1)
	if len(v.slowUntil) == 0 {
		return c
	}
	until, ok := v.slowUntil[b]
	if !ok || !now.Before(until) {
		return c
	}
	done := 1 - float64(until.Sub(now))/float64(v.slowStart)
	return c / (0.1 + 0.9*done)
}
