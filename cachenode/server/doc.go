// Package server is the cache node: it holds the records of the
// partitions the baseline assigns it, answers record requests over NATS
// (its own subject, and the any-node subject it shares with its peers),
// forwards what another node serves, replicates every write to the
// partition's backups before it answers, and hands partitions over when
// the assignment or the live nodes change.
//
// Which node serves a partition follows from the assignment and the
// heartbeats alone (see package topology): the first owner that is live and
// holds the partition's data. A node that starts, or gains a partition,
// holds nothing of it until it has copied it from the node serving it;
// writes made meanwhile reach it by replication. So a node that was down
// comes back with the writes it missed, and a baseline change moves a
// partition only once its new owner has the data.
package server
