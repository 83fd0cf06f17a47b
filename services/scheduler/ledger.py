"""The coin ledger: each VM's unused entitlement over the last k periods.

``s_i(t) = (tc_i(t) − au_i(t)) / C`` per resource (normalized by capacity so
resources are comparable); the balance is the sum of the last ``k`` of them
(the seed's ``ac += s(t−1) − s(t−k−1)``, a sliding window kept in a ring
buffer — the window really slides here). Rows follow VMs by UUID as they come
and go. Saved atomically every period and restored on restart.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np

from ..runtime.support import atomic_write

log = logging.getLogger("rescoin.scheduler.ledger")


class LedgerStateError(ValueError):
    """The state file exists but cannot be used."""


class CoinLedger:
    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError("the coin window must be at least one period")
        self.window = window
        self.vms: list[str] = []
        self.ring = np.zeros((window, 0, 4))  # (k, n, 4): savings of the last k periods
        self.total = np.zeros((0, 4))  # (n, 4): the ring's sum, kept as the seed did: += new − oldest
        self.slot = 0  # where the next period's savings go
        self.period = -1  # last period credited
        self.clock_steps = 0  # wall-clock steps followed (not saved: a count for hb)

    def balances(self, vms: list[str]) -> np.ndarray:
        """Coin balance (n, 4) of ``vms``, in their order; a VM never seen has none."""
        if vms == self.vms:
            return self.total.copy()
        total = self.total
        index = {vm: i for i, vm in enumerate(self.vms)}
        rows = np.array([index.get(vm, -1) for vm in vms], dtype=int)
        out = np.zeros((len(vms), 4))
        known = rows >= 0
        out[known] = total[rows[known]]
        return out

    def credit(
        self,
        period: int,
        vms: list[str],
        template: np.ndarray,
        usage: np.ndarray,
        capacity: np.ndarray,
        elapsed: int | None = None,
    ) -> bool:
        """Add period ``period``'s savings; VMs absent from ``vms`` leave the ledger. False if it was
        already credited (a repeated or old sample).

        ``elapsed``: the periods since the last credit by a clock that never steps. Period numbers come
        from the wall clock; where they jump back by more than 2, or ahead by more than a window beyond
        what ``elapsed`` says, the wall clock stepped: the numbers are followed, and the window slides
        by what really passed, so a step neither freezes the coins for its length nor wipes them."""
        gap = period - self.period if self.period >= 0 else 1
        stepped = self.period >= 0 and (gap < -2 or (elapsed is not None and gap - elapsed > self.window))
        if stepped:
            self.clock_steps += 1
            gap = max(elapsed or 1, 1)
        elif gap <= 0:
            return False
        self._align(vms)
        savings = (template - usage) / np.where(capacity > 0, capacity, 1.0)
        skipped = min(gap - 1, self.window)
        for _ in range(skipped):  # periods nobody reported save nothing
            self.total -= self.ring[self.slot]
            self.ring[self.slot] = 0.0
            self.slot = (self.slot + 1) % self.window
        self.total += savings - self.ring[self.slot]
        self.ring[self.slot] = savings
        self.slot = (self.slot + 1) % self.window
        self.period = period
        return True

    def seed(self, vm: str, coins: np.ndarray, template: np.ndarray, capacity: np.ndarray) -> bool:
        """Start ``vm`` (already in the ledger, with at most this period's savings) from the balance its
        domain carried from another host, spread evenly over the window so it slides out as any other
        savings would. What a window could not have earned here (more than k periods of a full template
        saved, or overdrawn by more than k periods of the whole host) is cut to that: metadata is
        writable by whoever can define domains. True if the balance had to be cut."""
        row = self.vms.index(vm)
        per_period = np.where(capacity > 0, capacity, 1.0)
        rest = self.window - 1  # the window's other periods: this one's savings are credited already
        lo, hi = rest * (template - capacity) / per_period, rest * template / per_period
        bounded = np.clip(coins, lo, hi)
        self.ring[:, row] += bounded / self.window
        self.total[row] += bounded
        return bool((bounded != coins).any())

    def _align(self, vms: list[str]) -> None:
        if vms == self.vms:
            return
        index = {vm: i for i, vm in enumerate(self.vms)}
        ring = np.zeros((self.window, len(vms), 4))
        for new_row, vm in enumerate(vms):
            old_row = index.get(vm)
            if old_row is not None:
                ring[:, new_row] = self.ring[:, old_row]
        self.vms = list(vms)
        self.ring = ring
        self.total = ring.sum(axis=0)

    def save(self, path: Path) -> None:
        buf = io.BytesIO()
        meta = json.dumps({"window": self.window, "slot": self.slot, "period": self.period, "vms": self.vms})
        np.savez(buf, ring=self.ring, meta=np.frombuffer(meta.encode(), dtype=np.uint8))
        atomic_write(path, buf.getvalue())

    @classmethod
    def load(cls, path: Path, window: int) -> CoinLedger:
        """Restore from ``path``; raises LedgerStateError if it is unreadable or inconsistent."""
        try:
            with np.load(path, allow_pickle=False) as data:
                ring = np.array(data["ring"], dtype=float)
                meta = json.loads(bytes(data["meta"]).decode())
            vms, slot, period, saved_window = meta["vms"], int(meta["slot"]), int(meta["period"]), int(meta["window"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise LedgerStateError(f"{path}: {type(exc).__name__}: {exc}") from exc
        if ring.shape != (saved_window, len(vms), 4) or not np.isfinite(ring).all() or not 0 <= slot < saved_window:
            raise LedgerStateError(f"{path}: inconsistent ledger (shape {ring.shape}, {len(vms)} VMs)")
        ledger = cls(window)
        ledger.vms, ledger.period = list(vms), period
        if saved_window == window:
            ledger.ring, ledger.slot = ring, slot
            ledger.total = ring.sum(axis=0)
        else:  # the window changed in config: keep the most recent periods that fit
            ordered = np.roll(ring, -slot, axis=0)[-window:]
            ledger.ring = np.zeros((window, len(vms), 4))
            ledger.ring[window - len(ordered) :] = ordered
            ledger.total = ledger.ring.sum(axis=0)
            ledger.slot = 0
        return ledger
