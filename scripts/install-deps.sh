#!/usr/bin/env bash
# Installs the Debian packages Splice needs that this machine lacks (as root, or via sudo).
#   scripts/install-deps.sh            build and test dependencies
#   scripts/install-deps.sh --samples  also the cross compiler samples/build.sh uses
set -euo pipefail
packages=(pkg-config libunicorn-dev libcapstone-dev libelf-dev qemu-user)
[ "${1:-}" = "--samples" ] && packages+=(gcc libc6-dev gcc-powerpc64le-linux-gnu libc6-dev-ppc64el-cross patch)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "splice: installing ${missing[*]}"
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! command -v swift >/dev/null; then
    echo "splice: swift is not on PATH (Swift 6 toolchain needed)" >&2
    exit 1
fi
