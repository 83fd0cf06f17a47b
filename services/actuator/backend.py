"""What the actuator drives: per VM and resource, a ceiling and a weight, and what can hold them.

docs/DESIGN.md §7.2-§7.3: coins reach the kernel as *weights* (the scheduler's shares) and,
in the ceilings/both modes, the allocation as a *ceiling*. Per VM and
resource (cpu, mem, disk, net) a backend holds a Setting:

* ``ceiling`` — cpu quota in cores, memory balloon target in bytes, disk and
  net throttles in bytes/s; ``NO_LIMIT`` (-1) = none;
* ``weight`` — cpu in cores (each backend maps cores into its kernel's
  range: ``CpuWeightRange``), disk as a BFQ weight (1–1000), net as the
  guaranteed htb rate in bytes/s; memory has none. 0 = leave unset;
* ``link`` — net only: the host's network capacity the shares divide
  (bytes/s, from the alloc), the rate of the shared htb tree.

Each VM's resources are *probed* (``probe``): a ``Capability`` says whether
a weight and a ceiling can hold that resource of that VM here, or why
neither can (a closed reason code, proto's ``UNENFORCED_REASONS``). The
plan (plan.py) chooses the mechanism from it: the weight where honoured, the
alloc's ceiling as a throttle where only a ceiling works, *unenforced* with
the reason where nothing does.

A backend reads one resource of one VM at a time (so one unreadable
resource costs only itself), writes changes in a batch, and returns one
VM's failure as a ChangeError, never raised, so the others still get their
writes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from rescoin.proto import NO_LIMIT

EVERY_BALLOON = "*"  # in balloons_moved(): moves may have been missed, look at every stuck balloon again


class BackendError(RuntimeError):
    """The backend cannot be used at all (no connection, no such cgroup root)."""


class UnenforceableError(BackendError):
    """This instance of a VM cannot take this setting at all (e.g. no device to shape)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # proto's UNENFORCED_REASONS


class BusyError(BackendError):
    """The domain did not answer in time (a migration's job lock, a stopped QEMU): skipped this period."""


@dataclass(frozen=True)
class Setting:
    ceiling: float = NO_LIMIT
    weight: float = 0.0
    link: float = 0.0  # net: the link capacity the shares divide, bytes/s


@dataclass(frozen=True)
class Capability:
    """What can hold one resource of one VM on this host."""

    weight: bool  # a weight set here is honoured (e.g. the disk's I/O scheduler is BFQ)
    ceiling: bool  # a ceiling can be set (quota, balloon, throttle, htb ceil)
    how: str  # for an operator: the mechanism, or why there is none
    reason: str = ""  # proto's UNENFORCED_REASONS when neither holds

    @property
    def enforceable(self) -> bool:
        return self.weight or self.ceiling


def capable(how: str, weight: bool = True, ceiling: bool = True) -> Capability:
    return Capability(weight, ceiling, how)


def incapable(reason: str, why: str) -> Capability:
    return Capability(False, False, why, reason)


@dataclass(frozen=True)
class CpuWeightRange:
    """How a backend turns cpu cores of share into its kernel's weight: ``per_core`` × cores, within
    [lo, hi] (cgroup v1 cpu.shares 2–262144 at 1024 a core; v2 cpu.weight 1–10000). The core scales
    every VM's cpu weight by one factor when the largest would pass ``hi``, so ratios are kept."""

    per_core: float
    lo: int
    hi: int


CPU_SHARES_V1 = CpuWeightRange(1024, 2, 262144)


@dataclass(frozen=True)
class DomainLimits:
    """What bounds a VM's settings: its memory size (the balloon's maximum) and the template its own
    definition states (libvirt metadata), below which no ceiling may go whatever an alloc says."""

    name: str
    mem_max_bytes: float
    instance: str = ""  # changes when the VM is started anew: what was set died with the old one
    template: tuple[float, float, float, float] = (math.nan,) * 4  # nan: not stated where the backend reads
    problem: str = ""  # what is wrong with its definition (a malformed template: not checked, said here)


@dataclass(frozen=True)
class Change:
    vm: str
    resource: int  # index into RESOURCES
    setting: Setting


@dataclass(frozen=True)
class ChangeError:
    vm: str
    resource: str  # cpu | mem | disk | net | all
    error: str
    reason: str = "write_failed"  # proto's UNENFORCED_REASONS

    @property
    def lasting(self) -> bool:
        """This instance of the VM cannot take this setting at all: not retried until it restarts."""
        return self.reason not in ("write_failed", "busy", "backend_down", "read_failed")


def change_error(vm: str, resource: str, exc: Exception) -> ChangeError:
    if isinstance(exc, UnenforceableError):
        return ChangeError(vm, resource, str(exc), exc.reason)
    return ChangeError(vm, resource, str(exc), "busy" if isinstance(exc, BusyError) else "write_failed")


class ActuatorBackend(Protocol):
    name: str

    def domains(self) -> dict[str, DomainLimits]:
        """The VMs this backend can act on, by UUID."""
        ...

    def probe(self, vm: str) -> list[Capability]:
        """Per resource (cpu, mem, disk, net), what can hold it for this instance of ``vm``."""
        ...

    def read(self, vm: str, resource: int) -> Setting:
        """The setting in force for one resource of ``vm`` (an index into RESOURCES)."""
        ...

    def write(self, changes: list[Change]) -> list[ChangeError]:
        """Apply ``changes``; return the ones that failed."""
        ...

    def cpu_weight_range(self) -> CpuWeightRange:
        """How cpu cores of share become this backend's kernel weight."""
        ...

    def carry(self, states: dict[str, tuple[tuple[float, ...], list[Setting | None]]], period: int) -> None:
        """Keep each VM's (coins, originals) where they travel with it (a domain's metadata); no-op where
        nothing travels. Best effort: a VM that cannot take it now is tried again later."""
        ...

    def carried_originals(self, vm: str) -> list[Setting | None] | None:
        """The originals ``vm`` brought from the first host it ran on, if any."""
        ...

    def balloons_moved(self) -> set[str] | None:
        """The VMs whose balloon the hypervisor said moved since the last call (``EVERY_BALLOON`` in it:
        some may have been missed, e.g. while reconnecting), or None if this backend hears no such
        events: then a balloon found stuck is read again periodically instead of when it moves."""
        ...

    def forget(self, vm: str) -> None:
        """``vm`` is gone or was started anew: drop what is known of its old instance (the core decides when)."""
        ...

    def capabilities(self) -> dict[str, str]:
        """Host-wide facts an operator needs (cgroup layout, I/O schedulers, ...), for hb and doctor."""
        ...

    def close(self) -> None: ...
