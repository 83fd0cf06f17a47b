"""What the actuator drives: per VM and resource, a ceiling and a weight.

DESIGN §7: coins reach the kernel as *weights* (the scheduler's shares) and,
in the ceilings/both modes, the allocation as a *ceiling*. Per VM and
resource (cpu, mem, disk, net) a backend holds a Setting:

* ``ceiling`` — cpu quota in cores, memory balloon target in bytes, disk and
  net throttles in bytes/s; ``NO_LIMIT`` (-1) = none;
* ``shares`` — the weight: cpu in cores (libvirt cpu_shares = 1024 per core,
  cgroup v2 cpu.weight = 100 per core), disk as a BFQ weight (1–1000), net as
  the guaranteed htb rate in bytes/s; memory has none. 0 = leave unset;
* ``link`` — net only: the host's network capacity the shares divide
  (bytes/s, from the alloc), the rate of the shared htb tree.

Where a disk's I/O scheduler ignores weights (``disk_weights_honoured``), the
core sends the alloc's disk ceiling as a throttle and no weight, so
``applied`` shows what is in force.

A backend reads what is set (so the actuator can record the originals and
report "before"), writes changes in a batch, and says which resources it can
enforce and how (``capabilities``). One VM's failure is returned as a
ChangeError, never raised, so the others still get their writes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

NO_LIMIT = -1.0
RESOURCES = ("cpu", "mem", "disk", "net")


class BackendError(RuntimeError):
    """The backend cannot be used at all (no connection, no such cgroup root)."""


class UnenforceableError(BackendError):
    """This instance of a VM cannot take this setting at all (e.g. no device to shape)."""


@dataclass(frozen=True)
class Setting:
    ceiling: float = NO_LIMIT
    shares: float = 0.0
    link: float = 0.0  # net: the link capacity the shares divide, bytes/s


@dataclass(frozen=True)
class DomainLimits:
    """What bounds a VM's settings: its memory size (the balloon's maximum) and the template its own
    definition states (libvirt metadata), below which no ceiling may go whatever an alloc says."""

    name: str
    mem_max_bytes: float
    instance: str = ""  # changes when the VM is started anew: what was set died with the old one
    template: tuple[float, float, float, float] = (math.nan,) * 4  # nan: not stated where the backend reads


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
    lasting: bool = False  # this instance of the VM cannot take this setting at all: do not retry


def change_error(vm: str, resource: str, exc: Exception) -> ChangeError:
    return ChangeError(vm, resource, str(exc), lasting=isinstance(exc, UnenforceableError))


class ActuatorBackend(Protocol):
    name: str

    def domains(self) -> dict[str, DomainLimits]:
        """The VMs this backend can act on, by UUID."""
        ...

    def read(self, vm: str) -> list[Setting]:
        """The four settings in force for ``vm`` (cpu, mem, disk, net)."""
        ...

    def write(self, changes: list[Change]) -> list[ChangeError]:
        """Apply ``changes``; return the ones that failed."""
        ...

    def disk_weights_honoured(self, vm: str) -> bool:
        """Every disk of ``vm`` is on a device whose I/O scheduler divides it by weight (BFQ)."""
        ...

    def forget(self, vm: str) -> None:
        """``vm`` is gone or was started anew: drop what is known of its old instance (the core decides when)."""
        ...

    def capabilities(self) -> dict[str, str]:
        """Per resource: how it is enforced, or why it is not ("unsupported: ...")."""
        ...

    def close(self) -> None: ...
