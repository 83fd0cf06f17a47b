"""The actuator's own cost per alloc, without a backend's: ``ActuatorCore.on_alloc`` at 100 to 10,000 VMs.

The backend here keeps the settings in a dict and answers at once, so what is timed is the core: reading
what is in force, the memory floor, hysteresis, building the writes and the `applied` body. Two cases per
enforcement mode: *steady* (the same allocation again: nothing moves, the common period) and *all change*
(allocations alternate between two values 30 % apart: every setting of every VM is written).
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ms, timed, write_section  # noqa: E402
from rescoin.proto import Envelope  # noqa: E402
from rescoin.proto.messages import Alloc  # noqa: E402
from rescoin.services.actuator.backend import Change, ChangeError, DomainLimits, Setting  # noqa: E402
from rescoin.services.actuator.core import ActuatorCore  # noqa: E402
from rescoin.services.actuator.settings import ActuatorSettings  # noqa: E402
from rescoin.services.model.enforcement import ceilings, template_shares  # noqa: E402
from rescoin.services.runtime.support import Counters  # noqa: E402

GIB = 2**30


class InMemoryBackend:
    """Every VM exists, every write succeeds: the core's cost alone."""

    name = "sim"

    def __init__(self, vms: list[str]) -> None:
        self.limits = {vm: DomainLimits(vm[:8], 8.0 * GIB, "1") for vm in vms}
        self.settings = {vm: [Setting() for _ in range(4)] for vm in vms}
        self.writes = 0

    def domains(self) -> dict[str, DomainLimits]:
        return self.limits

    def read(self, vm: str) -> list[Setting]:
        return list(self.settings[vm])

    def write(self, changes: list[Change]) -> list[ChangeError]:
        for change in changes:
            self.settings[change.vm][change.resource] = change.setting
        self.writes += len(changes)
        return []

    def disk_weights_honoured(self, vm: str) -> bool:
        return True

    def forget(self, vm: str) -> None:
        pass

    def capabilities(self) -> dict[str, str]:
        return {}

    def close(self) -> None:
        pass


def alloc(vms: list[str], scale: float, mode: str, rng: np.random.Generator) -> Alloc:
    n = len(vms)
    template = np.tile([2.0, 4.0 * GIB, 50e6, 50e6], (n, 1))
    usage = template * rng.uniform(0.2, 1.0, (n, 4))
    capacity = template.sum(axis=0) * 1.5
    allocation = template * scale
    ceiling = ceilings(allocation, template, usage, 64 * 2**20, np.zeros(4, bool))
    every_other = 1.0 + (scale - 1.0) * (np.arange(n) % 2)[:, None]  # so every VM's share of C moves
    shares = template_shares(template * every_other, capacity)
    return Alloc(vms, allocation, np.zeros((n, 4)), template, usage, capacity, shares,
                 np.where(np.isinf(ceiling), -1.0, ceiling), mode, ["contended"] * 4, "rescoin", "estimate")  # fmt: skip


class Driver:
    """One core fed allocs with increasing periods: the same one again, or alternating two."""

    def __init__(self, core: ActuatorCore, bodies: tuple[Alloc, Alloc]) -> None:
        self.core, self.bodies, self.period, self.flip = core, bodies, 0, 0

    def apply(self, which: int) -> None:
        self.period += 1
        self.core.on_alloc(Envelope("alloc", "h1", "scheduler", 1, self.period, 0, self.period, self.bodies[which]))

    def steady(self) -> None:
        self.apply(0)

    def changing(self) -> None:
        self.flip ^= 1
        self.apply(self.flip)


def main() -> None:
    rng = np.random.default_rng(1)
    settings = ActuatorSettings(backend="sim")
    rows = [
        "| VMs | mode | steady (nothing moves) | all change | writes per all-change apply |",
        "| ---: | --- | --- | --- | ---: |",
    ]
    for n in (100, 1_000, 10_000):
        vms = [str(uuid.UUID(int=i + 1)) for i in range(n)]
        repeat = 10 if n == 10_000 else 30
        for mode in ("shares", "ceilings"):
            backend = InMemoryBackend(vms)
            driver = Driver(ActuatorCore("h1", settings, backend, Counters(), None),
                            (alloc(vms, 1.0, mode, rng), alloc(vms, 1.3, mode, rng)))  # fmt: skip
            driver.steady()  # first sight: reads and originals
            steady = timed(driver.steady, repeat=repeat)
            before = backend.writes
            moving = timed(driver.changing, repeat=repeat)
            per_apply = (backend.writes - before) / (repeat + 2)  # timed() warms up twice
            rows.append(f"| {n:,} | {mode} | {ms(steady)} | {ms(moving)} | {per_apply:,.0f} |")
            print(rows[-1], flush=True)
    write_section("Actuator core per alloc", __doc__.split("\n\n", 1)[1] + "\n\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
