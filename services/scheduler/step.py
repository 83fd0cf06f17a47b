"""One scheduling period as a pure function: the scheduler service and `rescoin evaluate` both run it.

    estimate ─► demand (a VM pinned at its last ceiling asks for more; one under memory pressure too)
             ─► policy allocation ─► floors ─► fit hysteresis
             ─► what the kernel gets: shares (weights) and ceilings, per the enforcement mode
                (a balloon held under pressure, otherwise shrinking gradually)

Every policy, the baselines included, goes through the same step with its own
weights and ceilings (``KERNEL_FORM``). Socket-free, clock-free, no state
(the caller keeps ``fit_streak`` and the last ceilings). Shapes: (n, 4) per VM
and resource (cpu, mem, disk, net), capacity (4,).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..model.enforcement import ceilings, in_force
from .policy import (
    POLICIES,
    SHARE_FORMULAS,
    fit_after_streak,
    fits_host,
    guarded,
    template_floor,
    template_shares,
    unthrottled_demand,
)
from .pressure import MemoryPressure, gradual_ceiling, memory_demand, memory_floor, pressured, stalling
from .settings import SchedulerSettings

CPU, MEM = 0, 1

# How each policy's allocation reaches the kernel: (weights from coins, fixed enforcement mode).
# A fixed mode is the baseline's own mechanism; None = `[scheduler] enforcement`.
KERNEL_FORM: dict[str, tuple[bool, str | None]] = {
    "rescoin": (True, None),
    "shares": (False, "shares"),  # plain CFS: weights by template, no caps
    "static": (False, "ceilings"),
    "maxmin": (False, "ceilings"),
    "credits": (False, "ceilings"),
    "karma": (False, "ceilings"),
}


@dataclass(frozen=True)
class Decision:
    """What one period decided for the VMs of a sample, in its row order."""

    demand: np.ndarray  # (n, 4): what the policy was asked (the estimate, raised where pinned)
    alloc: np.ndarray  # (n, 4): the allocation after floors
    shares: np.ndarray  # (n, 4): kernel weights in resource units, Σ = C per resource (memory: not enforced)
    ceiling: np.ndarray  # (n, 4): the allocation's ceilings, inf = none (in shares mode: memory's and fallbacks)
    enforcement: str  # shares | ceilings | both

    @property
    def ceiling_in_force(self) -> np.ndarray:
        """The ceilings the kernel gets under ``enforcement`` (inf = none)."""
        return in_force(self.ceiling, self.enforcement)

    fit: np.ndarray  # (4,) bool: the resource counts as fit (no ceilings)
    fit_streak: np.ndarray  # (4,): periods in a row each resource fit (the caller keeps it)
    floors_over_capacity: bool  # the floors alone did not fit the host
    mem_pressured: np.ndarray  # (n,) bool: the VMs whose memory pressure the guard acted on


def apply_floors(
    alloc: np.ndarray, capacity: np.ndarray, cpu_floor: float, mem_floor: np.ndarray
) -> tuple[np.ndarray, bool]:
    """Raise allocations to the floors (cpu minimum; memory ≥ ``mem_floor`` (n,)), then fit Σ ≤ C by
    shrinking only what lies above the floors. Returns (alloc, floors_exceed_capacity)."""
    floor = np.zeros_like(alloc)
    floor[:, CPU] = cpu_floor
    floor[:, MEM] = mem_floor
    floor = np.minimum(floor, capacity)  # no single floor above the whole host
    alloc = np.maximum(alloc, floor)
    total, floor_total = alloc.sum(axis=0), floor.sum(axis=0)
    over = total > capacity
    if not over.any():
        return alloc, False
    room = np.maximum(capacity - floor_total, 0.0)
    above = alloc - floor
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(over, np.minimum(room / np.where(above.sum(axis=0) > 0, above.sum(axis=0), 1.0), 1.0), 1.0)
    alloc = floor + above * scale
    too_much = floor_total > capacity  # floors alone do not fit: share the host by floor
    if too_much.any():
        alloc = np.where(too_much, floor * (capacity / np.where(floor_total > 0, floor_total, 1.0)), alloc)
    return alloc, bool(too_much.any())


def within_capacity(matrix: np.ndarray, capacity: np.ndarray) -> np.ndarray:
    """Columns scaled down so that Σ ≤ C holds as the wire sums them (the rows added in order,
    ``column_sums``) without paying for that slow sum: a column whose fast sum is within 3nε of C, or
    over it, is scaled to C / sum × (1 − 3nε). Both sums of n non-negative values are within nε of the
    exact one and scaling rounds each value by ε, so the margin covers them all."""
    margin = 3 * matrix.shape[0] * np.finfo(float).eps
    total = matrix.sum(axis=0)
    tight = total > capacity * (1.0 - margin)
    if not tight.any():
        return matrix
    return matrix * np.where(tight, capacity / np.where(total > 0, total, 1.0) * (1.0 - margin), 1.0)


def decide(
    estimate: np.ndarray,
    usage: np.ndarray,
    template: np.ndarray,
    capacity: np.ndarray,
    coins: np.ndarray,
    last_ceiling: np.ndarray,
    fit_streak: np.ndarray,
    settings: SchedulerSettings,
    pressure: MemoryPressure | None = None,
) -> Decision:
    """One period for one host (docs/DESIGN.md §6, §7.1). ``last_ceiling``: the ceilings in force last period
    (inf where nothing was capped); ``pressure``: what the guests say of their memory (None: nothing).

    Memory (services/scheduler/pressure.py): the floor is max(use, unreclaimable) + reserve; with
    ``mem_pressure_guard`` a VM stalling now demands its balloon × (1 + ``mem_grow_step``) and a
    pressured one's balloon never shrinks; otherwise a balloon shrinks by at most ``mem_shrink_step``
    per period."""
    n = estimate.shape[0]
    # Fortran order: every step reduces per resource (column), ~20× faster down contiguous memory
    estimate, usage, template, coins, last_ceiling = (
        np.asarray(a, dtype=float, order="F") for a in (estimate, usage, template, coins, last_ceiling)
    )
    pressure = pressure or MemoryPressure.unknown(n)
    mem_floor = memory_floor(usage[:, MEM], pressure.unreclaimable, settings.mem_reserve_bytes)
    thresholds = (settings.mem_pressure_some_pct, settings.mem_pressure_full_pct, settings.mem_pressure_majflt_per_s)
    is_pressured = pressured(pressure, *thresholds) if settings.mem_pressure_guard else np.zeros(n, dtype=bool)
    is_stalling = stalling(pressure, *thresholds) & is_pressured
    demand = unthrottled_demand(estimate, usage, last_ceiling, settings.throttled_probe)
    demand[:, MEM] = memory_demand(
        demand[:, MEM], pressure.unreclaimable, last_ceiling[:, MEM], mem_floor, is_stalling, settings.mem_grow_step
    )
    coin_weights, fixed_mode = KERNEL_FORM[settings.policy]
    norm = {"norm": settings.coin_norm} if coin_weights else {}  # the baselines weigh coins their own way
    alloc = POLICIES[settings.policy](demand, template, capacity, coins, share_leftover=settings.share_leftover, **norm)
    alloc, floors_over = apply_floors(alloc, capacity, settings.cpu_floor_cores, mem_floor)
    alloc = within_capacity(alloc, capacity)
    fit_streak, fit = fit_after_streak(
        fit_streak, fits_host(demand, capacity, settings.fit_headroom), settings.fit_after_periods
    )
    mode = fixed_mode or settings.enforcement
    if coin_weights and mode != "ceilings":
        shares = SHARE_FORMULAS[settings.share_formula](demand, template, capacity, coins, **norm)
        if settings.starved_guard != "off":
            held = guarded(usage, template, capacity, settings.fit_headroom, settings.starved_guard)
            shares = template_floor(shares, template, capacity, held)
    else:
        shares = template_shares(template, capacity)
    ceiling = ceilings(
        alloc,
        template,
        usage,
        settings.mem_reserve_bytes,
        fit if settings.release_when_fit else None,
        settings.cpu_floor_cores,
        mem_floor,
    )
    ceiling[:, MEM] = gradual_ceiling(ceiling[:, MEM], last_ceiling[:, MEM], is_pressured, settings.mem_shrink_step)
    return Decision(demand, alloc, shares, ceiling, mode, fit, fit_streak, floors_over, is_pressured)
