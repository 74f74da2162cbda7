// Package lbgateway is the sticky HTTP gateway in front of an app pool:
// signed opaque cookies, backends by heartbeat, drain that keeps sessions,
// redispatch on failure, and an optional response cache with cluster-wide
// expire and a serve-stale fallback mode.
//
// A request's way through it, file by file:
//
//   - server.go reads it off the client connection (an HTTP/1.1 loop of
//     our own: one goroutine per connection, nothing per request).
//   - proxy.go answers it: from the cache (cache.go, cachecontrol.go) when
//     it may, else from the backend its sticky cookie (sticky.go) names,
//     else from one balance.go draws among the live, non-draining backends
//     of the pool (pool.go). A request that could not be sent, or an
//     idempotent one that got no answer, is retried on another backend.
//   - upstream.go carries it to the backend on a kept-alive connection,
//     written and read by the request's own goroutine; upgrade.go tunnels
//     a protocol switch (WebSocket) on a connection of its own.
//   - On the way back the sticky cookie is set when a session starts or
//     moves, the response may be kept in the cache, and a Cachebus-Expire
//     header is published to the whole cluster (expire.go).
//
// Around that: health.go checks backends actively (GET a path) and
// passively (failed requests eject a backend for a growing time);
// drain.go notices when a draining backend is drained and says so in the
// cluster state; fallback.go answers from the cache alone when the
// cluster says so or no backend is up; status.go is the status page and
// its JSON; gateway.go ties them to the bus: app heartbeats, the cluster
// state (drains, fallback) and the expires that purge the cache.
package lbgateway
