"""How a host is sized from real traces: templates and a contended capacity (docs/DESIGN.md §9.4).

One place for the burstable-instance model shared by `rescoin evaluate` and
the sim host: a template is a fraction of each VM's provisioned size (vcpus
and memory from the trace; disk and net sized at the VM's peak), and the host
capacity lies ``contention`` of the way from Σ templates (0: a fully sold
host, the usual case for a provider) to the peak of total demand (1: never
contended), so by default the host is contended but not oversold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .traces import Trace


def size_host(
    provisioned: np.ndarray,
    demand: np.ndarray,
    template_fraction: float | Sequence[float] | np.ndarray,
    contention: float | Sequence[float] | np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(template (n, 4), capacity (4,)) for VMs of ``provisioned`` size (n, 4) with ``demand`` (T, n, 4)."""
    template = provisioned * np.asarray(template_fraction, dtype=float)
    low, peak = template.sum(axis=0), demand.sum(axis=1).max(axis=0)
    capacity = low + np.asarray(contention, dtype=float) * np.maximum(peak - low, 0.0)
    return template, capacity


@dataclass(frozen=True)
class Scenario:
    """A host of VMs replaying traces: what `rescoin evaluate` simulates."""

    demand: np.ndarray  # (T, n, 4): per period, clipped to each VM's provisioned size
    template: np.ndarray  # (n, 4)
    capacity: np.ndarray  # (4,)
    names: list[str]  # trace VM ids


def build_scenario(traces: list[Trace], periods: int | None, template_fraction: float, contention: float) -> Scenario:
    """The first ``periods`` rows of ``traces`` (all if None) on a host sized by ``size_host``."""
    demand = np.stack([t.demand for t in traces], axis=1)
    if periods:
        demand = demand[:periods]
    provisioned = np.stack([t.provisioned for t in traces])
    demand = np.minimum(demand, provisioned[None])
    template, capacity = size_host(provisioned, demand, template_fraction, contention)
    return Scenario(demand, template, capacity, [t.vm_id for t in traces])
