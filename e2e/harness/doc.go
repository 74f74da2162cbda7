// Package harness runs cachebus the way an operator does, for the
// end-to-end suites (e2e and e2e/fault): it builds the cachebus binary
// (Build), starts it and other programs as real processes with CACHEBUS_*
// variables on free ports and signals them (Harness.Start, StartBinary,
// Proc), runs a NATS server or a three-node NATS cluster of `cachebus nats`
// processes (Harness.StartNATS, Harness.StartCluster), runs `cachebus node`
// processes (Harness.StartCacheNodes) and talks to them over NATS and HTTP
// (Connect, NodeClient, HTTPGet), and runs app servers announced by
// sidecars (Harness.StartApps, RunAppServer) behind `cachebus gateway`
// processes (Harness.StartGateway) under a load of sticky sessions
// (StartGatewayLoad).
//
// Go test files cannot be imported across packages, so the helpers the
// suites share live here, in ordinary files. A suite builds the binaries
// once in its TestMain and keeps one Harness for its tests:
//
//	bins, err := harness.Build(dir, raceEnabled)
//	...
//	h := harness.New(bins)
//	...
//	n := h.StartNATS(t)
//	nodes := h.StartCacheNodes(t, n.URL, "n1", "n2", "n3")
//
// Every process a test starts is killed when the test ends, if it still
// runs; when the test has failed, the tail of its output is logged, and a
// data race the race detector reports in it fails the test. Variables:
//
//	CACHEBUS_E2E_BIN     test this cachebus binary instead of building one
//	CACHEBUS_E2E_LOGDIR  also append every process's output to a file there
//	CACHEBUS_E2E_DEBUG   log the test's own bus clients at debug level
//
// The package needs a Unix system, for the signals.
package harness
