"""The trace-driven virtual host: VMs replaying real traces under the actuator's tunables.

Each VM's demand for period p is one row of its trace (``samples_per_period``
trace samples per period, wrapping around the trace). What it achieves is
docs/DESIGN.md §7.14/§9.3's enforcement model (services/model/enforcement.py, the one
model shared with `rescoin evaluate`) given the shares and ceilings the
actuator set. Cumulative counters grow linearly in time at the achieved rate,
so a monitor reading them at any two moments gets the exact rate between them,
whatever its phase relative to the sim host's period clock.

The core owns no socket and reads no clock: every method that depends on time
takes ``now_ns``.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from rescoin.proto import CPU, DISK, MEM, NET, NO_LIMIT, RESOURCES
from rescoin.proto.simhost import HostInfo, HostStats, Tunables, WriteResult

from ..model.enforcement import enforce
from ..model.scenario import size_host
from ..model.traces import load_bitbrains
from .settings import SimhostSettings

DEFAULT_CPU_SHARES = 1024.0  # libvirt's cpu_shares when nobody set one
UUID_NAMESPACE = uuid.UUID("5f0e7c1a-3b7d-4c5e-9a57-7265736f696e")  # "rescoin" sim VMs


@dataclass(frozen=True)
class Workload:
    """What the sim host replays: per-VM demand over time and the sizes it was sold."""

    names: list[str]
    traces: list[str]
    demand: np.ndarray  # (T, n, 4): demand per trace sample, resource units
    read_share: np.ndarray  # (T, n): part of disk traffic that is reads (0..1)
    rx_share: np.ndarray  # (T, n): part of net traffic that is received (0..1)
    provisioned: np.ndarray  # (n, 4): VM size; demand is clipped to it
    template: np.ndarray  # (n, 4)
    capacity: np.ndarray  # (4,)


def replicate(traces: list, n_vms: int) -> list:
    """More VMs than trace files: reuse the traces, each copy shifted by a prime number of
    samples so the copies do not burst in step (names get a ``-<copy>`` suffix)."""
    out = list(traces)
    while len(out) < n_vms:
        base = traces[len(out) % len(traces)]
        copy = len(out) // len(traces)
        shift = 97 * copy
        out.append(
            replace(
                base,
                vm_id=f"{base.vm_id}-{copy}",
                demand=np.roll(base.demand, shift, axis=0),
                read_share=np.roll(base.read_share, shift),
                rx_share=np.roll(base.rx_share, shift),
            )
        )
    return out


def build_workload(settings: SimhostSettings) -> Workload:
    """Load the configured traces and derive sizes, templates and a contended host capacity.

    Templates follow the burstable-instance model: ``template_fraction`` of the
    provisioned size (vcpus and memory from the trace; disk and net sized at
    the VM's peak). Capacity lies ``contention`` of the way from Σ templates
    to the peak of total demand, unless given explicitly.
    """
    traces = load_bitbrains(settings.traces_dir or None, settings.traces or None, settings.n_vms)
    if not settings.traces and settings.n_vms > len(traces):
        traces = replicate(traces, settings.n_vms)
    provisioned = np.stack([t.provisioned for t in traces])  # (n, 4)
    demand = np.stack([t.demand for t in traces], axis=1)  # (T, n, 4)
    demand = np.minimum(demand, provisioned[None, :, :])
    template, capacity = size_host(provisioned, demand, settings.template_fraction, settings.contention)
    if settings.capacity:
        capacity = np.asarray(settings.capacity, dtype=float)
    return Workload(
        names=[f"bb-{t.vm_id}" for t in traces],
        traces=[Path(t.path).name for t in traces],
        demand=demand,
        read_share=np.stack([t.read_share for t in traces], axis=1),
        rx_share=np.stack([t.rx_share for t in traces], axis=1),
        provisioned=provisioned,
        template=template,
        capacity=capacity,
    )


class SimHost:
    """The simulated host's state: tunables, the current period's rates, cumulative counters."""

    def __init__(
        self,
        host: str,
        period_s: float,
        workload: Workload,
        now_ns: int,
        samples_per_period: int = 1,
        start_sample: int = 0,
    ) -> None:
        self.host = host
        self.period_s = period_s
        self.work = workload
        self.samples_per_period = samples_per_period
        self.start_sample = start_sample
        n = len(workload.names)
        self.vms = [str(uuid.uuid5(UUID_NAMESPACE, f"{host}/{name}")) for name in workload.names]
        self.index = {vm: i for i, vm in enumerate(self.vms)}
        self.initial_shares = np.zeros((n, 4))
        self.initial_shares[:, CPU] = DEFAULT_CPU_SHARES
        self.initial_shares[:, DISK] = 1.0
        self.initial_shares[:, NET] = 1.0
        self.initial_ceiling = np.full((n, 4), NO_LIMIT)
        self.shares = self.initial_shares.copy()
        self.ceiling = self.initial_ceiling.copy()
        self.counters = np.zeros((n, 5))  # at self.last_ns: cpu ns, rd, wr, rx, tx bytes
        self.below_template = np.zeros((n, 4))
        self.period = self._period_of(now_ns)
        self.origin = self.period  # the period that replays start_sample
        self.last_ns = now_ns
        self.stepped_back_ns = 0  # how far the wall clock stepped back since start: the counters' clock did not
        self._violated = np.zeros((n, 4), dtype=bool)  # a ceiling below template this period
        self.changed = False  # tunables changed since the last saved_state()
        self._start_period()

    def _period_of(self, now_ns: int) -> int:
        return math.floor(now_ns / 1e9 / self.period_s)

    def _demand_row(self, period: int) -> int:
        step = (period - self.origin) * self.samples_per_period
        return (self.start_sample + step) % self.work.demand.shape[0]

    def _start_period(self) -> None:
        row = self._demand_row(self.period)
        self.demand = self.work.demand[row]  # (n, 4)
        self.read_share = self.work.read_share[row]
        self.rx_share = self.work.rx_share[row]
        self._violated = self._below_template()
        self._recompute()

    def _below_template(self) -> np.ndarray:
        capped = self.ceiling != NO_LIMIT
        return capped & (self.ceiling < self.work.template * (1 - 1e-9))

    def _effective_ceiling(self) -> np.ndarray:
        """Ceilings in resource units, inf where none; memory's 'none' is the provisioned size."""
        ceiling = np.where(self.ceiling == NO_LIMIT, np.inf, self.ceiling)
        ceiling[:, MEM] = np.minimum(ceiling[:, MEM], self.work.provisioned[:, MEM])
        return ceiling

    def _recompute(self) -> None:
        self.achieved = enforce(self.demand, self.shares, self._effective_ceiling(), self.work.capacity)
        cpu, disk, net = self.achieved[:, CPU], self.achieved[:, DISK], self.achieved[:, NET]
        # counter growth per second: cpu ns, disk rd/wr bytes, net rx/tx bytes
        self.rates = np.stack(
            [
                cpu * 1e9,
                disk * self.read_share,
                disk * (1 - self.read_share),
                net * self.rx_share,
                net * (1 - self.rx_share),
            ],
            axis=1,
        )

    def advance(self, now_ns: int) -> None:
        """Run the host up to ``now_ns``: grow the counters, cross period boundaries."""
        if now_ns <= self.last_ns:
            if self.last_ns - now_ns > 2 * self.period_s * 1e9:  # the wall clock stepped back: follow it
                step = self._period_of(self.last_ns) - self._period_of(now_ns)
                self.origin -= step  # the traces go on where they were, not an hour back
                self.period -= step
                self.stepped_back_ns += self.last_ns - now_ns
                self.last_ns = now_ns
            return  # the counters never run backwards
        while True:
            boundary_ns = round((self.period + 1) * self.period_s * 1e9)
            until = min(now_ns, boundary_ns)
            self.counters += self.rates * ((until - self.last_ns) / 1e9)
            self.last_ns = until
            if now_ns < boundary_ns:
                return
            self.below_template += self._violated
            # a long pause (sim host stopped by a debugger...) skips periods, not replays them
            self.period = max(self.period + 1, self._period_of(now_ns) - 1)
            self._start_period()

    def describe(self) -> HostInfo:
        """The host, its VMs, their sizes and templates, and the tunables they booted with."""
        return HostInfo(
            host=self.host,
            period_s=self.period_s,
            capacity=self.work.capacity,
            vms=list(self.vms),
            names=list(self.work.names),
            template=self.work.template,
            provisioned=self.work.provisioned,
            initial_shares=self.initial_shares,
            initial_ceiling=self.initial_ceiling,
            traces=list(self.work.traces),
        )

    def stats(self, now_ns: int) -> HostStats:
        """Counters and current use at ``now_ns`` (what the monitor's sim backend reads)."""
        self.advance(now_ns)
        return HostStats(
            now_ns=self.last_ns + self.stepped_back_ns,  # the counters' clock: never back, even if the wall's was
            period=self.period,
            vms=list(self.vms),
            counters=self.counters.copy(),
            mem_used=self.achieved[:, MEM].copy(),
            mem_target=self._effective_ceiling()[:, MEM],
            demand=self.demand.copy(),
            achieved=self.achieved.copy(),
            below_template=self.below_template + self._violated,
        )

    def tunables(self) -> Tunables:
        """The shares and ceilings in force."""
        return Tunables(list(self.vms), self.shares.copy(), self.ceiling.copy())

    def set_tunables(self, writes: list[dict], now_ns: int) -> WriteResult:
        """Apply validated writes (proto.simhost.check_write); bad ones are reported, not raised."""
        self.advance(now_ns)
        changed = 0
        errors = []
        for write in writes:
            i = self.index.get(write["vm"])
            r = RESOURCES.index(write["resource"])
            error = self._write_error(write, i, r)
            if error:
                errors.append({"vm": write["vm"], "resource": write["resource"], "error": error})
                continue
            before = (self.shares[i, r], self.ceiling[i, r])
            self.shares[i, r] = write.get("shares", self.shares[i, r])
            self.ceiling[i, r] = write.get("ceiling", self.ceiling[i, r])
            changed += before != (self.shares[i, r], self.ceiling[i, r])
        self.changed = self.changed or changed > 0
        self._violated |= self._below_template()
        self._recompute()
        return WriteResult(changed, errors)

    def _write_error(self, write: dict, i: int | None, r: int) -> str:
        if i is None:
            return "no such VM on this sim host"
        ceiling = write.get("ceiling", NO_LIMIT)
        if ceiling != NO_LIMIT and ceiling < 0:
            return "ceiling must be >= 0 or -1 (none)"
        if r == MEM and ceiling > self.work.provisioned[i, MEM]:
            return "balloon target above the VM's memory size"
        if r == MEM and write.get("shares", 0.0) != 0.0:
            return "memory has no shares"
        return ""

    def saved_state(self) -> dict:
        """Tunables and trace position, JSON-able: a real host keeps its state across restarts."""
        self.changed = False
        return {
            "vms": list(self.vms),
            "shares": self.shares.tolist(),
            "ceiling": self.ceiling.tolist(),
            "origin_period": self.origin,
        }

    def load_state(self, state: dict) -> bool:
        """Take what saved_state() gave; False (and nothing changed) if it does not fit."""
        try:
            shares = np.asarray(state["shares"], dtype=float)
            ceiling = np.asarray(state["ceiling"], dtype=float)
            origin = int(state["origin_period"])
            fits = state["vms"] == self.vms and shares.shape == ceiling.shape == self.shares.shape
        except (KeyError, TypeError, ValueError):
            return False
        if not fits or not (np.isfinite(shares).all() and np.isfinite(ceiling).all()):
            return False
        self.shares, self.ceiling, self.origin = shares, ceiling, origin
        self._start_period()  # the trace row and the rates follow the restored state
        return True
