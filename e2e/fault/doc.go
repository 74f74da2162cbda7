// Package fault is cachebus's fault suite (issue 9): tests that put the
// system under faults and bad input, bounded in time and count, and prove
// with figures that nothing is lost, nothing stale is served and nothing
// malformed gets through or stops a receiver.
//
// What it proves so far, item 1 of the issue, "invalidation under faults":
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
// and item 5, "bad input":
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
