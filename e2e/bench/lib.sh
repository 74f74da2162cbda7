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
