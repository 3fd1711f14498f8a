#!/usr/bin/env bash
# Prepares the nested test machine (L1): Debian's own kernel package, unpacked, and an
# initramfs of ours with busybox, tests/nested/l1-init and the modules L1 loads.
#
#   tests/nested/prepare.sh [--force]
#
# Result in $SANDBOX_NESTED_DIR (/var/cache/sandbox/nested): vmlinuz, initramfs.cpio.gz and
# release, skipped when they were made from the same kernel package, init and module list;
# and qemu/, the emulator L1 runs in (below), skipped when it is there.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${SANDBOX_NESTED_DIR:-/var/cache/sandbox/nested}
force=0
[ "${1:-}" = "--force" ] && force=1

die() { echo "nested/prepare.sh: $*" >&2; exit 1; }

# kvm_amd: QEMU's TCG emulates AMD SVM (not Intel VMX). The rest is what the sandbox's VM
# path, containerd's overlay snapshotter and the network tests use on the host side.
modules=(virtio_pci 9pnet_virtio 9p overlay kvm_amd tun veth sch_ingress act_mirred cls_u32
    cls_matchall ext4 loop bridge br_netfilter nf_nat xt_MASQUERADE xt_conntrack
    iptable_nat iptable_filter)

command -v busybox >/dev/null || [ -x /bin/busybox ] || die "busybox-static is not installed"
command -v depmod >/dev/null || die "kmod (depmod, modprobe) is not installed"

# The emulator L1 runs in: QEMU from bookworm-backports (10.0 today), unpacked under
# $out/qemu for run.sh alone, so that the machine's packages stay Debian 12's (its QEMU 7.2 is
# the microvm baseline of benches/, its qemu-system-common the C virtiofsd). Under 7.2's TCG
# emulation of nested SVM, L1's guests triple-faulted and L1 itself panicked or stopped within
# minutes; docs/testing.md has the runs. The packages come through an apt configuration of
# its own, so that the machine's sources stay as they are; the libraries are the ones 7.2
# already pulled in.
prepare_qemu() {
    local q=$out/qemu
    if [ $force = 0 ] && [ -f "$q/stamp" ] && [ -x "$q/root/usr/bin/qemu-system-x86_64" ]; then
        echo "nested machine's QEMU up to date: $(cat "$q/stamp")"
        return
    fi
    rm -rf "$q"
    mkdir -p "$q/apt/lists/partial" "$q/apt/cache/archives/partial" "$q/debs" "$q/data"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-backports main" \
        >"$q/apt/sources.list"
    local apt=(-q -o Dir::Etc::SourceList="$q/apt/sources.list" -o Dir::Etc::SourceParts=/nonexistent
        -o Dir::State::Lists="$q/apt/lists" -o Dir::Cache="$q/apt/cache" -o APT::Sandbox::User=root)
    apt-get "${apt[@]}" update >/dev/null || die "apt-get update of bookworm-backports failed"
    (cd "$q/debs" && apt-get "${apt[@]}" download qemu-system-x86 qemu-system-data seabios) ||
        die "apt-get download of QEMU from bookworm-backports failed"
    for deb in "$q"/debs/*.deb; do
        dpkg-deb -x "$deb" "$q/root"
    done
    # -L: the firmware and option ROMs of the same release (SeaBIOS lives apart in Debian).
    cp -a "$q/root/usr/share/qemu/." "$q/root/usr/share/seabios/." "$q/data/"
    local missing
    missing=$(ldd "$q/root/usr/bin/qemu-system-x86_64" | awk '/not found/ {print $1}' | tr '\n' ' ')
    [ -z "$missing" ] || die "QEMU from bookworm-backports needs $missing(apt-get install qemu-system-x86 pulls them in)"
    "$q/root/usr/bin/qemu-system-x86_64" --version | head -n1 >"$q/stamp"
    rm -rf "$q/apt" "$q/debs"
    echo "nested machine's QEMU prepared: $(cat "$q/stamp")"
}
prepare_qemu

# The kernel image package linux-image-amd64 points at today.
package=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -n1)
if [ -z "$package" ]; then
    apt-get update -q >/dev/null
    package=$(apt-cache depends linux-image-amd64 | sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -n1)
fi
[ -n "$package" ] || die "apt-cache cannot resolve linux-image-amd64 to a kernel package"
version=$(apt-cache policy "$package" | sed -n 's/^ *Candidate: //p')
stamp="$package $version $(cat "$here/l1-init" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-16)"

if [ $force = 0 ] && [ -f "$out/stamp" ] && [ "$(cat "$out/stamp")" = "$stamp" ] &&
    [ -f "$out/vmlinuz" ] && [ -f "$out/initramfs.cpio.gz" ]; then
    echo "nested machine up to date: $stamp"
    exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"
(cd "$work" && apt-get download -q "$package=$version" 2>/dev/null) || {
    apt-get update -q >/dev/null
    (cd "$work" && apt-get download -q "$package=$version")
} || die "apt-get download $package=$version failed"
dpkg-deb -x "$work"/"${package}"_*.deb "$work/pkg"
release=${package#linux-image-}
[ -d "$work/pkg/lib/modules/$release" ] || die "$package has no lib/modules/$release"
depmod -b "$work/pkg" "$release"

root="$work/initramfs"
mkdir -p "$root/bin" "$root/modules"
cp "$(command -v busybox || echo /bin/busybox)" "$root/bin/busybox"
cp "$here/l1-init" "$root/init"
chmod 0755 "$root/init"
: >"$root/modules/load-order"
for m in "${modules[@]}"; do
    deps=$(modprobe -d "$work/pkg" -S "$release" --show-depends "$m") ||
        die "module $m is not in $package"
    while read -r verb path _; do
        [ "$verb" = insmod ] || continue
        rel=${path#"$work/pkg/lib/modules/$release/"}
        grep -qxF "$rel" "$root/modules/load-order" && continue
        mkdir -p "$root/modules/$(dirname "$rel")"
        cp "$path" "$root/modules/$rel"
        echo "$rel" >>"$root/modules/load-order"
    done <<<"$deps"
done
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$out/initramfs.cpio.gz.tmp"
cp "$work/pkg/boot/vmlinuz-$release" "$out/vmlinuz.tmp"
mv "$out/initramfs.cpio.gz.tmp" "$out/initramfs.cpio.gz"
mv "$out/vmlinuz.tmp" "$out/vmlinuz"
echo "$release" >"$out/release"
echo "$stamp" >"$out/stamp"
echo "nested machine prepared: $package $version, $(wc -l <"$root/modules/load-order") modules"
