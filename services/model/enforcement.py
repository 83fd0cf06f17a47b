"""The one model of how enforcement divides a host (DESIGN §7, §9).

The template is a *guarantee* (shares proportional to it), the allocation a
*ceiling* (``max(alloc, template)``, so a VM can always run up to its
template whatever the prediction said). Given what the actuator set, this is
what each VM achieves:

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

from .waterfill import waterfill

MEM = 1


def ceilings(
    alloc: np.ndarray, template: np.ndarray, usage: np.ndarray, mem_reserve: float, fits: np.ndarray | None = None
) -> np.ndarray:
    """The ceilings the actuator enforces for an allocation, (n, 4), inf = none.

    Never below the template (the guarantee); memory never below use + reserve
    (ballooning a guest below its use kills it); and, for a resource whose
    predicted demand fits the host (``fits[r]``, the alloc's mode "fit"), no
    ceiling at all: there is no one to protect, and a low prediction must not
    waste idle capacity.
    """
    ceiling = np.maximum(alloc, template)
    ceiling[:, MEM] = np.maximum(ceiling[:, MEM], usage[:, MEM] + mem_reserve)
    if fits is not None:
        ceiling[:, np.asarray(fits, dtype=bool).reshape(-1)] = np.inf
    return ceiling


def shares(template: np.ndarray) -> np.ndarray:
    """Weights the actuator sets: proportional to the template (the guarantee)."""
    return np.asarray(template, dtype=float).copy()


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
