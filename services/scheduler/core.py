"""The scheduler's logic: pair each sample with its estimate, allocate, keep the coins.

Socket-free: ``on_sample``/``on_estimate`` take decoded envelopes and return
the `alloc` to publish; ``on_period`` lets a sample whose estimate never came
fall back to its last use. The runtime (main.py) owns sockets and the clock.

The period's decision (policy, floors, fit hysteresis, shares and ceilings
per the enforcement mode) is ``step.decide``, the same function
`rescoin evaluate` runs; this class pairs messages, keeps the coin ledger and
the state ``decide`` needs from one period to the next: the fit streak and
the last alloc's ceilings (the throttled-demand probe, and the memory
balloons that shrink gradually and hold under pressure).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rescoin.proto import KIND_ALLOC, KIND_ESTIMATE, KIND_SAMPLE, Envelope, topic_prefix
from rescoin.proto.messages import NO_LIMIT, Alloc, Estimate, Sample

from ..runtime.service import Health, Outgoing
from ..runtime.support import Counters, move_aside
from .ledger import CoinLedger, LedgerStateError
from .pressure import MemoryPressure
from .settings import SchedulerSettings
from .step import decide

COUNTERS = ("floors_over_capacity", "mem_pressured")  # in hb from the start (deploy/prometheus alerts on them)

log = logging.getLogger("rescoin.scheduler")


@dataclass
class _Pending:
    env: Envelope  # the sample waiting for its estimate


class SchedulerCore:
    """One host's scheduler: ledger, pairing, policy, floors, persistence."""

    name = "scheduler"

    def __init__(
        self,
        host: str,
        settings: SchedulerSettings,
        counters: Counters,
        state_dir: Path | None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host = host
        self.monotonic = monotonic  # what really passed between samples, whatever the wall clock did
        self.credited_at: float | None = None
        self.settings = settings
        self.counters = counters
        self.ledger_path = state_dir / settings.ledger_file if state_dir else None
        self.ledger = self._restore()
        self.pending: dict[int, _Pending] = {}  # period of the sample -> it
        self.estimates: dict[int, Estimate] = {}  # period the estimate is for -> it
        self.last_source = ""
        self.floors_over_capacity = False
        self.ledger_dirty = False
        # periods in a row each resource's demand has fit; starts "fit" (a fresh start imposes no ceilings)
        self.fit_streak = np.full(4, settings.fit_after_periods)
        # the last alloc's VMs and the ceilings the actuator enforces for it
        self.last_alloc_ceilings: tuple[list[str], np.ndarray] = ([], np.zeros((0, 4)))

    def _restore(self) -> CoinLedger:
        if self.ledger_path is None or not self.ledger_path.exists():
            return CoinLedger(self.settings.coin_window)
        try:
            ledger = CoinLedger.load(self.ledger_path, self.settings.coin_window)
            log.info(
                "coin ledger restored from %s: %d VMs, period %d", self.ledger_path, len(ledger.vms), ledger.period
            )
            return ledger
        except LedgerStateError as exc:
            kept = move_aside(self.ledger_path)
            self.counters.reject(
                "ledger", f"corrupt state file (kept as {kept or 'nothing'}), starting with an empty ledger: {exc}", log
            )
            return CoinLedger(self.settings.coin_window)

    def subscriptions(self) -> list[bytes]:
        return [topic_prefix(KIND_SAMPLE, self.host), topic_prefix(KIND_ESTIMATE, self.host)]

    def on_message(self, env: Envelope) -> list[Outgoing]:
        if env.kind == KIND_SAMPLE:
            return self.on_sample(env)
        if env.kind == KIND_ESTIMATE:
            return self.on_estimate(env)
        return []

    def on_sample(self, env: Envelope) -> list[Outgoing]:
        """Credit coins for the period that ended; allocate now if its estimate is already here."""
        sample: Sample = env.body
        now = self.monotonic()
        elapsed = None if self.credited_at is None else round((now - self.credited_at) / sample.period_s)
        steps = self.ledger.clock_steps
        arrived = [vm for vm in sample.carried_vms if vm not in self.ledger.vms]  # with coins from elsewhere
        if self.ledger.credit(env.period, sample.vms, sample.template, sample.usage, sample.capacity, elapsed):
            self.credited_at = now
            self._take_carried(sample, arrived)
            self.counters.inc("clock_steps", self.ledger.clock_steps - steps)
        self.ledger_dirty = True  # saved by flush(), right after this period's alloc is out
        estimate = self.estimates.pop(env.period + 1, None)
        if estimate is not None:
            return [self._allocate(env, estimate)]
        self.pending[env.period] = _Pending(env)
        return []

    def _take_carried(self, sample: Sample, arrived: list[str]) -> None:
        """VMs new to this ledger whose domain carried a balance (a migration): they start from it."""
        if not arrived:
            return
        carried = dict(zip(sample.carried_vms, sample.carried_coins, strict=True))
        at = {vm: i for i, vm in enumerate(sample.vms)}
        for vm in arrived:
            cut = self.ledger.seed(vm, carried[vm], sample.template[at[vm]], sample.capacity)
            self.counters.inc("coins_carried_in")
            if cut:
                self.counters.reject(
                    "carried_coins", f"VM {vm} carried more coins than a window here could earn: bounded", log
                )
            log.info("VM %s arrived with coins %s", vm, np.round(carried[vm], 4).tolist())

    def on_estimate(self, env: Envelope) -> list[Outgoing]:
        """An estimate for period p+1 completes the sample of period p."""
        pending = self.pending.pop(env.period - 1, None)
        if pending is None:
            self.estimates = {p: e for p, e in self.estimates.items() if p >= env.period - 2}
            self.estimates[env.period] = env.body
            return []
        return [self._allocate(pending.env, env.body)]

    def on_period(self, ended_period: int) -> list[Outgoing]:
        """Samples that waited too long for their estimate are allocated on last use."""
        out = []
        for period in sorted(self.pending):
            pending = self.pending[period]
            # sample p arrives at the boundary that ends p: wait whole periods after it
            if ended_period - period >= self.settings.estimate_wait_periods:
                del self.pending[period]
                self.counters.inc("estimate_missing")
                out.append(self._allocate(pending.env, None))
        return out

    def _allocate(self, sample_env: Envelope, estimate: Estimate | None) -> Outgoing:
        sample: Sample = sample_env.body
        demand, source = sample.usage, "last_use"
        if estimate is not None:
            demand, source = self._demand_from(sample, estimate), "estimate"
        coins = self.ledger.balances(sample.vms)
        decision = decide(
            demand,
            sample.usage,
            sample.template,
            sample.capacity,
            coins,
            self._last_ceilings(sample.vms),
            self.fit_streak,
            self.settings,
            MemoryPressure.from_sample(sample),
        )
        self.fit_streak = decision.fit_streak
        if decision.mem_pressured.any():
            self.counters.inc("mem_pressured", int(decision.mem_pressured.sum()))  # VM-periods held or grown
        self.floors_over_capacity = decision.floors_over_capacity
        if self.floors_over_capacity:
            self.counters.inc("floors_over_capacity")
        self.last_alloc_ceilings = (sample.vms, decision.ceiling_in_force)
        self.last_source = source
        self.counters.inc(f"alloc.{source}")
        body = Alloc(
            vms=sample.vms,
            alloc=decision.alloc,
            coins=coins,
            template=sample.template,
            usage=sample.usage,
            capacity=sample.capacity,
            shares=decision.shares,
            ceiling=np.where(np.isinf(decision.ceiling), NO_LIMIT, decision.ceiling),
            enforcement=decision.enforcement,
            mode=["fit" if f else "contended" for f in decision.fit],
            policy=self.settings.policy,
            estimate_source=source,
        )
        return Outgoing(KIND_ALLOC, sample_env.period + 1, body)

    def _last_ceilings(self, vms: list[str]) -> np.ndarray:
        """The last alloc's ceilings in ``vms`` order (inf for a VM it did not have: nothing capped it)."""
        last_vms, ceiling = self.last_alloc_ceilings
        if last_vms == vms:
            return ceiling
        index = {vm: i for i, vm in enumerate(last_vms)}
        rows = np.array([index.get(vm, -1) for vm in vms], dtype=int)
        padded = np.vstack([ceiling, np.full((1, 4), np.inf)])  # row -1: no ceiling
        return padded[rows]

    def _demand_from(self, sample: Sample, estimate: Estimate) -> np.ndarray:
        """The estimate's rows in the sample's VM order; a VM it lacks falls back to its use."""
        if estimate.vms == sample.vms:
            return np.asarray(estimate.estimate)
        index = {vm: i for i, vm in enumerate(estimate.vms)}
        demand = np.array(sample.usage, dtype=float)
        for row, vm in enumerate(sample.vms):
            if vm in index:
                demand[row] = estimate.estimate[index[vm]]
            else:
                self.counters.inc("estimate_row_missing")
        return demand

    def flush(self) -> None:
        """Persist the ledger if it changed (the runtime calls this once answers are published)."""
        if self.ledger_dirty and not self.pending:  # not while a sample waits for its estimate
            self._save()
            self.ledger_dirty = False

    def _save(self) -> None:
        if self.ledger_path is None:
            return
        try:
            self.ledger.save(self.ledger_path)
        except OSError as exc:
            self.counters.reject("ledger", f"cannot save the coin ledger: {exc}", log)

    def health(self) -> Health:
        state = "degraded" if self.last_source == "last_use" or self.floors_over_capacity else "ok"
        return Health(
            state,
            {
                "policy": self.settings.policy,
                "coin_window": self.settings.coin_window,
                "vms": len(self.ledger.vms),
                "estimate_source": self.last_source or "none",
            },
        )

    def close(self) -> list[Outgoing]:
        self._save()
        return []
