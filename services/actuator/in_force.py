"""What is in force per VM and resource, as matrices: the actuator's picture of the kernel.

One row per VM the actuator has read (its settings as read then, or as written since), so an apply
compares an alloc's (n, 4) targets with what is set in a few numpy operations, not n × 4 Python
ones. Rows of VMs that are forgotten are reused, so the table is as large as the most VMs seen at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .backend import RESOURCES, Setting


class InForce:
    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.rows: dict[str, int] = {}
        self.free: list[int] = []
        self.ceiling = np.zeros((0, len(RESOURCES)))  # NO_LIMIT = none
        self.shares = np.zeros((0, len(RESOURCES)))  # 0 = unset

    def __contains__(self, vm: str) -> bool:
        return vm in self.rows

    def put(self, vm: str, settings: Sequence[Setting]) -> None:
        row = self.rows.get(vm)
        if row is None:
            row = self.free.pop() if self.free else self._grow()
            self.rows[vm] = row
        self.ceiling[row] = [s.ceiling for s in settings]
        self.shares[row] = [s.shares for s in settings]

    def _grow(self) -> int:
        used = len(self.rows) + len(self.free)
        if used == len(self.ceiling):  # doubling: n puts cost O(n) copies in all
            more = max(used, 16)
            self.ceiling = np.vstack([self.ceiling, np.zeros((more, len(RESOURCES)))])
            self.shares = np.vstack([self.shares, np.zeros((more, len(RESOURCES)))])
        return used

    def index(self, vms: Sequence[str]) -> np.ndarray:
        """The rows of ``vms`` (every one must be in the table), in their order."""
        return np.fromiter((self.rows[vm] for vm in vms), dtype=np.intp, count=len(vms))

    def settings(self, vm: str) -> list[Setting]:
        row = self.rows[vm]
        return [Setting(c, w) for c, w in zip(self.ceiling[row].tolist(), self.shares[row].tolist(), strict=True)]

    def drop(self, vm: str) -> None:
        row = self.rows.pop(vm, None)
        if row is not None:
            self.free.append(row)
