"""The one model of how enforcement divides a host (docs/DESIGN.md §7.14, §9.3).

Coins reach the kernel as *weights* (the scheduler's shares, docs/DESIGN.md §6.6 step
7: template plus a coin-weighted split of the unsold capacity) and, in the
``ceilings`` and ``both`` modes, the allocation as a *ceiling*
(``max(alloc, template)``, so a VM can always run up to its template whatever
the prediction said). Given what the actuator set, this is what each VM achieves:

* rate resources (cpu, disk, net): the capacity is water-filled over
  ``min(demand, ceiling)`` with the shares as weights — what CFS and htb do:
  work-conserving up to the ceilings;
* memory: ``min(demand, balloon target)``; the rest is unmet.

The sim host and `rescoin evaluate` both call this; nothing else models it.
Shapes: (n, 4) per VM and resource in RESOURCES order, capacity (4,).
Units: cores, bytes, bytes/s, bytes/s.
"""

from __future__ import annotations

import numpy as np
from rescoin.proto import MEM

from .waterfill import waterfill

ENFORCEMENT_MODES = ("shares", "ceilings", "both")
RATE = [0, 2, 3]  # cpu, disk, net: divided by weights; memory is only ever capped


def ceilings(
    alloc: np.ndarray,
    template: np.ndarray,
    usage: np.ndarray,
    mem_reserve: float,
    fits: np.ndarray | None = None,
    cpu_floor: float = 0.0,
    mem_floor: np.ndarray | None = None,
) -> np.ndarray:
    """The ceilings of an allocation, (n, 4), inf = none (``in_force`` says which the kernel gets).

    Never below the template (the guarantee) nor, for cpu, ``cpu_floor``;
    memory never below ``mem_floor`` (n,), by default use + reserve
    (ballooning a guest below what it cannot give back kills it; the scheduler
    passes max(use, unreclaimable) + reserve). A resource whose predicted demand
    fits the host (``fits[r]``, the alloc's mode "fit") gets none: there is no
    one to protect, and a low prediction must not waste idle capacity.
    """
    ceiling = np.maximum(alloc, template)
    ceiling[:, 0] = np.maximum(ceiling[:, 0], cpu_floor)
    floor = usage[:, MEM] + mem_reserve if mem_floor is None else mem_floor
    ceiling[:, MEM] = np.maximum(ceiling[:, MEM], floor)
    if fits is not None:
        ceiling[:, np.asarray(fits, dtype=bool).reshape(-1)] = np.inf
    return ceiling


def in_force(ceiling: np.ndarray, mode: str, none: float = np.inf) -> np.ndarray:
    """The ceilings the kernel gets under an enforcement mode: all of them in ``ceilings`` and
    ``both``; in ``shares`` only memory's (a balloon), rate resources are left to the weights.
    ``none`` is how "no ceiling" is written (inf here, -1 on the wire)."""
    if mode != "shares":
        return ceiling
    out = np.array(ceiling, dtype=float)
    out[:, RATE] = none
    return out


def tiebreak_weights(template: np.ndarray) -> np.ndarray:
    """Template as weights, with a tiny floor per resource so a VM with a zero template is served
    last, not never (per column: a host's memory in bytes must not set the floor for its cores)."""
    template = np.asarray(template, dtype=float)
    scale = np.maximum(template.max(axis=0, initial=0.0), 1.0)
    return np.maximum(template, 1e-9 * scale)


def template_shares(template: np.ndarray, capacity: np.ndarray) -> np.ndarray:
    """Weights ∝ template scaled so Σ share = C per resource: the kernel's plain proportional share. (n, 4).

    A VM with a zero template gets a tiny weight (served last, not never).
    """
    template = np.asarray(template, dtype=float)
    weights = tiebreak_weights(template)
    total = weights.sum(axis=0)
    return weights * (np.asarray(capacity, dtype=float) / np.where(total > 0, total, 1.0))


def enforce(demand: np.ndarray, weights: np.ndarray, ceiling: np.ndarray, capacity: np.ndarray) -> np.ndarray:
    """Achieved use (n, 4) of VMs with ``demand`` under ``weights`` and ``ceiling`` (inf = none).

    A rate resource whose weights are all zero is shared equally (no shares
    set means the scheduler's default: everyone alike).
    """
    demand = np.maximum(np.asarray(demand, dtype=float), 0.0)
    wanted = np.minimum(demand, ceiling)
    weights = np.asarray(weights, dtype=float)
    unset = np.logical_not(np.any(weights > 0, axis=0)).reshape(1, -1)
    weights = np.where(unset, 1.0, weights)
    achieved = waterfill(capacity, wanted, weights)
    achieved[:, MEM] = wanted[:, MEM]  # memory is not rate-shared: a balloon just caps it
    return achieved
