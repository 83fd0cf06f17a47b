"""The actuator's `sim` backend: tunables through the sim host's request/reply socket.

The sim host (rescoin-simhost, proto/simhost.py) runs in its own process and
takes ``shares`` as weights and ``ceiling`` in resource units, exactly the
Setting semantics: the template amount is a fine weight (the enforcement
model divides contended capacity in proportion to it). A Setting's weight of
0 ("leave unset") is not written, and memory has no weight. Every resource
of every VM takes both a weight and a ceiling.
"""

from __future__ import annotations

import time
from typing import Any

from rescoin.proto import MEM, RESOURCES

from ..runtime.simclient import SimhostClient, SimhostError
from .backend import (
    CPU_SHARES_V1,
    BackendError,
    Capability,
    Change,
    ChangeError,
    CpuWeightRange,
    DomainLimits,
    Setting,
    capable,
)

SNAPSHOT_TTL_S = 1.0


class SimActuatorBackend:
    """ActuatorBackend for the sim host at ``endpoint``."""

    name = "sim"

    def __init__(self, endpoint: str, timeout_s: float = 2.0) -> None:
        self.client = SimhostClient(endpoint, timeout_s)
        self.limits: dict[str, DomainLimits] | None = None  # the sim host's VMs are fixed while it runs
        self.snapshot: tuple[float, Any] | None = None  # (when, tunables): one RPC serves a batch of reads

    def domains(self) -> dict[str, DomainLimits]:
        if self.limits is None:
            try:
                info = self.client.describe()
            except SimhostError as exc:
                raise BackendError(str(exc)) from exc
            self.limits = {
                vm: DomainLimits(info.names[i], float(info.provisioned[i, MEM])) for i, vm in enumerate(info.vms)
            }
        return self.limits

    def probe(self, vm: str) -> list[Capability]:
        return [capable("sim host tunables")] * len(RESOURCES)

    def carry(self, states: dict, period: int) -> None:
        """The sim host's VMs never migrate."""

    def balloons_moved(self) -> None:
        return None  # no events: a stuck balloon is read again every grace period

    def carried_originals(self, vm: str) -> None:
        return None

    def cpu_weight_range(self) -> CpuWeightRange:
        return CPU_SHARES_V1  # the sim host takes cores; this range is wide enough never to scale them

    def read(self, vm: str, resource: int) -> Setting:
        if self.snapshot is None or time.monotonic() - self.snapshot[0] > SNAPSHOT_TTL_S:
            try:
                self.snapshot = (time.monotonic(), self.client.tunables())
            except SimhostError as exc:
                self.limits = None  # it may have restarted as a different host
                raise BackendError(str(exc)) from exc
        tunables = self.snapshot[1]
        if vm not in tunables.vms:
            raise BackendError(f"no VM {vm} on the sim host")
        i = tunables.vms.index(vm)
        return Setting(float(tunables.ceiling[i, resource]), float(tunables.shares[i, resource]))

    def write(self, changes: list[Change]) -> list[ChangeError]:
        writes = []
        for change in changes:
            write: dict[str, Any] = {
                "vm": change.vm,
                "resource": RESOURCES[change.resource],
                "ceiling": change.setting.ceiling,
            }
            if change.resource != MEM and change.setting.weight > 0:
                write["shares"] = change.setting.weight
            writes.append(write)
        self.snapshot = None
        try:
            result = self.client.set_tunables(writes)
        except SimhostError as exc:
            self.limits = None
            return [ChangeError(c.vm, RESOURCES[c.resource], str(exc)) for c in changes]
        return [ChangeError(e["vm"], e["resource"], e["error"]) for e in result.errors]

    def forget(self, vm: str) -> None:
        """Nothing is cached per VM instance here."""

    def capabilities(self) -> dict[str, str]:
        return {"tunables": "the sim host's: shares as weights, ceilings as caps, on every resource"}

    def close(self) -> None:
        self.client.close()
