#!/bin/sh
# Expire cache entries everywhere with the cachebus binary itself, from a
# shell script or a cron job:
#
#   export CACHEBUS_NATS_URL=nats://127.0.0.1:4222
#   sh expire-cli.sh users user:42 user:43
#   sh expire-cli.sh users --prefix cart:42: --tag profile
#
# `cachebus expire` publishes through JetStream and returns once the event
# log has stored the expire, printing its sequence (seq=N); it exits 1
# when it was not stored and 2 on bad arguments. It reads the CACHEBUS_*
# variables (`cachebus expire -h` lists them): CACHEBUS_NATS_URL,
# CACHEBUS_PREFIX, CACHEBUS_NATS_CREDS...
#
# With the NATS CLI instead (not acknowledged: delivered at once to all
# connected, stored in the log while the server keeps up):
#   nats pub cachebus.expire.users 'user:42'
#   nats pub cachebus.expire.users '{"v":1,"prefixes":["cart:42:"]}'
# and, acknowledged by the log (nats req waits for the stream's answer):
#   nats req cachebus.expire.users 'user:42'     # {"stream":"CACHEBUS_EVENTS","seq":N}
set -eu

if [ $# -lt 2 ]; then
  echo "usage: $0 <namespace> <key>... [--prefix P] [--tag T] [--all]" >&2
  exit 2
fi
exec cachebus expire "$@"
