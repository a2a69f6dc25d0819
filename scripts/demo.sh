#!/usr/bin/env bash
# The main demo: both bundled sample kernels (x86-64 and ppc64le) loaded into emulated
# machines, their live-patching landmarks shown, and every oracle call checked.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
swift build --product splice
.build/debug/splice demo "$@"
