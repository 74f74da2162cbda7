// Package admin is the HTTP admin API every cachebus daemon serves, for
// curl and for programs in any language.
//
// Admin verbs publish through the guaranteed path, a JetStream publish
// acknowledged by the event log, and answer {"ok":true,"seq":N}:
//
//	POST /v1/expire/{ns}        an Expire payload, or a plain-text key list
//	POST /v1/seed/{ns}          a Seed payload
//	POST /v1/fallback           a Fallback payload, recorded in the state bucket
//	POST /v1/drain/{role}/{id}  a Drain payload (empty: on), recorded likewise
//
// GET /v1/status reports members, fallbacks, drains and the event log's
// position; the same Collect gathers it for `cachebus status`. A daemon
// adds its own /v1/ routes with Handle (a cache node's
// /v1/records/{ns}/{key}). /healthz, /readyz and /metrics need no
// credentials.
//
// Every /v1/ call must come from an address inside CACHEBUS_ADMIN_ALLOW
// (the connection's address, never a forwarded header), else 403, and carry
// "Authorization: Bearer <CACHEBUS_ADMIN_TOKEN>", else 401. Without a
// configured token the verbs (every method but GET and HEAD) are refused
// and only GET routes can be read.
// Errors are JSON {"error":"…"}; a rejected payload is a 400 that names the
// field, and nothing is published.
package admin
