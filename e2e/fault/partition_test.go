//go:build linux

package fault

import (
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus/bustest"
	"github.com/cachebus/cachebus/cachenode/partition"
	"github.com/cachebus/cachebus/e2e/harness"
	"github.com/cachebus/cachebus/persistence"
)

// Settings of TestNetworkPartition (the pace and the budget, which the
// race detector changes, are in partition_race_test.go and
// partition_norace_test.go).
const (
	splitMinorityOwn   = 16                     // keys written through the cut-off node that it serves itself
	splitMinorityOther = 16                     // and that it forwards to another node
	splitWriters       = 4                      // majority writers
	splitReaders       = 2                      // majority readers
	splitOpTimeout     = 2 * time.Second        // one read or write of the majority's client
	splitBackoff       = 100 * time.Millisecond // before a refused majority write is tried again
	// splitElection is NATS's longest raft election timeout: the record
	// log's followers in the majority wait that long without hearing
	// their leader, cut off with the host, before electing another.
	splitElection = 9 * time.Second
	// splitServeMax bounds the time from the cut until the majority serves
	// reads and writes of every partition again: the failure timeout (the
	// cut-off node's partitions move to their backups), the election, and
	// 5s, as TestRecordsUnderFaults holds a NATS server's SIGKILL to.
	splitServeMax = harness.NodeFailureTimeout + splitElection + 5*time.Second
	// splitWaitMax bounds the waits for a state; above the bounds the
	// figures are held to, so that a slow recovery is measured.
	splitWaitMax = 30 * time.Second
	// splitHealWait bounds the wait for the cut-off node to take writes
	// after the heal. Routes that stayed open through the cut resume at
	// their next TCP retransmission, whose back-off doubles through the
	// cut (after a 10s cut the next one comes about 2.6s after the heal,
	// after a 13s cut about 12s after), and the node's record log gate
	// opens at its next probe after the log has a quorum again.
	splitHealWait = 45 * time.Second
	// splitDrain bounds how long a majority writer may take to get its
	// last write acknowledged when the load stops.
	splitDrain = 15 * time.Second
	// splitMinRefusals is how many writes the cut-off node must have
	// refused before the heal.
	splitMinRefusals = 10
	// splitMinCut is how long the cut lasts at least: longer than the 10s
	// after which a raft leader that hears no quorum steps down, so that
	// the cut-off server has given up leading the record log, with the
	// refused writes it took uncommitted in its raft log, before the heal.
	splitMinCut = 12 * time.Second
)

// TestNetworkPartition is item 4 of issue 9: three hosts in network
// namespaces, each running a NATS server of one cluster (the record log on
// three replicas, led from the host that is cut off) and a cache node on
// it; the test cuts one host off the cluster network, checks that its
// node refuses long-term writes while the two others go on serving, heals
// the network, and checks that every acknowledged write is read back,
// through every node and from the record log, and that no node answers an
// older value.
func TestNetworkPartition(t *testing.T) {
	if harn == nil {
		t.Skip("skipped under -short: runs a NATS cluster and cache nodes as processes in network namespaces")
	}
	lab, err := newNetLab(t, 3)
	if err != nil {
		Figure(t, "network partition", "skipped", "network namespaces cannot be made here: "+err.Error())
		t.Skipf("network namespaces cannot be made here: %v", err)
	}
	began := time.Now()
	ctx, within := budget(t, splitTimeout)

	servers := startLabNATS(t, lab)
	for _, n := range servers {
		n.WaitReady(t, within(60*time.Second))
	}
	nodes := startLabNodes(t, lab, servers)
	for _, n := range nodes {
		n.WaitReady(t, within(60*time.Second))
	}
	cutHost, cutServer, cutNode := lab.hosts[2], servers[2], nodes[2]
	// The test's clients are the majority's: they know its two servers
	// only (the cut-off one, learnt from the cluster, is out of reach).
	majorityURLs := servers[0].URL + "," + servers[1].URL
	admin := harness.Connect(t, majorityURLs)
	cl := harness.NodeClient(t, majorityURLs)
	allServed := func() bool { return harness.ServesAll(cl, nodes) }
	bustest.WaitFor(t, within(20*time.Second), "the client to see the three cache nodes serve every partition", allServed)
	// The record log's leader is on the host cut off: the majority must
	// elect another before it takes long-term writes again, and the writes
	// the cut-off node sends it wait in its raft log, uncommitted.
	logName := persistence.RecordStreamConfig(admin.Subjects, persistence.RecordLogConfig{}, true).Name
	placed := harness.LeadStream(ctx, t, admin, logName, cutServer.Name, within(60*time.Second), serverNames(servers)...)
	t.Logf("three hosts, their NATS cluster and cache nodes ready in %s", time.Since(began).Round(time.Millisecond))

	tab := cl.Table()
	own := func(key string) bool { return tab.Primary(partition.PartitionOf(key)) == cutNode.ID }
	// The keys written through the cut-off node: half of partitions it
	// serves itself, whose writes meet its record log gate during the cut,
	// half that it forwards, to nodes it loses sight of.
	var minorityKeys []string
	for i, nOwn, nOther := 0, 0, 0; nOwn < splitMinorityOwn || nOther < splitMinorityOther; i++ {
		k := fmt.Sprintf("m%04d", i)
		switch {
		case own(k) && nOwn < splitMinorityOwn:
			nOwn++
		case !own(k) && nOther < splitMinorityOther:
			nOther++
		default:
			continue
		}
		minorityKeys = append(minorityKeys, k)
	}
	load := startSplitLoad(cl, cutNode, own, minorityKeys)
	defer load.stop(splitDrain)
	majWrites, majReads := splitFilter{write: true}, splitFilter{}
	minWrites, minReads := splitFilter{minority: true, write: true}, splitFilter{minority: true}
	bustest.WaitFor(t, within(splitWaitMax), fmt.Sprintf("%d majority writes and a write of each key through %s acknowledged before the cut", splitPhaseWrites, cutNode.ID), func() bool {
		if load.count(majWrites, resOK, began, time.Time{}) < splitPhaseWrites {
			return false
		}
		for _, k := range load.snapshot() {
			if strings.HasPrefix(k.name, "m") && k.acked == 0 {
				return false
			}
		}
		return true
	})

	// The cut: host 3's port on the switch goes down. Its NATS server is
	// alone, its cache node with it; the majority has two of each.
	t.Logf("cutting %s (NATS %s, cache node %s) off; record log as placed: %s", cutHost.NS, cutServer.Name, cutNode.ID,
		harness.Describe(placed))
	lab.setPort(cutHost, "down")
	cut := time.Now()
	load.markCut(cut)
	var served time.Duration
	var servedEach []string
	bustest.WaitFor(t, within(splitWaitMax), "the majority to serve reads and writes begun after the cut, of keys of both groups", func() bool {
		worst, ok := time.Duration(0), true
		servedEach = servedEach[:0]
		for _, f := range []splitFilter{majWrites, majReads} {
			for _, g := range []bool{true, false} {
				at, found := load.firstOK(f, g, cut)
				ok = ok && found
				worst = max(worst, at.Sub(cut))
				what := "reads"
				if f.write {
					what = "writes"
				}
				servedEach = append(servedEach, fmt.Sprintf("%s of keys %s %s", what, groupName(g), at.Sub(cut).Round(time.Millisecond)))
			}
		}
		served = worst
		return ok
	})
	t.Logf("the majority serves reads and writes again %s after the cut: %s", served.Round(time.Millisecond), strings.Join(servedEach, ", "))
	servedAt := cut.Add(served)
	bustest.WaitFor(t, within(splitWaitMax), fmt.Sprintf("%s of cut, %d majority writes acknowledged while cut off, %d refusals by %s, one of a write it would serve itself, and reads through it",
		splitMinCut, splitPhaseWrites, splitMinRefusals, cutNode.ID), func() bool {
		// Its own refusal, not a forward's failure: its record log gate's
		// or, once it knows it is cut off, its isolation's.
		gate := 0
		for _, op := range load.opsOf(minWrites, cut, time.Time{}) {
			if op.result == resRefused && (strings.Contains(op.detail, "long-term write refused") ||
				strings.Contains(op.detail, "is cut off from the NATS majority")) {
				gate++
			}
		}
		return time.Since(cut) >= splitMinCut && load.count(majWrites, resOK, servedAt, time.Time{}) >= splitPhaseWrites &&
			load.count(minWrites, resRefused, cut, time.Time{}) >= splitMinRefusals && gate > 0 &&
			load.count(minReads, "", cut, time.Time{}) >= 20
	})

	// The heal: the port goes up again, the routes resume or reconnect,
	// and the cut-off node and the majority hear each other again.
	lab.setPort(cutHost, "up")
	heal := time.Now()
	load.markHeal(heal)
	t.Logf("healed after a cut of %s", heal.Sub(cut).Round(time.Millisecond))
	var accepted time.Duration
	bustest.WaitFor(t, within(splitHealWait), "writes through "+cutNode.ID+" acknowledged again, of keys it serves and keys it forwards", func() bool {
		worst, ok := time.Duration(0), true
		for _, g := range []bool{true, false} {
			at, found := load.firstOK(minWrites, g, heal)
			ok = ok && found
			worst = max(worst, at.Sub(heal))
		}
		accepted = worst
		return ok
	})
	var why string
	defer func() {
		if t.Failed() && why != "" {
			t.Logf("not converged: %s", why)
		}
	}()
	bustest.WaitFor(t, within(splitWaitMax), "the cache tier to converge: every node ready, three live nodes and every partition served by an owner in every node's view and the client's", func() bool {
		why = notConverged(t, nodes, allServed)
		return why == ""
	})
	converged := time.Since(heal)
	bustest.WaitFor(t, within(splitWaitMax), fmt.Sprintf("%d majority writes acknowledged after the heal", splitPhaseWrites), func() bool {
		return load.count(majWrites, resOK, heal, time.Time{}) >= splitPhaseWrites
	})
	load.stop(splitDrain)
	if ctx.Err() != nil {
		t.Fatalf("the test ran out of its %s", splitTimeout)
	}

	// What the load saw.
	phase := func(f splitFilter, res string) string {
		return fmt.Sprintf("before the cut %s, during it %s, after the heal %s",
			formatValue(load.count(f, res, began, cut)), formatValue(load.count(f, res, cut, heal)), formatValue(load.count(f, res, heal, time.Time{})))
	}
	Figure(t, "writes acknowledged through the majority", load.count(majWrites, resOK, began, time.Time{}), phase(majWrites, resOK))
	Figure(t, "majority writes refused or failed (each tried again until acknowledged)",
		load.count(majWrites, resRefused, began, time.Time{})+load.count(majWrites, resFailed, began, time.Time{}),
		"refused "+phase(majWrites, resRefused)+"; no answer "+phase(majWrites, resFailed))
	Figure(t, "writes acknowledged through the cut-off node", load.count(minWrites, resOK, began, time.Time{}), phase(minWrites, resOK))
	duringCut := load.opsOf(minWrites, cut, heal)
	var ackedInCut, refusedInCut, failedInCut []splitOp
	for _, op := range duringCut {
		switch {
		case op.result == resOK && op.ended.Before(heal):
			ackedInCut = append(ackedInCut, op)
		case op.result == resRefused:
			refusedInCut = append(refusedInCut, op)
		case op.result == resFailed:
			failedInCut = append(failedInCut, op)
		}
	}
	for i, op := range ackedInCut[:min(5, len(ackedInCut))] {
		t.Errorf("write %d of %s acknowledged by %s during the cut: begun %s after it, answered in %s", i, op.key, cutNode.ID,
			op.begun.Sub(cut).Round(time.Millisecond), op.ended.Sub(op.begun).Round(time.Millisecond))
	}
	Check(t, "writes acknowledged by the cut-off node during the cut", len(ackedInCut), "= 0", len(ackedInCut) == 0)
	Figure(t, "writes refused by the cut-off node during the cut", len(refusedInCut), refusalKinds(refusedInCut, failedInCut))
	if len(refusedInCut) > 0 {
		first := refusedInCut[0]
		for _, op := range refusedInCut {
			if op.ended.Before(first.ended) {
				first = op
			}
		}
		t.Logf("first refusal: %s", first.detail)
		Figure(t, "time from the cut to the first refusal", first.ended.Sub(cut), refusalLatencies(refusedInCut))
	}
	Check(t, "time until the majority serves again", served,
		"≤ failure timeout + NATS election 9s + 5s = "+splitServeMax.String(), served <= splitServeMax)
	minRead := func(res string) int { return load.count(minReads, res, cut, heal) }
	Figure(t, "reads through the cut-off node during the cut", minRead(""),
		fmt.Sprintf("answered from what it held, not held to the majority's writes: current %s, older %s, not found %s, failed %s",
			formatValue(minRead(resOK)), formatValue(minRead(resStale)), formatValue(minRead(resLost)), formatValue(minRead(resFailed))))
	majReadOps := load.opsOf(majReads, began, time.Time{})
	var badReads []splitOp
	failedReads := 0
	for _, op := range majReadOps {
		switch op.result {
		case resOK:
		case resFailed:
			failedReads++
		default:
			badReads = append(badReads, op)
		}
	}
	Figure(t, "reads through the majority", len(majReadOps), fmt.Sprintf("of acknowledged keys, %d readers; failed %s (%s)",
		splitReaders, formatValue(failedReads), phase(majReads, resFailed)))
	badBy := map[string]int{}
	for _, op := range badReads {
		badBy[op.result]++
		badBy[splitPhaseOf(op.begun, cut, heal)]++
	}
	for _, op := range badReads[:min(10, len(badReads))] {
		t.Errorf("majority read of %s (its partition %s) begun %s after the cut: %s: %s", op.key, groupName(op.own),
			op.begun.Sub(cut).Round(time.Millisecond), op.result, op.detail)
	}
	Check(t, "stale reads through the majority, all along", len(badReads),
		fmt.Sprintf("= 0 (older %d, not found %d, refused or foreign %d; begun before the cut %d, during it %d, after the heal %d)",
			badBy[resStale], badBy[resLost], badBy[resUndone]+badBy[resForeign],
			badBy["before the cut"], badBy["during the cut"], badBy["after the heal"]), len(badReads) == 0)
	Figure(t, "time after the heal until the cut-off node accepts writes again", accepted,
		"of keys it serves and keys it forwards; bounded by the wait, "+splitHealWait.String())
	Figure(t, "time after the heal until the cache tier converged", converged, "ready, three live nodes, every partition served by an owner in every view")

	// Every acknowledged write, through every node, and in the record log.
	keys := load.snapshot()
	slices.SortFunc(keys, func(a, b splitKey) int { return strings.Compare(a.name, b.name) })
	final := readEverywhere(t, nodes, keys, within(20*time.Second))
	count := map[string]int{}  // reads by result
	lostBy := map[string]int{} // lost keys by group and phase of their last acknowledged write
	acked, lost, shown := 0, 0, 0
	for i := range keys {
		k := &keys[i]
		if k.acked > 0 {
			acked++
		}
		bad := false
		answers := make([]string, len(nodes))
		for j, n := range nodes {
			res := final[i][j]
			count[res.result]++
			bad = bad || res.result != resOK
			answers[j] = fmt.Sprintf("%s %s (%s)", n.ID, res.detail, res.result)
		}
		if !bad {
			continue
		}
		if k.acked > 0 {
			lost++
			lostBy[fmt.Sprintf("%s, last acknowledged %s", groupName(k.own), splitPhaseOf(k.ackedAt, cut, heal))]++
		}
		if shown < 10 {
			shown++
			t.Errorf("after convergence %s/%s, partition %d (%s), last acknowledged %s at %s (%s), is answered: %s",
				harness.RecordsNS, k.name, partition.PartitionOf(k.name), groupName(k.own), k.value(k.acked),
				k.ackedAt.Format("15:04:05.000"), splitPhaseOf(k.ackedAt, cut, heal), strings.Join(answers, ", "))
		}
	}
	var breakdown []string
	for what, n := range lostBy {
		breakdown = append(breakdown, fmt.Sprintf("%s: %s", what, formatValue(n)))
	}
	slices.Sort(breakdown)
	if lost > 0 {
		t.Logf("acknowledged writes lost after convergence, by group: %s", strings.Join(breakdown, "; "))
	}
	Check(t, "acknowledged writes lost", lost, fmt.Sprintf("= 0 (of %s keys acknowledged: keys whose last acknowledged value some node does not answer)",
		formatValue(acked)), lost == 0)
	reads := len(keys) * len(nodes)
	Check(t, "stale reads after convergence", count[resStale], fmt.Sprintf("= 0 (an older value; of %s reads, every key through each of the %d nodes; not found: %s)",
		formatValue(reads), len(nodes), formatValue(count[resLost])), count[resStale] == 0)
	Check(t, "refused or unknown values read after convergence", count[resUndone]+count[resForeign], "= 0", count[resUndone]+count[resForeign] == 0)
	Check(t, "reads after convergence that failed", count[resFailed], "= 0 (no answer after retries)", count[resFailed] == 0)
	inLog := harness.RecordLogValues(ctx, t, admin)
	notInLog := 0
	for _, k := range keys {
		v, found := inLog[k.name]
		if res := k.judge(k.acked, v, found, true); res != resOK {
			if notInLog < 5 {
				t.Errorf("record log after convergence: %s = %q (found %v): %s, last acknowledged %s", k.name, v, found, res, k.value(k.acked))
			}
			notInLog++
		}
	}
	Check(t, "acknowledged writes not the last record in the record log", notInLog, "= 0", notInLog == 0)
	out := cutNode.P.Output()
	t.Logf("%s's log: %d \"record log unreachable\", %d \"record log reachable again\", %d refused writes found kept and undone",
		cutNode.ID, strings.Count(out, "record log unreachable"), strings.Count(out, "record log reachable again"),
		strings.Count(out, "had been kept after all"))
	took := time.Since(began)
	Check(t, "duration", took, "≤ "+splitTimeout.String(), took <= splitTimeout)
}

// startLabNATS starts a `cachebus nats` on each host of lab, the three
// forming one cluster over the cluster network with JetStream replicas 3,
// as harness.StartCluster does on 127.0.0.1. The namespaces have their own
// ports: every server uses the same ones.
func startLabNATS(t *testing.T, lab *netLab) []*harness.NATSNode {
	t.Helper()
	var servers []*harness.NATSNode
	for i, h := range lab.hosts {
		var routes []string
		for j, o := range lab.hosts {
			if j != i {
				routes = append(routes, "nats://"+o.Addr+":6222")
			}
		}
		n := &harness.NATSNode{Name: fmt.Sprintf("n%d", i+1), URL: "nats://" + h.Addr + ":4222", HTTPAddr: h.Mgmt + ":8222"}
		n.Env = map[string]string{
			"CACHEBUS_NATS_HOST":           h.Addr,
			"CACHEBUS_NATS_PORT":           "4222",
			"CACHEBUS_NATS_SERVER_NAME":    n.Name,
			"CACHEBUS_NATS_STORE_DIR":      t.TempDir(),
			"CACHEBUS_NATS_CLUSTER_NAME":   "partition",
			"CACHEBUS_NATS_CLUSTER_LISTEN": h.Addr + ":6222",
			"CACHEBUS_NATS_ROUTES":         strings.Join(routes, ","),
			"CACHEBUS_EVENTS_REPLICAS":     "3",
			"CACHEBUS_STATE_REPLICAS":      "3",
			"CACHEBUS_NODES_REPLICAS":      "3",
			"CACHEBUS_HTTP_ADDR":           n.HTTPAddr,
		}
		n.P = lab.start(t, h, n.Name, n.Env, "nats")
		servers = append(servers, n)
	}
	return servers
}

// startLabNodes starts a `cachebus node` on each host of lab, connected
// to its own host's NATS server only, as harness.StartCacheNodesWith
// configures them, the namespace "sessions" long-term on a record log of
// three replicas. Their HTTP APIs listen on the management network and
// let the test's address in.
func startLabNodes(t *testing.T, lab *netLab, servers []*harness.NATSNode) []*harness.CacheNode {
	t.Helper()
	ids := make([]string, len(lab.hosts))
	for i := range lab.hosts {
		ids[i] = fmt.Sprintf("c%d", i+1)
	}
	var nodes []*harness.CacheNode
	for i, h := range lab.hosts {
		n := harn.NewCacheNode(ids[i], h.Mgmt+":7380", map[string]string{
			"CACHEBUS_NODE_ID":            ids[i],
			"CACHEBUS_NATS_URL":           servers[i].URL,
			"CACHEBUS_HTTP_ADDR":          h.Mgmt + ":7380",
			"CACHEBUS_ADMIN_TOKEN":        harness.NodeAdminToken,
			"CACHEBUS_ADMIN_ALLOW":        fmt.Sprintf("10.78.%d.0/24", lab.octet),
			"CACHEBUS_BASELINE":           strings.Join(ids, ","),
			"CACHEBUS_BACKUPS":            "1",
			"CACHEBUS_HEARTBEAT_INTERVAL": harness.NodeHeartbeat.String(),
			"CACHEBUS_FAILURE_TIMEOUT":    harness.NodeFailureTimeout.String(),
			"CACHEBUS_LONG_TERM":          harness.RecordsNS,
			"CACHEBUS_RECORDS_REPLICAS":   "3",
		})
		n.P = lab.start(t, h, n.ID, n.Env, "node")
		nodes = append(nodes, n)
	}
	return nodes
}

func serverNames(servers []*harness.NATSNode) []string {
	names := make([]string, len(servers))
	for i, n := range servers {
		names[i] = n.Name
	}
	return names
}

// notConverged says what keeps the cache tier from having converged, ""
// when nothing does: every node ready, and in every node's view and the
// client's, every node live and every partition served by an owner.
func notConverged(t *testing.T, nodes []*harness.CacheNode, allServed func() bool) string {
	for _, n := range nodes {
		if code, body := harness.HTTPGet("http://" + n.HTTPAddr + "/readyz"); code != http.StatusOK {
			return fmt.Sprintf("%s /readyz = %d %s", n.ID, code, strings.TrimSpace(body))
		}
		st, err := n.TryStatus()
		if err != nil {
			return err.Error()
		}
		if len(st.Nodes) != len(nodes) || st.Uncovered != 0 || st.Moving != 0 || st.Syncing != 0 {
			return fmt.Sprintf("%s sees nodes %v, %d partitions uncovered, %d moving, %d syncing", n.ID, st.Nodes, st.Uncovered, st.Moving, st.Syncing)
		}
	}
	if !allServed() {
		return "the client does not see every partition served by an owner"
	}
	return ""
}

// splitRead is what a read of the final check found.
type splitRead struct{ result, detail string }

// readEverywhere reads every key of keys through the HTTP API of every
// node, a read that fails being tried again for at most retry, and judges
// each answer against the key's last acknowledged write: [key][node].
func readEverywhere(t *testing.T, nodes []*harness.CacheNode, keys []splitKey, retry time.Duration) [][]splitRead {
	t.Helper()
	out := make([][]splitRead, len(keys))
	for i := range out {
		out[i] = make([]splitRead, len(nodes))
	}
	type job struct{ key, node int }
	jobs := make(chan job)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				k, n := &keys[j.key], nodes[j.node]
				until := time.Now().Add(retry)
				for wait := 50 * time.Millisecond; ; wait = min(2*wait, time.Second) {
					code, _, body := n.Record(http.MethodGet, k.name, "", harness.NodeAdminToken)
					switch {
					case code == http.StatusOK:
						out[j.key][j.node] = splitRead{k.judge(k.acked, body, true, true), strconv.Quote(body)}
					case code == http.StatusNotFound:
						out[j.key][j.node] = splitRead{k.judge(k.acked, "", false, true), "not found"}
					case time.Now().After(until):
						out[j.key][j.node] = splitRead{resFailed, fmt.Sprintf("%d %s", code, refusalText(body))}
					default:
						time.Sleep(wait) // a node answering an error: ask it again, up to retry
						continue
					}
					break
				}
			}
		}()
	}
	for i := range keys {
		for j := range nodes {
			jobs <- job{i, j}
		}
	}
	close(jobs)
	wg.Wait()
	return out
}

// refusalKinds sums refusals up by their error code and, for those of the
// record log gate, the gate's message; and says how many attempts got no
// answer.
func refusalKinds(refused, failed []splitOp) string {
	kinds := map[string]int{}
	for _, op := range refused {
		kind := op.detail
		if code, _, ok := strings.Cut(op.detail, ":"); ok {
			kind = code
		}
		switch {
		case strings.Contains(op.detail, "long-term write refused: the record log (JetStream) is unreachable or has no quorum"):
			kind += " (the record log gate: unreachable or no quorum)"
		case strings.Contains(op.detail, "is cut off from the NATS majority"):
			kind += " (isolated: cut off from the NATS majority)"
		}
		kinds[kind]++
	}
	var parts []string
	for k, n := range kinds {
		parts = append(parts, fmt.Sprintf("%s ×%s", k, formatValue(n)))
	}
	slices.Sort(parts)
	return fmt.Sprintf("%s; no answer: %s", strings.Join(parts, ", "), formatValue(len(failed)))
}

// refusalLatencies sums up how long the refusals took to come.
func refusalLatencies(refused []splitOp) string {
	ds := make([]time.Duration, len(refused))
	for i, op := range refused {
		ds[i] = op.ended.Sub(op.begun)
	}
	slices.Sort(ds)
	return fmt.Sprintf("each refusal took: median %s, max %s", formatValue(ds[len(ds)/2]), formatValue(ds[len(ds)-1]))
}

// groupName names the group of keys own says: those whose partition the
// cut-off node (host 3's, c3) served before the cut, or the others.
func groupName(own bool) string {
	if own {
		return "served by c3 before the cut"
	}
	return "served by another node before the cut"
}

// splitPhaseOf names the phase of the test t falls in.
func splitPhaseOf(t, cut, heal time.Time) string {
	switch {
	case t.Before(cut):
		return "before the cut"
	case t.Before(heal):
		return "during the cut"
	}
	return "after the heal"
}
