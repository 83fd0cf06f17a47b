"""The actuator's `sim` backend: tunables through the sim host's request/reply socket.

The sim host (rescoin-simhost, proto/simhost.py) runs in its own process and
takes ``shares`` as weights and ``ceiling`` in resource units, exactly the
Setting semantics: the template amount is a fine weight (the enforcement
model divides contended capacity in proportion to it). A Setting's shares of
0 ("leave unset") is not written, and memory has no shares.
"""

from __future__ import annotations

from typing import Any

from ..runtime.simclient import SimhostClient, SimhostError
from .backend import RESOURCES, BackendError, Change, ChangeError, DomainLimits, Setting

MEM = RESOURCES.index("mem")


class SimActuatorBackend:
    """ActuatorBackend for the sim host at ``endpoint``."""

    name = "sim"

    def __init__(self, endpoint: str, timeout_s: float = 2.0) -> None:
        self.client = SimhostClient(endpoint, timeout_s)

    def domains(self) -> dict[str, DomainLimits]:
        try:
            info = self.client.describe()
        except SimhostError as exc:
            raise BackendError(str(exc)) from exc
        return {vm: DomainLimits(info.names[i], float(info.provisioned[i, MEM])) for i, vm in enumerate(info.vms)}

    def read(self, vm: str) -> list[Setting]:
        try:
            tunables = self.client.tunables()
        except SimhostError as exc:
            raise BackendError(str(exc)) from exc
        if vm not in tunables.vms:
            raise BackendError(f"no VM {vm} on the sim host")
        i = tunables.vms.index(vm)
        return [Setting(float(tunables.ceiling[i, r]), float(tunables.shares[i, r])) for r in range(len(RESOURCES))]

    def write(self, changes: list[Change]) -> list[ChangeError]:
        writes = []
        for change in changes:
            write: dict[str, Any] = {
                "vm": change.vm,
                "resource": RESOURCES[change.resource],
                "ceiling": change.setting.ceiling,
            }
            if change.resource != MEM and change.setting.shares > 0:
                write["shares"] = change.setting.shares
            writes.append(write)
        try:
            result = self.client.set_tunables(writes)
        except SimhostError as exc:
            return [ChangeError(c.vm, RESOURCES[c.resource], str(exc)) for c in changes]
        return [ChangeError(e["vm"], e["resource"], e["error"]) for e in result.errors]

    def capabilities(self) -> dict[str, str]:
        return {r: "sim host tunables (shares as weights, ceiling as cap)" for r in RESOURCES}

    def close(self) -> None:
        self.client.close()
