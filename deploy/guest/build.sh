#!/usr/bin/env bash
# Build ResCoin's tiny test guest, cached by the hash of its inputs:
#   $OUT/vmlinuz            Debian's kernel (direct boot; the package linux-image-amd64 points at)
#   $OUT/initramfs.cpio.gz  busybox-static + virtio/9p modules + init.sh as /init
#   $OUT/rootfs -> a debootstrapped Debian minbase with python3, python3-zmq, python3-msgpack
#                           (cached once per package list) and ResCoin's guest agent (and its
#                           cgroup backend, for mode cgroup2) in /opt/rescoin, copied in fresh by
#                           every build (shared read-only over 9p)
# Needs (deploy/install.sh --test): busybox-static, debootstrap, cpio; apt lists; root.
# OUT defaults to /var/cache/rescoin-guest/<hash>; prints OUT on the last line.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PKG=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
[ -n "$PKG" ] || { apt-get update -q >/dev/null; PKG=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}'); }
KVER=${PKG#linux-image-}
ROOTFS_PKGS=python3-minimal,python3-zmq,python3-cffi-backend,python3-msgpack
CACHE=${CACHE:-/var/cache/rescoin-guest}
HASH=$(cat "$HERE/build.sh" "$HERE/init.sh" "$REPO"/guest_agent/*.py "$REPO"/proto/*.py <(echo "$KVER") | sha256sum | cut -c1-16)
OUT=${OUT:-$CACHE/$HASH}
ROOTFS=$CACHE/rootfs-bookworm-$(echo "$ROOTFS_PKGS" | sha256sum | cut -c1-8)
install_agent() {   # every run, cache hit or not: the rootfs is shared by every build of the image
    local agent="$ROOTFS/opt/rescoin/rescoin"
    rm -rf "$agent" && mkdir -p "$agent/guest_agent" "$agent/proto" "$agent/services/runtime" "$agent/services/actuator"
    cp "$REPO"/guest_agent/*.py "$agent/guest_agent/"
    cp "$REPO"/proto/*.py "$agent/proto/"
    # the cgroup backend (pure Python, no numpy), for the guest that plays a cgroup-v2-only host
    cp "$REPO"/services/__init__.py "$agent/services/"
    cp "$REPO"/services/runtime/{__init__,config,cgroups}.py "$agent/services/runtime/"
    cp "$REPO"/services/actuator/{__init__,backend,backend_cgroup,blockdev,cpufiles,settings}.py "$agent/services/actuator/"
}
if [ -f "$OUT/.done" ] && [ -x "$ROOTFS/usr/bin/python3" ]; then install_agent; echo "$OUT"; exit 0; fi
mkdir -p "$OUT"
t0=$(date +%s)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# 1. the kernel and only the modules the guest loads (a full unpack is 390 MB)
(cd "$WORK" && apt-get download -q "$PKG" >/dev/null && mkdir root &&
 dpkg-deb --fsys-tarfile "$PKG"_*.deb | tar -x -C root --wildcards \
    "./boot/vmlinuz-$KVER" \
    "./lib/modules/$KVER/kernel/drivers/virtio/*" "./lib/modules/$KVER/kernel/drivers/net/virtio_net.ko" \
    "./lib/modules/$KVER/kernel/drivers/net/net_failover.ko" "./lib/modules/$KVER/kernel/drivers/block/virtio_blk.ko" \
    "./lib/modules/$KVER/kernel/net/core/failover.ko" "./lib/modules/$KVER/kernel/net/9p/*" \
    "./lib/modules/$KVER/kernel/fs/netfs/*" "./lib/modules/$KVER/kernel/fs/fscache/*" "./lib/modules/$KVER/kernel/fs/9p/*")
cp "$WORK/root/boot/vmlinuz-$KVER" "$OUT/vmlinuz"
MOD="$WORK/root/lib/modules/$KVER/kernel"

# 2. the initramfs: busybox, modules in load order, /init (must start with #!/bin/busybox sh)
R="$WORK/initramfs"
mkdir -p "$R/bin" "$R/lib/modules" "$R/dev" "$R/proc" "$R/sys" "$R/tmp" "$R/mnt"
cp /bin/busybox "$R/bin/busybox"
for m in drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_pci_modern_dev \
         drivers/virtio/virtio_pci_legacy_dev drivers/virtio/virtio_pci net/core/failover \
         drivers/net/net_failover drivers/net/virtio_net drivers/block/virtio_blk \
         drivers/virtio/virtio_balloon fs/netfs/netfs fs/fscache/fscache net/9p/9pnet \
         net/9p/9pnet_virtio fs/9p/9p; do
    [ -f "$MOD/$m.ko" ] && cp "$MOD/$m.ko" "$R/lib/modules/"
done
cp "$HERE/init.sh" "$R/init"
chmod 755 "$R/init"
(cd "$R" && find . | cpio -o -H newc 2>/dev/null | gzip -9) > "$OUT/initramfs.cpio.gz"

# 3. the Python root filesystem with the real agent (python3-cffi-backend must be named:
#    debootstrap does not resolve the virtual package python3-zmq needs)
if [ ! -x "$ROOTFS/usr/bin/python3" ]; then
    rm -rf "$ROOTFS"
    debootstrap --variant=minbase --include=$ROOTFS_PKGS \
        bookworm "$ROOTFS" http://deb.debian.org/debian >"$WORK/debootstrap.log" 2>&1 \
        || { tail -20 "$WORK/debootstrap.log" >&2; exit 1; }
    rm -rf "$ROOTFS/var/cache/apt/archives/"*.deb "$ROOTFS/var/lib/apt/lists/"*
fi
install_agent
ln -sfn "$ROOTFS" "$OUT/rootfs"
chmod 644 "$OUT/vmlinuz" "$OUT/initramfs.cpio.gz"
touch "$OUT/.done"
# older builds of the kernel + initramfs (9 MB each) are of no further use
find "$CACHE" -mindepth 1 -maxdepth 1 -type d -regextype posix-extended -regex '.*/[0-9a-f]{16}' ! -path "$OUT" -exec rm -rf {} +
echo "guest built in $(( $(date +%s) - t0 )) s: kernel $KVER, initramfs $(du -h "$OUT/initramfs.cpio.gz" | cut -f1), rootfs $(du -sh "$ROOTFS" | cut -f1)" >&2
echo "$OUT"
