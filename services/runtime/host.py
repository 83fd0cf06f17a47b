"""What this host has for VMs, from /proc and /sys: cores, memory and its uplinks' speed, less
what VMs cannot use.

Isolated cores (``isolcpus=``, listed in /sys/devices/system/cpu/isolated: kept
for pinned real-time work, OVS-DPDK poll-mode threads and the like) and the
hugepage pool (taken out of MemTotal at boot, usable only by hugepage-backed
guests, and never by a balloon) are not capacity the shares may divide.
The network's C is the sum of the uplinks' link speeds (``uplinks``: the
physical NICs and bonds on a bridge or on the default route) unless
``[monitor] net_bps`` names it; ResCoin shapes one htb tree for the host, so
several uplinks are one link of their summed speed to it. Shared by the
monitors (the sample's ``C``) and ``rescoin doctor``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

KIB = 1024


class HostFactsError(RuntimeError):
    """/proc/meminfo says nothing usable."""


def cpu_list_count(text: str) -> int:
    """How many CPUs a sysfs list like ``2-3,6`` names."""
    count = 0
    for part in filter(None, text.strip().split(",")):
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return count


def isolated_cores(sysfs: str = "/sys") -> int:
    try:
        return cpu_list_count(Path(sysfs, "devices/system/cpu/isolated").read_text())
    except (OSError, ValueError):
        return 0


def usable_cores(sysfs: str = "/sys") -> float:
    """Online cores less the isolated ones (at least one)."""
    return float(max((os.cpu_count() or 1) - isolated_cores(sysfs), 1))


def meminfo(path: str = "/proc/meminfo") -> dict[str, int]:
    """/proc/meminfo's numbers (kB where it says kB, counts for HugePages_*)."""
    fields = {}
    with open(path) as handle:
        for line in handle:
            key, _, value = line.partition(":")
            words = value.split()
            if words and words[0].isdigit():
                fields[key] = int(words[0])
    return fields


def hugepage_pool_bytes(meminfo_path: str = "/proc/meminfo") -> float:
    try:
        fields = meminfo(meminfo_path)
    except OSError:
        return 0.0
    return float(fields.get("HugePages_Total", 0) * fields.get("Hugepagesize", 0) * KIB)


def host_memory_bytes(meminfo_path: str = "/proc/meminfo") -> float:
    """MemTotal less the hugepage pool."""
    fields = meminfo(meminfo_path)
    if "MemTotal" not in fields:
        raise HostFactsError(f"no MemTotal in {meminfo_path}")
    return fields["MemTotal"] * KIB - hugepage_pool_bytes(meminfo_path)


UNKNOWN_LINK_BPS = 125e6  # bytes/s (1 Gbit/s) for a host whose uplinks do not say their speed


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def default_route_devices(route_table: str = "/proc/net/route") -> set[str]:
    lines = _read(Path(route_table)).splitlines()[1:]
    return {fields[0] for fields in (line.split() for line in lines) if len(fields) > 1 and fields[1] == "00000000"}


def uplinks(sys_class_net: str = "/sys/class/net", route_table: str = "/proc/net/route") -> dict[str, float]:
    """This host's uplinks and their speed, bytes/s each way: the physical NICs and bonds that are up
    and carry traffic off the host (a bridge's port, or the default route's device), a bond's ports
    counted as the bond. A speed the driver does not know (-1: virtio, some VFs) is left out."""
    root = Path(sys_class_net)
    routed = default_route_devices(route_table)
    found = {}
    for dev in sorted(root.iterdir()) if root.is_dir() else ():
        master = dev / "master"
        physical = (dev / "device").exists() or (dev / "bonding").is_dir()
        bridged = (master / "bridge").is_dir()
        if not physical or (master / "bonding").is_dir() or not (bridged or dev.name in routed):
            continue
        speed = _read(dev / "speed")
        if _read(dev / "operstate") == "up" and speed.lstrip("-").isdigit() and int(speed) > 0:
            found[dev.name] = int(speed) * 1e6 / 8
    return found


def network_capacity_bps(configured: float, find: Callable[[], dict[str, float]] = uplinks) -> tuple[float, str]:
    """(C for the network, how it was chosen): the configured number if any (> 0; sysfs is not read
    then), else the sum of the uplinks' speeds (``find``), else 1 Gbit/s."""
    if configured > 0:
        return configured, "configured ([monitor] net_bps)"
    found = find()
    if found:
        return sum(found.values()), ", ".join(f"{dev} {bps * 8 / 1e9:g} Gbit/s" for dev, bps in found.items())
    return UNKNOWN_LINK_BPS, "no uplink says its speed: 1 Gbit/s assumed (set [monitor] net_bps)"
