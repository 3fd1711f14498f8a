#!/usr/bin/env bash
# Builds the sandbox guest kernel from Debian's linux-source-6.1 package.
#
#   guest-kernel-config/build.sh [--force]
#
# Result: $SANDBOX_GUEST_DIR/vmlinux (ELF, what sandbox-vmm boots) and
# $SANDBOX_GUEST_DIR/bzImage, plus the final .config as kernel.config and the
# release string (`uname -r`) as kernel.release.
#
# Environment:
#   SANDBOX_GUEST_DIR    where the kernel is installed  (/var/lib/sandbox/guest)
#   SANDBOX_KERNEL_CACHE source and build tree, kept     (/var/cache/sandbox/kernel)
#   SANDBOX_KERNEL_JOBS  parallel make jobs              (number of CPUs)
#
# The build is skipped when the installed kernel was made from the same
# fragment, source package version and build recipe. When something changed,
# the build tree in the cache is reused, so make only rebuilds what it must.
set -euo pipefail

# Everything runs from main(), called on the last line, so that bash has read the whole
# script before running any of it (editing it during a long build is then harmless).
main() {

# Bump when this script changes how the kernel is configured or built.
RECIPE_VERSION=1
SOURCE_PACKAGE=linux-source-6.1
SOURCE_TARBALL=/usr/src/${SOURCE_PACKAGE}.tar.xz

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
FRAGMENT="$HERE/sandbox-guest.config"
GUEST_DIR="${SANDBOX_GUEST_DIR:-/var/lib/sandbox/guest}"
CACHE_DIR="${SANDBOX_KERNEL_CACHE:-/var/cache/sandbox/kernel}"
JOBS="${SANDBOX_KERNEL_JOBS:-$(nproc)}"
FORCE=0

for arg in "$@"; do
    case "$arg" in
        --force) FORCE=1 ;;
        -h | --help)
            sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "build.sh: unknown argument '$arg' (try --help)" >&2
            exit 2
            ;;
    esac
done

step() { printf '\n==> %s\n' "$*"; }
die() {
    printf 'build.sh: error: %s\n' "$*" >&2
    exit 1
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        die "need root to run: $*"
    fi
}

[ -f "$FRAGMENT" ] || die "config fragment $FRAGMENT is missing"

# --- Build dependencies --------------------------------------------------------
# Tools and headers the 6.1 build needs for this configuration (objtool needs
# libelf; the lz4 tool compresses the bzImage payload).
missing=()
for tool in gcc make bc bison flex perl xz lz4 gzip cpio; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
[ -f /usr/include/libelf.h ] || missing+=("libelf.h")
[ -f /usr/include/openssl/ssl.h ] || missing+=("openssl/ssl.h")
[ -f "$SOURCE_TARBALL" ] || missing+=("$SOURCE_TARBALL")
if [ "${#missing[@]}" -gt 0 ]; then
    step "Installing build dependencies (missing: ${missing[*]})"
    command -v apt-get >/dev/null || die "apt-get not found; install: ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "$SOURCE_PACKAGE" build-essential bc bison flex perl xz-utils lz4 gzip cpio \
        libelf-dev libssl-dev
    [ -f "$SOURCE_TARBALL" ] || die "$SOURCE_PACKAGE installed but $SOURCE_TARBALL is missing"
fi

# --- What are we building? ------------------------------------------------------
source_version="$(dpkg-query -W -f='${Version}' "$SOURCE_PACKAGE" 2>/dev/null || true)"
if [ -z "$source_version" ]; then
    # Not installed through dpkg: identify the tarball by its size and mtime.
    source_version="tarball-$(stat -c '%s-%Y' "$SOURCE_TARBALL")"
fi
build_key="$(
    {
        echo "recipe=$RECIPE_VERSION"
        echo "source=$SOURCE_PACKAGE $source_version"
        cat "$FRAGMENT"
    } | sha256sum | cut -d' ' -f1
)"

if [ "$FORCE" -eq 0 ] && [ -f "$GUEST_DIR/vmlinux" ] && [ -f "$GUEST_DIR/bzImage" ] &&
    [ "$(cat "$GUEST_DIR/build-key" 2>/dev/null)" = "$build_key" ]; then
    echo "Guest kernel is up to date: $GUEST_DIR/vmlinux ($SOURCE_PACKAGE $source_version)"
    exit 0
fi

mkdir -p "$CACHE_DIR" "$GUEST_DIR" ||
    die "cannot create $CACHE_DIR or $GUEST_DIR (set SANDBOX_KERNEL_CACHE / SANDBOX_GUEST_DIR)"

# One build at a time per cache (CI and tests may call this concurrently).
exec 9>"$CACHE_DIR/.lock"
if ! flock -n 9; then
    echo "Another guest kernel build holds $CACHE_DIR/.lock; waiting for it..."
    flock 9
    if [ "$(cat "$GUEST_DIR/build-key" 2>/dev/null)" = "$build_key" ] && [ "$FORCE" -eq 0 ]; then
        echo "Guest kernel is up to date: $GUEST_DIR/vmlinux (built meanwhile)"
        exit 0
    fi
fi

SRC="$CACHE_DIR/src"
OUT="$CACHE_DIR/build"

# --- Source tree ---------------------------------------------------------------
if [ "$(cat "$SRC/.sandbox-source" 2>/dev/null)" != "$source_version" ]; then
    step "Unpacking $SOURCE_TARBALL ($source_version) into $SRC"
    rm -rf "$SRC" "$OUT" "$SRC.partial"
    mkdir -p "$SRC.partial"
    tar -xJf "$SOURCE_TARBALL" -C "$SRC.partial" --strip-components=1
    echo "$source_version" >"$SRC.partial/.sandbox-source"
    mv "$SRC.partial" "$SRC"
fi
mkdir -p "$OUT"

kmake() {
    nice -n 10 make -C "$SRC" O="$OUT" ARCH=x86_64 "$@"
}

# --- Configuration ---------------------------------------------------------------
step "Configuring: allnoconfig + $(basename "$FRAGMENT"), then olddefconfig"
kmake -s KCONFIG_ALLCONFIG="$FRAGMENT" allnoconfig
kmake -s olddefconfig

step "Checking that every option of the fragment survived"
dropped=0
while IFS= read -r line; do
    case "$line" in
        CONFIG_*=*)
            name="${line%%=*}"
            ;;
        "# CONFIG_"*" is not set")
            name="${line#\# }"
            name="${name%% *}"
            ;;
        *) continue ;;
    esac
    actual="$(grep -E "^(${name}=|# ${name} is not set)" "$OUT/.config" || true)"
    if [ "$line" != "$actual" ]; then
        # An option that is off may also be absent when its dependencies are off.
        if [ -z "$actual" ] && [ "${line#\# }" != "$line" ]; then
            continue
        fi
        printf '  wanted %-45s got %s\n' "$line" "${actual:-<absent: a dependency is off>}" >&2
        dropped=$((dropped + 1))
    fi
done <"$FRAGMENT"
[ "$dropped" -eq 0 ] ||
    die "$dropped option(s) of $FRAGMENT were changed by the kernel's Kconfig (see above); add their dependencies to the fragment"
echo "All options of the fragment are set as asked."

# --- Build ---------------------------------------------------------------------------
step "Building vmlinux and bzImage with $JOBS job(s) in $OUT"
start=$(date +%s)
kmake -j"$JOBS" vmlinux bzImage
echo "Kernel built in $(($(date +%s) - start)) s"

# --- Install -------------------------------------------------------------------------
step "Installing into $GUEST_DIR"
install -m 0644 "$OUT/vmlinux" "$GUEST_DIR/vmlinux.new"
install -m 0644 "$OUT/arch/x86/boot/bzImage" "$GUEST_DIR/bzImage.new"
install -m 0644 "$OUT/.config" "$GUEST_DIR/kernel.config"
mv "$GUEST_DIR/vmlinux.new" "$GUEST_DIR/vmlinux"
mv "$GUEST_DIR/bzImage.new" "$GUEST_DIR/bzImage"
kernel_release="$(cat "$OUT/include/config/kernel.release")"
echo "$kernel_release" >"$GUEST_DIR/kernel.release"
echo "$build_key" >"$GUEST_DIR/build-key"
echo "Guest kernel $kernel_release installed:"
ls -l "$GUEST_DIR/vmlinux" "$GUEST_DIR/bzImage"
}

main "$@"
