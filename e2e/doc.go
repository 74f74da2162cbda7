// Package e2e tests cachebus the way an operator runs it: it builds the
// cachebus binary once, starts its daemons as real processes with CACHEBUS_*
// variables and free ports, and drives them with the bus package, the
// cachebus commands, raw NATS clients and plain HTTP, as other programs
// would.
//
// The tests kill, freeze and terminate those processes with signals
// (SIGKILL, SIGSTOP/SIGCONT, SIGTERM) to prove what DESIGN.md promises: the
// event log of a three-node NATS cluster survives the loss of a node, and
// every subscriber still applies every event once, in order, without a
// flush; a killed node rejoins from its store; every daemon exits 0 soon
// after SIGTERM; a bad invocation exits 2; and `cachebus dev`, the README's
// first command, answers on the URLs it prints. Beyond cachebus itself it
// runs the demo app (cmd/demoapp), the publisher examples of docs/examples
// in their languages, and the compose cluster of compose/ under Docker.
//
// `go test -short` skips the package. Under -race the binary is built with
// the race detector too, and a race it reports fails the test. Variables:
//
//	CACHEBUS_E2E_BIN     test this cachebus binary instead of building one
//	CACHEBUS_E2E_LOGDIR  also append every process's output to a file there
//	CACHEBUS_E2E_DEBUG   log the test's own bus clients at debug level
//	CACHEBUS_REQUIRE_EXTERNAL=1  fail, not skip, when nats-server or an
//	                     example's toolchain (python3, gcc, libnats, curl) is absent
//	CACHEBUS_REQUIRE_DOCKER=1    fail, not skip, when no Docker engine answers
//
// A failing test prints the tail of the output of each of its processes.
// The package needs a Unix system, for the signals. The helpers that build
// the binaries and start NATS servers, cache nodes and other processes are
// in e2e/harness, shared with the fault suite in e2e/fault.
package e2e
