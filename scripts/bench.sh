#!/usr/bin/env bash
# Release build, then every benchmark Splice has, measured in one run and written to
# BENCHMARKS.md (each figure with the command that measures it alone and its anchor).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
if ! command -v eu-readelf >/dev/null; then   # the payload benchmark's reference
    sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq elfutils >/dev/null
fi
swift build -c release --product splice
swift build -c release --product unicorn-bare-bench
.build/release/splice bench report -o BENCHMARKS.md "$@"
