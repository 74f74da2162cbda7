// Package demoapp is the demo app server that shows cachebus at work
// behind its gateway. Each part of the system has a page:
//
//   - /products/{id} is memoized with cachenode/memo: computed once (a
//     slow query stands for the database), then served from memory with
//     the time it was computed, until someone updates the product
//     (POST /products/{id}), which flushes it on every app server, or
//     until an operator expires it with `cachebus expire`.
//   - /news is cacheable by the gateway (Cache-Control public and a
//     Surrogate-Key), so a purge by URI or tag shows on every gateway.
//   - /login starts a session kept in the cache tier's records (namespace
//     "sessions"), so a session outlives the app server that started it:
//     drain that server and the session goes on elsewhere, counter intact.
//
// An App announces itself to the gateways by heartbeat (role app) with its
// live sessions, and drains on request: no new logins, done when its
// sessions end or at a deadline. `cachebus dev` runs three in its
// process; cmd/demoapp runs one as its own daemon.
//
// Files: config.go is the configuration; app.go the lifecycle (heartbeat,
// drain, shutdown); pages.go the HTTP handlers and their templates;
// sessions.go the sessions in the cache tier; db.go the stand-in
// database, a JetStream KV bucket shared by all app servers.
package demoapp
