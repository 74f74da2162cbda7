package partition_test

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/cachebus/cachebus/cachenode/partition"
)

func members(ids ...string) []partition.Member {
	out := make([]partition.Member, len(ids))
	for i, id := range ids {
		out[i] = partition.Member{ID: id}
	}
	return out
}

func mustAssign(t testing.TB, b partition.Baseline, backups int, crossDC bool) partition.Assignment {
	t.Helper()
	a, err := partition.Assign(b, backups, crossDC)
	if err != nil {
		t.Fatalf("Assign(%v, %d, %v): %v", b.Members, backups, crossDC, err)
	}
	return a
}

// TestScoreVectors checks Score and Assign against the values of the
// Python reference in docs/PROTOCOL.md. Scores may differ from another
// language's logarithm by an ulp or so, hence the tolerance; the owner
// lists must match exactly.
func TestScoreVectors(t *testing.T) {
	for _, v := range []struct {
		id     string
		weight float64
		p      int
		score  float64
	}{
		{"n1", 1, 0, 0.8366309502500722},
		{"n2", 1, 0, 2.675662100947062},
		{"n3", 1, 0, 19.1366003941505},
		{"n1", 1, 1023, 1.6723685524291978},
		{"node-a", 2.5, 7, 0.6340512231621263},
		{"cache-eu-1", 1, 512, 0.8966496185325723},
	} {
		got := partition.Score(v.id, v.weight, v.p)
		if math.Abs(got-v.score) > 4e-16*v.score {
			t.Errorf("Score(%q, %g, %d) = %.17g, reference %.17g", v.id, v.weight, v.p, got, v.score)
		}
	}
	a := mustAssign(t, partition.Baseline{Members: members("n1", "n2", "n3")}, 1, false)
	for p, want := range map[int][]string{
		0: {"n3", "n2"}, 5: {"n1", "n3"}, 7: {"n3", "n1"}, 8: {"n2", "n3"}, 14: {"n1", "n2"}, 1023: {"n1", "n2"},
	} {
		if !slices.Equal(a.Owners[p], want) {
			t.Errorf("partition %d owners %v, reference %v", p, a.Owners[p], want)
		}
	}
}

// TestAssignDeterministic checks that the table depends on the members,
// not on their order or on the call.
func TestAssignDeterministic(t *testing.T) {
	ms := []partition.Member{
		{ID: "a", DC: "dc1"}, {ID: "b", DC: "dc1", Weight: 2}, {ID: "c", DC: "dc2"},
		{ID: "d", DC: "dc2", Weight: 0.5}, {ID: "e", DC: "dc3"},
	}
	first := mustAssign(t, partition.Baseline{Version: 7, Members: ms}, 2, true)
	if first.BaselineVersion != 7 || first.Backups != 2 || !first.CrossDC {
		t.Fatalf("assignment header %d %d %v", first.BaselineVersion, first.Backups, first.CrossDC)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 10 {
		shuffled := slices.Clone(ms)
		rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		again := mustAssign(t, partition.Baseline{Version: 7, Members: shuffled}, 2, true)
		if !equalOwners(first, again) {
			t.Fatalf("order %v gives another table", shuffled)
		}
	}
}

func equalOwners(a, b partition.Assignment) bool {
	for p := range partition.Partitions {
		if !slices.Equal(a.Owners[p], b.Owners[p]) {
			return false
		}
	}
	return true
}

// ranked returns the baseline's ids for partition p by descending score,
// ties by id: the natural order of owners.
func ranked(b partition.Baseline, p int) []string {
	type sc struct {
		id string
		s  float64
	}
	var all []sc
	for _, m := range b.Members {
		all = append(all, sc{m.ID, partition.Score(m.ID, m.Weight, p)})
	}
	slices.SortFunc(all, func(x, y sc) int {
		if x.s != y.s {
			if x.s > y.s {
				return -1
			}
			return 1
		}
		if x.id < y.id {
			return -1
		}
		return 1
	})
	ids := make([]string, len(all))
	for i, s := range all {
		ids[i] = s.id
	}
	return ids
}

// TestAssignRules checks, for every partition of many baselines, the
// number of owners, that they are distinct members, that the primary is the
// best-scored member, and the data-center rule.
func TestAssignRules(t *testing.T) {
	dcMembers := []partition.Member{
		{ID: "eu-1", DC: "eu"}, {ID: "eu-2", DC: "eu"}, {ID: "eu-3", DC: "eu", Weight: 3},
		{ID: "us-1", DC: "us"}, {ID: "ap-1", DC: "ap", Weight: 0.3},
	}
	twoDC := []partition.Member{{ID: "a1", DC: "a"}, {ID: "a2", DC: "a"}, {ID: "a3", DC: "a"}, {ID: "b1", DC: "b"}}
	cases := []struct {
		name    string
		members []partition.Member
		backups int
		crossDC bool
	}{
		{"empty", nil, 1, false},
		{"one member, one backup asked", members("solo"), 1, false},
		{"one member, cross-dc", members("solo"), 2, true},
		{"two members", members("n1", "n2"), 1, false},
		{"three, no backup", members("n1", "n2", "n3"), 0, false},
		{"three, two backups", members("n1", "n2", "n3"), 2, false},
		{"three, five backups asked", members("n1", "n2", "n3"), 5, false},
		{"one DC with cross-dc", members("n1", "n2", "n3"), 1, true},
		{"three DCs, one backup", dcMembers, 1, true},
		{"three DCs, two backups", dcMembers, 2, true},
		{"three DCs, no cross-dc", dcMembers, 1, false},
		{"lopsided DCs, one backup", twoDC, 1, true},
		{"lopsided DCs, two backups", twoDC, 2, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := partition.Baseline{Version: 3, Members: tc.members}
			a := mustAssign(t, b, tc.backups, tc.crossDC)
			dcOf := map[string]string{}
			for _, m := range tc.members {
				dcOf[m.ID] = m.DC
			}
			multiDC := len(b.DCs()) > 1
			want := min(tc.backups+1, len(tc.members))
			crossFixes := 0
			for p := range partition.Partitions {
				owners := a.Owners[p]
				if len(owners) != want {
					t.Fatalf("partition %d: %d owners %v, want %d", p, len(owners), owners, want)
				}
				if want == 0 {
					continue
				}
				natural := ranked(b, p)
				if owners[0] != natural[0] {
					t.Fatalf("partition %d: primary %s, best score is %s", p, owners[0], natural[0])
				}
				seen := map[string]bool{}
				for _, id := range owners {
					if _, ok := dcOf[id]; !ok || seen[id] {
						t.Fatalf("partition %d: owners %v not distinct members", p, owners)
					}
					seen[id] = true
				}
				otherDC := slices.ContainsFunc(owners[1:], func(id string) bool { return dcOf[id] != dcOf[owners[0]] })
				switch {
				case tc.crossDC && multiDC && want > 1:
					if !otherDC {
						t.Fatalf("partition %d: owners %v, none in a DC other than %q", p, owners, dcOf[owners[0]])
					}
					if !slices.Equal(owners, natural[:want]) {
						crossFixes++
						// The fix: the best of another DC first, then the
						// natural picks in order.
						var best string
						for _, id := range natural {
							if dcOf[id] != dcOf[owners[0]] {
								best = id
								break
							}
						}
						fixed := append([]string{natural[0], best}, natural[1:want-1]...)
						if !slices.Equal(owners, fixed) {
							t.Fatalf("partition %d: owners %v, want %v", p, owners, fixed)
						}
					}
				default:
					if !slices.Equal(owners, natural[:want]) {
						t.Fatalf("partition %d: owners %v, want the best-scored %v", p, owners, natural[:want])
					}
				}
			}
			if crossFixes > 0 {
				t.Logf("%d partitions took a backup from another DC out of score order", crossFixes)
			}
		})
	}
}

// primaryShare returns each member's fraction of the primaries.
func primaryShare(a partition.Assignment) map[string]float64 {
	out := map[string]float64{}
	for id, s := range a.Shares() {
		out[id] = float64(s.Primary) / partition.Partitions
	}
	return out
}

// randomIDs returns n baselines of k members with made-up ids, the same
// on every run.
func randomIDs(n, k int) [][]partition.Member {
	rng := rand.New(rand.NewPCG(42, 7))
	out := make([][]partition.Member, n)
	for i := range out {
		for j := range k {
			out[i] = append(out[i], partition.Member{ID: fmt.Sprintf("node-%x-%d", rng.Uint32(), j)})
		}
	}
	return out
}

// binomialSD is the standard deviation of how many of the partitions a
// member with probability p of each gets: what any random assignment of
// 1024 partitions shows, and what a good hash must not exceed.
func binomialSD(p float64) float64 { return math.Sqrt(partition.Partitions * p * (1 - p)) }

// TestAssignBalance checks that equal members share the primaries evenly:
// each of n1, n2, n3 within ±10% of a third; and, over 300 other
// baselines of three, that the spread of shares is no wider than a fair
// random draw's (the best rendezvous hashing can do), for primaries and
// backups alike.
func TestAssignBalance(t *testing.T) {
	a := mustAssign(t, partition.Baseline{Members: members("n1", "n2", "n3")}, 1, false)
	for id, got := range primaryShare(a) {
		if math.Abs(got-1.0/3) > 0.1/3 {
			t.Errorf("%s is primary of %.3f of partitions, want 1/3 ±10%%", id, got)
		}
	}
	t.Logf("n1..n3 shares %v", a.Shares())

	var primSq, backSq float64
	outside, count := 0, 0
	for _, ms := range randomIDs(300, 3) {
		a := mustAssign(t, partition.Baseline{Members: ms}, 1, false)
		for _, s := range a.Shares() {
			dp, db := float64(s.Primary)-1024.0/3, float64(s.Backup)-1024.0/3
			primSq, backSq = primSq+dp*dp, backSq+db*db
			if math.Abs(dp) > 1024.0/30 {
				outside++
			}
			count++
		}
	}
	sd := binomialSD(1.0 / 3)
	primSD, backSD := math.Sqrt(primSq/float64(count)), math.Sqrt(backSq/float64(count))
	t.Logf("over 300 baselines of 3: sd of primaries %.1f, of backups %.1f, fair draw %.1f; %d of %d members outside ±10%%",
		primSD, backSD, sd, outside, count)
	if primSD > 1.15*sd || backSD > 1.15*sd {
		t.Errorf("shares spread wider than a fair draw: sd %.1f (primary), %.1f (backup), want ≤ %.1f", primSD, backSD, 1.15*sd)
	}
}

// TestAssignWeights checks that shares follow the weights: in every
// baseline within 4 standard deviations of weight/total, and on average
// over 100 baselines within 3% of it.
func TestAssignWeights(t *testing.T) {
	for _, weights := range [][]float64{{1, 2, 1}, {1, 3}, {0.5, 0.5, 1, 2}, {0, 1, 4}} {
		var total float64
		for _, w := range weights {
			total += cmp.Or(w, 1)
		}
		mean := make([]float64, len(weights))
		sets := randomIDs(100, len(weights))
		sets[0] = members("n1", "n2", "n3", "n4")[:len(weights)]
		for _, ms := range sets {
			for i := range ms {
				ms[i].Weight = weights[i]
			}
			shares := primaryShare(mustAssign(t, partition.Baseline{Members: ms}, 1, false))
			for i, m := range ms {
				want := cmp.Or(m.Weight, 1) / total
				if got := shares[m.ID]; math.Abs(got-want)*partition.Partitions > 4*binomialSD(want) {
					t.Errorf("weights %v: %s has %.3f of primaries, want %.3f", weights, m.ID, got, want)
				}
				mean[i] += shares[m.ID] / float64(len(sets))
			}
		}
		for i, w := range weights {
			want := cmp.Or(w, 1) / total
			if math.Abs(mean[i]-want) > 0.03*want {
				t.Errorf("weights %v: weight %g has %.4f of primaries on average, want %.4f ±3%%", weights, w, mean[i], want)
			}
		}
		t.Logf("weights %v: average shares %.3f", weights, mean)
	}
}

// TestAssignJoinLeave measures what a baseline change moves: a fourth
// member joining three takes about a quarter of the primaries (at most
// 1.1 × 1024/4), all of them its own, and leaving again moves only its
// partitions back.
func TestAssignJoinLeave(t *testing.T) {
	bound := int(math.Floor(1.1 * partition.Partitions / 4))
	for _, tc := range []struct {
		name    string
		three   []partition.Member
		joiner  partition.Member
		crossDC bool
	}{
		{"n1-n4", members("n1", "n2", "n3"), partition.Member{ID: "n4"}, false},
		{"cache-1..4", members("cache-1", "cache-2", "cache-3"), partition.Member{ID: "cache-4"}, false},
		{"two DCs cross-dc", []partition.Member{{ID: "a1", DC: "a"}, {ID: "a2", DC: "a"}, {ID: "b1", DC: "b"}},
			partition.Member{ID: "b2", DC: "b"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b3 := partition.Baseline{Version: 1, Members: tc.three}
			b4 := partition.Baseline{Version: 2, Members: append(slices.Clone(tc.three), tc.joiner)}
			a3 := mustAssign(t, b3, 1, tc.crossDC)
			a4 := mustAssign(t, b4, 1, tc.crossDC)
			joiner := tc.joiner.ID

			prim, sets := partition.Moved(a3, a4)
			t.Logf("3→4: %d primaries moved (bound %d, ideal %d), %d replica sets changed (ideal %d)",
				prim, bound, partition.Partitions/4, sets, partition.Partitions/2)
			if prim > bound {
				t.Errorf("3→4 moved %d primaries, bound %d", prim, bound)
			}
			for p := range partition.Partitions {
				if a3.Primary(p) != a4.Primary(p) && a4.Primary(p) != joiner {
					t.Fatalf("3→4: partition %d primary %s → %s, not to the joiner", p, a3.Primary(p), a4.Primary(p))
				}
				if !tc.crossDC && !slices.Equal(a3.Owners[p], a4.Owners[p]) && !slices.Contains(a4.Owners[p], joiner) {
					t.Fatalf("3→4: partition %d owners %v → %v without the joiner", p, a3.Owners[p], a4.Owners[p])
				}
			}

			// 4→3: the joiner leaves again.
			prim, sets = partition.Moved(a4, a3)
			leaver := a4.Shares()[joiner]
			t.Logf("4→3: %d primaries moved (the leaver had %d), %d replica sets changed (the leaver was in %d)",
				prim, leaver.Primary, sets, leaver.Primary+leaver.Backup)
			if prim != leaver.Primary {
				t.Errorf("4→3 moved %d primaries, the leaver had %d", prim, leaver.Primary)
			}
			for p := range partition.Partitions {
				if a4.Primary(p) != a3.Primary(p) && a4.Primary(p) != joiner {
					t.Fatalf("4→3: partition %d primary %s → %s, not the leaver's", p, a4.Primary(p), a3.Primary(p))
				}
				if !tc.crossDC && !slices.Equal(a3.Owners[p], a4.Owners[p]) && !slices.Contains(a4.Owners[p], joiner) {
					t.Fatalf("4→3: partition %d owners %v → %v, the leaver was not one", p, a4.Owners[p], a3.Owners[p])
				}
			}
			if !tc.crossDC && sets != leaver.Primary+leaver.Backup {
				t.Errorf("4→3 changed %d replica sets, the leaver was in %d", sets, leaver.Primary+leaver.Backup)
			}
		})
	}
}

// TestAssignJoinStatistics joins a fourth member to 300 baselines of
// three: on average it takes a quarter of the primaries and half of the
// replica sets (with one backup), the least any assignment can move.
func TestAssignJoinStatistics(t *testing.T) {
	bound := int(math.Floor(1.1 * partition.Partitions / 4))
	var primSum, setSum float64
	over := 0
	sets := randomIDs(300, 4)
	for _, ms := range sets {
		prim, rs := partition.Moved(
			mustAssign(t, partition.Baseline{Members: ms[:3]}, 1, false),
			mustAssign(t, partition.Baseline{Members: ms}, 1, false))
		primSum, setSum = primSum+float64(prim), setSum+float64(rs)
		if prim > bound {
			over++
		}
	}
	primMean, setMean := primSum/float64(len(sets)), setSum/float64(len(sets))
	t.Logf("3→4 over %d baselines: %.1f primaries moved on average (ideal 256), %.1f replica sets (ideal 512); %d joins above %d",
		len(sets), primMean, setMean, over, bound)
	if math.Abs(primMean-256) > 0.03*256 || math.Abs(setMean-512) > 0.03*512 {
		t.Errorf("average moves %.1f primaries, %.1f replica sets; want 256 and 512 ±3%%", primMean, setMean)
	}
}

func TestMoved(t *testing.T) {
	var a, b partition.Assignment
	a.Owners[0], b.Owners[0] = []string{"x", "y"}, []string{"y", "x"} // roles swap
	a.Owners[1], b.Owners[1] = []string{"x", "y"}, []string{"x", "z"} // backup moves
	a.Owners[2], b.Owners[2] = []string{"x"}, []string{"z"}           // primary moves
	a.Owners[3], b.Owners[3] = nil, []string{"x"}                     // first owner
	a.Owners[4], b.Owners[4] = []string{"x", "y"}, []string{"x", "y"} // unchanged
	prim, sets := partition.Moved(a, b)
	if prim != 3 || sets != 3 {
		t.Fatalf("Moved = %d primaries, %d replica sets; want 3, 3", prim, sets)
	}
	if p, s := partition.Moved(b, b); p != 0 || s != 0 {
		t.Fatalf("Moved(b, b) = %d, %d", p, s)
	}
}

// TestAssignRejects checks the validation of the baseline and options.
func TestAssignRejects(t *testing.T) {
	for _, tc := range []struct {
		name    string
		members []partition.Member
		backups int
		crossDC bool
		want    error
		says    string
	}{
		{"duplicate", members("n1", "n2", "n1"), 1, false, partition.ErrDuplicateMember, `"n1" is listed twice`},
		{"empty id", members("n1", ""), 1, false, partition.ErrBadMember, "id must match"},
		{"dotted id", members("n.1"), 1, false, partition.ErrBadMember, `got "n.1"`},
		{"long id", members(fmt.Sprintf("%065d", 0)), 1, false, partition.ErrBadMember, "id must match"},
		{"bad dc", []partition.Member{{ID: "n1", DC: "eu west"}}, 1, false, partition.ErrBadMember, "dc must match"},
		{"negative weight", []partition.Member{{ID: "n1", Weight: -1}}, 1, false, partition.ErrBadMember, "weight must be a positive number, got -1"},
		{"NaN weight", []partition.Member{{ID: "n1", Weight: math.NaN()}}, 1, false, partition.ErrBadMember, "weight"},
		{"infinite weight", []partition.Member{{ID: "n1", Weight: math.Inf(1)}}, 1, false, partition.ErrBadMember, "weight"},
		{"negative backups", members("n1"), -1, false, partition.ErrBadBackups, "got -1"},
		{"cross-dc without backups", members("n1"), 0, true, partition.ErrBadBackups, "at least one backup"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := partition.Assign(partition.Baseline{Members: tc.members}, tc.backups, tc.crossDC)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err %v, want %v", err, tc.want)
			}
			if !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("err %q does not say %q", err, tc.says)
			}
		})
	}
}

func TestMemberString(t *testing.T) {
	for m, want := range map[partition.Member]string{
		{ID: "n1"}:                        "n1",
		{ID: "n1", DC: "eu"}:              "n1@eu",
		{ID: "n1", Weight: 2.5}:           "n1:2.5",
		{ID: "n1", DC: "eu", Weight: 1}:   "n1@eu",
		{ID: "n1", DC: "eu", Weight: 0.5}: "n1@eu:0.5",
	} {
		if got := m.String(); got != want {
			t.Errorf("%+v.String() = %q, want %q", m, got, want)
		}
	}
}

func BenchmarkAssign(b *testing.B) {
	for _, n := range []int{3, 50} {
		b.Run(fmt.Sprintf("members=%d", n), func(b *testing.B) {
			ms := make([]partition.Member, n)
			for i := range ms {
				ms[i] = partition.Member{ID: fmt.Sprintf("node-%d", i), DC: fmt.Sprintf("dc%d", i%3)}
			}
			bl := partition.Baseline{Members: ms}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := partition.Assign(bl, 2, true); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
