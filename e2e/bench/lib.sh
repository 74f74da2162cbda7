# Shared by the side-by-side scripts in this folder: a work directory
# removed on exit with every process in $pids stopped, and port helpers.
# The sourcing script sets $script (its name, for messages) first.

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/cachebus-bench.XXXXXX")
pids=()

cleanup() {
	local pid
	for pid in "${pids[@]}"; do
		kill "$pid" 2>/dev/null || true
	done
	for pid in "${pids[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# need <bin…>: exit with a hint when one is not on PATH.
need() {
	local missing=() bin
	for bin in "$@"; do
		command -v "$bin" >/dev/null 2>&1 || missing+=("$bin")
	done
	if ((${#missing[@]} > 0)); then
		echo "$script: missing ${missing[*]} on PATH." >&2
		echo "  On Debian/Ubuntu: apt-get install the packages that provide them (and Go from go.dev)." >&2
		echo "  This script installs nothing itself." >&2
		exit 1
	fi
}

# free_port prints a TCP port nothing listens on at 127.0.0.1.
free_port() {
	local port
	for _ in $(seq 1 100); do
		port=$((20000 + RANDOM % 20000))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
			echo "$port"
			return
		fi
	done
	echo "$script: no free port found" >&2
	return 1
}

# wait_port waits until something accepts connections on 127.0.0.1:$1.
wait_port() {
	for _ in $(seq 1 100); do
		if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
			return 0
		fi
		sleep 0.1
	done
	echo "$script: nothing listening on 127.0.0.1:$1 after 10s ($2)" >&2
	return 1
}

# step <name> <command…>: run a bounded step, show and keep its output;
# a failure is remembered in $failed.
failed=()
step() {
	local name=$1 rc=0
	shift
	echo
	echo "== $name: ${1##*/} ${*:2}"
	timeout --kill-after=10 "$STEP_TIMEOUT" "$@" >"$work/$name.out" 2>"$work/$name.err" || rc=$?
	cat "$work/$name.out"
	if ((rc != 0)); then
		tail -n 20 "$work/$name.err" >&2
		echo "$script: $name failed (exit $rc)" >&2
		failed+=("$name")
	fi
}

# apt_ensure <bin> <package>: when <bin> is not on PATH, install <package>
# with apt-get (as root or through sudo; apt-get update once per run first).
# Returns 1, with a message, when it is still missing afterwards.
apt_updated=0
apt_ensure() {
	local bin=$1 pkg=$2 sudo=()
	command -v "$bin" >/dev/null 2>&1 && return 0
	if ((EUID != 0)); then
		if ! command -v sudo >/dev/null 2>&1; then
			echo "$script: $bin missing and not root (no sudo): apt-get install $pkg" >&2
			return 1
		fi
		sudo=(sudo -n)
	fi
	if ! command -v apt-get >/dev/null 2>&1; then
		echo "$script: $bin missing and no apt-get to install $pkg" >&2
		return 1
	fi
	if ((apt_updated == 0)); then
		echo "== apt-get update"
		"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >"$work/apt-update.log" 2>&1 ||
			tail -n 5 "$work/apt-update.log" >&2
		apt_updated=1
	fi
	echo "== apt-get install $pkg"
	if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg" \
		>"$work/apt-$pkg.log" 2>&1; then
		tail -n 5 "$work/apt-$pkg.log" >&2
	fi
	if ! command -v "$bin" >/dev/null 2>&1; then
		echo "$script: could not install $pkg ($bin still missing)" >&2
		return 1
	fi
}

# machine_info prints one line on the machine: CPUs, model, memory, kernel, load.
machine_info() {
	local model mem
	model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)
	mem=$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo 2>/dev/null || true)
	echo "machine: $(nproc) CPUs${model:+ ($model)}, ${mem:-? GiB} RAM, $(uname -sr)," \
		"load average $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)"
}

# render <template> <out> <NAME=value…>: copy template to out with every
# @NAME@ replaced by its value (values must not contain '|').
render() {
	local tmpl=$1 out=$2 kv expr=()
	shift 2
	for kv in "$@"; do
		expr+=(-e "s|@${kv%%=*}@|${kv#*=}|g")
	done
	sed "${expr[@]}" "$tmpl" >"$out"
}

# wrk_stats <file>: "req/s p50_ms p99_ms errors" from `wrk --latency` output
# (errors: socket errors plus non-2xx/3xx responses); "- - - -" when absent.
wrk_stats() {
	awk '
		function ms(v) {
			if (v ~ /us$/) return substr(v, 1, length(v) - 2) / 1000
			if (v ~ /ms$/) return substr(v, 1, length(v) - 2) + 0
			if (v ~ /m$/) return substr(v, 1, length(v) - 1) * 60000
			if (v ~ /s$/) return substr(v, 1, length(v) - 1) * 1000
			return v + 0
		}
		/^Requests\/sec:/ { rps = $2 }
		$1 == "50%" && !p50 { p50 = ms($2) }
		$1 == "99%" && !p99 { p99 = ms($2) }
		/Socket errors:/ { gsub(/,/, ""); err += $4 + $6 + $8 + $10 }
		/Non-2xx or 3xx responses:/ { err += $NF }
		END {
			if (rps == "") { print "- - - -"; exit }
			printf "%.0f %.3f %.3f %d\n", rps, p50, p99, err
		}' "$1"
}
