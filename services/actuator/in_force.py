"""What is in force per VM and resource, as matrices: the actuator's picture of the kernel.

One row per VM the actuator has read (its settings as read then, or as written since; ``known`` says
which resources could be read: an unread one is never written), so an apply
compares an alloc's (n, 4) targets with what is set in a few numpy operations, not n × 4 Python
ones. Rows of VMs that are forgotten are reused, so the table is as large as the most VMs seen at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from rescoin.proto import RESOURCES

from .backend import Setting


class InForce:
    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.rows: dict[str, int] = {}
        self.free: list[int] = []
        self.ceiling = np.zeros((0, len(RESOURCES)))  # NO_LIMIT = none
        self.weight = np.zeros((0, len(RESOURCES)))  # 0 = unset
        self.known = np.zeros((0, len(RESOURCES)), dtype=bool)  # read from the backend (else never written)

    def __contains__(self, vm: str) -> bool:
        return vm in self.rows

    def put(self, vm: str, settings: Sequence[Setting | None]) -> None:
        """What is set for ``vm``, per resource; None where it could not be read."""
        row = self.rows.get(vm)
        if row is None:
            row = self.free.pop() if self.free else self._grow()
            self.rows[vm] = row
        self.ceiling[row] = [s.ceiling if s else -1.0 for s in settings]
        self.weight[row] = [s.weight if s else 0.0 for s in settings]
        self.known[row] = [s is not None for s in settings]

    def _grow(self) -> int:
        used = len(self.rows) + len(self.free)
        if used == len(self.ceiling):  # doubling: n puts cost O(n) copies in all
            more = max(used, 16)
            self.ceiling = np.vstack([self.ceiling, np.zeros((more, len(RESOURCES)))])
            self.weight = np.vstack([self.weight, np.zeros((more, len(RESOURCES)))])
            self.known = np.vstack([self.known, np.zeros((more, len(RESOURCES)), dtype=bool)])
        return used

    def index(self, vms: Sequence[str]) -> np.ndarray:
        """The rows of ``vms`` (every one must be in the table), in their order."""
        return np.fromiter((self.rows[vm] for vm in vms), dtype=np.intp, count=len(vms))

    def settings(self, vm: str) -> list[Setting | None]:
        row = self.rows[vm]
        values = zip(self.ceiling[row].tolist(), self.weight[row].tolist(), self.known[row].tolist(), strict=True)
        return [Setting(c, w) if known else None for c, w, known in values]

    def drop(self, vm: str) -> None:
        row = self.rows.pop(vm, None)
        if row is not None:
            self.free.append(row)
