#!/usr/bin/env bash
# Prepares the real-kernel corpus outside git, under .build/kernels/: Debian's generic Linux
# kernels for ppc64el and amd64 from Debian 12 (bookworm, Linux 6.1) and Debian 13 (trixie,
# Linux 6.12), each as an ELF image with symbols, and manifest.tsv (package, version, the
# sha256 of the .deb and of the image). Run again, it checks the images against the manifest
# and downloads nothing.
#
# ppc64el packages ship /boot/vmlinux-* (an ELF with symbols). amd64 packages ship only a
# compressed, stripped vmlinuz: vmlinux-to-elf (PyPI, in a venv here) rebuilds an ELF whose
# symbols come from the kernel's kallsyms.
#
# The machine's own apt sources are not touched: bookworm is its suite; trixie comes through a
# private apt configuration (its own sources file, lists and cache under .build/kernels/apt).
# ppc64el packages need `dpkg --add-architecture ppc64el`, done once.
#
# SPLICE_NO_KERNELS=1 skips all of it (offline use); the real-kernel tests then skip and say why.
set -euo pipefail
cd "$(dirname "$0")/.."
out=.build/kernels
manifest=$out/manifest.tsv

if [ "${SPLICE_NO_KERNELS:-}" = 1 ]; then
    echo "splice: SPLICE_NO_KERNELS=1: the real-kernel corpus is not prepared"
    exit 0
fi

# name           suite    Linux  dpkg-arch flavour     image in the package
kernels=(
    "debian12-ppc64le bookworm 6.1  ppc64el powerpc64le vmlinux"
    "debian12-amd64   bookworm 6.1  amd64   amd64       vmlinuz"
    "debian13-ppc64le trixie   6.12 ppc64el powerpc64le vmlinux"
    "debian13-amd64   trixie   6.12 amd64   amd64       vmlinuz"
)

verify() {
    [ -f "$manifest" ] || return 1
    local n=0
    while IFS=$'\t' read -r name _ _ _ _ _ image_sha; do
        [ "$name" = name ] && continue
        [ -f "$out/$name.elf" ] || return 1
        [ "$(sha256sum "$out/$name.elf" | cut -d' ' -f1)" = "$image_sha" ] || { echo "splice: $out/$name.elf differs from the manifest" >&2; return 1; }
        n=$((n + 1))
    done < "$manifest"
    [ "$n" = "${#kernels[@]}" ]
}
if verify; then
    echo "splice: the real-kernel corpus is ready ($out, $(wc -l < "$manifest") lines of manifest)"
    exit 0
fi

sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
mkdir -p "$out/debs" "$out/apt/sources" "$out/apt/lists/partial" "$out/apt/cache/archives/partial"
if ! dpkg --print-foreign-architectures | grep -qx ppc64el; then
    $sudo dpkg --add-architecture ppc64el
fi
# The machine's own suite (bookworm), with the ppc64el index the new architecture needs.
$sudo apt-get update -qq
# Trixie through a private configuration: the mirror the machine's apt uses, another suite.
mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)
[ -n "$mirror" ] || mirror=http://deb.debian.org/debian
cat > "$out/apt/sources/trixie.sources" <<EOF
Types: deb
URIs: $mirror
Suites: trixie
Components: main
Architectures: amd64 ppc64el
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
private=(-o "Dir::Etc::SourceParts=$PWD/$out/apt/sources" -o Dir::Etc::SourceList=/dev/null
         -o "Dir::State::Lists=$PWD/$out/apt/lists" -o "Dir::Cache=$PWD/$out/apt/cache")
$sudo apt-get "${private[@]}" update -qq


# vmlinux-to-elf for the amd64 images.
if [ ! -x "$out/venv/bin/vmlinux-to-elf" ]; then
    python3 -m venv "$out/venv"
    "$out/venv/bin/pip" install -q vmlinux-to-elf
fi

printf 'name\tsuite\tarch\tpackage\tversion\tdeb_sha256\timage_sha256\n' > "$manifest.new"
for k in "${kernels[@]}"; do
    read -r name suite series arch flavour kind <<< "$k"
    opts=()
    [ "$suite" = trixie ] && opts=("${private[@]}")
    # Every versioned image package of the flavour and the suite's own Linux series (Debian 12
    # also carries 6.12 now; amd64: unsigned, the same kernel without the Secure Boot
    # wrapping), newest version first. The index can list a version the pool
    # does not serve yet: then the next older one is tried.
    suffix=""
    [ "$arch" = amd64 ] && suffix="-unsigned"
    candidates=$(apt-cache "${opts[@]}" pkgnames linux-image- \
        | grep -E "^linux-image-${series//./\\.}\.[0-9]+(-[0-9]+|\+deb[0-9]+)-$flavour$suffix\$" \
        | while read -r p; do
            apt-cache "${opts[@]}" madison "$p:$arch" | awk -F'|' -v p="$p" '{gsub(/ /, "", $2); print $2 " " p}'
          done | sort -r -V)
    [ -n "$candidates" ] || { echo "splice: no linux-image-*-$flavour$suffix for $arch in $suite" >&2; exit 1; }
    deb=""
    while read -r version package; do
        if (cd "$out/debs" && apt-get "${opts[@]}" download -qq "$package:$arch=$version" 2>/dev/null); then
            deb=$(ls -t "$out/debs/${package}_"*"_$arch.deb" 2>/dev/null | head -n 1)
            [ -n "$deb" ] && break
        fi
        echo "splice: $package $version is listed but not served; trying an older one"
    done <<< "$candidates"
    [ -n "$deb" ] || { echo "splice: could not download any linux-image-*-$flavour for $arch from $suite" >&2; exit 1; }
    version=$(dpkg-deb -f "$deb" Version)
    tmp=$(mktemp -d)
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" --wildcards "./boot/$kind-*"
    image=$(ls "$tmp/boot/$kind-"* | head -n 1)
    if [ "$kind" = vmlinuz ]; then
        "$out/venv/bin/vmlinux-to-elf" "$image" "$out/$name.elf" > "$out/$name.vmlinux-to-elf.log" 2>&1
    else
        cp "$image" "$out/$name.elf"
    fi
    rm -rf "$tmp"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$suite" "$arch" "$package" "$version" \
        "$(sha256sum "$deb" | cut -d' ' -f1)" "$(sha256sum "$out/$name.elf" | cut -d' ' -f1)" >> "$manifest.new"
    echo "splice: $name: $package $version -> $out/$name.elf"
done
mv "$manifest.new" "$manifest"
column -t -s $'\t' "$manifest" | cut -c1-120
