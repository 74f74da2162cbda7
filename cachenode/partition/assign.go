package partition

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/cachebus/cachebus/bus"
)

// Member is a cache node of the baseline: the permanent member list that
// partitions are assigned over. A member that is down stays in the
// baseline; only an operator's baseline change moves partitions.
type Member struct {
	// ID is the node's id, as in its heartbeat ([A-Za-z0-9_-]{1,64}).
	ID string `json:"id"`
	// DC is the node's data center (CACHEBUS_DC); empty is a DC of its own.
	DC string `json:"dc,omitempty"`
	// Weight is the node's share of partitions relative to the others: a
	// member of weight 2 owns about twice the partitions of one of weight
	// 1. Zero means 1.
	Weight float64 `json:"weight,omitempty"`
}

// weight is m's weight with the default applied.
func (m Member) weight() float64 {
	if m.Weight == 0 {
		return 1
	}
	return m.Weight
}

// String writes m as the command line takes it: ID[@DC][:WEIGHT].
func (m Member) String() string {
	var b strings.Builder
	b.WriteString(m.ID)
	if m.DC != "" {
		b.WriteString("@" + m.DC)
	}
	if w := m.weight(); w != 1 {
		fmt.Fprintf(&b, ":%g", w)
	}
	return b.String()
}

// Baseline is the versioned member list of the cache tier.
type Baseline struct {
	// Version increases by one with every change; 0 is "no baseline yet".
	Version uint64 `json:"version"`
	// Members in the order the operator gave them; the order does not
	// change the assignment.
	Members []Member `json:"members"`
}

// Errors of a baseline that cannot be assigned; Validate and Assign wrap
// them with the member at fault.
var (
	ErrBadMember       = errors.New("cachenode: bad baseline member")
	ErrDuplicateMember = errors.New("cachenode: duplicate baseline member")
	ErrBadBackups      = errors.New("cachenode: bad backup count")
)

// Member returns the member with id, if it is in the baseline.
func (b Baseline) Member(id string) (Member, bool) {
	for _, m := range b.Members {
		if m.ID == id {
			return m, true
		}
	}
	return Member{}, false
}

// Validate checks every member: a valid id, no id twice, a valid DC when
// one is given and a finite, non-negative weight.
func (b Baseline) Validate() error {
	seen := make(map[string]struct{}, len(b.Members))
	for i, m := range b.Members {
		if !bus.ValidName(m.ID) {
			return fmt.Errorf("%w %d: id must match [A-Za-z0-9_-]{1,64}, got %q", ErrBadMember, i+1, m.ID)
		}
		if _, dup := seen[m.ID]; dup {
			return fmt.Errorf("%w: %q is listed twice", ErrDuplicateMember, m.ID)
		}
		seen[m.ID] = struct{}{}
		if m.DC != "" && !bus.ValidName(m.DC) {
			return fmt.Errorf("%w %q: dc must match [A-Za-z0-9_-]{1,64}, got %q", ErrBadMember, m.ID, m.DC)
		}
		if m.Weight < 0 || math.IsNaN(m.Weight) || math.IsInf(m.Weight, 0) {
			return fmt.Errorf("%w %q: weight must be a positive number, got %g", ErrBadMember, m.ID, m.Weight)
		}
	}
	return nil
}

// DCs returns the distinct data centers of the baseline, sorted.
func (b Baseline) DCs() []string {
	var dcs []string
	for _, m := range b.Members {
		if !slices.Contains(dcs, m.DC) {
			dcs = append(dcs, m.DC)
		}
	}
	slices.Sort(dcs)
	return dcs
}

// Assignment maps every partition to its owners, as computed by Assign
// from a baseline.
type Assignment struct {
	// Version increases by one with every assignment written; 0 is "none".
	Version uint64 `json:"version"`
	// BaselineVersion is the version of the baseline it was computed from.
	BaselineVersion uint64 `json:"baseline_version"`
	// Backups is the number of backups asked for per partition; a baseline
	// with fewer members gives fewer.
	Backups int `json:"backups"`
	// CrossDC says whether a backup in another data center was required.
	CrossDC bool `json:"cross_dc"`
	// Owners lists, per partition, the member ids that own it: the primary
	// first, then the backups in the order they take over. Empty when the
	// baseline is.
	Owners [Partitions][]string `json:"owners"`
}

// Primary returns the primary of partition p, or "" when there is none.
func (a *Assignment) Primary(p int) string {
	if len(a.Owners[p]) == 0 {
		return ""
	}
	return a.Owners[p][0]
}

// Share is how many partitions a member owns, as primary and as backup.
type Share struct {
	Primary int `json:"primary"`
	Backup  int `json:"backup"`
}

// Shares counts every member's partitions.
func (a *Assignment) Shares() map[string]Share {
	out := map[string]Share{}
	for _, owners := range a.Owners {
		for i, id := range owners {
			s := out[id]
			if i == 0 {
				s.Primary++
			} else {
				s.Backup++
			}
			out[id] = s
		}
	}
	return out
}

// Moved compares two assignments: primaries counts the partitions whose
// primary differs, replicaSets those whose set of owners (primary and
// backups, in any order) differs. A partition whose primary and backup
// swap roles counts as a moved primary but not as a moved replica set.
func Moved(a, b Assignment) (primaries, replicaSets int) {
	for p := range Partitions {
		if a.Primary(p) != b.Primary(p) {
			primaries++
		}
		if !sameSet(a.Owners[p], b.Owners[p]) {
			replicaSets++
		}
	}
	return primaries, replicaSets
}

func sameSet(x, y []string) bool {
	if len(x) != len(y) {
		return false
	}
	for _, id := range x {
		if !slices.Contains(y, id) {
			return false
		}
	}
	return true
}

// Score constants; see Score.
const (
	splitmixGamma = 0x9E3779B97F4A7C15
	splitmixMul1  = 0xBF58476D1CE4E5B9
	splitmixMul2  = 0x94D049BB133111EB
)

// splitmix64 is the output function of the SplitMix64 generator for state
// x: a bijective 64-bit mixer.
func splitmix64(x uint64) uint64 {
	z := x + splitmixGamma
	z = (z ^ (z >> 30)) * splitmixMul1
	z = (z ^ (z >> 27)) * splitmixMul2
	return z ^ (z >> 31)
}

// Score is the rendezvous score of member id with weight for partition p;
// the member with the highest score is the primary, the next ones its
// backups. It is defined so any language can reproduce it with 64-bit
// unsigned arithmetic (wrapping) and IEEE double precision:
//
//	z = splitmix64(fnv1a64(utf8(id)) XOR splitmix64(p))
//	u = ((z >> 12) + 0.5) / 2^52      // exactly representable, in (0, 1)
//	score = -weight / ln(u)
//
// where splitmix64(x) is: z = x + 0x9E3779B97F4A7C15;
// z = (z ^ z>>30) * 0xBF58476D1CE4E5B9; z = (z ^ z>>27) * 0x94D049BB133111EB;
// return z ^ z>>31. A weight of 0 counts as 1. Equal scores are ordered by
// id, the smaller (bytewise) first. This is weighted highest-random-weight
// hashing: a member's chance to score highest is its share of the total
// weight, and removing a member only moves the partitions it scored highest
// on.
func Score(id string, weight float64, p int) float64 {
	if weight == 0 {
		weight = 1
	}
	return score(fnv1a64(id), weight, p)
}

func score(idHash uint64, weight float64, p int) float64 {
	z := splitmix64(idHash ^ splitmix64(uint64(p)))
	u := (float64(z>>12) + 0.5) / (1 << 52)
	return -weight / math.Log(u)
}

// candidate is one member's score for the partition being assigned.
type candidate struct {
	score float64
	idx   int
}

// before orders candidates: higher score first, then smaller id.
func before(a, b candidate, members []Member) bool {
	if a.score != b.score {
		return a.score > b.score
	}
	return members[a.idx].ID < members[b.idx].ID
}

// Assign computes the owners of every partition from baseline b by
// weighted rendezvous hashing (see Score): per partition, the member with
// the highest score is the primary and the next `backups` are its backups,
// or fewer when the baseline is smaller. With crossDC and members in more
// than one data center, at least one backup is in a DC other than the
// primary's: when none of the natural picks is, the best-scored member of
// another DC becomes the first backup and the last natural pick drops out.
//
// The result depends on the baseline's members and weights only (not on
// their order), so every node computes the same table. Version fields are
// left to the caller except BaselineVersion, copied from b.
func Assign(b Baseline, backups int, crossDC bool) (Assignment, error) {
	if err := b.Validate(); err != nil {
		return Assignment{}, err
	}
	if backups < 0 {
		return Assignment{}, fmt.Errorf("%w: want 0 or more, got %d", ErrBadBackups, backups)
	}
	if crossDC && backups == 0 {
		return Assignment{}, fmt.Errorf("%w: a cross-DC backup needs at least one backup", ErrBadBackups)
	}
	a := Assignment{BaselineVersion: b.Version, Backups: backups, CrossDC: crossDC}
	n := len(b.Members)
	if n == 0 {
		return a, nil
	}
	members := b.Members
	hashes := make([]uint64, n)
	weights := make([]float64, n)
	for i, m := range members {
		hashes[i], weights[i] = fnv1a64(m.ID), m.weight()
	}
	crossDC = crossDC && len(b.DCs()) > 1
	k := min(backups+1, n) // owners per partition

	// One backing array for all owner lists: 1024 small slices, one
	// allocation.
	ids := make([]string, Partitions*k)
	all := make([]candidate, n)
	top := make([]candidate, 0, k)
	for p := range Partitions {
		top = top[:0]
		for i := range members {
			c := candidate{score(hashes[i], weights[i], p), i}
			all[i] = c
			// Insert c into top, kept sorted, at most k long.
			if len(top) == k && !before(c, top[k-1], members) {
				continue
			}
			if len(top) < k {
				top = append(top, c)
			} else {
				top[k-1] = c
			}
			for j := len(top) - 1; j > 0 && before(top[j], top[j-1], members); j-- {
				top[j], top[j-1] = top[j-1], top[j]
			}
		}
		if crossDC {
			top = crossDCBackup(top, all, members)
		}
		owners := ids[p*k : p*k+len(top) : p*k+len(top)]
		for j, c := range top {
			owners[j] = members[c.idx].ID
		}
		a.Owners[p] = owners
	}
	return a, nil
}

// crossDCBackup makes sure one of the backups in top is in a DC other than
// the primary's, taking the best-scored such member as the first backup
// when none of the natural picks is.
func crossDCBackup(top, all []candidate, members []Member) []candidate {
	if len(top) < 2 {
		return top
	}
	dc := members[top[0].idx].DC
	for _, c := range top[1:] {
		if members[c.idx].DC != dc {
			return top
		}
	}
	best := -1
	for i, c := range all {
		if members[c.idx].DC == dc {
			continue
		}
		if best < 0 || before(c, all[best], members) {
			best = i
		}
	}
	if best < 0 {
		return top
	}
	// top[1:] shifts down one; the last natural pick drops out.
	copy(top[2:], top[1:len(top)-1])
	top[1] = all[best]
	return top
}

// ParseMember reads a member as the command line and CACHEBUS_BASELINE
// write it: ID[@DC][:WEIGHT].
func ParseMember(s string) (Member, error) {
	m := Member{ID: s}
	if id, w, ok := strings.Cut(s, ":"); ok {
		weight, err := strconv.ParseFloat(w, 64)
		if err != nil || !(weight > 0) || math.IsInf(weight, 0) {
			return Member{}, fmt.Errorf("%w %q: weight must be a positive number, got %q", ErrBadMember, s, w)
		}
		m.ID, m.Weight = id, weight
	}
	if id, dc, ok := strings.Cut(m.ID, "@"); ok {
		if !bus.ValidName(dc) {
			return Member{}, fmt.Errorf("%w %q: data center must match [A-Za-z0-9_-]{1,64}, got %q", ErrBadMember, s, dc)
		}
		m.ID, m.DC = id, dc
	}
	if !bus.ValidName(m.ID) {
		return Member{}, fmt.Errorf("%w %q: id must match [A-Za-z0-9_-]{1,64}, got %q", ErrBadMember, s, m.ID)
	}
	return m, nil
}

// ParseMembers reads members with ParseMember and checks them as a
// baseline.
func ParseMembers(args []string) ([]Member, error) {
	members := make([]Member, 0, len(args))
	for _, a := range args {
		m, err := ParseMember(a)
		if err != nil {
			return nil, err
		}
		members = append(members, m)
	}
	if err := (Baseline{Members: members}).Validate(); err != nil {
		return nil, err
	}
	return members, nil
}
