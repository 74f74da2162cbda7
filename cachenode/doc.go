// Package cachenode is cachebus's cache tier: the bigcache-backed local
// store and the cache node server. Its subpackages: partition (where a key
// lives: its partition and the partition's owners over the baseline) and
// memo (the memoization client for Go apps).
package cachenode
