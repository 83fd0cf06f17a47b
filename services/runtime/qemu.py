"""Which process runs a libvirt domain's QEMU: the monitor reads its counters, the actuator writes its
cgroup, both from the same pid."""

from __future__ import annotations

import os
from pathlib import Path


def qemu_name_arg(name: str) -> bytes:
    return f"guest={name.replace(',', ',,')}".encode()


def is_qemu_of(cmdline: bytes, name: str) -> bool:
    """Does this command line (NUL-separated) run QEMU for domain ``name`` (``-name guest=<name>,...``)?"""
    args = cmdline.split(b"\0")
    want = qemu_name_arg(name)
    for flag, value in zip(args, args[1:], strict=False):
        if flag == b"-name" and (value == want or value.startswith(want + b",") or value == name.encode()):
            return True
    return False


class QemuPids:
    """The QEMU pid of a running domain: libvirt's pid file, checked; else one scan of /proc per period."""

    def __init__(self, proc_root: str = "/proc", pid_dirs: tuple[str, ...] = ("/run/libvirt/qemu",)) -> None:
        self.proc_root = Path(proc_root)
        self.pid_dirs = [Path(d) for d in pid_dirs]
        self._scan: dict[bytes, int] | None = None  # cmdline -> pid, from this period's scan

    def new_period(self) -> None:
        self._scan = None

    def _cmdline(self, pid: int) -> bytes:
        try:
            return (self.proc_root / str(pid) / "cmdline").read_bytes()
        except OSError:
            return b""

    def __call__(self, name: str, dom_id: int) -> int | None:
        for directory in self.pid_dirs:
            try:
                pid = int((directory / f"{name}.pid").read_text().strip())
            except (OSError, ValueError):
                continue
            if is_qemu_of(self._cmdline(pid), name):
                return pid
        if self._scan is None:
            self._scan = {}
            for entry in os.scandir(self.proc_root):
                if entry.name.isdigit():
                    cmdline = self._cmdline(int(entry.name))
                    if b"-name\0" in cmdline:
                        self._scan[cmdline] = int(entry.name)
        for cmdline, pid in self._scan.items():
            if is_qemu_of(cmdline, name):
                return pid
        return None
