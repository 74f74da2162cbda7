// Package lbgateway is the sticky HTTP gateway in front of an app pool:
// signed opaque cookies, backends by heartbeat, drain that keeps sessions,
// redispatch on failure, and an optional response cache with cluster-wide
// expire and a serve-stale fallback mode.
package lbgateway
