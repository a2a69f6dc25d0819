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
command -v patch >/dev/null || need+=(patch)
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

# Source-level patches (samples/patches/*.patch, against src/kernel.c). For each, both ISAs:
# the original and the patched kernel.c as objects with one section per function and object
# (what `splice build` diffs), and the patched program's oracle output. NAME:BASE means
# the patch applies on top of patch BASE (a stacked payload depends on BASE's).
patches=(01-greeting-len-fix: 02-scaled-plus-two: 03-greeting-sum-helper:
         04-scaled-twice-stacked:02-scaled-plus-two 05-hooks:)
for spec in "${patches[@]}"; do
    name=${spec%%:*}
    base=${spec#*:}
    work=$(mktemp -d)
    cp "$src"/*.c "$src"/*.h "$src"/cases.def "$work"/
    [ -n "$base" ] && patch -s -d "$work" -p1 < "patches/$base.patch"
    dest="$out/patches/$name"
    mkdir -p "$dest"
    sections=(-ffunction-sections -fdata-sections -ffile-prefix-map="$work"=. -I.)
    for stage in orig patched; do
        [ $stage = patched ] && patch -s -d "$work" -p1 < "patches/$name.patch"
        (cd "$work" && "${x86[@]}" "${sections[@]}" -c kernel.c -o "$dest/$stage-x86_64.o")
        (cd "$work" && "${ppc[@]}" "${sections[@]}" -c kernel.c -o "$dest/$stage-ppc64le.o")
    done
    (cd "$work" && gcc -O2 -ffile-prefix-map="$work"=. -I. oracle.c kernel.c checked.c -o oracle-x86_64 \
        && ./oracle-x86_64 > "$dest/oracle-x86_64.txt")
    (cd "$work" && powerpc64le-linux-gnu-gcc -O2 -static -ffile-prefix-map="$work"=. -I. oracle.c kernel.c checked.c \
        -o oracle-ppc64le && qemu-ppc64le ./oracle-ppc64le > "$dest/oracle-ppc64le.txt")
    rm -rf "$work"
done

if [ $check -eq 1 ]; then
    status=0
    for f in kernel-x86_64.elf kernel-x86_64-fentry.elf kernel-x86_64-pfe.elf kernel-ppc64le.elf patch-ppc64le.elf kernel-x86_64.o kernel-ppc64le.o oracle-x86_64.txt oracle-ppc64le.txt; do
        if cmp -s "$out/$f" "$here/build/$f"; then echo "same: $f"; else echo "DIFFERENT: $f"; status=1; fi
    done
    if diff -r -q "$out/patches" "$here/build/patches"; then echo "same: patches/"; else status=1; fi
    rm -rf "$out"
    exit $status
fi
ls -l "$out"
