"""`rescoin evaluate --trace synthetic:SAVERS:HOGS[:SEED]`: a host of savers and hogs in chosen proportions.

For testing policy variants on more than the two shipped data sets (docs/EVALUATION.md, "Policy variants"):
a week of 5-minute periods (``PERIODS``), seeded, same inputs same traces. Sizes are 1, 2 or 4 vCPUs, with
disk and network links in proportion (memory is left out, as in the PlanetLab set: no size, no demand, so
the column plays no part and the comparison is exact; the sim's memory balloons are not).

* a **saver** idles at 5-15 % of its size on cpu, disk and net, and bursts to 70-100 % of it on all three at
  once, in bursts of 1 h on average starting in 1 % of periods (about 11 % of the time, so its mean stays
  under a 30 % template);
* a **hog** runs its cpu at 40-90 % of its size all the time (a random walk), while its disk and network
  behave like a saver's: a cpu-bound batch VM. Under one currency (``coin_norm`` l2, l1, max) the I/O it
  leaves unused buys it cpu priority; with ``resource`` it does not.
"""

from __future__ import annotations

import numpy as np

from ..model.traces import Trace

PREFIX = "synthetic:"
PERIODS = 7 * 288  # a week of 5-minute periods
SIZES = (1.0, 2.0, 4.0)  # vCPUs; disk and net links in proportion
LINK_PER_CORE = 25e6  # bytes/s of disk and of network per vCPU
BURST_START, BURST_MEAN = 0.01, 12  # per period; periods (1 h)
CPU, DISK, NET = 0, 2, 3


def is_synthetic(trace: str | None) -> bool:
    return bool(trace) and str(trace).startswith(PREFIX)


def parse(trace: str) -> tuple[int, int, int]:
    """``synthetic:SAVERS:HOGS[:SEED]`` -> (savers, hogs, seed); ValueError on anything else."""
    parts = trace[len(PREFIX) :].split(":")
    if len(parts) not in (2, 3) or not all(p.isdigit() for p in parts) or int(parts[0]) + int(parts[1]) == 0:
        raise ValueError(f"{trace!r}: expected synthetic:SAVERS:HOGS or synthetic:SAVERS:HOGS:SEED (counts ≥ 0)")
    savers, hogs, seed = (int(p) for p in (*parts, "0")[:3])
    return savers, hogs, seed


def bursty(rng: np.random.Generator, periods: int) -> np.ndarray:
    """A saver's load as a fraction of its size, (periods,): idle, with bursts of geometric length."""
    level = rng.uniform(0.05, 0.15, periods)
    starts = np.flatnonzero(rng.random(periods) < BURST_START)
    for start, length in zip(starts, rng.geometric(1 / BURST_MEAN, len(starts)), strict=True):
        level[start : start + length] = rng.uniform(0.7, 1.0, min(length, periods - start))
    return level


def hog_cpu(rng: np.random.Generator, periods: int) -> np.ndarray:
    """A hog's cpu as a fraction of its size, (periods,): a random walk kept in 40-90 %."""
    walk = np.cumsum(rng.normal(0.0, 0.03, periods)) + rng.uniform(0.4, 0.9)
    return 0.4 + np.abs(np.mod(walk - 0.4, 1.0) - 0.5)  # reflected into [0.4, 0.9]


def synthetic_traces(savers: int, hogs: int, seed: int = 0, periods: int = PERIODS) -> list[Trace]:
    """``savers`` savers then ``hogs`` hogs (module docstring), in Trace form."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(savers + hogs):
        size = rng.choice(SIZES)
        provisioned = np.array([size, 0.0, size * LINK_PER_CORE, size * LINK_PER_CORE])
        burst = bursty(rng, periods)  # cpu, disk and net burst together: one job
        load = np.zeros((periods, 4))
        load[:, CPU] = burst if i < savers else hog_cpu(rng, periods)
        load[:, DISK] = burst * rng.uniform(0.8, 1.0)
        load[:, NET] = burst * rng.uniform(0.8, 1.0)
        half = np.full(periods, 0.5)
        kind = "saver" if i < savers else "hog"
        out.append(Trace(f"{kind}-{i}", f"{PREFIX}{savers}:{hogs}:{seed}", load * provisioned, provisioned, half, half))
    return out


def load_synthetic(trace: str, n_vms: int | None = None) -> list[Trace]:
    """The traces ``trace`` (``synthetic:SAVERS:HOGS[:SEED]``) names, the first ``n_vms`` if given."""
    return synthetic_traces(*parse(trace))[:n_vms]
