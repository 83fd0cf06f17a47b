"""A cgroup's CPU weight and quota as files: v1 cpu.shares + cpu.cfs_quota_us / cpu.cfs_period_us,
v2 cpu.weight + cpu.max. The cgroup backend's groups and the libvirt backend's direct path (a
domain's own group, which libvirt reads back live) both go through here.

Weights are the raw numbers the file takes (the caller scales them into the layout's range); a
quota is in µs per period, -1 for none.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CpuFiles:
    directory: Path
    layout: str  # "v1" or "v2"

    def names(self) -> str:
        return "cpu.shares + cpu.cfs_quota_us" if self.layout == "v1" else "cpu.weight + cpu.max"

    def _read(self, name: str) -> str:
        return (self.directory / name).read_text().strip()

    def _write(self, name: str, value: str) -> None:
        (self.directory / name).write_text(value)

    def read(self) -> tuple[int, int, int]:
        """(raw weight, quota µs or -1, period µs); OSError or ValueError if unreadable."""
        if self.layout == "v1":
            quota, period = int(self._read("cpu.cfs_quota_us")), int(self._read("cpu.cfs_period_us"))
            return int(self._read("cpu.shares")), quota if quota > 0 else -1, period
        max_quota, max_period = self._read("cpu.max").split()
        return int(self._read("cpu.weight")), -1 if max_quota == "max" else int(max_quota), int(max_period)

    def write(self, weight: int | None, quota_us: int, period_us: int) -> None:
        """The quota first, then the weight (None: left as it is), each file on its own: a refused weight
        does not cost the quota. OSError names the file that refused."""
        if self.layout == "v1":
            self._write("cpu.cfs_period_us", str(period_us))
            self._write("cpu.cfs_quota_us", str(quota_us))
        else:
            self._write("cpu.max", f"{'max' if quota_us < 0 else quota_us} {period_us}")
        if weight is not None:
            self._write("cpu.shares" if self.layout == "v1" else "cpu.weight", str(weight))
