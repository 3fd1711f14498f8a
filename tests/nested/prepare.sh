#!/usr/bin/env bash
# Prepares the nested test machine (L1): Debian's own kernel package, unpacked, and an
# initramfs of ours with busybox, tests/nested/l1-init and the modules L1 loads.
#
#   tests/nested/prepare.sh [--force]
#
# Result in $SANDBOX_NESTED_DIR (/var/cache/sandbox/nested): vmlinuz, initramfs.cpio.gz and
# release. Skipped when they were made from the same kernel package, init and module list.
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

# The kernel image package linux-image-amd64 points at today.
package=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -n1)
if [ -z "$package" ]; then
    apt-get update -q >/dev/null
    package=$(apt-cache depends linux-image-amd64 | sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -n1)
fi
[ -n "$package" ] || die "apt-cache cannot resolve linux-image-amd64 to a kernel package"
version=$(apt-cache policy "$package" | sed -n 's/^ *Candidate: //p')
stamp="$package $version $(sha256sum "$here/l1-init" "$0" | sha256sum | cut -c1-16)"

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
