//go:build unix

package harness

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
)

// AppServerEnv, when set in the environment of a test binary whose
// TestMain calls RunAppServer for it, makes the binary an app server
// instead of running tests (StartApps starts such servers): E2E_APP_ID
// names it, E2E_APP_ADDR is where it listens, E2E_APP_LOG is the file each POST's
// X-Req header is appended to, so that a test can count how many times
// a request was served across processes, killed ones included.
//
// Besides its catch-all page it serves cacheable ones: GET /static/<name>
// answers the name and the number of requests the process has served
// (so that a fresh fetch shows from a cached copy), public for 5 minutes
// and tagged with the surrogate keys "static" and "page-<name>"; POST
// /publish/<name> answers with a Cachebus-Expire of /static/<name> in the
// namespace http. GET /_e2e/served, asked of the app directly, is that
// number of requests served, health checks and itself left out.
const AppServerEnv = "E2E_APP_ADDR"

// RunAppServer serves as the app server AppServerEnv describes until
// SIGTERM, and returns the exit code.
func RunAppServer() int {
	id, addr, logPath := os.Getenv("E2E_APP_ID"), os.Getenv(AppServerEnv), os.Getenv("E2E_APP_LOG")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, "app server:", err)
		return 1
	}
	var mu sync.Mutex
	var served atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") })
	mux.HandleFunc("GET /_e2e/served", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintf(w, "%d", served.Load()) })
	mux.HandleFunc("GET /static/{name}", func(w http.ResponseWriter, r *http.Request) {
		n, name := served.Add(1), r.PathValue("name")
		h := w.Header()
		h.Set("X-Backend", id)
		h.Set("Cache-Control", "public, max-age=300")
		h.Set("Surrogate-Key", "static page-"+name)
		fmt.Fprintf(w, "static %s, request %d of %s\n", name, n, id)
	})
	mux.HandleFunc("POST /publish/{name}", func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		_, _ = io.Copy(io.Discard, r.Body)
		name := r.PathValue("name")
		w.Header().Set("X-Backend", id)
		w.Header().Set("Cachebus-Expire", "http /static/"+name)
		fmt.Fprintf(w, "published %s\n", name)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		w.Header().Set("X-Backend", id)
		if r.Method == http.MethodPost {
			_, _ = io.Copy(io.Discard, r.Body)
			// Written before the answer: a request the app may have acted
			// on is in the file.
			mu.Lock()
			_, err := fmt.Fprintln(logf, r.Header.Get("X-Req"))
			mu.Unlock()
			if err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
		}
		fmt.Fprintf(w, "hello from %s\n", id)
	})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "app server:", err)
		return 1
	}
	fmt.Printf("app %s listening on %s\n", id, addr)
	srv := &http.Server{Handler: mux}
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
		<-sig
		_ = srv.Close()
	}()
	if err := srv.Serve(ln); err != nil && err != http.ErrServerClosed {
		fmt.Fprintln(os.Stderr, "app server:", err)
		return 1
	}
	return 0
}
