"""Does a disk's I/O scheduler honour cgroup weights? (docs/DESIGN.md §7.8: where it does not, fall back to a throttle.)

BFQ divides a device by ``blkio.bfq.weight`` / ``io.bfq.weight``; mq-deadline,
kyber and none ignore weights. A VM disk backed by a file is served by the
device of the file system holding it; a partition by its whole disk's queue;
a device-mapper or md device (LVM, dm-crypt, RAID) has no scheduler of its
own ("none") and is served by the physical devices below it (its
``slaves/``), so those are the ones asked.
"""

from __future__ import annotations

import os
from pathlib import Path

WEIGHTED_SCHEDULERS = ("bfq",)


def _node(path: str, sysfs: str) -> Path | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    dev = st.st_rdev if Path(path).is_block_device() else st.st_dev
    return Path(sysfs, "dev", "block", f"{os.major(dev)}:{os.minor(dev)}")


def _leaves(node: Path) -> list[Path]:
    """The physical devices under a block device: itself, or what its ``slaves/`` resolve to, recursively."""
    try:
        real = node.resolve()
        whole = real if (real / "queue").exists() or not (real.parent / "queue").exists() else real.parent
        below = sorted((whole / "slaves").iterdir()) if (whole / "slaves").is_dir() else []
    except OSError:
        return [node]
    if not below:
        return [whole]
    return [leaf for slave in below for leaf in _leaves(slave)]


def parse_scheduler(text: str) -> tuple[str, list[str]]:
    """(the active I/O scheduler, every one offered) from a queue/scheduler file: "[none] mq-deadline"."""
    words = text.split()
    chosen = [word.strip("[]") for word in words if word.startswith("[")]
    return (chosen[0] if chosen else text.strip()), [word.strip("[]") for word in words]


def _selected(node: Path) -> str:
    """The bracketed word of a device's queue/scheduler; a partition asks its whole disk."""
    try:
        queue = node / "queue" if (node / "queue").exists() else node.resolve().parent / "queue"
        return parse_scheduler((queue / "scheduler").read_text())[0]
    except OSError:
        return ""


def kernel_offers_bfq(sysfs: str = "/sys") -> bool:
    """Some block device offers BFQ (built in, or its module loaded): a kernel without it has none."""
    for scheduler in Path(sysfs, "block").glob("*/queue/scheduler"):
        try:
            if "bfq" in parse_scheduler(scheduler.read_text())[1]:
                return True
        except OSError:
            continue
    return False


def schedulers(path: str, sysfs: str = "/sys") -> list[str]:
    """The I/O schedulers in force on the physical devices behind ``path`` ("" where unknown)."""
    node = _node(path, sysfs)
    return [_selected(leaf) for leaf in _leaves(node)] if node is not None else [""]


def active_scheduler(path: str, sysfs: str = "/sys") -> str:
    """The I/O scheduler behind ``path``: the one its devices share, else "mixed: a, b" ("" if unknown)."""
    found = sorted(set(schedulers(path, sysfs)))
    return found[0] if len(found) == 1 else "mixed: " + ", ".join(found)


def active_scheduler_of(device: str, sysfs: str = "/sys") -> str:
    """The I/O scheduler of a device given as ``MAJ:MIN`` ("" if unknown)."""
    return _selected(Path(sysfs, "dev", "block", device))
