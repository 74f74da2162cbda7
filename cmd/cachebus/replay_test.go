package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cachebus/cachebus/admin"
	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/bus/bustest"
	"github.com/cachebus/cachebus/cachenode"
	"github.com/cachebus/cachebus/cachenode/partition"
	"github.com/cachebus/cachebus/persistence"
)

// replayRow is one node's line of `cachebus replay`'s table.
type replayRow struct {
	partitions, records, applied, deleted, older, rejected int
	result                                                 string
}

var replayRowRE = regexp.MustCompile(`(?m)^(\S+) +(\d+) +(\d+) +(\d+) +(\d+) +(\d+) +(\d+) +(\S+) +(\d+)/s +(\d+) +(.+?) *$`)

// replayRows reads the table `cachebus replay` printed, by node (and
// "total").
func replayRows(t *testing.T, out string) map[string]replayRow {
	t.Helper()
	rows := map[string]replayRow{}
	for _, m := range replayRowRE.FindAllStringSubmatch(out, -1) {
		n := func(i int) int {
			v, err := strconv.Atoi(m[i])
			if err != nil {
				t.Fatalf("column %d of %q: %v", i, m[0], err)
			}
			return v
		}
		if _, err := time.ParseDuration(m[8]); err != nil {
			t.Fatalf("took %q of %q: %v", m[8], m[0], err)
		}
		rows[m[1]] = replayRow{partitions: n(2), records: n(3), applied: n(4), deleted: n(5), older: n(6), rejected: n(10), result: m[11]}
	}
	return rows
}

// TestReplayCommand runs `cachebus replay` against two `cachebus node`
// daemons holding every partition (one backup): records changed in the
// record log behind their backs are read back by both, newer versions
// applied and newer tombstones deleting, within --partitions only when it
// is given; a namespace that is not long-term is refused by each node and
// the command fails.
func TestReplayCommand(t *testing.T) {
	tg, conn, _ := cmdBus(t)
	fastTier(t)
	t.Setenv("CACHEBUS_HTTP_ADDR", "127.0.0.1:0")
	t.Setenv("CACHEBUS_ADMIN_TOKEN", "")
	t.Setenv("CACHEBUS_BASELINE", "n1,n2")
	t.Setenv("CACHEBUS_LONG_TERM", "sessions")

	// No node has ever run here: no cache tier to ask.
	if code, out, errs := cmdRun(t, "", "replay", "--ns", "sessions"); code != 1 || !strings.Contains(errs, "no cache tier") {
		t.Fatalf("replay without a cache tier = %d\n%s%s", code, out, errs)
	}

	urlRE := func(id string) *regexp.Regexp { return regexp.MustCompile(`node ` + id + `: (http://\S+)\n`) }
	for _, id := range []string{"n1", "n2"} {
		d := cmdStart(t, "node", "--id", id)
		u := d.waitOutput(t, id+"'s URL", urlRE(id))[1]
		bustest.WaitFor(t, 20*time.Second, id+" ready", func() bool {
			code, _ := httpDo(t, "GET", u+"/readyz", "", "")
			return code == 200
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	client, err := cachenode.NewClient(ctx, bustest.Connect(t, tg.URL), cachenode.ClientOptions{FailureTimeout: 600 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(client.Close)
	keys := map[string]string{}
	used := map[int]bool{}
	for _, name := range []string{"newer", "older", "gone", "outside"} {
		for i := 0; ; i++ {
			k := fmt.Sprintf("%s-%d", name, i)
			if p := partition.PartitionOf(k); !used[p] {
				used[p], keys[name] = true, k
				break
			}
		}
	}
	versions := map[string]uint64{}
	for name, k := range keys {
		rec, err := client.Put(ctx, "sessions", k, []byte("node "+name), time.Hour)
		if err != nil {
			t.Fatalf("put %s: %v", k, err)
		}
		versions[name] = rec.Version
	}
	l, err := persistence.BindRecordLog(ctx, conn, persistence.RecordLogConfig{LongTerm: []string{"sessions"}})
	if err != nil {
		t.Fatal(err)
	}
	exp := time.Now().Add(time.Hour)
	for _, r := range []persistence.Record{
		{Key: keys["newer"], Version: versions["newer"] + 1000, Value: []byte("log newer"), Expires: exp},
		{Key: keys["older"], Version: versions["older"] - 1, Value: []byte("log older"), Expires: exp},
		{Key: keys["gone"], Version: versions["gone"] + 1000, Deleted: true},
		{Key: keys["outside"], Version: versions["outside"] + 1000, Value: []byte("log outside"), Expires: exp},
	} {
		r.NS, r.Partition = "sessions", partition.PartitionOf(r.Key)
		if _, err := l.Write(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	value := func(name string) string {
		t.Helper()
		rec, err := client.Get(ctx, "sessions", keys[name])
		if errors.Is(err, cachenode.ErrNotFound) {
			return "<none>"
		}
		if err != nil {
			t.Fatalf("get %s: %v", name, err)
		}
		return string(rec.Value)
	}

	// Three of the four partitions, written as a list and a range.
	var list []string
	for _, name := range []string{"newer", "older", "gone"} {
		p := partition.PartitionOf(keys[name])
		list = append(list, fmt.Sprintf("%d-%d", p, p))
	}
	list[0] = strconv.Itoa(partition.PartitionOf(keys["newer"]))
	for _, step := range []struct {
		name                       string
		args                       []string
		partitions, records, apply int
		deleted                    int
		want                       map[string]string
	}{
		{"partitions", []string{"--partitions", strings.Join(list, ",")}, 3, 3, 2, 1,
			map[string]string{"newer": "log newer", "older": "node older", "gone": "<none>", "outside": "node outside"}},
		{"all", nil, partition.Partitions, 4, 1, 0,
			map[string]string{"newer": "log newer", "older": "node older", "gone": "<none>", "outside": "log outside"}},
	} {
		code, out, errs := cmdRun(t, "", append([]string{"replay", "--ns", "sessions"}, step.args...)...)
		if code != 0 {
			t.Fatalf("%s: replay = %d\n%s%s", step.name, code, out, errs)
		}
		if !strings.Contains(out, "replaying sessions on 2 live nodes") {
			t.Errorf("%s: no announcement of the replay:\n%s", step.name, out)
		}
		rows := replayRows(t, out)
		for _, id := range []string{"n1", "n2"} {
			r := rows[id]
			if r.result != "ok" || r.partitions != step.partitions || r.records != step.records || r.applied != step.apply ||
				r.deleted != step.deleted || r.older != step.records-step.apply || r.rejected != 0 {
				t.Errorf("%s: %s's row %+v, want %d partitions, %d records, %d applied (%d deleted)\n%s",
					step.name, id, r, step.partitions, step.records, step.apply, step.deleted, out)
			}
		}
		if tot := rows["total"]; tot.partitions != 2*step.partitions || tot.records != 2*step.records || tot.result != "2 of 2 ok" {
			t.Errorf("%s: total %+v\n%s", step.name, tot, out)
		}
		for name, v := range step.want {
			if got := value(name); got != v {
				t.Errorf("%s: %s = %q, want %q", step.name, name, got, v)
			}
		}
	}

	// Refused by every node: the command says so and fails.
	code, out, errs := cmdRun(t, "", "replay", "--ns", "cache")
	rows := replayRows(t, out)
	if code != 1 || !strings.Contains(errs, "2 of 2 nodes failed") || !strings.HasPrefix(rows["n1"].result, "error: bad_request") ||
		!strings.Contains(rows["n2"].result, "not long-term") || rows["total"].result != "0 of 2 ok" {
		t.Fatalf("replay of a namespace that is not long-term = %d\n%s%s", code, out, errs)
	}
}

// TestReplayUsage: a bad namespace, partition list or timeout exits 2
// before anything is sent, and -h lists the flags.
func TestReplayUsage(t *testing.T) {
	t.Setenv("CACHEBUS_NATS_URL", fmt.Sprintf("nats://127.0.0.1:%d", bustest.FreePort(t)))
	t.Setenv("CACHEBUS_TIMEOUT", "2s")
	checkUsage(t, []usageCase{
		{nil, []string{"replay"}, "--ns: name the long-term namespace"},
		{nil, []string{"replay", "--ns", "a.b"}, "ns: must match"},
		{nil, []string{"replay", "--ns", "s", "extra"}, "unexpected arguments"},
		{nil, []string{"replay", "--ns", "s", "--partitions", "5-3"}, "range 5-3 runs backwards"},
		{nil, []string{"replay", "--ns", "s", "--partitions", "1024"}, "partition 1024 out of range 0 to 1023"},
		{nil, []string{"replay", "--ns", "s", "--partitions", "0-2000"}, "partition 2000 out of range"},
		{nil, []string{"replay", "--ns", "s", "--partitions", "x"}, `"x" is not a partition number`},
		{nil, []string{"replay", "--ns", "s", "--partitions", "-1"}, `"" is not a partition number`},
		{nil, []string{"replay", "--ns", "s", "--partitions", "1,,2"}, "empty item"},
		{nil, []string{"replay", "--ns", "s", "--timeout", "0s"}, "--timeout: must be positive"},
		{nil, []string{"replay", "--ns", "s", "--timeout", "soon"}, `invalid value "soon" for flag -timeout`},
		{map[string]string{"CACHEBUS_HEARTBEAT_INTERVAL": "0s"}, []string{"replay", "--ns", "s"}, "CACHEBUS_HEARTBEAT_INTERVAL"},
	})
	code, _, stderr := cmdRun(t, "", "replay", "-h")
	for _, w := range []string{"Usage: cachebus replay", "-ns", "-partitions", "-timeout", "CACHEBUS_NATS_URL", "CACHEBUS_HEARTBEAT_INTERVAL"} {
		if code != 0 || !strings.Contains(stderr, w) {
			t.Errorf("replay -h = %d, does not list %q:\n%s", code, w, stderr)
		}
	}
}

func TestParsePartitionList(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []int
	}{
		{"", nil},
		{" ", nil},
		{"7", []int{7}},
		{"0-3,2,1023", []int{0, 1, 2, 3, 1023}},
		{" 10 - 12 , 5 ", []int{5, 10, 11, 12}},
		{"3-3,3", []int{3}},
	} {
		got, err := parsePartitionList(tc.in)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("parsePartitionList(%q) = %v %v, want %v", tc.in, got, err, tc.want)
		}
	}
	all, err := parsePartitionList("0-1023")
	if err != nil || len(all) != partition.Partitions {
		t.Errorf("0-1023: %d partitions, %v", len(all), err)
	}
	for _, bad := range []string{",", "1,", "a-b", "1-", "-", "2-1", "1024", "1.5", "0x10"} {
		if _, err := parsePartitionList(bad); err == nil {
			t.Errorf("parsePartitionList(%q) accepted", bad)
		}
	}
}

// TestStatusShowsReplay: a cache node's heartbeat with a replay under way
// is shown by `cachebus status` (a line per node under REPLAYS, and in
// the member of --json), and the section goes once the replay ends.
func TestStatusShowsReplay(t *testing.T) {
	_, conn, _ := cmdBus(t)
	t.Setenv("CACHEBUS_HEARTBEAT_INTERVAL", "200ms")
	var mu sync.Mutex
	replay := &bus.HeartbeatReplay{NS: "sessions", Partitions: 512, Records: 120000, Bytes: 9 << 20, Percent: 42, Rate: 250000}
	hb, err := bus.StartHeartbeat(conn, bus.Heartbeat{ID: "n1", Role: bus.RoleNode}, 50*time.Millisecond, func(h *bus.Heartbeat) {
		mu.Lock()
		defer mu.Unlock()
		h.Replay = replay
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hb.Stop(context.Background()) })
	other, err := bus.StartHeartbeat(conn, bus.Heartbeat{ID: "n2", Role: bus.RoleNode}, 50*time.Millisecond, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { other.Stop(context.Background()) })

	code, stdout, stderr := cmdRun(t, "", "status")
	if code != 0 {
		t.Fatalf("status: exit %d\n%s%s", code, stdout, stderr)
	}
	line := regexp.MustCompile(`(?m)^REPLAYS\n +n1 +replaying sessions 42% 120000 records 9\.0MiB 250000/s 512 partitions\n`)
	if !line.MatchString(stdout) || strings.Contains(stdout, "n2  replaying") {
		t.Fatalf("status does not show n1's replay alone:\n%s", stdout)
	}

	code, stdout, stderr = cmdRun(t, "", "status", "--json")
	var st admin.Status
	if err := json.Unmarshal([]byte(stdout), &st); code != 0 || err != nil {
		t.Fatalf("status --json: exit %d %v\n%s%s", code, err, stdout, stderr)
	}
	i := slices.IndexFunc(st.Members, func(m bus.Member) bool { return m.ID == "n1" })
	if i < 0 || st.Members[i].Replay == nil || *st.Members[i].Replay != *replay {
		t.Fatalf("status --json members %+v, want n1 with its replay", st.Members)
	}

	mu.Lock()
	replay = nil
	mu.Unlock()
	hb.Announce()
	// The next status listens for a heartbeat interval and a half: once
	// the tracker here has seen the beat without the replay, so will it.
	members, err := bus.TrackMembers(conn, 5*time.Second, bus.MembershipEvents{})
	if err != nil {
		t.Fatal(err)
	}
	defer members.Stop()
	bustest.WaitFor(t, 5*time.Second, "a heartbeat of n1 without a replay", func() bool {
		m, ok := members.Get(bus.RoleNode, "n1")
		return ok && m.Replay == nil
	})
	code, stdout, stderr = cmdRun(t, "", "status")
	if code != 0 || strings.Contains(stdout, "REPLAYS") {
		t.Fatalf("status once the replay ended: exit %d\n%s%s", code, stdout, stderr)
	}
}
