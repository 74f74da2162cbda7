package lbgateway

import (
	"net/url"
	"testing"
	"time"
)

func testBackends(ids ...string) []*Backend {
	out := make([]*Backend, len(ids))
	for i, id := range ids {
		out[i] = &Backend{ID: id, URL: &url.URL{Scheme: "http", Host: "127.0.0.1:1"}}
	}
	return out
}

// TestPickNew: the power of two choices never picks the most loaded
// backend while two others are lighter, skips ejected and already tried
// backends, and gives a backend in slow start a small, growing share.
func TestPickNew(t *testing.T) {
	now := time.Now()
	count := func(v *view, n int, tried ...*Backend) map[string]int {
		got := map[string]int{}
		for range n {
			if b := v.pickNew(now, tried); b != nil {
				got[b.ID]++
			} else {
				got["none"]++
			}
		}
		return got
	}

	t.Run("most loaded never picked", func(t *testing.T) {
		bs := testBackends("b1", "b2", "b3")
		bs[2].inflight.Store(100)
		bs[1].inflight.Store(5)
		got := count(&view{fresh: bs}, 3000)
		if got["b3"] != 0 || got["b1"] < got["b2"] {
			t.Fatalf("picks %v: want none on b3 and most on b1", got)
		}
	})
	t.Run("equal load spreads", func(t *testing.T) {
		got := count(&view{fresh: testBackends("b1", "b2", "b3")}, 3000)
		for _, id := range []string{"b1", "b2", "b3"} {
			if got[id] < 700 {
				t.Fatalf("picks %v: want about a third each", got)
			}
		}
	})
	t.Run("ejected and tried skipped", func(t *testing.T) {
		bs := testBackends("b1", "b2", "b3")
		bs[0].ejectedUntil.Store(now.Add(time.Minute).UnixNano())
		got := count(&view{fresh: bs}, 300, bs[1])
		if got["b3"] != 300 {
			t.Fatalf("picks %v: want b3 only", got)
		}
		got = count(&view{fresh: bs}, 10, bs[1], bs[2])
		if got["none"] != 10 {
			t.Fatalf("picks %v: want none", got)
		}
		if b := (&view{}).pickNew(now, nil); b != nil {
			t.Fatalf("empty pool picked %s", b.ID)
		}
	})
	t.Run("slow start", func(t *testing.T) {
		bs := testBackends("cold", "warm")
		const window = 10 * time.Second
		for _, tc := range []struct {
			elapsed  time.Duration
			min, max int // picks of cold out of 1000
		}{
			{0, 0, 0}, // a tenth of a share loses every draw at equal load
			{window / 2, 0, 0},
			{window, 400, 600},
		} {
			v := &view{fresh: bs, slowStart: window,
				slowUntil: map[*Backend]time.Time{bs[0]: now.Add(window - tc.elapsed)}}
			got := count(v, 1000)
			if got["cold"] < tc.min || got["cold"] > tc.max {
				t.Errorf("after %s of slow start: picks %v, want cold in [%d, %d]", tc.elapsed, got, tc.min, tc.max)
			}
		}
		// Under load the cold backend gets its share: at a tenth, once the
		// warm one has ten times its requests in flight.
		bs[1].inflight.Store(20)
		v := &view{fresh: bs, slowStart: window, slowUntil: map[*Backend]time.Time{bs[0]: now.Add(window)}}
		if got := count(v, 100); got["cold"] != 100 {
			t.Errorf("cold at 0 in flight against warm at 20: picks %v, want cold", got)
		}
	})
}
