// Command cachebus is the one binary of cachebus: its daemons (dev, nats,
// and later node, gateway, announce) and its commands (expire, seed,
// fallback, drain, status, watch, bench). Behaviour lives in the library
// packages; this package parses flags and CACHEBUS_* variables, builds the
// library objects and runs them.
package main

import (
	"os"
)

func main() { os.Exit(run(os.Args[1:])) }
