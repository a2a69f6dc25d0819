#!/usr/bin/env bash
# Builds Splice and runs the whole test suite (both ISAs).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
swift build --build-tests
swift test "$@"
