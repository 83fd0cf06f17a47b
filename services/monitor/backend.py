"""What the monitor reads from a host, whatever the host is (libvirt, the sim host).

A backend answers two questions, once per period:

* ``read() -> HostReading``: every running VM with its *cumulative* counters
  (cpu time ns, disk read+write bytes, net rx+tx bytes; None where the backend
  cannot tell), its size, balloon facts (in use; what it cannot give back) and
  any template it knows, stamped with
  the time of the reading (ns). The monitor core turns two readings into rates.
* ``capacity() -> HostCapacity``: what the host has (cores, bytes; disk and
  net bytes/s when the backend knows them, else None and the config decides).

It raises BackendError when the host cannot be read (libvirtd down...): the
monitor then publishes no sample for that period and reports "disconnected".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class BackendError(RuntimeError):
    """The host could not be read this period."""


@dataclass(frozen=True)
class DomainReading:
    uuid: str  # lowercase canonical UUID
    name: str
    vcpus: float
    mem_max_bytes: float  # the most memory the VM can have
    mem_current_bytes: float  # balloon size now
    cpu_time_ns: float | None  # cumulative
    disk_bytes: float | None  # cumulative, read + write
    net_bytes: float | None  # cumulative, rx + tx
    balloon_used_bytes: float | None  # in use per balloon stats (available - usable, or rss)
    template: tuple[float | None, float | None, float | None, float | None] = (None, None, None, None)
    # the template if the backend knows it (domain metadata, the sim host); None = derive it
    balloon_unreclaimable_bytes: float | None = None  # what the guest cannot give back: balloon actual - usable
    balloon_stats_at_s: float | None = None  # when the guest last refreshed its balloon stats (wall clock, s)
    carried_coins: tuple[float, float, float, float] | None = None  # a balance its domain's metadata carries


@dataclass(frozen=True)
class HostReading:
    ts_ns: int  # when the counters were read (the backend's clock)
    domains: list[DomainReading]
    # the same moment on a clock that never steps (time.monotonic_ns), for rates: a wall-clock step back
    # must not read as counters going backwards; None: ts_ns is already such a clock (the sim host's)
    monotonic_ns: int | None = None


@dataclass(frozen=True)
class HostCapacity:
    cores: float
    mem_bytes: float
    disk_bps: float | None = None
    net_bps: float | None = None


class MonitorBackend(Protocol):
    name: str

    def read(self) -> HostReading: ...

    def capacity(self) -> HostCapacity: ...

    def info(self) -> dict[str, str | int | float | bool]:
        """Facts for `hb` (uri, fallbacks in use...)."""
        ...

    def close(self) -> None: ...
