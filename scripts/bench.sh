#!/usr/bin/env bash
# Release build, then every benchmark Splice has, printed with what was measured.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
swift build -c release --product splice
swift build -c release --product unicorn-bare-bench
.build/release/splice bench emu "$@"
