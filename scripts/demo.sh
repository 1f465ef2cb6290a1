#!/usr/bin/env bash
# The demo: build a small OCI image from Debian's busybox-static package,
# start a hypeman daemon in a private network namespace, push the image to
# the daemon's registry, run it as a VM, show its logs and an HTTP answer
# from the VM, then clean everything up. Run as root after `make setup build`
# (make demo does both).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
HYPEMAN="$PWD/bin/hypeman"

work=$(mktemp -d /tmp/hmdemo-XXXXXX)
ns="hmdemo-$$"
daemon_pid=""
cleanup() {
	set +e
	if [ -n "$daemon_pid" ]; then
		in_ns "$HYPEMAN" rm -f demo >/dev/null 2>&1
		kill "$daemon_pid" 2>/dev/null
		wait "$daemon_pid" 2>/dev/null
	fi
	ip netns del "$ns" 2>/dev/null
	rm -rf "$work"
}
trap cleanup EXIT
in_ns() { ip netns exec "$ns" "$@"; }
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

export HYPEMAN_DATA_DIR="$work/data" HYPEMAN_CONFIG="$work/config.yaml"
: >"$HYPEMAN_CONFIG"

step "Guest kernel and initramfs (hypeman setup)"
"$HYPEMAN" setup

step "Build a demo OCI image from Debian's busybox-static package"
go run ./test/tools/mkimage -kind busybox -o "$work/demo.tar"

step "Start the daemon in network namespace $ns"
ip netns add "$ns"
in_ns ip link set lo up
in_ns "$HYPEMAN" serve >"$work/daemon.log" 2>&1 &
daemon_pid=$!
for _ in $(seq 1 100); do
	in_ns curl -fsS http://127.0.0.1:4973/health >/dev/null 2>&1 && break
	sleep 0.1
done
in_ns curl -fsS http://127.0.0.1:4973/health; echo
export HYPEMAN_API_KEY
HYPEMAN_API_KEY=$("$HYPEMAN" token)

step "Push the image to the daemon's registry (hypeman push)"
ref=$(in_ns "$HYPEMAN" push "$work/demo.tar" demo:latest)
echo "$ref"
image="${ref%@*}:latest"

step "Run it as a VM (hypeman run)"
time in_ns "$HYPEMAN" run --name demo "$image"
in_ns "$HYPEMAN" ps

ip=$(in_ns "$HYPEMAN" ps | awk '$2 == "demo" { print $5 }')
step "An HTTP request to the VM at $ip"
in_ns curl -s --retry 20 --retry-delay 1 --retry-connrefused "http://$ip/"

step "Its logs (hypeman logs demo)"
in_ns "$HYPEMAN" logs demo

step "Stop and delete it"
in_ns "$HYPEMAN" stop demo
in_ns "$HYPEMAN" ps -a
in_ns "$HYPEMAN" rm demo
echo
echo "demo: ok"
