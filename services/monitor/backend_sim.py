"""The monitor's view of the sim host, read through its request/reply socket."""

from __future__ import annotations

from ..runtime.simclient import SimhostClient, SimhostError
from .backend import BackendError, DomainReading, HostCapacity, HostReading

CPU_NS, DISK_RD, DISK_WR, NET_RX, NET_TX = range(5)


class SimMonitorBackend:
    name = "sim"

    def __init__(self, endpoint: str) -> None:
        self.client = SimhostClient(endpoint)
        self.endpoint = endpoint
        self._info = None

    def _describe(self):
        if self._info is None:
            try:
                self._info = self.client.describe()
            except SimhostError as exc:
                raise BackendError(str(exc)) from exc
        return self._info

    def read(self) -> HostReading:
        info = self._describe()
        try:
            stats = self.client.stats()
        except SimhostError as exc:
            self._info = None  # it may come back as a different host
            raise BackendError(str(exc)) from exc
        row = {vm: i for i, vm in enumerate(info.vms)}
        domains = []
        for i, vm in enumerate(stats.vms):
            j = row[vm]
            c = stats.counters[i]
            domains.append(
                DomainReading(
                    uuid=vm,
                    name=info.names[j],
                    vcpus=float(info.provisioned[j, 0]),
                    mem_max_bytes=float(info.provisioned[j, 1]),
                    mem_current_bytes=float(stats.mem_target[i]),
                    cpu_time_ns=float(c[CPU_NS]),
                    disk_bytes=float(c[DISK_RD] + c[DISK_WR]),
                    net_bytes=float(c[NET_RX] + c[NET_TX]),
                    balloon_used_bytes=float(stats.mem_used[i]),
                    template=tuple(float(v) for v in info.template[j]),  # type: ignore[arg-type]
                )
            )
        return HostReading(stats.now_ns, domains)

    def capacity(self) -> HostCapacity:
        cap = self._describe().capacity
        return HostCapacity(float(cap[0]), float(cap[1]), float(cap[2]), float(cap[3]))

    def info(self) -> dict[str, str | int | float | bool]:
        return {"backend": "sim", "endpoint": self.endpoint}

    def close(self) -> None:
        self.client.close()
