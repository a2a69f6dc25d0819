#!/usr/bin/env bash
# Fuzzes the ELF reader, the payload loader or the control protocol (the live machine's
# request decoder and dispatcher) with libFuzzer and AddressSanitizer (leak checking on),
# seeded with the committed corpus (fuzz/corpus/TARGET: the sample payloads of both ISAs, one
# request of each kind, and what earlier runs found interesting).
#
#   scripts/fuzz.sh elf|payload|control [libFuzzer flags...]   e.g. -runs=1000000 or -max_total_time=600
#   scripts/fuzz.sh elf|payload|control --merge                shrink the new corpus into fuzz/corpus/TARGET
#
# Crashes, leaks and hangs are written to .build-fuzz/findings/; replay one with
#   swift run splice-fuzz TARGET .build-fuzz/findings/FILE
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:?usage: scripts/fuzz.sh elf|payload|control [libFuzzer flags]}
shift
case "$target" in elf|payload) max_len=4096;; control) max_len=16384;; *) echo "target is elf, payload or control" >&2; exit 2;; esac
scripts/install-deps.sh
# lld: gold fails on the sanitizer runtimes' debug info here.
swift build -c release --product splice-fuzz --scratch-path .build-fuzz \
    -Xswiftc -sanitize=fuzzer,address -Xswiftc -DFUZZING -Xswiftc -Xclang-linker -Xswiftc -fuse-ld=lld
fuzzer=.build-fuzz/release/splice-fuzz
work=.build-fuzz/corpus/$target
mkdir -p "$work" .build-fuzz/findings
export SPLICE_FUZZ=$target
if [ "${1:-}" = "--merge" ]; then
    # The committed corpus becomes the smallest set that keeps all coverage found so far.
    tmp=$(mktemp -d)
    "$fuzzer" -set_cover_merge=1 -max_len=$max_len "$tmp" "fuzz/corpus/$target" "$work"
    # The named seeds (seed-*: the sample payloads) stay; the tests refer to them.
    find "fuzz/corpus/$target" -type f ! -name 'seed-*' -delete
    for f in "$tmp"/*; do
        grep -qxF "$(basename "$f")" <(cd "fuzz/corpus/$target" && sha1sum seed-* 2>/dev/null | cut -d' ' -f1) \
            || cp "$f" "fuzz/corpus/$target"/
    done
    rm -rf "$tmp"
    echo "fuzz/corpus/$target: $(ls "fuzz/corpus/$target" | wc -l) inputs, $(du -sh "fuzz/corpus/$target" | cut -f1)"
    exit 0
fi
exec "$fuzzer" "$work" "fuzz/corpus/$target" -max_len=$max_len -timeout=10 -rss_limit_mb=4096 \
    -artifact_prefix=".build-fuzz/findings/$target-" -print_final_stats=1 "$@"
