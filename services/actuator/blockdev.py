"""Does a disk's I/O scheduler honour cgroup weights? (DESIGN §7: where it does not, fall back to a throttle.)

BFQ divides a device by ``blkio.bfq.weight`` / ``io.bfq.weight``; mq-deadline,
kyber and none ignore weights. A VM disk backed by a file is served by the
device of the file system holding it; a partition by its whole disk's queue.
"""

from __future__ import annotations

import os
from pathlib import Path

WEIGHTED_SCHEDULERS = ("bfq",)


def active_scheduler(path: str, sysfs: str = "/sys") -> str:
    """The I/O scheduler in force for the block device behind ``path`` ("" if unknown)."""
    try:
        st = os.stat(path)
    except OSError:
        return ""
    dev = st.st_rdev if Path(path).is_block_device() else st.st_dev
    return _selected(Path(sysfs, "dev", "block", f"{os.major(dev)}:{os.minor(dev)}"))


def _selected(node: Path) -> str:
    """The bracketed word of a device's queue/scheduler; a partition asks its whole disk."""
    try:
        queue = node / "queue" if (node / "queue").exists() else node.resolve().parent / "queue"
        text = (queue / "scheduler").read_text()
    except OSError:
        return ""
    chosen = [word.strip("[]") for word in text.split() if word.startswith("[")]
    return chosen[0] if chosen else text.strip()


def active_scheduler_of(device: str, sysfs: str = "/sys") -> str:
    """The I/O scheduler of a device given as ``MAJ:MIN`` ("" if unknown)."""
    node = Path(sysfs, "dev", "block", device)
    return _selected(node)


def honours_weights(path: str, sysfs: str = "/sys") -> bool:
    return active_scheduler(path, sysfs) in WEIGHTED_SCHEDULERS
