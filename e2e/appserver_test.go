//go:build unix

package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
)

// appServerEnv, when set in the environment of the test binary, makes it
// an app server instead of running tests: E2E_APP_ID names it,
// E2E_APP_ADDR is where it listens, E2E_APP_LOG is the file each POST's
// X-Req header is appended to, so that a test can count how many times
// a request was served across processes, killed ones included.
const appServerEnv = "E2E_APP_ADDR"

// runAppServer serves until SIGTERM.
func runAppServer() int {
	id, addr, logPath := os.Getenv("E2E_APP_ID"), os.Getenv(appServerEnv), os.Getenv("E2E_APP_LOG")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, "app server:", err)
		return 1
	}
	var mu sync.Mutex
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") })
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
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
