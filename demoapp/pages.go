package demoapp

import (
	"context"
	"errors"
	"html/template"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/cachenode/memo"
)

// Handler is the app's HTTP interface.
func (a *App) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /{$}", a.home)
	mux.HandleFunc("GET /products/{id}", a.showProduct)
	mux.HandleFunc("POST /products/{id}", a.updateProduct)
	mux.HandleFunc("GET /news", a.news)
	mux.HandleFunc("POST /login", a.login)
	mux.HandleFunc("POST /logout", a.logout)
	mux.HandleFunc("GET /counter", a.counter)
	mux.HandleFunc("POST /counter", a.counter)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Demo-App", a.cfg.ID)
		mux.ServeHTTP(w, r)
	})
}

// productID is what a product id may be: it becomes a memo key and a KV
// key.
var productID = regexp.MustCompile(`^[A-Za-z0-9_-]{1,32}$`)

// productPage is a product page as memoized: its HTML and when and where
// it was computed.
type productPage struct {
	HTML       string    `json:"html"`
	ComputedAt time.Time `json:"computed_at"`
	ComputedBy string    `json:"computed_by"`
	Took       string    `json:"took"`
}

func productKey(id string) string { return "product:" + id }

func (a *App) showProduct(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !productID.MatchString(id) {
		http.Error(w, "product id: want [A-Za-z0-9_-]{1,32}", http.StatusBadRequest)
		return
	}
	page, err := memo.Value(r.Context(), a.pages, productKey(id), a.cfg.PageTTL, func(ctx context.Context) (productPage, error) {
		return a.computeProduct(ctx, id)
	})
	if err != nil {
		a.fail(w, "product "+id, err)
		return
	}
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	h.Set("Demo-Computed-At", page.ComputedAt.Format(time.RFC3339Nano))
	a.render(w, "product", map[string]any{"Page": template.HTML(page.HTML), "Memo": page, "ID": id,
		"Key": productKey(id), "NS": a.cfg.PageNS, "Fallback": a.pages.Fallback()})
}

// computeProduct is the slow path a memoized page saves: a query that
// takes ComputeDelay, then rendering.
func (a *App) computeProduct(ctx context.Context, id string) (productPage, error) {
	start := time.Now()
	p, err := a.db.product(ctx, id)
	if err != nil {
		return productPage{}, err
	}
	select {
	case <-time.After(a.cfg.ComputeDelay):
	case <-ctx.Done():
		return productPage{}, ctx.Err()
	}
	var b strings.Builder
	if err := pages.ExecuteTemplate(&b, "product-body", p); err != nil {
		return productPage{}, err
	}
	return productPage{HTML: b.String(), ComputedAt: time.Now().UTC(), ComputedBy: a.cfg.ID,
		Took: time.Since(start).Round(time.Millisecond).String()}, nil
}

func (a *App) updateProduct(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	name := strings.TrimSpace(r.PostFormValue("name"))
	if !productID.MatchString(id) || name == "" || len(name) > 100 {
		http.Error(w, "want a product id [A-Za-z0-9_-]{1,32} and a form field name of 1 to 100 characters", http.StatusBadRequest)
		return
	}
	p := Product{ID: id, Name: name, UpdatedAt: time.Now().UTC(), UpdatedBy: a.cfg.ID}
	if err := a.db.update(r.Context(), p); err != nil {
		a.fail(w, "update", err)
		return
	}
	// Here at once, then on every app server through the bus.
	if err := a.pages.Flush(r.Context(), productKey(id)); err != nil {
		a.fail(w, "flush", err)
		return
	}
	a.log.Info("product updated and flushed", "product", id)
	http.Redirect(w, r, "/products/"+id, http.StatusSeeOther)
}

func (a *App) news(w http.ResponseWriter, _ *http.Request) {
	h := w.Header()
	h.Set("Cache-Control", "public, max-age=3600")
	h.Set("Surrogate-Key", "news")
	now := time.Now().UTC()
	h.Set("Demo-Rendered-At", now.Format(time.RFC3339Nano))
	a.render(w, "news", map[string]any{"At": now})
}

// userName is what a login name may be.
var userName = regexp.MustCompile(`^[\pL\pN _.@-]{1,64}$`)

func (a *App) login(w http.ResponseWriter, r *http.Request) {
	user := strings.TrimSpace(r.PostFormValue("user"))
	if !userName.MatchString(user) {
		http.Error(w, "user: want 1 to 64 letters, digits, spaces or _.@-", http.StatusBadRequest)
		return
	}
	if a.draining() {
		w.Header().Set("Retry-After", "1")
		http.Error(w, a.cfg.ID+" is draining and takes no new sessions: log in through the gateway", http.StatusServiceUnavailable)
		return
	}
	id, _, err := a.sessions.start(r.Context(), user, a.cfg.ID)
	if err != nil {
		a.fail(w, "login", err)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: id, Path: "/", HttpOnly: true,
		SameSite: http.SameSiteLaxMode, MaxAge: int(a.cfg.SessionTTL.Seconds())})
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

func (a *App) logout(w http.ResponseWriter, r *http.Request) {
	if id, _, err := a.sessions.get(r.Context(), r); err == nil {
		if err := a.sessions.end(r.Context(), id); err != nil {
			a.fail(w, "logout", err)
			return
		}
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: "", Path: "/", HttpOnly: true, MaxAge: -1})
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

// counter shows the session's counter; a POST counts one more.
func (a *App) counter(w http.ResponseWriter, r *http.Request) {
	id, sess, err := a.sessions.get(r.Context(), r)
	if errors.Is(err, errNoSession) {
		http.Error(w, err.Error(), http.StatusUnauthorized)
		return
	}
	if err != nil {
		a.fail(w, "session", err)
		return
	}
	if r.Method == http.MethodPost {
		sess.Counter++
		if err := a.sessions.save(r.Context(), id, sess); err != nil {
			a.fail(w, "session", err)
			return
		}
	}
	if r.FormValue("back") != "" {
		http.Redirect(w, r, "/", http.StatusSeeOther)
		return
	}
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Demo-User", sess.User)
	h.Set("Demo-Counter", strconv.Itoa(sess.Counter))
	_, _ = w.Write([]byte("user=" + sess.User + " counter=" + strconv.Itoa(sess.Counter) + " app=" + a.cfg.ID + "\n"))
}

func (a *App) home(w http.ResponseWriter, r *http.Request) {
	data := map[string]any{"Live": a.sessions.live(), "Draining": a.draining(), "Started": a.started,
		"NS": a.cfg.PageNS, "Products": []string{"1", "2", "3", "4", "5"}, "Prefix": a.conn.Subjects.Prefix, "DefaultPrefix": bus.DefaultPrefix}
	if _, sess, err := a.sessions.get(r.Context(), r); err == nil {
		data["Session"] = sess
	} else if !errors.Is(err, errNoSession) {
		data["SessionErr"] = err.Error()
	}
	w.Header().Set("Cache-Control", "no-store")
	a.render(w, "home", data)
}

// render writes template name with data and the app's id.
func (a *App) render(w http.ResponseWriter, name string, data map[string]any) {
	data["App"] = a.cfg.ID
	data["Now"] = time.Now().UTC()
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if err := pages.ExecuteTemplate(w, name, data); err != nil {
		a.log.Warn("page not rendered", "page", name, "err", err)
	}
}

// fail answers a failure of the cache tier, the bus or the database:
// 503, so that the gateway may retry or serve stale, and a line in the log.
func (a *App) fail(w http.ResponseWriter, what string, err error) {
	a.log.Warn("request failed", "what", what, "err", err)
	w.Header().Set("Retry-After", "1")
	http.Error(w, what+": "+err.Error(), http.StatusServiceUnavailable)
}

var pages = template.Must(template.New("").Funcs(template.FuncMap{
	"clock": func(t time.Time) string { return t.Format("15:04:05.000") },
}).Parse(`
{{define "top"}}<!doctype html>
<html><head><meta charset="utf-8"><title>cachebus demo · {{.App}}</title>
<style>body{font:15px/1.5 system-ui,sans-serif;max-width:46rem;margin:2rem auto;padding:0 1rem}
code,pre{background:#f3f3f3;padding:0 .2rem}pre{padding:.5rem;overflow-x:auto}
.app{float:right;background:#246;color:#fff;padding:.1rem .5rem;border-radius:.3rem}
.box{border:1px solid #ccc;border-radius:.4rem;padding:.5rem 1rem;margin:1rem 0}</style></head>
<body><span class="app">served by {{.App}} at {{clock .Now}}</span>
<p><a href="/">home</a> · <a href="/products/1">product 1</a> · <a href="/news">news</a> · <a href="/_cachebus/">gateway status</a></p>{{end}}
{{define "bottom"}}</body></html>{{end}}

{{define "home"}}{{template "top" .}}
<h1>cachebus demo</h1>
<p>This page came from app server <b>{{.App}}</b>{{if .Draining}}, which is <b>draining</b>: it keeps its sessions and takes no new ones{{end}}.
Live sessions here: {{.Live}}.</p>
<div class="box"><h2>Your session</h2>
{{with .Session}}<p>Logged in as <b>{{.User}}</b> (session started on {{.By}}; it lives in the cache tier, not on an app server).
Counter: <b>{{.Counter}}</b></p>
<form method="post" action="/counter?back=1"><button>count one more</button></form>
<form method="post" action="/logout"><button>log out</button></form>
{{else}}{{with $.SessionErr}}<p>The session could not be read: {{.}}</p>{{end}}
<form method="post" action="/login"><input name="user" placeholder="your name" required> <button>log in</button></form>
<p>The gateway pins your session to this app server with a signed cookie.</p>{{end}}</div>
<div class="box"><h2>Memoized pages</h2>
<p>Each product page takes a slow query to compute; then every app server serves it from memory until it is updated or expired.</p>
<ul>{{range $i := .Products}}<li><a href="/products/{{$i}}">product {{$i}}</a></li>{{end}}</ul></div>
<div class="box"><h2>Try</h2>
<pre>{{if ne .Prefix .DefaultPrefix}}export CACHEBUS_PREFIX={{.Prefix}}
{{end}}cachebus expire {{.NS}} product:1      # recompute product 1 on every app server
cachebus expire http --tag news        # purge /news from every gateway
cachebus fallback on                   # serve what the caches hold, stale or not
cachebus fallback off
cachebus drain app {{.App}} --wait        # this app: no new sessions, yours stays</pre></div>
{{template "bottom" .}}{{end}}

{{define "product-body"}}<h1>{{.Name}}</h1>
{{if .UpdatedBy}}<p>Updated on {{.UpdatedBy}} at {{clock .UpdatedAt}}.</p>{{end}}{{end}}

{{define "product"}}{{template "top" .}}
{{.Page}}
<p>Computed at <b>{{clock .Memo.ComputedAt}}</b> by {{.Memo.ComputedBy}} in {{.Memo.Took}}; served from memory until it is updated or expired
(key <code>{{.Key}}</code> in namespace <code>{{.NS}}</code>).{{if .Fallback}} Fallback is on: a stale copy may be served.{{end}}</p>
<form method="post" action="/products/{{.ID}}"><input name="name" placeholder="new name" required> <button>update and flush everywhere</button></form>
{{template "bottom" .}}{{end}}

{{define "news"}}{{template "top" .}}
<h1>News</h1>
<p>Rendered at <b>{{clock .At}}</b>. The gateway caches this page for an hour (Cache-Control public, Surrogate-Key news):
reload and the time stays, until <code>cachebus expire http --tag news</code> or <code>cachebus expire http /news</code> purges it on every gateway.</p>
{{template "bottom" .}}{{end}}
`))
