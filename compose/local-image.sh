#!/usr/bin/env bash
# Build the cachebus image where no image registry answers: the build
# stage's Go base is made from this machine's Go toolchain, and the build
# context has the modules vendored, so `docker build` needs no network.
#
#   compose/local-image.sh base            build the Go base image once, print its name
#   compose/local-image.sh context DIR     copy the build context into DIR, modules vendored
#
# By hand, from the repository root:
#
#   ctx=$(mktemp -d) && compose/local-image.sh context "$ctx"
#   docker-compose -f "$ctx/compose/docker-compose.yml" build \
#       --build-arg GO_IMAGE="$(compose/local-image.sh base)" nats1   # one service: all share the image
#   docker-compose -f compose/docker-compose.yml up -d     # the image exists: up builds nothing
#   rm -rf "$ctx"
#
# The base image is `docker import` of a root file system holding the Go
# toolchain (`go env GOROOT`, as /usr/local/go) with its standard library
# compiled in the build cache, a static busybox as /bin/sh and its
# applets, and the machine's CA certificates. Its tag names the Go
# version and this recipe's revision, so it is built once and reused: remove
# it with `docker rmi cachebus-local-go:<tag>` to build it again. It needs
# `busybox-static` (Debian) or another statically linked busybox on PATH or
# in CACHEBUS_BUSYBOX.
#
# The context is the repository's files as git knows them (tracked, and
# untracked but not ignored: what a fresh clone has plus work in progress),
# or the working tree minus .git outside a git checkout; then `go mod
# vendor` in the copy, from the module cache (or GOPROXY when it misses).
set -euo pipefail

# recipe is the base image's revision: change it when the image changes.
recipe=r2

repo=$(cd "$(dirname "$0")/.." && pwd -P)

die() { echo "local-image.sh: $*" >&2; exit 1; }

base() {
	command -v docker >/dev/null || die "no docker on PATH"
	local goroot goversion tag
	goroot=$(cd "$(go env GOROOT)" && pwd -P) || die "go env GOROOT failed"
	goversion=$(go env GOVERSION)
	tag="cachebus-local-go:${goversion}-${recipe}"
	if docker image inspect "$tag" >/dev/null 2>&1; then
		echo "$tag"
		return
	fi

	local busybox=${CACHEBUS_BUSYBOX:-$(command -v busybox || true)}
	[ -n "$busybox" ] || die "no busybox: install busybox-static (or set CACHEBUS_BUSYBOX)"
	# A dynamically linked busybox would find no libc in the image.
	if ldd "$busybox" >/dev/null 2>&1; then
		die "$busybox is dynamically linked: install busybox-static (or set CACHEBUS_BUSYBOX)"
	fi
	[ -f /etc/ssl/certs/ca-certificates.crt ] || die "no /etc/ssl/certs/ca-certificates.crt: install ca-certificates"

	stage=$(mktemp -d)
	trap 'rm -rf "$stage"' EXIT
	mkdir -p "$stage"/{bin,etc/ssl/certs,usr/local,root,go,tmp}
	chmod 1777 "$stage/tmp"
	cp "$busybox" "$stage/bin/busybox"
	local applet
	for applet in $("$busybox" --list); do
		[ "$applet" = busybox ] || ln -s busybox "$stage/bin/$applet"
	done
	cp /etc/ssl/certs/ca-certificates.crt "$stage/etc/ssl/certs/"
	echo 'root:x:0:0:root:/root:/bin/sh' >"$stage/etc/passwd"
	echo 'root:x:0:' >"$stage/etc/group"

	# The standard library compiled as the Dockerfile compiles (static,
	# -trimpath), into the image's build cache: half of a cold build of
	# cachebus, now done once per Go version instead of once per build.
	# With -trimpath the cache keys hold no directory, so entries made
	# here are found inside the image.
	echo "local-image.sh: compiling the standard library into the image's build cache" >&2
	(cd / && GOCACHE="$stage/root/.cache/go-build" CGO_ENABLED=0 GOFLAGS= GOOS= GOARCH= \
		go build -trimpath std) || die "go build std failed"

	# GOROOT goes in as usr/local/go, read in place (no copy), without its
	# own tests and API lists, which no build reads.
	local rel=${goroot#/}
	echo "local-image.sh: importing $goroot ($goversion) and $busybox as $tag" >&2
	tar -c --numeric-owner --owner=0 --group=0 \
		--exclude="$rel/test" --exclude="$rel/api" --exclude="$rel/doc" \
		--transform="s,^$rel,usr/local/go," \
		-C "$stage" . -C / "$rel" |
		docker import \
			--change 'ENV PATH=/usr/local/go/bin:/go/bin:/bin' \
			--change 'ENV GOPATH=/go' \
			--change 'ENV GOCACHE=/root/.cache/go-build' \
			--change 'ENV GOTOOLCHAIN=local' \
			--change 'ENV GOPROXY=off' \
			--change 'CMD ["/bin/sh"]' \
			--message "cachebus local Go base: $goversion from $goroot, busybox, CA certificates" \
			- "$tag" >/dev/null
	# GOPROXY=off: with no registry there is no proxy either, and a build
	# without vendor/ should say so at once instead of timing out.
	echo "$tag"
}

context() {
	local dir=${1:-}
	[ -n "$dir" ] || die "usage: local-image.sh context DIR"
	mkdir -p "$dir"
	if git -C "$repo" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
		# Files deleted in the work tree but still in the index are listed
		# too: skip them (tar would fail on them).
		(cd "$repo" && git ls-files -z --cached --others --exclude-standard |
			while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
			tar -c --null -T - -f -) | tar -x -C "$dir" -f -
	else
		tar -c -C "$repo" --exclude=./.git -f - . | tar -x -C "$dir" -f -
	fi
	rm -rf "$dir/vendor"
	(cd "$dir" && go mod vendor) || die "go mod vendor in $dir failed"
}

case ${1:-} in
base) base ;;
context) shift; context "$@" ;;
*) die "usage: local-image.sh base | context DIR" ;;
esac
