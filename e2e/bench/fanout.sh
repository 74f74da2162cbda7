#!/usr/bin/env bash
# Fan-out latency of cachebus beside Redis pub/sub, in one run:
#   1. cachebus bench fanout on an embedded NATS server (core vs bus path),
#   2. the same against an external nats-server process (started here, -js),
#   3. Redis pub/sub (redis-server started here) to the same subscribers at
#      the same rate with the same payload (e2e/bench/redisfanout).
# then a summary table of the three. It installs nothing: redis-server and
# nats-server must be on PATH (Debian: apt-get install redis-server
# nats-server). Everything listens on 127.0.0.1 and is stopped on exit.
#
#   e2e/bench/fanout.sh                      # 8 subscribers, 10,000 msg/s, 10s
#   SUBSCRIBERS=8 RATE=10000 DURATION=10s e2e/bench/fanout.sh
#   THROUGHPUT=1 e2e/bench/fanout.sh          # also the throughput mode on both servers
set -euo pipefail

SUBSCRIBERS=${SUBSCRIBERS:-8}
RATE=${RATE:-10000}
DURATION=${DURATION:-10s}
THROUGHPUT=${THROUGHPUT:-0}
STEP_TIMEOUT=${STEP_TIMEOUT:-300} # seconds, per step: the run is bounded

script=fanout.sh
# shellcheck source=e2e/bench/lib.sh
source "$(dirname "$0")/lib.sh"
need redis-server nats-server go timeout

echo "== building cachebus and redisfanout"
(cd "$root" && go build -o "$work/cachebus" ./cmd/cachebus && go build -o "$work/redisfanout" ./e2e/bench/redisfanout)

redis_port=$(free_port)
redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no \
	--dir "$work" --logfile "$work/redis.log" --daemonize no &
pids+=($!)
nats_port=$(free_port)
nats-server -a 127.0.0.1 -p "$nats_port" -js -sd "$work/nats" >"$work/nats.log" 2>&1 &
pids+=($!)
wait_port "$redis_port" redis-server
wait_port "$nats_port" nats-server
echo "redis-server $(redis-server --version | awk '{print $3}') on 127.0.0.1:$redis_port," \
	"nats-server $(nats-server --version | awk '{print $2}') on 127.0.0.1:$nats_port"
echo "machine: $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)"

args=(--subscribers "$SUBSCRIBERS" --rate "$RATE" --duration "$DURATION")

step embedded "$work/cachebus" bench fanout "${args[@]}"
step external "$work/cachebus" bench fanout "${args[@]}" --nats "nats://127.0.0.1:$nats_port"
step redis "$work/redisfanout" -addr "127.0.0.1:$redis_port" -subscribers "$SUBSCRIBERS" -rate "$RATE" -duration "$DURATION"
if [[ $THROUGHPUT == 1 ]]; then
	step throughput-embedded "$work/cachebus" bench fanout --throughput --subscribers "$SUBSCRIBERS" --duration "$DURATION"
	step throughput-external "$work/cachebus" bench fanout --throughput --subscribers "$SUBSCRIBERS" --duration "$DURATION" \
		--nats "nats://127.0.0.1:$nats_port"
fi

# row <file> <path>: the latency columns of one path's row.
row() {
	awk -v p="$2" '$1 == p && NF >= 11 { printf "%s\t%s\t%s\t%s\t%s\t%s\n", $4, $5, $8, $9, $10, $11; found = 1 }
		END { if (!found) print "-\t-\t-\t-\t-\t-" }' "$work/$1.out"
}
ratio() { awk -v k="$2" 'index($0, k) == 1 { print $NF }' "$work/$1.out"; }

echo
echo "== summary: $SUBSCRIBERS subscribers, $RATE msg/s, $DURATION per path, publish→applied in µs"
{
	printf "server\tpath\treceived\tlost\tp50\tp99\tp99.9\tmax\n"
	printf "embedded-in-process\tcore-NATS\t%s\n" "$(row embedded core)"
	printf "embedded-in-process\tcachebus-bus\t%s\n" "$(row embedded bus)"
	printf "external-nats-server\tcore-NATS\t%s\n" "$(row external core)"
	printf "external-nats-server\tcachebus-bus\t%s\n" "$(row external bus)"
	printf "external-redis-server\tRedis-pub/sub\t%s\n" "$(row redis redis)"
} | awk -F'\t' '{ printf "%-22s %-14s %9s %6s %9s %9s %9s %9s\n", $1, $2, $3, $4, $5, $6, $7, $8 }'
if [[ $THROUGHPUT == 1 ]]; then
	for s in embedded external; do
		echo "throughput ($s): $(awk -F': ' '/slowest/ { print $2 }' "$work/throughput-$s.out") keys/s at every subscriber"
	done
fi
echo
echo "embedded: p50 ratio bus/core: $(ratio embedded 'p50 ratio'), p99 ratio bus/core: $(ratio embedded 'p99 ratio')"
echo "external: p50 ratio bus/core: $(ratio external 'p50 ratio'), p99 ratio bus/core: $(ratio external 'p99 ratio')"
if ((${#failed[@]} > 0)); then
	echo "fanout.sh: failed: ${failed[*]}" >&2
	exit 1
fi
