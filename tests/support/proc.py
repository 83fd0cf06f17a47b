"""A process's CPU time and open files, from /proc (tests and benches watching a service)."""

from __future__ import annotations

import os
from pathlib import Path

from rescoin.services.monitor.backend_kernel import parse_proc_stat


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid``, seconds (the monitor's own /proc/<pid>/stat parser)."""
    return parse_proc_stat(Path(f"/proc/{pid}/stat").read_bytes()) / 1e9


def open_fds(pid: int) -> int:
    """How many descriptors ``pid`` holds (0 once it is gone)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0
