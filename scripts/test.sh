#!/usr/bin/env bash
# Builds Splice and runs the whole test suite (both ISAs, the samples and Debian's kernels).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# Debian's kernels for the real-kernel tests (downloaded once; SPLICE_NO_KERNELS=1 skips).
scripts/kernels.sh
swift build --build-tests
swift test "$@"
