#!/usr/bin/env bash
# Release build, then every benchmark Splice has, printed with what was measured.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
if ! command -v eu-readelf >/dev/null; then   # the payload benchmark's reference
    sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq elfutils >/dev/null
fi
swift build -c release --product splice
swift build -c release --product unicorn-bare-bench
.build/release/splice bench emu
.build/release/splice bench redirect
.build/release/splice bench payload
.build/release/splice bench rendezvous --repeats 10
