"""Bus messages → Prometheus metrics, socket-free.

``ExporterCore.on_message`` keeps the latest sample, estimate, alloc and hb of
every host; ``collect(now)`` turns them into metric families. A VM that leaves
a host's sample leaves the metrics with it. Names carry their unit, following
Prometheus conventions:

| metric | labels | meaning |
| --- | --- | --- |
| rescoin_vm_{usage,estimate,allocation,template}_<unit> | host, vm, name | per VM and resource; <unit> = |
|   cpu_cores, memory_bytes, disk_bytes_per_second, network_bytes_per_second | | |
| rescoin_vm_coins | host, vm, resource | coin balance (unitless, capacity-normalized) |
| rescoin_host_capacity_{cpu_cores,…} | host | C |
| rescoin_service_up | host, service | 1 while heartbeats arrive |
| rescoin_service_state | host, service, state | 1 for the current state |
| rescoin_service_events_total | host, service, counter | the service's hb counters |
| rescoin_service_last_period | host, service | last period it reported |
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from rescoin.proto import RESOURCES, SERVICE_STATES, Envelope

from ..runtime.service import Health, Outgoing

UNIT_SUFFIX = ("cpu_cores", "memory_bytes", "disk_bytes_per_second", "network_bytes_per_second")
VM_MATRICES = {
    "sample": (("usage", "usage"), ("template", "template")),
    "estimate": (("estimate", "estimate"),),
    "alloc": (("allocation", "alloc"),),
}


class ExporterCore:
    name = "exporter"

    def __init__(self, down_after_misses: int = 3) -> None:
        self.down_after = down_after_misses
        self.lock = threading.Lock()
        self.latest: dict[tuple[str, str], Envelope] = {}  # (host, kind) -> last message
        self.beats: dict[tuple[str, str], tuple[float, Envelope]] = {}  # (host, service) -> (seen, hb)

    def subscriptions(self) -> list[bytes]:
        return [b"sample/", b"estimate/", b"alloc/", b"hb/"]

    def on_message(self, env: Envelope, now: float | None = None) -> list[Outgoing]:
        with self.lock:
            if env.kind == "hb":
                self.beats[(env.host, env.body.service)] = (now if now is not None else time.monotonic(), env)
            else:
                self.latest[(env.host, env.kind)] = env
        return []

    def collect(self, now: float) -> Iterator[Metric]:
        with self.lock:
            latest = dict(self.latest)
            beats = dict(self.beats)
        families: dict[str, GaugeMetricFamily] = {}

        def gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
            if name not in families:
                families[name] = GaugeMetricFamily(name, doc, labels=labels)
            return families[name]

        for (host, kind), env in sorted(latest.items()):
            body = env.body
            names = getattr(body, "names", None)
            current_vms = latest[(host, "sample")].body.vms if (host, "sample") in latest else body.vms
            keep = set(current_vms)  # VMs that left the host's sample leave the metrics
            for label, attr in VM_MATRICES.get(kind, ()):
                matrix = getattr(body, attr)
                for r, suffix in enumerate(UNIT_SUFFIX):
                    fam = gauge(
                        f"rescoin_vm_{label}_{suffix}", f"per-VM {label} of {RESOURCES[r]}", ["host", "vm", "name"]
                    )
                    for i, vm in enumerate(body.vms):
                        if vm in keep:
                            fam.add_metric([host, vm, names[i] if names else ""], float(matrix[i, r]))
            if kind == "alloc":
                fam = gauge(
                    "rescoin_vm_coins",
                    "coin balance per VM and resource (capacity-normalized, unitless)",
                    ["host", "vm", "resource"],
                )
                for i, vm in enumerate(body.vms):
                    if vm in keep:
                        for r, res in enumerate(RESOURCES):
                            fam.add_metric([host, vm, res], float(body.coins[i, r]))
            if kind == "sample":
                for r, suffix in enumerate(UNIT_SUFFIX):
                    gauge(
                        f"rescoin_host_capacity_{suffix}",
                        f"host capacity of {RESOURCES[r]} after the reserve",
                        ["host"],
                    ).add_metric([host], float(body.capacity[r]))
        up = gauge("rescoin_service_up", "1 while the service's heartbeats arrive", ["host", "service"])
        state = gauge("rescoin_service_state", "1 for the state the service reports", ["host", "service", "state"])
        last = gauge("rescoin_service_last_period", "last period the service reported", ["host", "service"])
        events = CounterMetricFamily(
            "rescoin_service_events", "the service's heartbeat counters", labels=["host", "service", "counter"]
        )
        for (host, service), (seen, env) in sorted(beats.items()):
            hb = env.body
            up.add_metric([host, service], 1.0 if now - seen <= self.down_after * hb.period_s else 0.0)
            for s in SERVICE_STATES:
                state.add_metric([host, service, s], 1.0 if hb.state == s else 0.0)
            last.add_metric([host, service], float(env.period))
            for counter, value in sorted(hb.counters.items()):
                events.add_metric([host, service, counter], float(value))
        yield from families.values()
        yield events

    def on_period(self, ended_period: int) -> list[Outgoing]:
        return []

    def health(self) -> Health:
        with self.lock:
            return Health("ok", {"hosts": len({h for h, _ in self.latest}), "services": len(self.beats)})

    def close(self) -> list[Outgoing]:
        return []
