#!/usr/bin/env bash
# Record get and put of the cache tier beside Redis, in one run:
#   1. a `cachebus nats` process and NODES `cachebus node` processes (one
#      backup per partition), measured by `cachebus bench records` from a
#      client process: CLIENTS requests in flight, SIZE-byte values;
#   2. redis-server (no persistence) measured by redis-benchmark with the
#      same number of connections, value size and key space, GET and SET;
#   3. the ceiling of NATS request/reply on this machine: NODES echo
#      responder processes answering CLIENTS requests in flight, framed as
#      well as they can be, with nothing behind them (cachebus bench echo);
# then a summary with the ratios the cache node issue sets targets for
# (get ≥ 0.7 × Redis, put with one backup ≥ 0.5 × Redis), and how near the
# get comes to the NATS ceiling. GOMAXPROCS, when set, applies to every
# cachebus process (nats, nodes, responders, client). It installs
# nothing: redis-server and redis-benchmark must be on PATH (Debian:
# apt-get install redis-server). Everything listens on 127.0.0.1 and is
# stopped on exit.
#
#   e2e/bench/records.sh                        # 16 clients, 10s per phase
#   CLIENTS=16 DURATION=10s NODES=2 e2e/bench/records.sh
set -euo pipefail

CLIENTS=${CLIENTS:-16}
DURATION=${DURATION:-10s}
NODES=${NODES:-2}
SIZE=${SIZE:-100}
KEYS=${KEYS:-100000}
STEP_TIMEOUT=${STEP_TIMEOUT:-300} # seconds, per step: the run is bounded

script=records.sh
# shellcheck source=e2e/bench/lib.sh
source "$(dirname "$0")/lib.sh"
need redis-server redis-benchmark go timeout curl

# wait_ready waits until http://127.0.0.1:$1/readyz answers 200.
wait_ready() {
	for _ in $(seq 1 300); do
		if curl -fsS -o /dev/null "http://127.0.0.1:$1/readyz" 2>/dev/null; then
			return 0
		fi
		sleep 0.1
	done
	echo "records.sh: $2 not ready after 30s:" >&2
	curl -sS "http://127.0.0.1:$1/readyz" >&2 || true
	return 1
}

echo "== building cachebus"
(cd "$root" && go build -o "$work/cachebus" ./cmd/cachebus)

nats_port=$(free_port)
CACHEBUS_NATS_PORT=$nats_port CACHEBUS_NATS_STORE_DIR="$work/nats" CACHEBUS_HTTP_ADDR= \
	"$work/cachebus" nats >"$work/nats.log" 2>&1 &
pids+=($!)
wait_port "$nats_port" "cachebus nats"
url="nats://127.0.0.1:$nats_port"

baseline=""
for i in $(seq 1 "$NODES"); do
	baseline+="${baseline:+,}node$i"
done
for i in $(seq 1 "$NODES"); do
	port=$(free_port)
	CACHEBUS_NATS_URL=$url CACHEBUS_NODE_ID=node$i CACHEBUS_BASELINE=$baseline CACHEBUS_BACKUPS=1 \
		CACHEBUS_HTTP_ADDR=127.0.0.1:$port CACHEBUS_FAILURE_TIMEOUT=2s \
		"$work/cachebus" node >"$work/node$i.log" 2>&1 &
	pids+=($!)
	wait_ready "$port" "node$i"
done

redis_port=$(free_port)
redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no \
	--dir "$work" --logfile "$work/redis.log" --daemonize no &
pids+=($!)
wait_port "$redis_port" redis-server
echo "$NODES cache nodes (1 backup) on cachebus nats at 127.0.0.1:$nats_port;" \
	"redis-server $(redis-server --version | awk '{print $3}') on 127.0.0.1:$redis_port"
echo "machine: $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)"


step cachebus "$work/cachebus" bench records --nats "$url" --clients "$CLIENTS" --duration "$DURATION" \
	--size "$SIZE" --keys "$KEYS"
echoes=()
for i in $(seq 1 "$NODES"); do
	"$work/cachebus" bench echo --respond "$i" --nats "$url" >"$work/echo$i.log" 2>&1 &
	echoes+=($!)
	pids+=($!)
done
for i in $(seq 1 "$NODES"); do
	for _ in $(seq 1 100); do
		grep -q "echo responder" "$work/echo$i.log" && break
		sleep 0.1
	done
done
step echo "$work/cachebus" bench echo --nats "$url" --nodes "$NODES" --clients "$CLIENTS" --duration "$DURATION" \
	--size "$SIZE"
kill "${echoes[@]}" 2>/dev/null || true
# redis-benchmark counts requests, not time: give it as many as our rate
# could do in DURATION at Redis's speed, bounded so the step stays short.
secs=${DURATION%s}
requests=$((secs * 80000))
step redis redis-benchmark -h 127.0.0.1 -p "$redis_port" -c "$CLIENTS" -n "$requests" -d "$SIZE" \
	-r "$KEYS" -t set,get --csv

ours() { awk -v op="$1" '$1 == "cachebus" && $2 == op { print $3 }' "$work/cachebus.out"; }
theirs() { awk -F'","' -v op="$1" '{ gsub(/"/, "", $1); gsub(/"/, "", $2) } $1 == op { printf "%.0f\n", $2 }' "$work/redis.out"; }
p99() { awk -v op="$1" '$1 == "cachebus" && $2 == op { print $6 }' "$work/cachebus.out"; }

echo
echo "== summary: $CLIENTS clients, $SIZE-byte values, $KEYS keys"
printf "%-5s %12s %12s %8s %10s\n" op "cachebus/s" "redis/s" ratio "target"
for op in get put; do
	r=GET
	target=0.7
	if [[ $op == put ]]; then
		r=SET
		target=0.5
	fi
	a=$(ours "$op")
	b=$(theirs "$r")
	printf "%-5s %12s %12s %8s %10s\n" "$op" "${a:--}" "${b:--}" \
		"$(awk -v a="${a:-0}" -v b="${b:-0}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')" "≥ $target"
done
echo "cachebus p99: get $(p99 get) µs, put $(p99 put) µs"
ceiling=$(awk '$1 == "nats" && $2 == "echo" { print $3 }' "$work/echo.out")
echo "NATS request/reply ceiling (echo, nothing behind it): ${ceiling:--} req/s;" \
	"cachebus get at $(awk -v a="$(ours get)" -v b="${ceiling:-0}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }') of it," \
	"Redis GET at $(awk -v a="$(theirs GET)" -v b="${ceiling:-0}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }') of it"
if ((${#failed[@]} > 0)); then
	echo "records.sh: failed: ${failed[*]}" >&2
	exit 1
fi
