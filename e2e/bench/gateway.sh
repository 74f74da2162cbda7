#!/usr/bin/env bash
# The sticky gateway beside HAProxy and Varnish, in one run. Two
# e2e/bench/httpbackend app servers (b1, b2) sit behind every contender:
#   direct         wrk straight at b1 (the ceiling: no proxy at all)
#   haproxy        Debian's haproxy, http mode, balance roundrobin,
#                  cookie SRV insert indirect nocache, keep-alive (gateway/haproxy.cfg)
#   gateway        cachebus gateway, CACHEBUS_GATEWAY_COOKIE_MODE=insert, no cache
#   varnish        Debian's varnishd caching /static/ as the backend's
#                  Cache-Control says (gateway/default.vcl)
#   gateway-cache  cachebus gateway with CACHEBUS_GATEWAY_CACHE=/static/
# Three loads, each `wrk -t$THREADS -c$CONNS -d$DUR --latency`:
#   new      GET /app/x with no cookie: every request is a new session, so
#            each proxy balances it and inserts its sticky cookie (and the
#            backend sets SID). wrk keeps no cookies; a Lua script that did
#            would turn this into the sticky load after one request per
#            connection, so plain wrk is the new-session load on purpose.
#   sticky   GET /app/x with the cookies one curl got from that proxy sent on
#            every request (-H "Cookie: SID=…; <sticky>=…"): the steady-state
#            path, a valid sticky cookie decoded and honoured every time.
#            One cookie for all connections pins this load to one backend,
#            for every contender alike (as direct, which hits b1 only).
#   cache    GET /static/a after one warming request: cache hits only.
# The contenders alternate inside each of ROUNDS rounds (new: direct, haproxy,
# gateway; sticky: the same; cache: varnish, gateway-cache), so a drift of
# the machine hits them alike; the summary takes the median of the rounds and
# checks the targets: gateway ≥ 0.8 × HAProxy's req/s with p99 ≤ 1.5 ×
# HAProxy's (new and sticky), gateway-cache ≥ 1.0 × Varnish's req/s.
#
# Missing haproxy, varnishd or wrk are installed with apt-get (update
# first) when run as root or with sudo; a contender whose install or start
# fails is skipped with a message. Varnish runs with -j none (no privilege
# separation): as root its default jail drops to the varnish user, which
# cannot read the private work directory. Everything listens on 127.0.0.1
# and is stopped on exit. Load generator, proxies and backends share the
# machine's CPUs: compare ratios, not absolute numbers.
#
#   e2e/bench/gateway.sh                       # 3 rounds of 10s: about 5 minutes
#   DUR=3s ROUNDS=1 e2e/bench/gateway.sh       # a quick look
#   THREADS=2 CONNS=32 DUR=10s ROUNDS=3 HAPROXY_THREADS=2 WARMUP=2s e2e/bench/gateway.sh
set -euo pipefail

DUR=${DUR:-10s}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-32}
THREADS=${THREADS:-2}
WARMUP=${WARMUP:-2s}                       # one unmeasured wrk per contender and load first; 0 skips
HAPROXY_THREADS=${HAPROXY_THREADS:-$(nproc)} # nbthread
STEP_TIMEOUT=${STEP_TIMEOUT:-120}          # seconds, per wrk run: the run is bounded

script=gateway.sh
# shellcheck source=e2e/bench/lib.sh
source "$(dirname "$0")/lib.sh"
need go timeout curl sed awk sort
conf=$root/e2e/bench/gateway

has_haproxy=1 has_varnish=1 has_gateway=1
apt_ensure wrk wrk || exit 1
apt_ensure haproxy haproxy || {
	has_haproxy=0
	echo "$script: skipping haproxy" >&2
}
apt_ensure varnishd varnish || {
	has_varnish=0
	echo "$script: skipping varnish" >&2
}

echo "== building cachebus and httpbackend"
(cd "$root" && go build -o "$work/cachebus" ./cmd/cachebus && go build -o "$work/httpbackend" ./e2e/bench/httpbackend)
help=$("$work/cachebus" gateway -h 2>&1 || true)
if [[ $help != *CACHEBUS_GATEWAY_ADDR* ]]; then
	has_gateway=0
	echo "$script: this cachebus has no gateway command yet: skipping gateway and gateway-cache" >&2
fi

# proxy_ok <base-url>: wait until a request through it reaches a backend.
proxy_ok() {
	for _ in $(seq 1 150); do
		if curl -fsS -o /dev/null -H 'Cookie: SID=probe' "$1/app/probe" 2>/dev/null; then
			return 0
		fi
		sleep 0.2
	done
	echo "$script: $1/app/probe did not answer 200 within 30s" >&2
	return 1
}

# alive <pid>: whether a process we started still runs.
alive() { kill -0 "$1" 2>/dev/null; }

declare -A url=()
b1_port=$(free_port)
"$work/httpbackend" -addr "127.0.0.1:$b1_port" -id b1 >"$work/b1.log" 2>&1 &
pids+=($!)
b2_port=$(free_port)
"$work/httpbackend" -addr "127.0.0.1:$b2_port" -id b2 >"$work/b2.log" 2>&1 &
pids+=($!)
wait_port "$b1_port" "httpbackend b1"
wait_port "$b2_port" "httpbackend b2"
url[direct]=http://127.0.0.1:$b1_port
echo "httpbackend b1 on 127.0.0.1:$b1_port, b2 on 127.0.0.1:$b2_port"

if ((has_haproxy)); then
	port=$(free_port)
	render "$conf/haproxy.cfg" "$work/haproxy.cfg" PORT="$port" B1="$b1_port" B2="$b2_port" THREADS="$HAPROXY_THREADS"
	if haproxy -c -q -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1; then
		haproxy -db -f "$work/haproxy.cfg" >>"$work/haproxy.log" 2>&1 &
		pids+=($!)
		if wait_port "$port" haproxy && proxy_ok "http://127.0.0.1:$port"; then
			url[haproxy]=http://127.0.0.1:$port
			echo "$(haproxy -v | head -n 1 | awk '{print $1, $2, $3}') on 127.0.0.1:$port, nbthread $HAPROXY_THREADS"
		fi
	fi
	if [[ -z ${url[haproxy]:-} ]]; then
		tail -n 20 "$work/haproxy.log" >&2
		echo "$script: haproxy did not start: skipping it" >&2
	fi
fi

if ((has_varnish)); then
	port=$(free_port)
	render "$conf/default.vcl" "$work/default.vcl" B1="$b1_port" B2="$b2_port"
	varnishd -F -j none -a "127.0.0.1:$port" -T none -f "$work/default.vcl" -s malloc,64m \
		-n "$work/varnish" >"$work/varnish.log" 2>&1 &
	vpid=$!
	pids+=("$vpid")
	if wait_port "$port" varnishd && alive "$vpid" && proxy_ok "http://127.0.0.1:$port"; then
		url[varnish]=http://127.0.0.1:$port
		echo "$(varnishd -V 2>&1 | grep -o 'varnish-[0-9.]*' | head -n 1) on 127.0.0.1:$port (-j none, malloc 64m)"
	else
		tail -n 20 "$work/varnish.log" >&2
		echo "$script: varnishd did not start: skipping it" >&2
	fi
fi

# start_gateway <name> <cache prefixes>: a cachebus gateway over b1 and b2.
start_gateway() {
	local name=$1 port admin pid
	port=$(free_port)
	admin=$(free_port)
	CACHEBUS_NATS_URL=$nats_url CACHEBUS_GATEWAY_ID=$name CACHEBUS_GATEWAY_ADDR=127.0.0.1:$port \
		CACHEBUS_GATEWAY_BACKENDS=b1=http://127.0.0.1:$b1_port,b2=http://127.0.0.1:$b2_port \
		CACHEBUS_GATEWAY_SECRET=gateway-bench-secret-0123456789 CACHEBUS_GATEWAY_COOKIE_MODE=insert \
		CACHEBUS_GATEWAY_CACHE=$2 CACHEBUS_GATEWAY_HEALTH_PATH=/healthz CACHEBUS_HTTP_ADDR=127.0.0.1:$admin \
		"$work/cachebus" gateway >"$work/$name.log" 2>&1 &
	pid=$!
	pids+=("$pid")
	for _ in $(seq 1 300); do
		grep -q "^gateway $name: http://" "$work/$name.log" && break
		alive "$pid" || break
		sleep 0.1
	done
	if grep -q "^gateway $name: http://" "$work/$name.log" && proxy_ok "http://127.0.0.1:$port"; then
		url[$name]=http://127.0.0.1:$port
		echo "cachebus gateway $name on 127.0.0.1:$port${2:+, caching $2} (admin 127.0.0.1:$admin)"
		return 0
	fi
	tail -n 20 "$work/$name.log" >&2
	echo "$script: cachebus gateway $name did not start: skipping it" >&2
}

if ((has_gateway)); then
	nats_port=$(free_port)
	CACHEBUS_NATS_PORT=$nats_port CACHEBUS_NATS_STORE_DIR="$work/nats" CACHEBUS_HTTP_ADDR='' \
		"$work/cachebus" nats >"$work/nats.log" 2>&1 &
	pids+=($!)
	wait_port "$nats_port" "cachebus nats"
	nats_url=nats://127.0.0.1:$nats_port
	start_gateway gateway ""
	start_gateway gateway-cache /static/
fi
machine_info

# cookies_of <url>: the cookies one request without any gets set, as a
# Cookie header value.
cookies_of() {
	curl -sS -o /dev/null -D - "$1" | tr -d '\r' |
		awk 'tolower($1) == "set-cookie:" { sub(/^[^:]*: */, ""); sub(/;.*/, ""); printf "%s%s", sep, $0; sep = "; " }'
}

# backends_of <url> <n> [cookie]: the X-Backend of n requests, in order.
backends_of() {
	local out=() hdr=()
	if [[ -n ${3:-} ]]; then hdr=(-H "Cookie: $3"); fi
	for _ in $(seq 1 "$2"); do
		out+=("$(curl -sS -o /dev/null -D - "${hdr[@]}" "$1" | tr -d '\r' |
			awk 'tolower($1) == "x-backend:" { print $2 }')")
	done
	echo "${out[*]}"
}

# The sticky cookie of each proxy, and a check that it sticks and that
# new sessions are spread.
declare -A cookie=()
echo
echo "== sessions"
for c in direct haproxy gateway; do
	[[ -n ${url[$c]:-} ]] || continue
	cookie[$c]=$(cookies_of "${url[$c]}/app/x")
	seen=$(backends_of "${url[$c]}/app/x" 4 "${cookie[$c]}")
	spread=$(backends_of "${url[$c]}/app/x" 4)
	printf "%-8s sticky: %-12s new: %-12s cookie '%s'\n" "$c" "$seen" "$spread" "${cookie[$c]}"
	if [[ $(tr ' ' '\n' <<<"$seen" | sort -u | wc -l) != 1 ]]; then
		echo "$script: $c: the sticky cookie did not stick" >&2
		failed+=("$c-sticky")
	fi
done

# static_fetches: /static/ requests both backends have served so far.
static_fetches() {
	local total=0 n p
	for p in "$b1_port" "$b2_port"; do
		n=$(curl -sS "http://127.0.0.1:$p/counts" | awk '$1 == "static" { print $2 }')
		total=$((total + ${n:-0}))
	done
	echo "$total"
}
for c in varnish gateway-cache; do
	[[ -n ${url[$c]:-} ]] || continue
	before=$(static_fetches)
	curl -fsS -o /dev/null "${url[$c]}/static/a" || true
	curl -sS -o /dev/null -D "$work/$c.warm" "${url[$c]}/static/a" || true
	printf "%-13s warmed: %s origin fetch(es); second answer: %s\n" "$c" "$(($(static_fetches) - before))" \
		"$(tr -d '\r' <"$work/$c.warm" | awk 'tolower($1) ~ /^(age|x-varnish|x-cache|cachebus-cache):$/ { printf "%s ", $0 }')"
done

mkdir -p "$work/res"
# run <load> <contender> <round|warmup>: one wrk, one line.
run() {
	local load=$1 c=$2 r=$3 path=/app/x hdr=() out dur=$DUR rc=0 before=0 rps p50 p99 errs extra=""
	[[ -n ${url[$c]:-} ]] || return 0
	case $load in
	sticky) hdr=(-H "Cookie: ${cookie[$c]}") ;;
	cache) path=/static/a ;;
	esac
	if [[ $r == warmup ]]; then
		dur=$WARMUP
		out=$work/res/warmup.out
	else
		out=$work/res/$load.$c.$r.out
	fi
	[[ $load == cache ]] && before=$(static_fetches)
	timeout --kill-after=5 "$STEP_TIMEOUT" wrk -t"$THREADS" -c"$CONNS" -d"$dur" --latency "${hdr[@]}" \
		"${url[$c]}$path" >"$out" 2>&1 || rc=$?
	[[ $r == warmup ]] && return 0
	if ((rc != 0)); then
		tail -n 5 "$out" >&2
		echo "$script: wrk $load $c round $r failed (exit $rc)" >&2
		failed+=("$load-$c-$r")
		return 0
	fi
	read -r rps p50 p99 errs < <(wrk_stats "$out")
	if [[ $load == cache ]]; then
		extra="  origin fetches $(($(static_fetches) - before))"
	fi
	printf "%-6s %-13s round %s: %9s req/s  p50 %8s ms  p99 %8s ms  errors %s%s\n" \
		"$load" "$c" "$r" "$rps" "$p50" "$p99" "$errs" "$extra"
}

declare -A contenders=([new]="direct haproxy gateway" [sticky]="direct haproxy gateway" [cache]="varnish gateway-cache")
loads=(new sticky cache)
if [[ $WARMUP != 0 && $WARMUP != 0s ]]; then
	echo
	echo "== warm-up: $WARMUP each, not counted"
	for load in "${loads[@]}"; do
		for c in ${contenders[$load]}; do
			run "$load" "$c" warmup
		done
	done
fi
echo
echo "== $ROUNDS round(s): wrk -t$THREADS -c$CONNS -d$DUR --latency, contenders alternating"
for r in $(seq 1 "$ROUNDS"); do
	for load in "${loads[@]}"; do
		for c in ${contenders[$load]}; do
			run "$load" "$c" "$r"
		done
	done
done

# med <load> <contender> <column>: median over the rounds of one wrk_stats
# column (1 req/s, 2 p50, 3 p99); for column 4 (errors), the sum.
med() {
	local f
	for f in "$work/res/$1.$2".*.out; do
		[[ -e $f ]] && wrk_stats "$f"
	done | awk -v k="$3" '$k != "-" { v[++n] = $k }
		END {
			if (n == 0) { print "-"; exit }
			if (k == 4) { for (i = 1; i <= n; i++) s += v[i]; print s; exit }
			for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
			m = (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
			print (k == 1) ? sprintf("%.0f", m) : sprintf("%.3f", m)
		}'
}
# check <label> <value> <op> <target>: one target line.
check() {
	awk -v l="$1" -v v="$2" -v op="$3" -v t="$4" 'BEGIN {
		if (v == "-") { printf "%-42s %8s   target %s %s   n/a (not measured)\n", l, "-", op, t; exit }
		ok = (op == "≥") ? v >= t : v <= t
		printf "%-42s %8.2f   target %s %s   %s\n", l, v, op, t, ok ? "met" : "MISSED"
	}'
}
# ratio <a> <b> [format]: a ÷ b, or "-" when either is missing.
ratio() { awk -v a="$1" -v b="$2" -v f="${3:-%.4f}" 'BEGIN { if (a == "-" || b == "-" || b == 0) print "-"; else printf f "\n", a / b }'; }

echo
echo "== summary: median of $ROUNDS round(s), wrk -t$THREADS -c$CONNS -d$DUR, ~1 KiB responses, 2 backends"
printf "%-7s %-14s %10s %10s %10s %7s\n" load contender "req/s" "p50 ms" "p99 ms" errors
for load in "${loads[@]}"; do
	for c in ${contenders[$load]}; do
		if [[ -z ${url[$c]:-} ]]; then
			printf "%-7s %-14s %10s\n" "$load" "$c" "(skipped)"
			continue
		fi
		printf "%-7s %-14s %10s %10s %10s %7s\n" "$load" "$c" "$(med "$load" "$c" 1)" "$(med "$load" "$c" 2)" \
			"$(med "$load" "$c" 3)" "$(med "$load" "$c" 4)"
	done
done
echo
for load in new sticky; do
	check "$load: gateway req/s / haproxy req/s" "$(ratio "$(med "$load" gateway 1)" "$(med "$load" haproxy 1)")" "≥" 0.8
	check "$load: gateway p99 / haproxy p99" "$(ratio "$(med "$load" gateway 3)" "$(med "$load" haproxy 3)")" "≤" 1.5
done
check "cache: gateway-cache req/s / varnish req/s" "$(ratio "$(med cache gateway-cache 1)" "$(med cache varnish 1)")" "≥" 1.0
for load in new sticky; do
	echo "$load: haproxy does $(ratio "$(med "$load" haproxy 1)" "$(med "$load" direct 1)" %.2f)" \
		"and gateway $(ratio "$(med "$load" gateway 1)" "$(med "$load" direct 1)" %.2f) of direct's req/s"
done
for c in gateway gateway-cache; do
	[[ -f $work/$c.log ]] || continue
	n=$(grep -Ec 'level=(WARN|ERROR)|"level":"(WARN|ERROR)"' "$work/$c.log" || true)
	if ((n > 0)); then
		echo "$c logged $n warning(s)/error(s), the first:"
		grep -E 'level=(WARN|ERROR)|"level":"(WARN|ERROR)"' "$work/$c.log" | head -n 3
	fi
done
if ((${#failed[@]} > 0)); then
	echo "$script: failed: ${failed[*]}" >&2
	exit 1
fi
