#!/usr/bin/env bash
# Installs what hypeman needs on a Debian 12 host (run as root): QEMU, the
# disk tools, the test image tools, and the SDK conformance suite's npm
# packages. The guest kernel is fetched by `hypeman setup` (see demo.sh and
# the e2e tests), not here, because it goes into a data dir.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
	echo "setup: run as root (apt-get, network namespaces, TAP devices)" >&2
	exit 1
fi

packages=(
	qemu-system-x86 qemu-utils   # the hypervisor and qemu-img
	erofs-utils e2fsprogs        # image root file systems, overlay templates
	xfsprogs                     # the tests' data dirs: XFS with reflinks
	iproute2 curl                # namespaces for tests and the demo
	busybox-static debootstrap   # building real test images from Debian packages
	skopeo                       # a third-party registry client for the push tests
	cpio                         # tests list the initramfs with it
	nodejs npm                   # the official SDK's conformance suite
)
missing=()
for p in "${packages[@]}"; do
	case "$p" in \#*) continue ;; esac
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# nodejs may come from another repository without the npm package.
if command -v npm >/dev/null 2>&1; then
	missing=("${missing[@]/npm}")
	missing=("${missing[@]/nodejs}")
fi
read -r -a missing <<<"${missing[*]}"
if [ "${#missing[@]}" -gt 0 ]; then
	echo "setup: installing ${missing[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ -f test/conformance/package-lock.json ] && [ ! -d test/conformance/node_modules/@onkernel ]; then
	echo "setup: installing the SDK conformance suite (npm ci)"
	npm ci --prefix test/conformance --no-audit --no-fund >/dev/null
fi
echo "setup: ok"
