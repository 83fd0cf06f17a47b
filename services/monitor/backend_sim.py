"""The monitor's `sim` backend: reads the trace-driven sim host over its socket.

The sim host (rescoin-simhost, proto/simhost.py) runs in its own process; this
backend asks it for cumulative counters and current memory use once a period,
and for the host's description (sizes, templates, capacity) again whenever the
set of VMs changes, e.g. after the sim host restarted with another config.
"""

from __future__ import annotations

from rescoin.proto.simhost import HostInfo

from ..runtime.simclient import SimhostClient, SimhostError
from .backend import BackendError, DomainReading, HostCapacity, HostReading

CPU_NS, DISK_RD, DISK_WR, NET_RX, NET_TX = range(5)  # proto.simhost.COUNTERS


class SimMonitorBackend:
    """MonitorBackend for the sim host at ``endpoint``."""

    name = "sim"

    def __init__(self, endpoint: str, timeout_s: float = 2.0) -> None:
        self.client = SimhostClient(endpoint, timeout_s)
        self._host: HostInfo | None = None

    def _describe(self, vms: list[str] | None = None) -> HostInfo:
        try:
            if self._host is None or (vms is not None and vms != self._host.vms):
                self._host = self.client.describe()
        except SimhostError as exc:
            raise BackendError(str(exc)) from exc
        return self._host

    def read(self) -> HostReading:
        try:
            stats = self.client.stats()
        except SimhostError as exc:
            raise BackendError(str(exc)) from exc
        host = self._describe(stats.vms)
        if host.vms != stats.vms:
            raise BackendError("the sim host changed its VMs while being read")
        counters, provisioned = stats.counters, host.provisioned
        domains = [
            DomainReading(
                uuid=vm,
                name=host.names[i],
                vcpus=float(provisioned[i, 0]),
                mem_max_bytes=float(provisioned[i, 1]),
                mem_current_bytes=float(stats.mem_target[i]),
                cpu_time_ns=float(counters[i, CPU_NS]),
                disk_bytes=float(counters[i, DISK_RD] + counters[i, DISK_WR]),
                net_bytes=float(counters[i, NET_RX] + counters[i, NET_TX]),
                balloon_used_bytes=float(stats.mem_used[i]),
                template=(
                    float(host.template[i, 0]),
                    float(host.template[i, 1]),
                    float(host.template[i, 2]),
                    float(host.template[i, 3]),
                ),
            )
            for i, vm in enumerate(stats.vms)
        ]
        return HostReading(stats.now_ns, domains)

    def capacity(self) -> HostCapacity:
        cores, mem, disk, net = (float(v) for v in self._describe().capacity)
        return HostCapacity(cores, mem, disk, net)

    def info(self) -> dict[str, str | int | float | bool]:
        return {
            "backend": "sim",
            "endpoint": self.client.endpoint,
            "vms": len(self._host.vms) if self._host else 0,
        }

    def close(self) -> None:
        self.client.close()
