#!/usr/bin/env bash
# Builds the sample kernel for both ISAs and the oracle programs, into samples/build/.
# The results are committed, so tests need no cross compiler; run this after changing
# anything under samples/src or samples/runtime, then commit samples/build/.
#
#   samples/build.sh            build everything (installs the compilers if missing)
#   samples/build.sh --check    rebuild into a temporary folder and compare byte for byte
#
# Reproducible: no timestamps or absolute paths go into the images (-ffile-prefix-map,
# build ids are content hashes). Built with Debian 12's gcc 12.2.0 and
# gcc-powerpc64le-linux-gnu 12.2.0.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out="$here/build"
check=0
if [ "${1:-}" = "--check" ]; then check=1; out=$(mktemp -d); fi

need=()
command -v gcc >/dev/null || need+=(gcc)
command -v powerpc64le-linux-gnu-gcc >/dev/null || need+=(gcc-powerpc64le-linux-gnu)
command -v qemu-ppc64le >/dev/null || need+=(qemu-user)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

mkdir -p "$out"
cd "$here"
src=src
rt=runtime
common=(-O2 -ffreestanding -fno-builtin -nostdlib -static -fno-stack-protector
        -fno-asynchronous-unwind-tables -ffile-prefix-map="$here"=. -I"$src"
        -Wl,--build-id=sha1 -Wl,-z,noexecstack -Wl,--no-warn-rwx-segments)

# x86-64, plain: functions start with their first real instruction; checked_double alone
# starts with endbr64.
x86=(gcc "${common[@]}" -no-pie -fno-pic -fcf-protection=none -mno-red-zone)
"${x86[@]}" -c "$src/checked.c" -fcf-protection=branch -mmanual-endbr -o "$out/checked-x86_64.o"
"${x86[@]}" "$rt/x86_64/start.S" "$src/kernel.c" "$out/checked-x86_64.o" -o "$out/kernel-x86_64.elf"

# x86-64 with patchable entries: every function begins with `call __fentry__`, and
# __mcount_loc lists those call sites (what Linux's ftrace reads).
"${x86[@]}" -c "$src/checked.c" -fcf-protection=branch -mmanual-endbr -pg -mfentry -mrecord-mcount \
    -o "$out/checked-x86_64-fentry.o"
"${x86[@]}" -pg -mfentry -mrecord-mcount "$rt/x86_64/start.S" "$src/kernel.c" \
    "$out/checked-x86_64-fentry.o" -o "$out/kernel-x86_64-fentry.elf"
# x86-64 with -fpatchable-function-entry=5: five one-byte NOPs at every entry (after the
# endbr64 of checked_double), listed in __patchable_function_entries.
"${x86[@]}" -c "$src/checked.c" -fcf-protection=branch -mmanual-endbr -fpatchable-function-entry=5 \
    -o "$out/checked-x86_64-pfe.o"
"${x86[@]}" -fpatchable-function-entry=5 "$rt/x86_64/start.S" "$src/kernel.c" "$out/checked-x86_64-pfe.o" \
    -o "$out/kernel-x86_64-pfe.elf"
rm -f "$out"/checked-x86_64*.o

# ppc64le (ELFv2), -mprofile-kernel: every function has `mflr r0; bl _mcount` right after
# its local entry. POWER8: Unicorn 2.0.1 treats POWER10 prefixed instructions as illegal.
ppc=(powerpc64le-linux-gnu-gcc "${common[@]}" -mcpu=power8 -pg -mprofile-kernel)
"${ppc[@]}" "$rt/ppc64le/start.S" "$rt/ppc64le/old_prologue.S" "$src/kernel.c" "$src/checked.c" \
    -o "$out/kernel-ppc64le.elf"

# The ppc64le "patch module" image: its own TOC, linked far from the kernel (0x30000000),
# no -pg, no sibling calls. No entry point is ever run.
powerpc64le-linux-gnu-gcc "${common[@]}" -mcpu=power8 -fno-optimize-sibling-calls \
    -Wl,-Ttext-segment=0x30000000 -Wl,-e,scaled_v2 "$src/patch.c" -o "$out/patch-ppc64le.elf"

# Relocatable objects of the same source (RELA relocations for the ELF reader's tests,
# and what a payload is made of).
"${x86[@]}" -c "$src/kernel.c" -o "$out/kernel-x86_64.o"
"${ppc[@]}" -c "$src/kernel.c" -o "$out/kernel-ppc64le.o"

# Oracles: the same C as ordinary programs.
gcc -O2 -ffile-prefix-map="$here"=. -I"$src" "$src/oracle.c" "$src/kernel.c" "$src/checked.c" \
    -o "$out/oracle-x86_64"
powerpc64le-linux-gnu-gcc -O2 -static -ffile-prefix-map="$here"=. -I"$src" "$src/oracle.c" \
    "$src/kernel.c" "$src/checked.c" -o "$out/oracle-ppc64le"
"$out/oracle-x86_64" > "$out/oracle-x86_64.txt"
qemu-ppc64le "$out/oracle-ppc64le" > "$out/oracle-ppc64le.txt"

if [ $check -eq 1 ]; then
    status=0
    for f in kernel-x86_64.elf kernel-x86_64-fentry.elf kernel-x86_64-pfe.elf kernel-ppc64le.elf patch-ppc64le.elf kernel-x86_64.o kernel-ppc64le.o oracle-x86_64.txt oracle-ppc64le.txt; do
        if cmp -s "$out/$f" "$here/build/$f"; then echo "same: $f"; else echo "DIFFERENT: $f"; status=1; fi
    done
    rm -rf "$out"
    exit $status
fi
ls -l "$out"
