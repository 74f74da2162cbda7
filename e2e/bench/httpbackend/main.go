// Command httpbackend is the app server behind every contender of
// e2e/bench/gateway.sh: lean on purpose, so the proxies are what is measured.
//
//	GET / and /app/*  a ~1 KiB dynamic page, Cache-Control: no-store, and a
//	                  session cookie SID=… when the request carries none
//	GET /static/*     ~1 KiB, Cache-Control: public, max-age=300,
//	                  Surrogate-Key: static
//	GET /healthz      200 ok
//	GET /counts       "app N\nstatic N\n": requests served per class, so the
//	                  script can tell how many reached the origin
//
// Every response carries X-Backend: <id>.
package main

import (
	"bytes"
	"flag"
	"log"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "listen address")
	id := flag.String("id", "b1", "backend id, echoed in the X-Backend header")
	flag.Parse()

	b := newBackend(*id)
	srv := &http.Server{
		Addr:              *addr,
		Handler:           b,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
	}
	log.Printf("httpbackend %s: http://%s", *id, *addr)
	log.Fatal(srv.ListenAndServe())
}

type backend struct {
	id       string
	xBackend []string
	static   []byte
	prefix   []byte // of the dynamic page, up to the dynamic part
	suffix   []byte
	sessions atomic.Uint64
	apps     atomic.Uint64
	statics  atomic.Uint64
	bufs     sync.Pool
}

// Header values shared by every response; net/http only reads them.
var (
	noStore     = []string{"no-store"}
	public      = []string{"public, max-age=300"}
	surrogate   = []string{"static"}
	textHTML    = []string{"text/html; charset=utf-8"}
	textCSS     = []string{"text/css"}
	textPlain   = []string{"text/plain; charset=utf-8"}
	filler      = strings.Repeat("lorem ipsum dolor sit amet, consectetur adipiscing elit. ", 16) // 912 bytes
	staticBody  = "/* static asset */\n" + strings.Repeat("body{margin:0;padding:0;color:#222;}\n", 27)
	pagePrefix  = "<!doctype html><html><head><title>app</title></head><body><p>"
	pageSuffix  = "</p><p>" + filler + "</p></body></html>\n"
	healthzBody = []byte("ok\n")
)

func newBackend(id string) *backend {
	b := &backend{
		id:       id,
		xBackend: []string{id},
		static:   []byte(staticBody),
		prefix:   []byte(pagePrefix + "backend " + id + ", request "),
		suffix:   []byte(pageSuffix),
	}
	b.bufs.New = func() any { return new(bytes.Buffer) }
	return b
}

func (b *backend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h["X-Backend"] = b.xBackend
	p := r.URL.Path
	switch {
	case p == "/" || strings.HasPrefix(p, "/app/"):
		b.page(w, r, h)
	case strings.HasPrefix(p, "/static/"):
		b.statics.Add(1)
		h["Cache-Control"] = public
		h["Surrogate-Key"] = surrogate
		h["Content-Type"] = textCSS
		h["Content-Length"] = []string{strconv.Itoa(len(b.static))}
		_, _ = w.Write(b.static)
	case p == "/healthz":
		h["Content-Type"] = textPlain
		_, _ = w.Write(healthzBody)
	case p == "/counts":
		h["Content-Type"] = textPlain
		h["Cache-Control"] = noStore
		_, _ = w.Write([]byte("app " + strconv.FormatUint(b.apps.Load(), 10) +
			"\nstatic " + strconv.FormatUint(b.statics.Load(), 10) + "\n"))
	default:
		http.NotFound(w, r)
	}
}

// page writes the dynamic page: a counter and the path make every answer
// different; a request without SID= gets a new session.
func (b *backend) page(w http.ResponseWriter, r *http.Request, h http.Header) {
	n := b.apps.Add(1)
	if !strings.Contains(r.Header.Get("Cookie"), "SID=") {
		s := b.sessions.Add(1)
		h["Set-Cookie"] = []string{"SID=" + b.id + "-" + strconv.FormatUint(s, 36) + "; Path=/; HttpOnly"}
	}
	buf := b.bufs.Get().(*bytes.Buffer)
	buf.Reset()
	buf.Write(b.prefix)
	buf.WriteString(strconv.FormatUint(n, 10))
	buf.WriteString(" for ")
	buf.WriteString(r.URL.Path) // bench paths only; not an HTML-escaping example
	buf.Write(b.suffix)
	h["Cache-Control"] = noStore
	h["Content-Type"] = textHTML
	h["Content-Length"] = []string{strconv.Itoa(buf.Len())}
	_, _ = w.Write(buf.Bytes())
	b.bufs.Put(buf)
}
