#!/bin/sh
# Expire cache entries everywhere with curl, through the HTTP admin API of
# any cachebus daemon (cachebus dev prints its URL and token):
#
#   export CACHEBUS_ADMIN_URL=http://127.0.0.1:7380 CACHEBUS_ADMIN_TOKEN=...
#   sh expire-curl.sh users user:42 user:43
#   sh expire-curl.sh http /products/42        # a page cached by the gateways
#
# The body is the plain-text form of the Expire payload (docs/PROTOCOL.md):
# the keys, one a line. The daemon checks it, publishes it through the
# event log and answers {"ok":true,"seq":N} once the log has stored it, so
# every cache node, memo client and gateway drops the keys. A refused call
# prints the daemon's answer, {"error":"...","field":"..."}, and exits
# non-zero: 400 a rejected payload (nothing published), 401 a missing or
# wrong token, 403 a source outside CACHEBUS_ADMIN_ALLOW, 503 the log did
# not acknowledge in time (send it again).
#
# For prefixes, tags or the whole namespace, post the JSON payload instead:
#   curl --fail-with-body -H "Authorization: Bearer $CACHEBUS_ADMIN_TOKEN" \
#        --data-binary '{"v":1,"prefixes":["cart:42:"]}' "$CACHEBUS_ADMIN_URL/v1/expire/users"
set -eu

if [ $# -lt 2 ]; then
  echo "usage: $0 <namespace> <key>..." >&2
  exit 2
fi
ns=$1
shift
case $1 in
  '{'*) echo "$0: the first key starts with '{', which reads as JSON: post the JSON payload instead" >&2; exit 2 ;;
esac
: "${CACHEBUS_ADMIN_URL:=http://127.0.0.1:7380}"
: "${CACHEBUS_ADMIN_TOKEN:?set CACHEBUS_ADMIN_TOKEN (cachebus dev prints it)}"

# --fail-with-body needs curl 7.76 or later (Debian 12 has 7.88).
# The token goes in a header read from stdin, not in curl's arguments,
# where ps would show it to every user of the machine.
printf 'Authorization: Bearer %s\n' "$CACHEBUS_ADMIN_TOKEN" |
  curl --silent --show-error --fail-with-body -H @- \
       --data-binary "$(printf '%s\n' "$@")" \
       "$CACHEBUS_ADMIN_URL/v1/expire/$ns"
