"""Bus messages → Prometheus metrics, socket-free.

``ExporterCore.on_message`` keeps the latest sample, estimate, alloc, applied
and hb of every host; ``collect(now)`` turns them into metric families. A VM
that leaves a host's sample leaves the metrics with it; every per-VM series
carries the domain name the host's latest sample gives it. Names carry their
unit, following Prometheus conventions (<unit> below = cpu_cores,
memory_bytes, disk_bytes_per_second, network_bytes_per_second):

| metric | labels | meaning (message it comes from) |
| --- | --- | --- |
| rescoin_vm_{usage,template}_<unit> | host, vm, name | measured use, template (sample) |
| rescoin_vm_estimate_<unit> | host, vm, name | predicted demand (estimate) |
| rescoin_vm_allocation_<unit> | host, vm, name | allocation (alloc) |
| rescoin_vm_entitlement_<unit> | host, vm, name | min(demand, template), demand = the estimate the alloc was |
|   | | made from, or its use where it says `est_src` last_use (alloc + estimate of its period) |
| rescoin_vm_shares_<unit> | host, vm, name | kernel weights in resource units, cpu/disk/net only (alloc) |
| rescoin_vm_ceiling_<unit> | host, vm, name | ceiling in force; absent = none (applied `set`) |
| rescoin_vm_coins | host, vm, resource | coin balance (unitless, capacity-normalized) (alloc) |
| rescoin_host_capacity_<unit> | host | C (sample) |
| rescoin_host_period_seconds | host | the host's control period (sample) |
| rescoin_message_age_seconds | host, kind | seconds since the last sample/estimate/alloc/applied arrived |
| rescoin_control_loop_latency_seconds | host | histogram: end of the measured period → `applied` sent |
|   | | (applied ts − its period's start; normal and dry-run applies) |
| rescoin_actuator_apply_latency_seconds | host | histogram of applied `latency_s`: alloc received → last write |
| rescoin_service_up | host, service | 1 while heartbeats arrive |
| rescoin_service_state | host, service, state | 1 for the current state |
| rescoin_service_events_total | host, service, counter | the service's hb counters |
| rescoin_service_last_period | host, service | last period it reported |
| rescoin_host_up | host | 1 while anything arrives from the host (within down_after_misses of its periods); |
|   | | every host of the fleet (``[exporter] fleet``) from the start, 0 until heard, and every host heard |
| rescoin_host_silent_seconds | host | seconds since the host was last heard (hosts heard since the exporter started) |
| rescoin_host_name_collision | host | 1 while two live streams share the host's name (one service, two epochs |
|   | | alternating) within the last COLLISION_HOLD_PERIODS periods |

What it keeps is bounded: a host (its messages, latencies, estimates, its
``rescoin_host_*`` series unless it is in the fleet) or a (host, service) heard
nothing from for ``forget_after_s`` is dropped at the next period (counted
``series_forgotten``; a fleet host stays, at ``rescoin_host_up`` 0), and at most ``max_hosts`` hosts,
``max_services`` (host, service) pairs and ``max_vms`` (host, vm) label sets
over all hosts are kept: a message that would pass a cap is not taken in,
counted ``series_capped.{host,service,vm}`` in the exporter's own hb counters
and logged (rate-limited, as every rejection).
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Iterator, Sequence

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from rescoin.proto import RESOURCES, SERVICE_STATES, Envelope
from rescoin.proto.messages import Alloc, Estimate

from ..runtime.service import Health, Outgoing
from ..runtime.support import Counters
from ..tools.buses import CollisionWatch

log = logging.getLogger("rescoin.exporter")

LABELS = ["host", "vm", "name"]  # of every per-VM gauge
UNIT_SUFFIX = ("cpu_cores", "memory_bytes", "disk_bytes_per_second", "network_bytes_per_second")
RATE_RESOURCES = (0, 2, 3)  # cpu, disk, net: the resources kernel weights apply to (memory's share is not enforced)
VM_MATRICES = {
    "sample": (("usage", "usage"), ("template", "template")),
    "estimate": (("estimate", "estimate"),),
    "alloc": (("allocation", "alloc"),),
}
AGED_KINDS = ("sample", "estimate", "alloc", "applied")
LOOP_MODES = ("normal", "dry-run")  # applies that close the loop (failsafe and restore answer no sample)
# seconds; a period is 1 s by default, so the interesting range is a few ms to a few periods
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
KEEP_ESTIMATES = 4  # estimates kept per host to pair with the alloc of the same period
# the exporter's own hb counters, present from its first heartbeat
CORE_COUNTERS = ("series_capped", "series_forgotten", "name_collisions")
# rescoin_host_name_collision stays 1 this many of the host's periods after the last sign of two streams
COLLISION_HOLD_PERIODS = 10
DEFAULT_PERIOD_S = 1.0  # a fleet host never heard: its period is not known yet


class LatencyHistogram:
    """Cumulative counts of observations, Prometheus-style (buckets are upper bounds, then +Inf)."""

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # per bucket, not cumulative; the last is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, count in zip((*(repr(b) for b in self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, float(running)))
        return out


def entitlement(alloc: Alloc, estimate: Estimate | None) -> np.ndarray | None:
    """min(demand, template) per VM and resource, (n, 4), with the demand the scheduler started from.

    The estimate of the alloc's period where it says ``est_src`` estimate (a VM
    the estimate lacks: its use, as the scheduler does), the use where it says
    last_use; None if the estimate it was made from never reached us. The
    scheduler may raise a pinned VM's demand above its estimate, so this is a
    lower bound of the entitlement it honoured: never one it did not promise.
    """
    demand = np.array(alloc.usage, dtype=float)
    if alloc.estimate_source == "estimate":
        if estimate is None:
            return None
        index = {vm: i for i, vm in enumerate(estimate.vms)}
        for row, vm in enumerate(alloc.vms):
            if vm in index:
                demand[row] = estimate.estimate[index[vm]]
    return np.minimum(demand, alloc.template)


class ExporterCore:
    name = "exporter"

    def __init__(
        self,
        down_after_misses: int = 3,
        forget_after_s: float = 86400.0,
        max_services: int = 4096,
        max_hosts: int = 1024,
        max_vms: int = 20000,
        counters: Counters | None = None,
        fleet: Sequence[str] = (),
    ) -> None:
        self.down_after = down_after_misses
        self.forget_after_s = forget_after_s
        self.max_services = max_services
        self.max_hosts = max_hosts
        self.max_vms = max_vms
        self.counters = counters if counters is not None else Counters(declared=CORE_COUNTERS)
        self.lock = threading.Lock()
        self.heard: dict[str, float] = {}  # host -> last sample/estimate/alloc/applied from it (monotonic)
        self.host_vms: dict[str, dict[str, int]] = {}  # host -> kind -> VMs in its latest message of that kind
        self.total_vms = 0  # sum over hosts of the most VMs any of its kept messages names
        self.latest: dict[tuple[str, str], Envelope] = {}  # (host, kind) -> last message
        self.seen: dict[tuple[str, str], float] = {}  # (host, kind) -> when it arrived (monotonic)
        self.beats: dict[tuple[str, str], tuple[float, Envelope]] = {}  # (host, service) -> (seen, hb)
        self.estimates: dict[str, dict[int, Estimate]] = {}  # host -> period -> estimate for it
        self.entitled: dict[str, tuple[list[str], np.ndarray]] = {}  # host -> (vms, entitlement (n, 4))
        self.loop_latency: dict[str, LatencyHistogram] = {}
        self.apply_latency: dict[str, LatencyHistogram] = {}
        self.fleet = list(dict.fromkeys(fleet))  # hosts that must be heard: rescoin_host_up from the start
        self.host_last: dict[str, tuple[float, float]] = {}  # host -> (last message of any kind, its period_s)
        self.collisions = CollisionWatch()
        self.collided: dict[str, float] = {}  # host -> last time two of its streams alternated (monotonic)

    def subscriptions(self) -> list[bytes]:
        return [b"sample/", b"estimate/", b"alloc/", b"applied/", b"hb/"]

    def on_message(self, env: Envelope, now: float | None = None) -> list[Outgoing]:
        now = now if now is not None else time.monotonic()
        with self.lock:
            if env.kind == "hb":
                key = (env.host, env.body.service)
                if key not in self.beats and len(self.beats) >= self.max_services:
                    self._capped("service", f"hb of {env.body.service:.40} on {env.host:.40}", self.max_services)
                    return []
                self.beats[key] = (now, env)
                self.host_last[env.host] = (now, float(env.body.period_s))
                if self.collisions.see(env.host, env.body.service, env.epoch):
                    self.collided[env.host] = now
                    self.counters.inc("name_collisions")
                return []
            if not self._room_for(env):
                return []
            _, period_s = self.host_last.get(env.host, (now, DEFAULT_PERIOD_S))
            self.host_last[env.host] = (now, period_s)
            self.latest[(env.host, env.kind)] = env
            self.seen[(env.host, env.kind)] = now
            self.heard[env.host] = now
            if env.kind == "estimate":
                kept = self.estimates.setdefault(env.host, {})
                kept[env.period] = env.body
                for old in sorted(kept)[:-KEEP_ESTIMATES]:
                    del kept[old]
            elif env.kind == "alloc":
                matrix = entitlement(env.body, self.estimates.get(env.host, {}).get(env.period))
                if matrix is None:
                    self.entitled.pop(env.host, None)  # no pair, no claim
                else:
                    self.entitled[env.host] = (list(env.body.vms), matrix)
            elif env.kind == "applied":
                self._observe_applied(env)
        return []

    def _capped(self, what: str, detail: str, cap: int) -> None:
        self.counters.fail("series_capped", what, f"{detail} not kept: {cap} {what}s already (max_{what}s)", log)

    def _room_for(self, env: Envelope) -> bool:
        """Whether ``env``'s host and VMs fit under the caps; if so, its VM count is booked."""
        kinds = self.host_vms.get(env.host)
        if kinds is None and len(self.host_vms) >= self.max_hosts:
            self._capped("host", f"{env.kind} from {env.host:.40}", self.max_hosts)
            return False
        old = max(kinds.values(), default=0) if kinds else 0
        vms = getattr(env.body, "vms", ())
        new = max(len(vms), *(n for k, n in (kinds or {}).items() if k != env.kind), 0)
        if self.total_vms - old + new > self.max_vms:
            self._capped("vm", f"{env.kind} of {len(vms)} VMs from {env.host:.40}", self.max_vms)
            return False
        self.host_vms.setdefault(env.host, {})[env.kind] = len(vms)
        self.total_vms += new - old
        return True

    def forget(self, now: float) -> int:
        """Drop the hosts and (host, service) pairs not heard from for ``forget_after_s``; how many went."""
        horizon = now - self.forget_after_s
        with self.lock:
            hosts = [h for h, at in self.heard.items() if at < horizon]
            services = [key for key, (at, _) in self.beats.items() if at < horizon]
            for host in hosts:
                del self.heard[host]
                self.total_vms -= max(self.host_vms.pop(host, {}).values(), default=0)
                for kind in AGED_KINDS:
                    self.latest.pop((host, kind), None)
                    self.seen.pop((host, kind), None)
                for table in (self.estimates, self.entitled, self.loop_latency, self.apply_latency):
                    table.pop(host, None)
            for key in services:
                del self.beats[key]
            self.collisions.forget(services)
            for host in [h for h, (at, _) in self.host_last.items() if at < horizon]:
                del self.host_last[host]  # a fleet host keeps rescoin_host_up 0 without it
                self.collided.pop(host, None)
        gone = len(hosts) + len(services)
        if gone:
            self.counters.inc("series_forgotten", gone)
            log.info("forgot %d hosts and %d services not heard from for %.0f s", len(hosts), len(services),
                     self.forget_after_s)  # fmt: skip
        return gone

    def _observe_applied(self, env: Envelope) -> None:
        if env.body.mode not in LOOP_MODES:
            return
        self.apply_latency.setdefault(env.host, LatencyHistogram()).observe(float(env.body.latency_s))
        loop = self.loop_latency.setdefault(env.host, LatencyHistogram())  # from 0, so rate() sees the first
        sample = self.latest.get((env.host, "sample"))
        if sample is None:
            return  # the period length comes from the host's sample
        period_s = float(sample.body.period_s)
        # applied for p+1 answers the sample of p: the loop starts when p ends, at (p+1) × period_s
        loop_s = env.ts / 1e9 - env.period * period_s
        if loop_s >= 0:  # a wall clock stepped back between the two says nothing about latency
            loop.observe(loop_s)

    def collect(self, now: float) -> Iterator[Metric]:
        with self.lock:
            latest = dict(self.latest)
            seen = dict(self.seen)
            beats = dict(self.beats)
            entitled = dict(self.entitled)
            host_last = dict(self.host_last)
            collided = dict(self.collided)
            histograms = {
                "rescoin_control_loop_latency_seconds": (
                    "end of the measured period to the applied settings (applied ts - its period's start)",
                    {h: (hist.buckets(), hist.total) for h, hist in self.loop_latency.items()},
                ),
                "rescoin_actuator_apply_latency_seconds": (
                    "the actuator's own latency: alloc received to last backend write (applied latency_s)",
                    {h: (hist.buckets(), hist.total) for h, hist in self.apply_latency.items()},
                ),
            }
        families: dict[str, GaugeMetricFamily] = {}

        def gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
            if name not in families:
                families[name] = GaugeMetricFamily(name, doc, labels=labels)
            return families[name]

        def per_vm(
            host: str, label: str, doc: str, vms: list[str], matrix: np.ndarray, columns: Sequence[int] = range(4)
        ) -> None:
            """One gauge per resource in ``columns``; negative values (-1: no limit) and gone VMs left out."""
            sample = latest.get((host, "sample"))
            names = dict(zip(sample.body.vms, sample.body.names, strict=True)) if sample else {}
            for r in columns:
                fam = gauge(f"rescoin_vm_{label}_{UNIT_SUFFIX[r]}", f"per-VM {doc} of {RESOURCES[r]}", LABELS)
                for i, vm in enumerate(vms):
                    if (not sample or vm in names) and matrix[i, r] >= 0:
                        fam.add_metric([host, vm, names.get(vm, "")], float(matrix[i, r]))

        for (host, kind), env in sorted(latest.items()):
            body = env.body
            for label, attr in VM_MATRICES.get(kind, ()):
                per_vm(host, label, label, body.vms, getattr(body, attr))
            if kind == "alloc":
                per_vm(host, "shares", "kernel weight (resource units)", body.vms, body.shares, RATE_RESOURCES)
                fam = gauge(
                    "rescoin_vm_coins",
                    "coin balance per VM and resource (capacity-normalized, unitless)",
                    ["host", "vm", "resource"],
                )
                keep = set(latest[(host, "sample")].body.vms) if (host, "sample") in latest else set(body.vms)
                for i, vm in enumerate(body.vms):
                    if vm in keep:
                        for r, res in enumerate(RESOURCES):
                            fam.add_metric([host, vm, res], float(body.coins[i, r]))
            if kind == "applied":
                per_vm(host, "ceiling", "ceiling in force (absent: none)", body.vms, body.set)
            if kind == "sample":
                for r, suffix in enumerate(UNIT_SUFFIX):
                    gauge(
                        f"rescoin_host_capacity_{suffix}",
                        f"host capacity of {RESOURCES[r]} after the reserve",
                        ["host"],
                    ).add_metric([host], float(body.capacity[r]))
                gauge("rescoin_host_period_seconds", "the host's control period", ["host"]).add_metric(
                    [host], float(body.period_s)
                )
            if kind in AGED_KINDS:
                gauge(
                    "rescoin_message_age_seconds",
                    "seconds since the host's last message of this kind",
                    ["host", "kind"],
                ).add_metric([host, kind], max(now - seen[(host, kind)], 0.0))
        for host, (vms, matrix) in sorted(entitled.items()):
            per_vm(host, "entitlement", "entitlement min(demand, template)", vms, matrix)
        up = gauge("rescoin_service_up", "1 while the service's heartbeats arrive", ["host", "service"])
        state = gauge("rescoin_service_state", "1 for the state the service reports", ["host", "service", "state"])
        last = gauge("rescoin_service_last_period", "last period the service reported", ["host", "service"])
        events = CounterMetricFamily(
            "rescoin_service_events", "the service's heartbeat counters", labels=["host", "service", "counter"]
        )
        for (host, service), (seen_at, env) in sorted(beats.items()):
            hb = env.body
            up.add_metric([host, service], 1.0 if now - seen_at <= self.down_after * hb.period_s else 0.0)
            for s in SERVICE_STATES:
                state.add_metric([host, service, s], 1.0 if hb.state == s else 0.0)
            last.add_metric([host, service], float(env.period))
            for counter, value in sorted(hb.counters.items()):
                events.add_metric([host, service, counter], float(value))
        host_up = gauge("rescoin_host_up", "1 while anything arrives from the host (0: silent)", ["host"])
        silent = gauge("rescoin_host_silent_seconds", "seconds since anything arrived from the host", ["host"])
        collision = gauge(
            "rescoin_host_name_collision", "1 while two live streams (publishers) share the host's name", ["host"]
        )
        for host in sorted(set(self.fleet) | set(host_last)):
            at, period_s = host_last.get(host, (None, DEFAULT_PERIOD_S))
            host_up.add_metric([host], 1.0 if at is not None and now - at <= self.down_after * period_s else 0.0)
            if at is not None:
                silent.add_metric([host], max(now - at, 0.0))
            hit = collided.get(host)
            recent = hit is not None and now - hit <= COLLISION_HOLD_PERIODS * period_s
            collision.add_metric([host], 1.0 if recent else 0.0)
        yield from families.values()
        yield events
        for name, (doc, per_host) in histograms.items():
            hist = HistogramMetricFamily(name, doc, labels=["host"])
            for host, (buckets, total) in sorted(per_host.items()):
                hist.add_metric([host], buckets, total)
            yield hist

    def on_period(self, ended_period: int, now: float | None = None) -> list[Outgoing]:
        self.forget(now if now is not None else time.monotonic())
        return []

    def health(self) -> Health:
        with self.lock:
            info = {"hosts": len(self.heard), "services": len(self.beats), "vms": self.total_vms}
            if self.fleet:
                now = time.monotonic()
                info["fleet_hosts"] = len(self.fleet)
                info["fleet_silent"] = sum(
                    1
                    for h in self.fleet
                    if (last := self.host_last.get(h)) is None or now - last[0] > self.down_after * last[1]
                )
            return Health("ok", info)

    def close(self) -> list[Outgoing]:
        return []
