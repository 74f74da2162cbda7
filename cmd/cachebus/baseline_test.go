package main

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus/bustest"
	"github.com/cachebus/cachebus/cachenode/partition"
	"github.com/cachebus/cachebus/persistence"
)

var (
	versionRE = regexp.MustCompile(`baseline version (\d+): (.*) \((\d+) backups?, cross-dc (on|off)\)`)
	movedRE   = regexp.MustCompile(`moved (\d+) of 1024 primaries and (\d+) replica sets \(assignment version (\d+)\)`)
)

// baselineRun runs a baseline change and returns the version and the
// moves it printed.
func baselineRun(t *testing.T, args ...string) (version, primaries, replicaSets int, out string) {
	t.Helper()
	code, stdout, stderr := cmdRun(t, "", append([]string{"baseline"}, args...)...)
	if code != 0 {
		t.Fatalf("baseline %v: exit %d\n%s%s", args, code, stdout, stderr)
	}
	v, m := versionRE.FindStringSubmatch(stdout), movedRE.FindStringSubmatch(stdout)
	if v == nil || m == nil {
		t.Fatalf("baseline %v printed no version or moves:\n%s", args, stdout)
	}
	atoi := func(s string) int { n, _ := strconv.Atoi(s); return n }
	return atoi(v[1]), atoi(m[1]), atoi(m[2]), stdout
}

func baselineShow(t *testing.T) baselineReport {
	t.Helper()
	code, stdout, stderr := cmdRun(t, "", "baseline", "show", "--json")
	if code != 0 {
		t.Fatalf("baseline show --json: exit %d\n%s%s", code, stdout, stderr)
	}
	var rep baselineReport
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("show --json is not JSON: %v\n%s", err, stdout)
	}
	return rep
}

// TestBaselineCommands sets, adds, removes and shows a baseline on an
// embedded NATS no daemon has prepared, and checks what a node watching
// the bucket sees.
func TestBaselineCommands(t *testing.T) {
	tg := bustest.Embedded(t)
	t.Setenv("CACHEBUS_NATS_URL", tg.URL)
	t.Setenv("CACHEBUS_PREFIX", "cachebus")

	code, stdout, stderr := cmdRun(t, "", "baseline", "show")
	if code != 0 || !strings.Contains(stdout, "no baseline in CACHEBUS_NODES") {
		t.Fatalf("show before any baseline: exit %d\n%s%s", code, stdout, stderr)
	}
	if rep := baselineShow(t); rep.Version != 0 || len(rep.Members) != 0 {
		t.Fatalf("empty show --json: %+v", rep)
	}

	v, prim, sets, _ := baselineRun(t, "set", "n1", "n2", "n3")
	if v != 1 || prim != 1024 || sets != 1024 {
		t.Fatalf("set: version %d, moved %d/%d; want 1, 1024/1024", v, prim, sets)
	}

	// A node follows the bucket from here on.
	nodes, err := persistence.BindNodes(baselineCtx(t), bustest.Connect(t, tg.URL))
	if err != nil {
		t.Fatal(err)
	}
	seen := make(chan partition.Baseline, 16)
	w, err := nodes.Watch(baselineCtx(t), func(b partition.Baseline, _ partition.Assignment) {
		select {
		case seen <- b:
		default: // the test looks at the first few only
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)
	if b := <-seen; b.Version != 1 {
		t.Fatalf("watcher starts at version %d", b.Version)
	}

	v, prim, sets, out := baselineRun(t, "add", "n4")
	t.Logf("3→4 (backups=1): %d primaries, %d replica sets moved; bound %d", prim, sets, 1024*11/40)
	if v != 2 || prim == 0 || prim > 1024*11/40 || !strings.Contains(out, "n1 n2 n3 n4 (1 backup, cross-dc off)") {
		t.Fatalf("add n4: version %d, %d primaries moved:\n%s", v, prim, out)
	}
	rep := baselineShow(t)
	if rep.Version != 2 || rep.AssignmentVersion != 2 || rep.AssignedFrom != 2 || rep.Backups != 1 || len(rep.Members) != 4 {
		t.Fatalf("show after add: %+v", rep)
	}
	n4 := rep.Members[3]
	total := 0
	for _, m := range rep.Members {
		if m.Weight != 1 || m.Primary == 0 || m.Backup == 0 {
			t.Errorf("member %+v", m)
		}
		total += m.Primary
	}
	if total != 1024 || n4.ID != "n4" || n4.Primary != prim {
		t.Fatalf("primaries add to %d; n4 %+v owns other than the %d moved", total, n4, prim)
	}
	select {
	case b := <-seen:
		if b.Version != 2 || len(b.Members) != 4 {
			t.Fatalf("watcher saw version %d with %d members after add, want 2 with 4", b.Version, len(b.Members))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("watcher did not see the add")
	}

	v, prim, sets, _ = baselineRun(t, "remove", "n4")
	t.Logf("4→3 (backups=1): %d primaries, %d replica sets moved; n4 had %d primaries, %d backups", prim, sets, n4.Primary, n4.Backup)
	if v != 3 || prim != n4.Primary || sets != n4.Primary+n4.Backup {
		t.Fatalf("remove n4: version %d moved %d/%d, n4 had %d/%d", v, prim, sets, n4.Primary, n4.Primary+n4.Backup)
	}

	// set with data centers, weights and new settings; add keeps them.
	_, _, _, out = baselineRun(t, "set", "a1@eu", "a2@eu:2", "b1@us:0.5", "--backups", "2", "--cross-dc")
	if !strings.Contains(out, "a1@eu a2@eu:2 b1@us:0.5 (2 backups, cross-dc on)") {
		t.Fatalf("set with DCs:\n%s", out)
	}
	_, _, _, out = baselineRun(t, "add", "b2@us")
	if !strings.Contains(out, "(2 backups, cross-dc on)") {
		t.Fatalf("add did not keep the settings:\n%s", out)
	}
	t.Setenv("CACHEBUS_BACKUPS", "1")
	_, _, _, out = baselineRun(t, "remove", "a1")
	if !strings.Contains(out, "a2@eu:2 b1@us:0.5 b2@us (1 backup, cross-dc off)") {
		t.Fatalf("remove with CACHEBUS_BACKUPS=1 did not apply it:\n%s", out)
	}

	code, stdout, stderr = cmdRun(t, "", "baseline", "show")
	if code != 0 {
		t.Fatalf("show: exit %d\n%s%s", code, stdout, stderr)
	}
	for _, want := range []string{"baseline version 6 in CACHEBUS_NODES; assignment version 6: 1 backup, cross-dc off",
		"MEMBER", "PRIMARY", "BACKUP", "a2", "eu", "b1", "0.5"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("show lacks %q:\n%s", want, stdout)
		}
	}

	// Changes that depend on the stored baseline fail with exit 1.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"add", "a2"}, "already in the baseline: a2 (version 6)"},
		{[]string{"remove", "zz"}, "not in the baseline: zz"},
	} {
		code, stdout, stderr := cmdRun(t, "", append([]string{"baseline"}, tc.args...)...)
		if code != 1 || !strings.Contains(stderr, tc.want) {
			t.Errorf("baseline %v: exit %d, want 1 saying %q\n%s%s", tc.args, code, tc.want, stdout, stderr)
		}
	}
	if rep := baselineShow(t); rep.Version != 6 {
		t.Fatalf("a failed change wrote version %d", rep.Version)
	}
}

// TestBaselineUsage checks that bad arguments exit 2 before anything is
// sent.
func TestBaselineUsage(t *testing.T) {
	// Nothing listens here: a command that got past its checks would fail
	// with exit 1, not 2.
	t.Setenv("CACHEBUS_NATS_URL", fmt.Sprintf("nats://127.0.0.1:%d", bustest.FreePort(t)))
	t.Setenv("CACHEBUS_TIMEOUT", "2s")
	for _, tc := range []struct {
		env  map[string]string
		args []string
		want string
	}{
		{nil, nil, "missing show, set, add or remove"},
		{nil, []string{"list"}, `want show, set, add or remove, got "list"`},
		{nil, []string{"show", "n1"}, "unexpected arguments after show"},
		{nil, []string{"set"}, "set: want at least one member"},
		{nil, []string{"set", "n1", "n1"}, `"n1" is listed twice`},
		{nil, []string{"set", "n.1"}, `id must match [A-Za-z0-9_-]{1,64}, got "n.1"`},
		{nil, []string{"set", "n1:-1"}, `weight must be a positive number, got "-1"`},
		{nil, []string{"set", "n1:0"}, `weight must be a positive number, got "0"`},
		{nil, []string{"set", "n1:heavy"}, `weight must be a positive number, got "heavy"`},
		{nil, []string{"set", "n1:Inf"}, "weight must be a positive number"},
		{nil, []string{"set", "n1@eu west"}, "data center must match"},
		{nil, []string{"set", "@eu"}, `id must match [A-Za-z0-9_-]{1,64}, got ""`},
		{nil, []string{"set", "n1", "--backups", "-1"}, "want 0 or more, got -1"},
		{nil, []string{"set", "n1", "--backups", "0", "--cross-dc"}, "a cross-DC backup needs at least one backup"},
		{nil, []string{"set", "n1", "--backups", "many"}, `invalid value "many" for flag -backups`},
		{nil, []string{"set", "n1", "--json"}, "--json applies to show"},
		{nil, []string{"add"}, "add: want one member"},
		{nil, []string{"add", "n1", "n2"}, "add: want one member ID[@DC][:WEIGHT], got 2 arguments"},
		{nil, []string{"add", "n1:x"}, "weight must be a positive number"},
		{nil, []string{"add", "n1", "--backups", "-2"}, "want 0 or more, got -2"},
		{nil, []string{"remove"}, "remove: want one member ID"},
		{nil, []string{"remove", "n/1"}, `remove: id must match`},
		{map[string]string{"CACHEBUS_BACKUPS": "two"}, []string{"set", "n1"}, "CACHEBUS_BACKUPS"},
		{map[string]string{"CACHEBUS_CROSS_DC_BACKUP": "maybe"}, []string{"show"}, "CACHEBUS_CROSS_DC_BACKUP"},
		{map[string]string{"CACHEBUS_BACKUPS": "-1"}, []string{"remove", "n1"}, "want 0 or more, got -1"},
	} {
		t.Run(strings.Join(tc.args, "_"), func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			code, stdout, stderr := cmdRun(t, "", append([]string{"baseline"}, tc.args...)...)
			if code != exitUsage {
				t.Fatalf("exit %d, want %d\n%s%s", code, exitUsage, stdout, stderr)
			}
			if !strings.Contains(stderr, tc.want) {
				t.Fatalf("stderr does not say %q:\n%s", tc.want, stderr)
			}
			if stdout != "" {
				t.Fatalf("printed %q", stdout)
			}
		})
	}
}

// TestBaselineHelp checks -h lists the flags and variables.
func TestBaselineHelp(t *testing.T) {
	code, _, stderr := cmdRun(t, "", "baseline", "-h")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, w := range []string{"Usage: cachebus baseline show [--json] | set ID[@DC][:WEIGHT]...", "-backups", "-cross-dc", "-json",
		"CACHEBUS_BACKUPS (default 1)", "CACHEBUS_CROSS_DC_BACKUP (default false)", "CACHEBUS_NATS_URL", "CACHEBUS_LOG_LEVEL"} {
		if !strings.Contains(stderr, w) {
			t.Errorf("-h does not list %q:\n%s", w, stderr)
		}
	}
}

func baselineCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// FuzzParseMembers checks that the member parser never panics and that
// what it accepts prints back as it parses.
func FuzzParseMembers(f *testing.F) {
	for _, s := range []string{"n1", "n1@eu", "n1:2", "n1@eu:0.5", "@", ":", "n1@:1", "n1:1e308", "n1:NaN", "a@b@c:1:2"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ms, err := parseMembers([]string{s})
		if err != nil {
			return
		}
		again, err := parseMembers([]string{ms[0].String()})
		if err != nil || again[0].ID != ms[0].ID || again[0].DC != ms[0].DC || cmpWeight(again[0].Weight) != cmpWeight(ms[0].Weight) {
			t.Fatalf("%q parses as %+v, which prints as %q and parses as %+v (%v)", s, ms[0], ms[0].String(), again, err)
		}
	})
}

func cmpWeight(w float64) float64 {
	if w == 0 {
		return 1
	}
	return w
}
