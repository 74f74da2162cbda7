// Package fault is cachebus's fault suite (issue 9): tests that put the
// system under faults and bad input, bounded in time and count, and prove
// with figures that nothing is lost, nothing stale is served and nothing
// malformed gets through or stops a receiver.
//
// What it proves, item 1 of the issue, "invalidation under faults":
//
//   - TestInvalidationUnderFaults runs a three-server NATS cluster (the
//     cachebus binary, see records below) and 5 memo clients, each a
//     process of the test binary itself (memoclient_test.go: TestMain runs
//     it as a client when FAULT_MEMO_ADDR is set) memoizing, through
//     memo.Do, the values of a source of truth the test serves over HTTP,
//     and reading them all along. A writer updates each of 10,000 keys in
//     the source and publishes an expire for it, waiting for the event
//     log's acknowledgement and trying again until it comes. Meanwhile it
//     SIGKILLs a NATS server and starts it again, SIGSTOPs a client for
//     6s (past the bus's 5s failure timeout) and continues it, and cuts
//     the connection of another client (which reaches NATS only through a
//     proxy of the test's) for 3s, each fault lasting while at least 500
//     expires are acknowledged. Afterwards every client must answer, for
//     every key, the source's value, within 10s of the last expire: zero
//     stale reads. Its figures: expires sent and tried again, the longest
//     wait for an acknowledgement, per client the expires applied, gap
//     flushes, reads and values read but not kept because their key was
//     flushed meanwhile (the race memo.Do closes), the worst time from an
//     update to its expire applied, and the time to consistency.
//
// item 2, "records under faults":
//
//   - TestRecordsUnderFaults runs, as real processes from the cachebus
//     binary TestMain builds (with the race detector when the tests have
//     it; see package e2e/harness), a three-server NATS cluster and three
//     cache nodes with one backup, the namespace "sessions" long-term on a
//     record log of three replicas and "plain" in memory only. Eight
//     writers put new keys in both namespaces and count a write only once
//     it is acknowledged, trying a refused one again after a back-off with
//     the same value, as an application would; four readers read
//     acknowledged keys back all along and check their values. Meanwhile
//     it SIGKILLs a cache node, waits until reads and writes of both
//     namespaces succeed again, starts it again, then SIGKILLs the NATS
//     server leading the record log (every process and the client have
//     the three URLs) and starts it again, letting the load run for a set
//     number of acknowledged writes between faults. At the end every
//     acknowledged key of both namespaces is read back through the client,
//     and those of the long-term namespace once more after every cache node
//     has been SIGKILLed and started again, from the record log: none may
//     be missing or hold another value (nor may any read during the run).
//     Its figures: writes acknowledged per namespace, reads and reads
//     failed, the longest time without a successful write and read of each
//     namespace after each kill, held to the failure timeout + 5s (for the
//     long-term writes after the NATS kill, plus NATS's 9s raft election
//     timeout, which the record log's followers wait out before electing a
//     new leader), the time every cache node takes to serve again, and the
//     duration, held to 90s. Under the race detector it writes slower and
//     waits for fewer writes between faults.
//
// item 3, "gateway under faults":
//
//   - TestGatewayUnderFaults runs NATS, four app servers (the test binary
//     again, see harness.RunAppServer) each announced by a `cachebus
//     announce` sidecar, and a `cachebus gateway`, under a load of 15
//     sticky sessions of GETs with a POST every fifth request (each POST
//     carries an id the app servers log) and a stream of new sessions.
//     It drains b2 with `cachebus drain app b2 --wait` while its sessions
//     go on, then ends them; SIGKILLs b3; and restarts b1 then b4 as a
//     rolling deploy does: SIGTERM to the sidecar, which drains the app for
//     2s and withdraws it, then SIGTERM to the app, then both started
//     again and back in the pool. Per fault it prints the requests sent,
//     failed and sessions moved: zero failed and zero moved for the drain
//     (and no new session on b2), zero failed for each rolling restart,
//     no GET failed at the kill (a POST that may have reached b3 may fail,
//     never retried), and no POST served twice in the whole run.
//
// item 4, "network partition":
//
//   - TestNetworkPartition (Linux) makes three hosts in network
//     namespaces: each plugs into a bridge in a fourth namespace (the
//     cluster network, 10.77.X.0/24) and has a management link to the
//     test's own namespace that the cut leaves alone; where namespaces
//     cannot be made it skips and says why in the figures. Each host runs
//     a `cachebus nats` of one cluster with JetStream replicas 3 and a
//     cache node connected to its own host's server, the namespace
//     "sessions" long-term on a record log of three replicas, whose leader
//     is first moved to the third host. Four writers put values of 400
//     keys over and over through a client of the majority's two servers,
//     each write until acknowledged; one writer puts keys through the
//     third node's HTTP API; two readers read acknowledged keys back
//     through the majority all along. The test sets the third host's port
//     on the bridge down for at least 12s: the cut-off node must
//     acknowledge no write begun during the cut, and the majority must
//     serve reads and writes of every partition again within the failure
//     timeout + NATS's 9s election + 5s. After the heal it waits until the
//     cut-off node takes writes and the tier has converged, lets the
//     majority write new keys, and reads every key through each of the
//     three nodes and from the record log: no acknowledged write may be
//     missing or hold another value, no node may answer an older value.
//     (It found the cut-off node serving its partitions again at the heal
//     with what it held before the cut; isolation.go in cachenode/server
//     is the fix.) Its figures: writes acknowledged on each side before,
//     during and after the cut; writes refused by the cut-off node, by
//     reason, and the time to the first refusal; the time until the
//     majority serves again; the time after the heal until the cut-off
//     node takes writes and until the tier converges; acknowledged writes
//     lost; stale reads; the duration.
//
// item 5, "bad input":
//
//   - TestFuzzTargets runs every fuzz target of the repository (every
//     `func FuzzXxx(*testing.F)` in a _test.go file, found by scanning the
//     source tree, so a new target is picked up without a change here) for
//     a bounded time each, one after the other, with one fuzzing worker,
//     from a test binary built once per package without the race
//     detector: the decoders of expire (JSON and text), seed, fallback,
//     drain and heartbeat payloads, record requests, replies, frames and
//     entry batches, the sticky cookie, Cache-Control, the Cachebus-Expire
//     header, the gateway's cache entries, long-term records and the HTTP
//     admin bodies. A failing input is written to the package's
//     testdata/fuzz/<target>/ (and only then: a passing run leaves the
//     tree as it was) and the test fails with the fuzzer's output.
//   - TestSoakMalformed publishes 100,000 expires among 100,000 random
//     malformed messages (random bytes, truncated JSON, wrong types,
//     oversized keys and payloads, bad UTF-8, unknown versions, missing
//     fields, bad values, bad subjects), from a fixed seed, through the
//     paths a publisher has (bus.Publisher, raw JetStream publishes with
//     and without a message id, plain core publishes), on an embedded NATS
//     with the event log, to a memo client: a real bus subscriber applying
//     to a real store. Every good one is applied exactly once and its key
//     is gone from memory; every bad one is rejected, logged and counted
//     exactly once (but the 1% sent to a namespace the client does not
//     follow, which it drops undecoded); nothing is lost or flushed; the
//     client still applies what comes after; and the live heap outside the
//     NATS server, told apart by the heap profile, stays flat from 10% of
//     the messages to the end. Under the race detector it sends 20,000 of
//     each, and says so in its figures.
//
// and item 6, "security":
//
//   - TestSecurity runs `cachebus nats` with NATS users from a
//     configuration file it writes and its admin API behind a token and
//     the allow-list 127.0.0.2/32. A user allowed only seeds, its
//     heartbeat and the records tries to expire, fall back and drain by
//     core publishes, by bus.Publisher, by a forged copy of the event
//     log's republication and by `cachebus expire`; after its allowed seed
//     and a trusted expire are applied by a subscriber, none of the
//     forbidden events was applied, flushed or stored, and each attempt
//     was reported to the client and logged by the server. The admin API
//     answers 401 without or with a wrong token, 403 from 127.0.0.1 (also
//     with a forged X-Forwarded-For) and 200 from 127.0.0.2, whose expire
//     alone is applied. A `cachebus gateway` in front of three backends,
//     one draining, lets valid sticky cookies pin 40 of 40 requests, while
//     forged, tampered, wrongly signed and bare-id cookies naming the
//     draining one land there 0 of 40 and are balanced as new. A cache
//     node seals long-term records: no raw message of the record log holds
//     a value, only the right key opens them, a node with a wrong key says
//     why, serves none of them and serves on, and the right key brings all
//     back. Two three-server NATS clusters with TLS from certificates made
//     at run time (server certificates only, and client verification)
//     carry an expire from one server to a subscriber on another, and
//     refuse clients without the CA or a certificate, the CLI without TLS
//     settings and plaintext on the client and route ports.
//
// Run it with
//
//	go test ./e2e/fault/                 # what CI runs, as part of ./...
//	go test -v -run Soak ./e2e/fault/    # one test, with its log
//
// -short skips every test (and the build of the cachebus binary).
// Variables, besides those of e2e/harness (CACHEBUS_E2E_BIN,
// CACHEBUS_E2E_LOGDIR, CACHEBUS_E2E_DEBUG):
//
//	CACHEBUS_FUZZTIME   fuzzing time per target (a duration such as 10s, or
//	                    Nx for N inputs; default 4s; 0 skips the fuzzing)
//	CACHEBUS_FUZZ_MAX   cap on the whole fuzzing time, shared by the targets
//	                    (default 2m): more targets get less time each
//	CACHEBUS_FUZZ_RUN   fuzz only the targets whose "<dir>.<name>" matches
//	                    this regular expression (bus.FuzzDecodeSeed)
//	CACHEBUS_FIGURES    also append the figures table to this file
//	CACHEBUS_SOAK_HEAPPROFILE  write the soak's heap profiles at 10%, 55%
//	                    and 100% to <this prefix>-<n>.pprof
//
// Every test adds the figures it measured to one table (the helpers are
// in figures_test.go: Figure for a plain figure, Check for one held to a
// target, which fails the test when it misses). Each test logs its own
// rows with t.Log, and TestMain prints the whole table on standard output
// when the package's tests end, passed or not. Note that `go test` shows a
// passing package's output only with -v or when run inside the package's
// directory without arguments (`cd e2e/fault && go test`); with package
// arguments, as in `go test ./...`, it prints only "ok". So a CI job that
// wants the table in its log sets CACHEBUS_FIGURES to a fresh file (a new
// name each run, which also keeps go test from replaying a cached result
// without running the suite) and prints that file after the run.
package fault
