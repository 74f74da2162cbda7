package memo_test

import (
	"context"
	"net/http"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/cachenode/memo"
)

func renderUser(ctx context.Context, id string) ([]byte, error) {
	return []byte("<h1>" + id + "</h1>"), nil
}
func saveUser(r *http.Request) {}

// Example_handler is the README's example: a page memoized per user and
// flushed on every app server when the user is saved.
func Example_handler() {
	ctx := context.Background()
	conn, err := bus.Connect(ctx, bus.ConnConfig{URL: "nats://127.0.0.1:4222", Prefix: bus.DefaultPrefix})
	if err != nil {
		panic(err)
	}
	cache, _ := memo.New(ctx, conn, memo.Options{Namespace: "users", StaleGrace: time.Hour})

	http.HandleFunc("GET /users/{id}", func(w http.ResponseWriter, r *http.Request) {
		page, err := cache.Do(r.Context(), "user:"+r.PathValue("id"), time.Minute,
			func(ctx context.Context) ([]byte, error) { return renderUser(ctx, r.PathValue("id")) })
		if err != nil {
			http.Error(w, err.Error(), 502)
			return
		}
		w.Write(page)
	})
	http.HandleFunc("POST /users/{id}", func(w http.ResponseWriter, r *http.Request) {
		saveUser(r)
		cache.Flush(r.Context(), "user:"+r.PathValue("id")) // here at once, then on every peer
	})
}
