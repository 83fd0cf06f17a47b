"""Memory by pressure, not by guesswork: what a guest's own stall signals do to its balloon.

A guest's reported use (MemTotal − MemAvailable) leaves out the page cache it
lives on and its kernel's own memory; ballooning it to use + reserve can
leave it thrashing while every number the host sees looks fine. So, per VM
(the rules of ``decide``, docs/DESIGN.md §6.8, settings in ``[scheduler]``):

* **Floor.** A balloon never goes below what the guest cannot give back
  (the sample's ``mem_unreclaimable``: balloon actual − usable) or its use,
  whichever is larger, plus ``mem_reserve_bytes``.
* **Pressure.** A VM is *pressured* when its PSI ``some`` avg10 reaches
  ``mem_pressure_some_pct``, its ``full`` avg10 ``mem_pressure_full_pct``, or its
  major faults ``mem_pressure_majflt_per_s`` (a swap-in is a major fault too).
  Unknown (-1) is never pressure: an old agent is treated as before.
* **Demand.** What a guest cannot give back it demands; a VM *stalling now*
  demands its balloon × (1 + ``mem_grow_step``) at least, so it grows back
  over a few periods, as far as the policy gives it memory (coins decide who
  gets contended memory). Stalling now = its major faults at or above the
  threshold, or, where the guest gives no fault rate, its PSI: a PSI avg10 is
  a 10-second average that stays above a threshold for about
  10 s × ln(peak / threshold) after the stall ends (some 20 periods after a
  heavy thrash), so growing on it would overshoot by (1 + grow step)^20; the
  fault rate is per agent report (per second).
* **Hold.** A pressured VM's balloon never shrinks (PSI's lag is welcome
  here: the guest is left alone while it recovers).
* **Probe.** Otherwise a balloon shrinks by at most ``mem_shrink_step`` of
  itself per period towards its target, so pressure can show up before the
  guest is squeezed: a gradual probe, not a jump to use + reserve.

From no balloon (none in force: the VM has its full size, which the sample
does not carry) the first balloon is the target itself; each later one moves
gradually. ``mem_pressure_guard = false`` turns off pressure, demand and hold
(the floor alone, as before); ``mem_shrink_step = 1`` turns off the probe.
Shapes: (n,) per VM; bytes, %, faults per second.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rescoin.proto.messages import UNKNOWN, Sample


@dataclass(frozen=True)
class MemoryPressure:
    """What the sample says about each VM's memory beyond its use, (n,) each, -1 = unknown."""

    psi_some: np.ndarray  # PSI "some" avg10, %
    psi_full: np.ndarray  # PSI "full" avg10, %
    majflt: np.ndarray  # major page faults per second (swap-ins included)
    unreclaimable: np.ndarray  # bytes the guest cannot give back

    @classmethod
    def unknown(cls, n: int) -> MemoryPressure:
        """Nothing known about any of ``n`` VMs: the floor is use + reserve, nobody is pressured."""
        none = np.full(n, UNKNOWN)
        return cls(none, none, none, none)

    @classmethod
    def from_sample(cls, sample: Sample) -> MemoryPressure:
        """The sample's pressure vectors (proto/README.md §4 ``sample``)."""
        return cls(
            np.asarray(sample.mem_psi_some, dtype=float),
            np.asarray(sample.mem_psi_full, dtype=float),
            np.asarray(sample.mem_majflt, dtype=float),
            np.asarray(sample.mem_unreclaimable, dtype=float),
        )


def pressured(pressure: MemoryPressure, some_pct: float, full_pct: float, majflt_per_s: float) -> np.ndarray:
    """Which VMs stall on memory now, (n,) bool: any known signal at or above its threshold."""
    return (
        ((pressure.psi_some != UNKNOWN) & (pressure.psi_some >= some_pct))
        | ((pressure.psi_full != UNKNOWN) & (pressure.psi_full >= full_pct))
        | ((pressure.majflt != UNKNOWN) & (pressure.majflt >= majflt_per_s))
    )


def stalling(pressure: MemoryPressure, some_pct: float, full_pct: float, majflt_per_s: float) -> np.ndarray:
    """Which VMs stall on memory *now*, (n,) bool: the fault rate where known, else PSI (see above)."""
    faults_known = pressure.majflt != UNKNOWN
    return np.where(faults_known, pressure.majflt >= majflt_per_s, pressured(pressure, some_pct, full_pct, np.inf))


def known(values: np.ndarray) -> np.ndarray:
    """``values`` with UNKNOWN read as 0 (for a lower bound: nothing known adds nothing)."""
    return np.where(values == UNKNOWN, 0.0, values)


def memory_floor(use: np.ndarray, unreclaimable: np.ndarray, reserve: float) -> np.ndarray:
    """The lowest safe balloon, (n,): max(use, what it cannot give back where known) + reserve."""
    return np.maximum(use, known(unreclaimable)) + reserve


def memory_demand(
    demand: np.ndarray, unreclaimable: np.ndarray, last_ceiling: np.ndarray, floor: np.ndarray,
    is_stalling: np.ndarray, grow_step: float,
) -> np.ndarray:  # fmt: skip
    """What each VM asks for in memory, (n,): at least what it cannot give back, and one stalling now
    at least its balloon (its floor where none is known) × (1 + ``grow_step``)."""
    demand = np.maximum(demand, known(unreclaimable))
    balloon = np.where(np.isfinite(last_ceiling), last_ceiling, floor)
    return np.where(is_stalling, np.maximum(demand, balloon * (1.0 + grow_step)), demand)


def gradual_ceiling(
    target: np.ndarray, last_ceiling: np.ndarray, is_pressured: np.ndarray, shrink_step: float
) -> np.ndarray:
    """The balloon for this period, (n,): never below the last one while pressured, otherwise at most
    ``shrink_step`` of it lower; growing is never held back; inf (no balloon) stays as ``target`` says."""
    had = np.isfinite(last_ceiling) & np.isfinite(target)
    balloon = np.where(had, last_ceiling, 0.0)
    lowest = np.where(is_pressured, balloon, balloon * (1.0 - shrink_step))
    return np.where(had, np.maximum(target, lowest), target)
