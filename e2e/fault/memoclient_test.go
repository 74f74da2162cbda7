//go:build unix

package fault

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/cachenode/memo"
	"github.com/cachebus/cachebus/e2e/harness"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
)

// memoClientEnv, when set in the environment of the test binary, makes it
// a memo client of TestInvalidationUnderFaults instead of running tests:
// an app server that memoizes the values of an in-test source of truth
// and reads them all along. Its variables:
//
//	FAULT_MEMO_ADDR    where it serves its control API (this variable)
//	FAULT_MEMO_ID      its origin id on the bus
//	FAULT_MEMO_NATS    the NATS URLs it connects to
//	FAULT_MEMO_SOURCE  the source's base URL: GET <base>/v/<key>
//	FAULT_MEMO_KEYS    how many keys it reads: k00000 and on
//
// The control API: GET /stats is its memoClientStats; GET /values is the
// value Do returns now for every key, as a JSON object (a key still cached
// answers from memory, as an app's read would).
const memoClientEnv = "FAULT_MEMO_ADDR"

// Settings of the memo clients.
const (
	memoNS          = "fault"
	memoTTL         = 10 * time.Minute // far past the test: only an expire can make a value go
	memoReaders     = 2                // goroutines reading per client
	memoReadPause   = time.Millisecond // between two reads of one reader
	memoReadTimeout = 2 * time.Second  // one read of the source
)

// memoClientStats is what a memo client reports of itself.
type memoClientStats struct {
	Reads, ReadErrors int64
	// Applied is the expires from peers applied; AppliedAt, by key, when
	// the last one naming the key was (Unix nanoseconds).
	Applied    int64
	AppliedAt  map[string]int64
	GapFlushes float64
	Superseded float64 // values read while their key was flushed, not kept
}

// The test binary doubles as the processes the tests start from it: the
// memo clients here, the app servers behind the gateway of
// TestGatewayUnderFaults.
func init() {
	child = func() (int, bool) {
		switch {
		case os.Getenv(memoClientEnv) != "":
			return runMemoClient(), true
		case os.Getenv(harness.AppServerEnv) != "":
			return harness.RunAppServer(), true
		}
		return 0, false
	}
}

func memoKey(i int) string { return fmt.Sprintf("k%05d", i) }

// runMemoClient serves until SIGTERM.
func runMemoClient() int {
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "memo client:", err)
		return 1
	}
	id, urls, source := os.Getenv("FAULT_MEMO_ID"), os.Getenv("FAULT_MEMO_NATS"), os.Getenv("FAULT_MEMO_SOURCE")
	keys, err := strconv.Atoi(os.Getenv("FAULT_MEMO_KEYS"))
	if err != nil || keys <= 0 {
		return fail(fmt.Errorf("FAULT_MEMO_KEYS=%q: want a count", os.Getenv("FAULT_MEMO_KEYS")))
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	startCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	// Only the URLs given: the client behind the test's proxy must not
	// reconnect around it to a server the cluster told it of.
	conn, err := bus.Connect(startCtx, bus.ConnConfig{URL: urls, Prefix: bus.DefaultPrefix, Name: id},
		bus.WithNATSOptions(nats.IgnoreDiscoveredServers()))
	if err != nil {
		return fail(err)
	}
	var (
		mu        sync.Mutex
		appliedAt = map[string]int64{}
		applied   atomic.Int64
	)
	reg := prometheus.NewRegistry()
	c, err := memo.New(startCtx, conn, memo.Options{Namespace: memoNS, ID: id, MaxTTL: memoTTL, Registerer: reg,
		Observe: func(ev bus.Event) {
			if ev.Expire == nil {
				return
			}
			applied.Add(1)
			at := time.Now().UnixNano()
			mu.Lock()
			for _, k := range ev.Expire.Keys {
				appliedAt[k] = at
			}
			mu.Unlock()
		}})
	if err != nil {
		return fail(err)
	}
	httpc := &http.Client{Timeout: memoReadTimeout}
	load := func(key string) func(context.Context) ([]byte, error) {
		return func(ctx context.Context) ([]byte, error) {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, source+"/v/"+key, nil)
			if err != nil {
				return nil, err
			}
			resp, err := httpc.Do(req)
			if err != nil {
				return nil, err
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			if err == nil && resp.StatusCode != http.StatusOK {
				err = fmt.Errorf("source: %s: %s", resp.Status, b)
			}
			return b, err
		}
	}
	var reads, readErrors atomic.Int64
	var wg sync.WaitGroup
	for r := range memoReaders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(r), uint64(os.Getpid())))
			for ctx.Err() == nil {
				key := memoKey(rng.IntN(keys))
				if _, err := c.Do(ctx, key, memoTTL, load(key)); err != nil {
					readErrors.Add(1)
				}
				reads.Add(1)
				time.Sleep(memoReadPause)
			}
		}()
	}

	mux := http.NewServeMux()
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) {
		st := memoClientStats{Reads: reads.Load(), ReadErrors: readErrors.Load(), Applied: applied.Load(),
			GapFlushes: gathered(reg, "cachebus_memo_gap_flushes_total"),
			Superseded: gathered(reg, "cachebus_memo_loads_superseded_total")}
		mu.Lock()
		st.AppliedAt = make(map[string]int64, len(appliedAt))
		for k, v := range appliedAt {
			st.AppliedAt[k] = v
		}
		mu.Unlock()
		_ = json.NewEncoder(w).Encode(st)
	})
	mux.HandleFunc("GET /values", func(w http.ResponseWriter, r *http.Request) {
		values := make(map[string]string, keys)
		for i := range keys {
			key := memoKey(i)
			v, err := c.Do(r.Context(), key, memoTTL, load(key))
			if err != nil {
				http.Error(w, fmt.Sprintf("Do(%s): %v", key, err), http.StatusBadGateway)
				return
			}
			values[key] = string(v)
		}
		_ = json.NewEncoder(w).Encode(values)
	})
	ln, err := net.Listen("tcp", os.Getenv(memoClientEnv))
	if err != nil {
		return fail(err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	fmt.Printf("memo client %s ready on %s\n", id, ln.Addr())
	// The test waits for these to know its cut took effect.
	conn.OnEvent(func(ev bus.ConnEvent) {
		switch ev {
		case bus.Disconnected:
			fmt.Printf("memo client %s disconnected\n", id)
		case bus.Reconnected:
			fmt.Printf("memo client %s reconnected\n", id)
		}
	})

	<-ctx.Done()
	shutdown, cancelShutdown := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancelShutdown()
	_ = srv.Shutdown(shutdown)
	wg.Wait()
	_ = c.Close()
	if err := conn.Close(10 * time.Second); err != nil {
		return fail(err)
	}
	return 0
}

// gathered is the sum of the counters named name in reg.
func gathered(reg *prometheus.Registry, name string) float64 {
	mfs, err := reg.Gather()
	if err != nil {
		return -1
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}
