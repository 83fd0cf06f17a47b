"""What this host has for VMs, from /proc and /sys: cores and memory, less what VMs cannot use.

Isolated cores (``isolcpus=``, listed in /sys/devices/system/cpu/isolated: kept
for pinned real-time work, OVS-DPDK poll-mode threads and the like) and the
hugepage pool (taken out of MemTotal at boot, usable only by hugepage-backed
guests, and never by a balloon) are not capacity the shares may divide.
Shared by the monitors (the sample's ``C``) and ``rescoin doctor``.
"""

from __future__ import annotations

import os
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
