"""The monitor's logic: readings and guest reports in, one `sample` per period out.

Socket-free and clock-free: ``observe(reading, period)`` takes a HostReading
(cumulative counters) and returns the Sample for that period; ``on_guest_mem``
takes a decoded guest report. Rules:

* rates are counter deltas over the readings' time difference: cpu cores,
  disk read+write bytes/s, net rx+tx bytes/s;
* a VM seen for the first time has no rate yet: it joins the sample from its
  second reading on (the scheduler then starts its coins from a real value);
* a counter that goes backwards (the VM restarted) resets that VM's baseline;
  for that period it reports its previous rates (no spike, no coin windfall);
* a VM that disappears drops out of the next sample;
* memory use: the VM's agent report if not older than 2 periods (source
  ``guest``), else balloon stats (``balloon``), else the current balloon size
  (``none``: a VM whose use is unknown is taken to use what it has, so it
  earns no memory coins and is never ballooned below it);
* memory pressure (``mem_psi_some``, ``mem_psi_full``: PSI avg10 in %;
  ``mem_majflt``, ``mem_swapin``: per second) comes from the same fresh agent
  report, field by field; ``mem_unreclaimable`` (bytes) from the balloon
  stats (actual - usable): the median of the last ``UNRECLAIMABLE_READINGS``
  stats the guest refreshed after the balloon was last seen moving. Both
  filters were found on a real guest (tests/e2e/vm/test_real_vms_memory.py):
  while the balloon moves, QEMU's ``actual`` is current and the guest's
  ``usable`` up to a stats period old, so their difference swung by ±60 MiB
  a period and drove a floor-only balloon into the guest's OOM killer; and
  while a thrashing guest fills a large inflation its MemAvailable drops
  for a reading or two (164 MiB "unreclaimable" against 94 at rest), which
  set a floor-only balloon oscillating between 110 and 180 MiB. Whatever
  nobody told the monitor is UNKNOWN (-1), never 0: an old agent, a kernel
  without /proc/pressure, a first report without rates, a guest without
  balloon stats;
* a reading with bad values (NaN, negative) is rejected for that VM only,
  counted and logged; the other VMs' sample still goes out.
"""

from __future__ import annotations

import collections
import logging
import math
import statistics
from dataclasses import dataclass

import numpy as np
from rescoin.proto import Envelope, GuestMem
from rescoin.proto.messages import UNKNOWN, Sample

from ..runtime.support import Counters
from .backend import DomainReading, HostCapacity, HostReading
from .settings import MonitorSettings

log = logging.getLogger("rescoin.monitor")
ABSURD_GUEST_FACTOR = 1.5  # a guest claiming more than this times its max memory is lying
# the sample's pressure vectors and where each comes from: a fresh guest report's field, else balloon stats
GUEST_PRESSURE = ("psi_some_avg10", "psi_full_avg10", "pgmajfault_per_s", "pswpin_per_s")
SAMPLE_PRESSURE = ("mem_psi_some", "mem_psi_full", "mem_majflt", "mem_swapin", "mem_unreclaimable")


@dataclass
class _Balloon:
    size: float  # the balloon's actual size at the last reading, bytes
    moved_at_s: float  # when a reading first showed it at that size (the backend's clock)
    unreclaimable: collections.deque[float]  # actual - usable of the last fresh stats (see above)


BALLOON_MOVED_BYTES = 2**20  # a smaller change is not a balloon move
UNRECLAIMABLE_READINGS = 5


@dataclass
class _Baseline:
    ts_ns: int
    counters: tuple[float, float, float]  # cpu ns, disk bytes, net bytes
    rates: tuple[float, float, float] | None = None  # the last good rates


def capacity_vector(host: HostCapacity, settings: MonitorSettings, uplink_bps: float) -> np.ndarray:
    """C: host cores and memory minus the reserve; disk/net from the backend, else config (net: else the
    uplinks' speed, ``uplink_bps``)."""
    return np.array(
        [
            max(host.cores - settings.reserve_cores, 0.0),
            max(host.mem_bytes - settings.reserve_mem_bytes, 0.0),
            host.disk_bps if host.disk_bps is not None else settings.disk_bps,
            host.net_bps if host.net_bps is not None else uplink_bps,
        ]
    )


class MonitorCore:
    def __init__(self, settings: MonitorSettings, counters: Counters) -> None:
        self.settings = settings
        self.counters = counters
        self.baselines: dict[str, _Baseline] = {}
        self.guest: dict[str, tuple[int, GuestMem]] = {}  # vm -> (period received, report)
        self.known: dict[str, float] = {}  # vm -> max memory, from the last reading
        self.balloons: dict[str, _Balloon] = {}

    def on_guest_mem(self, env: Envelope, period: int) -> None:
        """Keep the latest report of a VM we know; reject the rest."""
        report: GuestMem = env.body
        mem_max = self.known.get(report.vm)
        if mem_max is None:
            self.counters.reject("guest_unknown_vm", f"guest.mem for unknown VM {report.vm}", log)
            return
        if report.mem_total > ABSURD_GUEST_FACTOR * mem_max:
            self.counters.reject(
                "guest_absurd",
                f"VM {report.vm} claims MemTotal {report.mem_total} B, its maximum is {mem_max:.0f} B",
                log,
            )
            return
        self.guest[report.vm] = (period, report)
        self.counters.inc("guest_reports")

    def template_of(self, dom: DomainReading) -> list[float]:
        """tc: the backend's (metadata) values, else the config table, else the defaults."""
        table = self.settings.templates.get(dom.uuid) or self.settings.templates.get(dom.name) or {}
        derived = [
            float(dom.vcpus),
            float(dom.mem_max_bytes),
            self.settings.default_disk_bps,
            self.settings.default_net_bps,
        ]
        out = []
        for r, key in enumerate(("cpu_cores", "mem_bytes", "disk_bps", "net_bps")):
            value = dom.template[r]
            out.append(value if value is not None else float(table.get(key, derived[r])))
        return out

    def observe(self, reading: HostReading, period: int, period_s: float, capacity: np.ndarray) -> Sample:
        """The sample of ``period`` from this reading and the previous one."""
        vms, names, templates, usages, sources = [], [], [], [], []
        carried: dict[str, tuple[float, float, float, float]] = {}  # coins a migrated VM's domain brought
        pressure: list[tuple[float, ...]] = []  # rows of SAMPLE_PRESSURE
        present = set()
        for dom in reading.domains:
            present.add(dom.uuid)
            self.known[dom.uuid] = dom.mem_max_bytes
            problem = self._bad_values(dom)
            if problem:
                self.counters.reject("stats", f"VM {dom.name} ({dom.uuid}): {problem}", log)
                continue
            rates = self._rates(dom, reading.ts_ns if reading.monotonic_ns is None else reading.monotonic_ns)
            if rates is None:
                continue
            mem, source = self._memory(dom, period)
            vms.append(dom.uuid)
            names.append(dom.name)
            templates.append(self.template_of(dom))
            usages.append([rates[0], mem, rates[1], rates[2]])
            sources.append(source)
            if dom.carried_coins is not None:
                carried[dom.uuid] = dom.carried_coins
            pressure.append(self._pressure(dom, period, self._unreclaimable(dom, reading.ts_ns / 1e9)))
        for gone in set(self.baselines) - present:
            del self.baselines[gone]
            self.guest.pop(gone, None)
            self.known.pop(gone, None)
            self.balloons.pop(gone, None)
        n = len(vms)
        columns = np.array(pressure, dtype=float).reshape(n, len(SAMPLE_PRESSURE)).T
        return Sample(
            capacity=capacity,
            vms=vms,
            names=names,
            template=np.array(templates, dtype=float).reshape(n, 4),
            usage=np.array(usages, dtype=float).reshape(n, 4),
            mem_source=sources,
            period_s=period_s,
            **{name: columns[i].copy() for i, name in enumerate(SAMPLE_PRESSURE)},
            carried_vms=list(carried),
            carried_coins=np.array(list(carried.values()), dtype=float).reshape(len(carried), 4),
        )

    @staticmethod
    def _bad_values(dom: DomainReading) -> str:
        values = {
            "vcpus": dom.vcpus,
            "mem_max_bytes": dom.mem_max_bytes,
            "mem_current_bytes": dom.mem_current_bytes,
            "cpu_time_ns": dom.cpu_time_ns,
            "disk_bytes": dom.disk_bytes,
            "net_bytes": dom.net_bytes,
            "balloon_used_bytes": dom.balloon_used_bytes,
            "balloon_unreclaimable_bytes": dom.balloon_unreclaimable_bytes,
        }
        for name, value in values.items():
            if value is not None and (not isinstance(value, int | float) or not math.isfinite(value) or value < 0):
                return f"{name} is {value!r}"
        for value in dom.template:
            if value is not None and (not math.isfinite(value) or value < 0):
                return f"template value {value!r}"
        return ""

    def _rates(self, dom: DomainReading, ts_ns: int) -> tuple[float, float, float] | None:
        counters = (dom.cpu_time_ns or 0.0, dom.disk_bytes or 0.0, dom.net_bytes or 0.0)
        base = self.baselines.get(dom.uuid)
        self.baselines[dom.uuid] = _Baseline(ts_ns, counters, base.rates if base else None)
        if base is None:
            return None  # first sight: a rate needs two readings
        dt = (ts_ns - base.ts_ns) / 1e9
        deltas = [now - before for now, before in zip(counters, base.counters, strict=True)]
        if dt <= 0 or min(deltas) < 0:
            self.counters.inc("counter_resets")
            log.info("VM %s: counters went backwards (restart?); baseline reset", dom.name)
            return base.rates or (0.0, 0.0, 0.0)
        rates = (deltas[0] / 1e9 / dt, deltas[1] / dt, deltas[2] / dt)
        self.baselines[dom.uuid].rates = rates
        return rates

    def _fresh_report(self, vm: str, period: int) -> GuestMem | None:
        report = self.guest.get(vm)
        fresh = report is not None and period - report[0] <= self.settings.guest_report_max_age_periods
        return report[1] if fresh else None  # type: ignore[index]

    def _unreclaimable(self, dom: DomainReading, now_s: float) -> float | None:
        """The median actual - usable of the last stats the guest refreshed after the balloon was last seen
        moving (without a stats time: when it has not moved since the last reading); None before any.
        At first sight nobody saw it move: the stats are taken as they are."""
        before = self.balloons.get(dom.uuid)
        if before is None:
            state = _Balloon(dom.mem_current_bytes, -math.inf, collections.deque(maxlen=UNRECLAIMABLE_READINGS))
            moved = False
        else:
            moved = abs(dom.mem_current_bytes - before.size) > BALLOON_MOVED_BYTES
            state = _Balloon(dom.mem_current_bytes, now_s, before.unreclaimable) if moved else before
        if dom.balloon_stats_at_s is not None:
            fresh = dom.balloon_stats_at_s > state.moved_at_s
        else:
            fresh = not moved
        if fresh and dom.balloon_unreclaimable_bytes is not None:
            state.unreclaimable.append(dom.balloon_unreclaimable_bytes)
        self.balloons[dom.uuid] = state
        return statistics.median(state.unreclaimable) if state.unreclaimable else None

    def _pressure(self, dom: DomainReading, period: int, unreclaimable: float | None) -> tuple[float, ...]:
        """One row of the sample's pressure vectors (SAMPLE_PRESSURE order); UNKNOWN where nobody told us."""
        report = self._fresh_report(dom.uuid, period)
        told = [getattr(report, name) if report is not None else None for name in GUEST_PRESSURE]
        told.append(unreclaimable)
        return tuple(UNKNOWN if value is None else float(value) for value in told)

    def _memory(self, dom: DomainReading, period: int) -> tuple[float, str]:
        report = self._fresh_report(dom.uuid, period)
        if report is not None:
            return float(report.mem_used), "guest"
        if dom.balloon_used_bytes is not None:
            return float(dom.balloon_used_bytes), "balloon"
        return float(dom.mem_current_bytes), "none"
