// Package cachenode is cachebus's cache tier: the bigcache-backed local
// store, partitioning and assignment over the baseline, and the cache node
// server. Its subpackage memo is the memoization client for Go apps.
package cachenode
