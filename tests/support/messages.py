"""Messages as the pipeline makes them, for tests that feed a stage directly."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from rescoin.proto import Envelope
from rescoin.proto.messages import Alloc
from rescoin.services.model.enforcement import ceilings, template_shares

MEM_RESERVE = 64 * 2**20


def make_alloc(
    vms: list[str],
    alloc: np.ndarray,
    template: np.ndarray,
    usage: np.ndarray,
    capacity: np.ndarray,
    enforcement: str = "ceilings",
    shares: np.ndarray | None = None,
    fit: Sequence[bool] = (False,) * 4,
    policy: str = "rescoin",
) -> Alloc:
    """An alloc as the scheduler sends it: shares ∝ template unless given, the allocation's ceilings."""
    ceiling = ceilings(alloc, template, usage, MEM_RESERVE, np.array(fit))
    return Alloc(
        vms,
        alloc,
        np.zeros_like(alloc),
        template,
        usage,
        capacity,
        template_shares(template, capacity) if shares is None else shares,
        np.where(np.isinf(ceiling), -1.0, ceiling),
        enforcement,
        ["fit" if f else "contended" for f in fit],
        policy,
        "estimate",
    )


def alloc_envelope(period: int, body: Alloc, host: str = "h1") -> Envelope:
    return Envelope("alloc", host, "scheduler", 1, period, 0, period, body)
