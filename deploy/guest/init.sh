#!/bin/busybox sh
# /init of ResCoin's test guest (busybox initramfs; Python from a 9p root filesystem).
# Kernel command line: rescoin.mode=burn,disk,net,agent (any of them), rescoin.name=NAME,
#   rescoin.burn_after=SECONDS (start burning only then: the VM saves coins before it bursts),
#   rescoin.claim=UUID (tests only: the agent reports as another VM, which the host must refuse),
#   rescoin.ip=ADDR/LEN (the address of the NIC that is not QEMU user networking),
#   rescoin.sink=IP:PORT (mode net: stream zeros there over TCP, reconnecting forever)
/bin/busybox mkdir -p /bin /sbin /proc /sys /dev /tmp /mnt/root
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
exec 0</dev/console 1>/dev/console 2>&1
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover \
         net_failover virtio_net virtio_blk virtio_balloon netfs fscache 9pnet 9pnet_virtio 9p; do
    [ -f /lib/modules/$m.ko ] && insmod /lib/modules/$m.ko 2>/dev/null
done
arg() { for kv in $(cat /proc/cmdline); do case "$kv" in "$1="*) echo "${kv#*=}";; esac; done; }
NAME=$(arg rescoin.name); MODE=$(arg rescoin.mode)
CLAIM=$(arg rescoin.claim); CLAIM=${CLAIM:+--uuid $CLAIM}   # tests: a guest lying about who it is
ip link set lo up
USERNET_MAC=52:54:00:12:34:56   # the QEMU user-networking NIC (tests/e2e/vm/domains.py); the host is 10.0.2.2
for dev in /sys/class/net/eth*; do
    [ -e "$dev" ] || continue
    nic=${dev##*/}; ip link set "$nic" up
    if [ "$(cat "$dev/address")" = "$USERNET_MAC" ]; then
        ip addr add 10.0.2.15/24 dev "$nic"; ip route add default via 10.0.2.2 dev "$nic"
    elif [ -n "$(arg rescoin.ip)" ]; then
        ip addr add "$(arg rescoin.ip)" dev "$nic"
    fi
done
UUID=$(cat /sys/class/dmi/id/product_uuid 2>/dev/null | tr A-F a-f)
echo "RESCOIN-BOOTED name=$NAME uuid=$UUID mode=$MODE uptime=$(cut -d' ' -f1 /proc/uptime)"
DELAY=$(arg rescoin.burn_after)
case ",$MODE," in *,burn,*)
    (sleep "${DELAY:-0}"; echo "RESCOIN-BURN start at $(cut -d' ' -f1 /proc/uptime)"
     i=0; while [ $i -lt $(nproc) ]; do (while :; do :; done) & i=$((i+1)); done) & ;;
esac
case ",$MODE," in *,disk,*)
    (while :; do dd if=/dev/vda of=/dev/null bs=1M 2>/dev/null; echo 3 >/proc/sys/vm/drop_caches; done) & ;;
esac
case ",$MODE," in *,net,*)
    SINK=$(arg rescoin.sink)
    (while :; do nc "${SINK%:*}" "${SINK##*:}" </dev/zero; sleep 1; done) & ;;
esac
case ",$MODE," in *,agent,*)
    if mount -t 9p -o trans=virtio,version=9p2000.L,ro rootfs /mnt/root; then
        mount -t proc proc /mnt/root/proc; mount -t sysfs sys /mnt/root/sys
        mount -t devtmpfs dev /mnt/root/dev 2>/dev/null
        mount -t 9p -o trans=virtio,version=9p2000.L,ro keys /mnt/root/mnt
        echo "RESCOIN-AGENT starting at $(cut -d' ' -f1 /proc/uptime)"
        (chroot /mnt/root env PYTHONPATH=/opt/rescoin python3 -m rescoin.guest_agent.agent \
            --bind tcp://0.0.0.0:5556 --key /mnt/agent.key_secret --server-key /mnt/server.key $CLAIM 2>&1 \
            | sed 's/^/RESCOIN-AGENT /') &
    else
        echo "RESCOIN-AGENT no 9p rootfs"
    fi ;;
esac
while :; do
    echo "RESCOIN-TICK name=$NAME up=$(cut -d' ' -f1 /proc/uptime) $(awk '/^MemTotal:|^MemAvailable:/{printf "%s%s ", $1, $2}' /proc/meminfo)"
    sleep 5
done
