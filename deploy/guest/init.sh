#!/bin/busybox sh
# /init of ResCoin's test guest (busybox initramfs; Python from a 9p root filesystem).
# Kernel command line: rescoin.mode=burn,disk,net,agent (any of them), rescoin.name=NAME,
#   rescoin.burn_after=SECONDS (start burning only then: the VM saves coins before it bursts),
#   rescoin.claim=UUID (tests only: the agent reports as another VM, which the host must refuse),
#   rescoin.ip=ADDR/LEN (the address of the NIC that is not QEMU user networking),
#   rescoin.sink=IP:PORT (mode net: stream zeros there over TCP, reconnecting forever)
# Mode cgroup2: the guest is a cgroup-v2-only host: cgroup2 mounted with the cpu, io and memory
#   controllers, then /mnt/cgroup2_check.py (from the read-only "keys" share) runs ResCoin's cgroup
#   backend against it; its lines are printed as RESCOIN-CGROUP2.
# Mode mem: touch a working set of W MiB of /dev/vda through mmap, page by page in a random order
#   without readahead, in a loop, so its page cache is what the guest lives on (evicted, a page
#   comes back as one major fault and a PSI stall); W is read from ws_mib in the read-only "keys" share before every pass (the host can
#   grow or shrink it live), 32 when absent, at most the disk's size. Mode agent2: the agent
#   speaks the previous guest format (--format 2).
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
ROOT_MOUNTED=
mount_root() {   # the Python root filesystem (9p, read-only) with /proc, /sys, /dev and the keys share
    [ -n "$ROOT_MOUNTED" ] && return 0
    mount -t 9p -o trans=virtio,version=9p2000.L,ro rootfs /mnt/root || return 1
    mount -t proc proc /mnt/root/proc; mount -t sysfs sys /mnt/root/sys
    mount -t devtmpfs dev /mnt/root/dev 2>/dev/null
    mount -t 9p -o trans=virtio,version=9p2000.L,ro keys /mnt/root/mnt
    ROOT_MOUNTED=1
}
WORKING_SET_PY='
import mmap, os, random, time
MIB, PAGE = 1 << 20, 4096
fd = os.open("/dev/vda", os.O_RDONLY)
disk = os.lseek(fd, 0, os.SEEK_END)
pages = mmap.mmap(fd, disk, prot=mmap.PROT_READ)
pages.madvise(mmap.MADV_RANDOM)  # no readahead: each page evicted from the set is one major fault
order = list(range(0, disk, PAGE))
random.Random(1).shuffle(order)  # random order: the kernel cannot guess the next page either
def wanted():
    try:
        return min(int(open("/mnt/ws_mib").read()), disk // MIB)
    except (OSError, ValueError):
        return 32
ws, offsets, passes, since = -1, [], 0, time.monotonic()
while True:
    want = wanted()  # one read of the share per pass
    if want != ws:
        ws, offsets = want, [o for o in order if o < want * MIB]
    for offset in offsets:
        pages[offset]
    passes += 1
    if time.monotonic() - since >= 5:
        print(f"ws_mib={ws} passes={passes}", flush=True)
        passes, since = 0, time.monotonic()
    time.sleep(0.05)  # a working set touched all the time, by a guest that leaves its agent some CPU
'
case ",$MODE," in *,mem,*)
    if mount_root; then
        echo "RESCOIN-MEM starting at $(cut -d' ' -f1 /proc/uptime)"
        (chroot /mnt/root python3 -c "$WORKING_SET_PY" 2>&1 | sed 's/^/RESCOIN-MEM /') &
    else
        echo "RESCOIN-MEM no 9p rootfs"
    fi ;;
esac
case ",$MODE," in *,cgroup2,*)
    if mount_root; then
        mount -t cgroup2 cgroup2 /mnt/root/sys/fs/cgroup
        echo "+cpu +io +memory" > /mnt/root/sys/fs/cgroup/cgroup.subtree_control
        echo "RESCOIN-CGROUP2 controllers=$(cat /mnt/root/sys/fs/cgroup/cgroup.subtree_control)"
        (chroot /mnt/root env PYTHONPATH=/opt/rescoin python3 /mnt/cgroup2_check.py 2>&1 \
            | sed 's/^/RESCOIN-CGROUP2 /') &
    else
        echo "RESCOIN-CGROUP2 no 9p rootfs"
    fi ;;
esac
case ",$MODE," in *,agent,*|*,agent2,*)
    FORMAT=; case ",$MODE," in *,agent2,*) FORMAT="--format 2";; esac
    if mount_root; then
        echo "RESCOIN-AGENT starting at $(cut -d' ' -f1 /proc/uptime)"
        (chroot /mnt/root env PYTHONPATH=/opt/rescoin python3 -m rescoin.guest_agent.agent \
            --bind tcp://0.0.0.0:5556 --key /mnt/agent.key_secret --server-key /mnt/server.key $CLAIM $FORMAT 2>&1 \
            | sed 's/^/RESCOIN-AGENT /') &
    else
        echo "RESCOIN-AGENT no 9p rootfs"
    fi ;;
esac
while :; do
    echo "RESCOIN-TICK name=$NAME up=$(cut -d' ' -f1 /proc/uptime) $(awk '/^MemTotal:|^MemAvailable:|^Cached:|^Mapped:|^Active.file.:|^Inactive.file.:/{printf "%s%s ", $1, $2}' /proc/meminfo)$(awk '/^pgmajfault /{printf "pgmajfault=%s ", $2}' /proc/vmstat)$(sed -n 's/^full avg10=\([0-9.]*\).*/psi_full_avg10=\1/p' /proc/pressure/memory 2>/dev/null)"
    sleep 5
done
