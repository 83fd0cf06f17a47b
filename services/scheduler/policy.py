"""The ResCoin allocation policy (docs/DESIGN.md §6) and the baselines it is compared with.

Every policy has the same signature:
``policy(demand, template, capacity, coins, share_leftover=False) -> alloc``
with demand, template, coins of shape (n, 4), capacity (4,), alloc (n, 4),
columns cpu, mem, disk, net. Pure functions of their inputs: no state, no
Python loop over VMs (each step is a column-wise weighted water-filling).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..model.enforcement import MEM, template_shares, tiebreak_weights
from ..model.waterfill import waterfill, waterfill_loop

N_RESOURCES = 4


class PolicyInputError(ValueError):
    """Inputs of the wrong shape, non-finite, or negative."""


def check_inputs(
    demand: np.ndarray, template: np.ndarray, capacity: np.ndarray, coins: np.ndarray
) -> tuple[np.ndarray, ...]:
    # Fortran order: every step reduces per resource (column), ~20× faster down contiguous memory
    arrays = [np.asarray(a, dtype=float, order="F") for a in (demand, template, capacity, coins)]
    demand, template, capacity, coins = arrays
    n = demand.shape[0] if demand.ndim == 2 else -1
    if demand.shape != (n, N_RESOURCES) or template.shape != demand.shape or coins.shape != demand.shape:
        raise PolicyInputError(
            f"demand, template and coins must be (n, 4); got {demand.shape}, {template.shape}, {coins.shape}"
        )
    if capacity.shape != (N_RESOURCES,):
        raise PolicyInputError(f"capacity must be (4,), got {capacity.shape}")
    for name, arr in zip(("demand", "template", "capacity", "coins"), arrays, strict=True):
        if not np.isfinite(arr).all():
            raise PolicyInputError(f"{name} contains NaN or infinity")
    for name, arr in (("demand", demand), ("template", template), ("capacity", capacity)):
        if arr.size and arr.min() < 0:
            raise PolicyInputError(f"{name} contains negative values")
    return demand, template, capacity, coins


def oversold(template: np.ndarray, capacity: np.ndarray) -> np.ndarray:
    """Per resource: Σ template > C beyond rounding, (4,) bool. The sum's order (a C- or a Fortran-ordered
    array) moves it by a few ulps, and a host sold exactly to its capacity must not flip to shares ∝
    template (which hand VMs without a template a tiebreak weight) on that."""
    return template.sum(axis=0) > capacity * (1.0 + 4.0 * len(template) * np.finfo(float).eps)


def fits_host(demand: np.ndarray, capacity: np.ndarray, headroom: float) -> np.ndarray:
    """Per resource: does the predicted demand fit the host with ``headroom`` to spare? (4,) bool.

    The margin matters because a capped VM's measured use — and so its next
    estimate — sits at its cap: without it, a resource held exactly at capacity
    would look "fit", lose its ceilings, burst, and flip back every period.
    """
    return demand.sum(axis=0) <= (1.0 - headroom) * capacity


def fit_after_streak(streak: np.ndarray, fits: np.ndarray, after: int) -> tuple[np.ndarray, np.ndarray]:
    """Hysteresis on ``fits_host``: (periods in a row each resource fit, whether it counts as fit now).

    Contended at once, fit again only after ``after`` periods in a row: a VM
    held at its ceiling dips below the headroom now and then, and each dip
    would otherwise release its ceiling for a period and let it burst.
    """
    streak = np.where(fits, streak + 1, 0)
    return streak, streak >= after


def unthrottled_demand(
    demand: np.ndarray, usage: np.ndarray, last_ceiling: np.ndarray, probe: float, tolerance: float = 0.05
) -> np.ndarray:
    """What a VM held at its ceiling may want: its ceiling × (1 + ``probe``), at least.

    A VM using all of its ceiling shows no more than the ceiling, so its estimate
    cannot rise above it either, and once every contender is pinned the coins stop
    mattering: what is left is split by template. Asking a little more each period
    lets capacity flow to the VM that can use it, first to the one with coins.
    ``last_ceiling`` is inf where nothing was capped. Memory is left alone (a
    guest does not press against its balloon the same way; it has its floors).
    """
    pinned = usage >= (1.0 - tolerance) * last_ceiling
    pinned[:, MEM] = False
    return np.where(pinned, np.maximum(demand, last_ceiling * (1.0 + probe)), demand)


# How a VM's coin vector becomes its priority (`[scheduler] coin_norm`): one weight for every resource from
# a norm of the positive coins (coins are one currency: CPU saved buys disk priority), or ``resource``: each
# resource by its own coins (no exchange). docs/EVALUATION.md compares them; l2 is the seed's ‖ac_i‖.
COIN_NORMS = {"l2": 2, "l1": 1, "max": np.inf, "resource": None}


def coin_weight(coins: np.ndarray, norm: str = "l2") -> np.ndarray:
    """w_ir from the coins (n, 4) by ``norm`` (COIN_NORMS; default w_i = ‖max(coins_i, 0)‖₂). Shape (n, 4)."""
    positive = np.maximum(coins, 0.0)
    if COIN_NORMS[norm] is None:
        return positive
    per_vm = np.linalg.norm(positive, ord=COIN_NORMS[norm], axis=1)
    return np.asfortranarray(np.repeat(per_vm[:, None], N_RESOURCES, axis=1))  # column sums: see check_inputs


def _share_leftover(alloc: np.ndarray, template: np.ndarray, capacity: np.ndarray) -> np.ndarray:
    left = np.maximum(capacity - alloc.sum(axis=0), 0.0)
    weights = tiebreak_weights(template)
    return alloc + left * weights / weights.sum(axis=0)


def rescoin(
    demand: np.ndarray,
    template: np.ndarray,
    capacity: np.ndarray,
    coins: np.ndarray,
    share_leftover: bool = False,
    norm: str = "l2",
) -> np.ndarray:
    """Entitlement first, then excess by coins, then the rest by template (docs/DESIGN.md §6.5)."""
    demand, template, capacity, coins = check_inputs(demand, template, capacity, coins)
    if demand.shape[0] == 0:
        return np.zeros((0, N_RESOURCES))
    base = np.minimum(demand, template)
    short = base.sum(axis=0) > capacity
    if short.any():  # the host sold more than it has: entitlements shrink by template
        base = np.where(short, waterfill(capacity, base, template), base)
    excess = np.maximum(capacity - base.sum(axis=0), 0.0)
    alloc = base + burst_extra(excess, np.maximum(demand - template, 0.0), template, coins, norm)
    return _share_leftover(alloc, template, capacity) if share_leftover else alloc


def burst_extra(
    amount: np.ndarray, burst: np.ndarray, template: np.ndarray, coins: np.ndarray, norm: str = "l2"
) -> np.ndarray:
    """Hand ``amount`` (4,) out over the ``burst`` demands (n, 4): tier 1 by coin weight
    (coins buy priority), tier 2 by template for what is left (never withheld). (n, 4)."""
    extra = waterfill(amount, burst, coin_weight(coins, norm))
    rest = np.maximum(amount - extra.sum(axis=0), 0.0)
    return extra + waterfill(rest, burst - extra, tiebreak_weights(template))


def unsold_shares(
    demand: np.ndarray, template: np.ndarray, capacity: np.ndarray, coins: np.ndarray, norm: str = "l2"
) -> np.ndarray:
    """docs/DESIGN.md §6.6: share = template + a split of the unsold capacity E = C − Σ tc, (n, 4).

    E goes to the VMs predicted to burst, tier 1 by coin weight and tier 2 by
    template (as in ``rescoin``), any remainder by template, so Σ share = C and
    under full contention each VM gets C·share/Σshare ≥ its template. An
    oversold resource (Σ tc > C) gets shares ∝ template.
    """
    demand, template, capacity, coins = check_inputs(demand, template, capacity, coins)
    unsold = np.maximum(capacity - template.sum(axis=0), 0.0)
    extra = burst_extra(unsold, np.maximum(demand - template, 0.0), template, coins, norm)
    rest = np.maximum(unsold - extra.sum(axis=0), 0.0)
    share = template + extra + template_shares(template, rest)
    return np.where(oversold(template, capacity), template_shares(template, capacity), share)


def seed_shares(
    demand: np.ndarray, template: np.ndarray, capacity: np.ndarray, coins: np.ndarray, norm: str = "l2"
) -> np.ndarray:
    """The seed's literal form (docs/DESIGN.md §6.6, allowed variant): share = tc + wr·C_e, (n, 4).

    wr = coin weight / Σ coin weight, C_e = C − Σ min(d, tc): the capacity the
    entitlements leave, promised to savers *before* anyone bursts. Σ share can
    then exceed C, so the template's guarantee leans on the prediction (on the
    Bitbrains month it was never broken; bounding it cost savers more than it
    saved: docs/EVALUATION.md). No coins anywhere: shares = template. An
    oversold resource gets shares ∝ template.
    """
    demand, template, capacity, coins = check_inputs(demand, template, capacity, coins)
    weight = coin_weight(coins, norm)
    total = weight.sum(axis=0)
    ratio = np.where(total > 0, weight / np.where(total > 0, total, 1.0), 0.0)
    entitled = np.minimum(demand, template)
    spare = np.maximum(capacity - entitled.sum(axis=0), 0.0)
    share = template + ratio * spare[None, :]
    return np.where(oversold(template, capacity), template_shares(template, capacity), share)


def coin_shares(
    demand: np.ndarray, template: np.ndarray, capacity: np.ndarray, coins: np.ndarray, norm: str = "l2"
) -> np.ndarray:
    """share = template + the unsold capacity E = C − Σ tc split by coin weight alone, (n, 4).

    No burst caps: a weight a VM does not use costs nobody anything (the kernel
    passes it on), so a saver holds its priority even when its burst was not
    predicted. Σ share = C (no coins anywhere: E by template); oversold: ∝ template.
    """
    demand, template, capacity, coins = check_inputs(demand, template, capacity, coins)
    weight = coin_weight(coins, norm)
    total = weight.sum(axis=0)
    unsold = np.maximum(capacity - template.sum(axis=0), 0.0)
    by_coins = weight / np.where(total > 0, total, 1.0) * unsold[None, :]
    extra = np.where(total > 0, by_coins, template_shares(template, unsold))
    return np.where(oversold(template, capacity), template_shares(template, capacity), template + extra)


SHARE_FORMULAS: dict[str, Callable[..., np.ndarray]] = {
    "unsold": unsold_shares,
    "coins": coin_shares,
    "seed": seed_shares,
}


# Which VMs `[scheduler] starved_guard` holds at their template's part of the weights, the period after a
# resource was busy (Σ use ≥ (1 − fit_headroom)·C): none, those that used less than their template, or all.
STARVED_GUARDS = ("off", "below", "all")


def guarded(usage: np.ndarray, template: np.ndarray, capacity: np.ndarray, headroom: float, guard: str) -> np.ndarray:
    """(n, 4) bool: the VMs ``guard`` (STARVED_GUARDS) floors at their template's part of the weights.

    The scheduler does not know what a VM wanted, only what it used. On a work-conserving host a VM
    short of min(demand, template) used less than its template of a resource that was full, so it is
    among ``below``; the others there wanted no more, and a weight a satisfied VM does not use moves
    nobody in the kernel's water-filling. ``all`` also floors the VMs that used more than their
    template: a VM can be starved without warning, the first period its neighbours burst.
    """
    if guard == "off":
        return np.zeros(usage.shape, dtype=bool)
    busy = usage.sum(axis=0) >= (1.0 - headroom) * capacity
    return busy & (usage < template) if guard == "below" else np.broadcast_to(busy, usage.shape)


def template_floor(shares: np.ndarray, template: np.ndarray, capacity: np.ndarray, held: np.ndarray) -> np.ndarray:
    """``shares`` with every ``held`` VM at least its template's part of the weights, C·g_i/Σg ≥ tc_i, (n, 4).

    The seed formula's Σ share can exceed C, and then a VM's weight is below its template's part
    (``[scheduler] starved_guard``; ``held`` from ``guarded``). Solved exactly per resource:
    g_i = max(λ·share_i, floor_i), Σ g = C (floor = template where held, else 0), so the VMs above their
    floor keep their proportions. A resource where no held VM is below its template's part, or one that
    is oversold, is left as it is.
    """
    floor = np.where(held, template, 0.0)
    total = shares.sum(axis=0)
    short = (capacity * shares < floor * total * (1.0 - 1e-9)).any(axis=0) & ~oversold(template, capacity)
    if not short.any():
        return shares
    # Newton on φ(λ) = Σ max(λ·s_i, f_i), convex and rising: from λ = C/Σs (φ ≥ C there) solve the linear
    # piece of the VMs now at their floor; λ only falls, so that set only grows, and once it stands still
    # λ is exact (at most n + 1 passes; a few in practice: no sort, which cost 5 ms at 10k VMs)
    level = capacity / np.where(total > 0, total, 1.0)
    at_floor = np.zeros(shares.shape, dtype=bool)
    for _ in range(shares.shape[0] + 1):
        now = floor > level * shares
        if np.array_equal(now, at_floor):
            break
        at_floor = now
        free = np.where(at_floor, 0.0, shares).sum(axis=0)
        level = (capacity - np.where(at_floor, floor, 0.0).sum(axis=0)) / np.where(free > 0, free, 1.0)
    return np.where(short, np.maximum(level * shares, floor), shares)


def rescoin_loop(
    demand: np.ndarray, template: np.ndarray, capacity: np.ndarray, coins: np.ndarray, share_leftover: bool = False
) -> np.ndarray:
    """The same policy step by step with the loop water-filling: the reference for tests and benchmarks."""
    demand, template, capacity, coins = check_inputs(demand, template, capacity, coins)
    n = demand.shape[0]
    alloc = np.zeros((n, N_RESOURCES))
    weight = [float(np.sqrt(sum(max(c, 0.0) ** 2 for c in coins[i]))) for i in range(n)]
    for r in range(N_RESOURCES):
        col = lambda values: np.array(values, dtype=float).reshape(n, 1)  # noqa: E731
        base = [min(demand[i, r], template[i, r]) for i in range(n)]
        if sum(base) > capacity[r]:
            base = list(waterfill_loop(capacity[r : r + 1], col(base), template[:, r : r + 1])[:, 0])
        excess = max(capacity[r] - sum(base), 0.0)
        burst = [max(demand[i, r] - template[i, r], 0.0) for i in range(n)]
        tier1 = waterfill_loop(np.array([excess]), col(burst), col(weight))[:, 0]
        rest = max(excess - tier1.sum(), 0.0)
        scale = max(float(template[:, r].max(initial=0.0)), 1.0)
        tie = col([max(template[i, r], 1e-9 * scale) for i in range(n)])
        tier2 = waterfill_loop(np.array([rest]), col([burst[i] - tier1[i] for i in range(n)]), tie)[:, 0]
        for i in range(n):
            alloc[i, r] = base[i] + tier1[i] + tier2[i]
    return _share_leftover(alloc, template, capacity) if share_leftover else alloc


def static(
    demand: np.ndarray, template: np.ndarray, capacity: np.ndarray, coins: np.ndarray, share_leftover: bool = False
) -> np.ndarray:
    """Caps at template: each VM gets min(demand, template), never more (no bursting)."""
    demand, template, capacity, coins = check_inputs(demand, template, capacity, coins)
    base = np.minimum(demand, template)
    oversold = base.sum(axis=0) > capacity
    return np.where(oversold, waterfill(capacity, base, template), base)


def shares(
    demand: np.ndarray, template: np.ndarray, capacity: np.ndarray, coins: np.ndarray, share_leftover: bool = False
) -> np.ndarray:
    """CFS-like: water-fill the capacity over the demands with the templates as weights."""
    demand, template, capacity, coins = check_inputs(demand, template, capacity, coins)
    alloc = waterfill(capacity, demand, tiebreak_weights(template))
    return _share_leftover(alloc, template, capacity) if share_leftover else alloc


def maxmin(
    demand: np.ndarray, template: np.ndarray, capacity: np.ndarray, coins: np.ndarray, share_leftover: bool = False
) -> np.ndarray:
    """Max-min fair on demand, blind to templates: equal weights for everyone."""
    demand, template, capacity, coins = check_inputs(demand, template, capacity, coins)
    alloc = waterfill(capacity, demand, np.ones_like(demand))
    return _share_leftover(alloc, template, capacity) if share_leftover else alloc


def credits(
    demand: np.ndarray, template: np.ndarray, capacity: np.ndarray, coins: np.ndarray, share_leftover: bool = False
) -> np.ndarray:
    """AWS T-instance style: a VM may burst above its template only while it holds credits
    of that resource (``coins`` here are per-resource credit balances, earned below template,
    spent above, capped by the ledger's horizon); bursts are served by template share."""
    demand, template, capacity, coins = check_inputs(demand, template, capacity, coins)
    base = static(demand, template, capacity, coins)
    burst = np.where(coins > 0, np.maximum(demand - template, 0.0), 0.0)
    excess = np.maximum(capacity - base.sum(axis=0), 0.0)
    alloc = base + waterfill(excess, burst, tiebreak_weights(template))
    return _share_leftover(alloc, template, capacity) if share_leftover else alloc


def karma(
    demand: np.ndarray, template: np.ndarray, capacity: np.ndarray, coins: np.ndarray, share_leftover: bool = False
) -> np.ndarray:
    """After Karma (Vuppalapati et al., OSDI 2023): everyone gets its guaranteed fair share
    (here its template, scaled to capacity), unused shares are donated, and borrowers are
    served in order of credit balance — the borrower with the most credits first, so what a
    VM donated it gets back later; per resource, credits are the VM's balance in it."""
    demand, template, capacity, coins = check_inputs(demand, template, capacity, coins)
    base = static(demand, template, capacity, coins)
    burst = np.maximum(demand - template, 0.0)
    excess = np.maximum(capacity - base.sum(axis=0), 0.0)
    # Karma gives donated capacity to the borrower with the most credits first; strictly
    # ordered service is water-filling with steeply rising weights in credit rank.
    rank = np.argsort(np.argsort(coins, axis=0, kind="stable"), axis=0, kind="stable")
    weights = np.power(4.0, rank / max(demand.shape[0] - 1, 1) * 30.0)
    alloc = base + waterfill(excess, burst, weights)
    return _share_leftover(alloc, template, capacity) if share_leftover else alloc


Policy = Callable[..., np.ndarray]

POLICIES: dict[str, Policy] = {
    "rescoin": rescoin,
    "static": static,
    "shares": shares,
    "maxmin": maxmin,
    "credits": credits,
    "karma": karma,
}
