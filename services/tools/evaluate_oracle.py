"""`rescoin evaluate --bound` and the evaluation-only predictors: how much fairer could a host be?

The bound (docs/EVALUATION.md, "The oracle's headroom"). Satisfaction is the
metric ``evaluate.metrics`` reports: a VM's served / demanded over the whole
run, every resource normalized by the host's capacity, so a VM's satisfaction
is S_i = (E_i + X_i) / D_i with E_i its entitlements min(d, tc) summed over
periods and resources, X_i what it got above them, D_i its demand (all / C).
The only constraints an allocation has are per *slot* (period t, resource r):
every VM gets its entitlement (shrunk by template where the entitlements alone
exceed C, as the policies do), no VM gets more than it demands, Σ ≤ C. So the
whole run is one transportation problem: the spare a_k = C − Σ entitlements of
each slot k goes to the VMs' bursts b_ik = d − entitlement.

* **upper bounds** (valid for *any* allocation with those constraints, so for
  every policy that breaks no entitlement): for any set A of VMs, the lowest
  satisfaction is at most A's demand-weighted mean, and A can get at most
  Σ_k min(a_k, Σ_{i∈A} b_ik) of the spare, so
  min_i S_i ≤ (E(A) + Σ_k min(a_k, b_k(A))) / D(A) — ``lowest_upper`` is the
  least of these over the prefixes of the VMs sorted by satisfaction. Savers'
  burst service is at most what savers would get with priority in every slot,
  Σ_k min(a_k, b_k(savers)) / Σ savers' bursts — ``saver_upper``;
* **the allocation** (the ``bound`` row): Frank–Wolfe on softmin_τ(S) + ε ·
  savers' burst served, i.e. the lowest satisfaction first, then savers'
  bursts. Its linear step is one priority order of the VMs filled greedily into
  every slot at once (numpy, no loop over periods or VMs); it stops when its
  lowest satisfaction is within ``tol`` of ``lowest_upper``, which then is the
  exact optimum to that tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..model.scenario import Scenario
from ..model.waterfill import waterfill

EPS = 1e-12


class RecentQuantile:
    """Evaluation-only predictor: each VM's ``q``-quantile of its last ``window`` uses (the live
    predictor is untouched). Same interface as ``predictor.models``: ``update(use) -> estimate``."""

    def __init__(self, q: float = 0.9, window: int = 12) -> None:
        self.q, self.window = q, window
        self.ring: np.ndarray | None = None
        self.seen = 0

    def update(self, use: np.ndarray) -> np.ndarray:
        use = np.asarray(use, dtype=float)
        if self.ring is None or self.ring.shape[1] != len(use):
            self.ring, self.seen = np.zeros((self.window, len(use))), 0
        self.ring[self.seen % self.window] = use
        self.seen += 1
        return np.quantile(self.ring[: min(self.seen, self.window)], self.q, axis=0)


@dataclass(frozen=True)
class Slots:
    """A scenario as slots k = (period, resource), in units of capacity: (n, m) per VM and slot."""

    entitled: np.ndarray  # (n, m) min(d, tc), shrunk by template where Σ > C
    burst: np.ndarray  # (n, m) d − entitled
    spare: np.ndarray  # (m,) C − Σ entitled (1 or 0 before)
    demand: np.ndarray  # (D_i,) (n,) total demand
    saver: np.ndarray  # (n,) bool, as ``metrics`` defines savers


def entitlements(sc: Scenario) -> np.ndarray:
    """(T, n, 4): min(d, tc), shrunk by template water-filling in a slot whose Σ exceeds C (as the policies do)."""
    d, tc, cap = sc.demand, sc.template, sc.capacity
    T, n, R = d.shape
    e = np.minimum(d, tc[None])
    over = e.sum(axis=1) > cap[None] * (1 + 1e-12)  # (T, 4)
    if over.any():
        cols = e.transpose(1, 0, 2).reshape(n, T * R)
        fill = waterfill(np.tile(cap, T), cols, np.tile(tc, (1, T)))
        shrunk = np.asarray(fill).reshape(n, T, R).transpose(1, 0, 2)
        e = np.where(over[:, None, :], shrunk, e)
    return e


def savers(sc: Scenario) -> np.ndarray:
    """(n,) VMs whose mean use is under their template in every resource the host has."""
    return ((sc.demand.mean(axis=0) < sc.template) | (sc.capacity == 0)[None]).all(axis=1)


def slots(sc: Scenario) -> Slots:
    d = sc.demand
    T, n, R = d.shape
    unit = np.where(sc.capacity > 0, sc.capacity, 1.0)
    e = entitlements(sc) / unit
    dn = d / unit
    spare = np.maximum(np.where(sc.capacity > 0, 1.0, 0.0)[None] - e.sum(axis=1), 0.0).reshape(T * R)

    def cols(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a.transpose(1, 0, 2).reshape(n, T * R))

    return Slots(cols(e), cols(np.maximum(dn - e, 0.0)), spare, dn.sum(axis=(0, 2)), savers(sc))


def priority_fill(burst: np.ndarray, spare: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Every slot filled greedily in one VM order (first = first served): (n, m)."""
    b = burst[order]
    before = np.cumsum(b, axis=0) - b
    x = np.clip(spare[None] - before, 0.0, b)
    out = np.empty_like(x)
    out[order] = x
    return out


def lowest_upper(s: Slots, sat: np.ndarray) -> float:
    """The least over prefixes A (VMs by ``sat``, ascending) of (E(A) + Σ_k min(a_k, b_k(A))) / D(A):
    an upper bound on the lowest satisfaction of any allocation that honours entitlements."""
    live = s.demand > EPS
    order = np.argsort(np.where(live, sat, np.inf), kind="stable")[: int(live.sum())]
    cum_b = np.cumsum(s.burst[order], axis=0)
    got = np.minimum(cum_b, s.spare[None]).sum(axis=1)
    ratio = (np.cumsum(s.entitled[order].sum(axis=1)) + got) / np.cumsum(s.demand[order])
    return float(ratio.min()) if len(ratio) else 1.0


def saver_upper(s: Slots) -> float:
    """Savers' burst service with savers first in every slot: an upper bound for any allocation."""
    b = s.burst[s.saver]
    total = b.sum()
    return float(np.minimum(b.sum(axis=0), s.spare).sum() / total) if total > EPS else 1.0


def bound_allocation(sc: Scenario, tol: float = 1e-9, iterations: int = 2000) -> tuple[np.ndarray, dict[str, float]]:
    """The bound's allocation (T, n, 4, in resource units: what each VM is served) and its certificate:
    ``lowest`` (its lowest satisfaction), ``lowest_upper``, ``saver_upper``, ``iterations``.

    The VMs' totals x_i = D_i·S_i range over a base polytope whose vertices are the priority fills, and
    the lexicographically max-min base (the lowest S_i as high as it can be, then the next, …) is the
    point of least Σ x_i² / D_i (Fujishige 1980). Wolfe's min-norm-point algorithm finds it exactly, its
    linear step being one priority fill in order of ascending satisfaction."""
    s = slots(sc)
    n, m = s.burst.shape
    T, _, R = sc.demand.shape
    live = s.demand > EPS
    w = np.where(live, s.demand, 1.0)
    contended = s.burst.sum(axis=0) > s.spare * (1 + 1e-12)
    extra = np.where(contended[None], 0.0, s.burst)  # uncontended slots: everyone gets its demand
    burst, spare = s.burst[:, contended], s.spare[contended]
    base = s.entitled.sum(axis=1) + extra.sum(axis=1)
    big = 1e6  # a VM without demand has no satisfaction: served last, out of the norm

    def vertex(order: np.ndarray) -> np.ndarray:
        return base + priority_fill(burst, spare, order).sum(axis=1)

    def dot(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.sum(np.where(live, a * b / w, 0.0)))

    def lmo(x: np.ndarray) -> np.ndarray:
        return np.argsort(np.where(live, x / w, big), kind="stable")

    orders = [lmo(base)]
    verts = [vertex(orders[0])]
    alpha = np.array([1.0])
    x = verts[0]
    it = 0
    while it < iterations:
        it += 1
        order = lmo(x)
        q = vertex(order)
        if dot(x, x) - dot(x, q) <= tol * max(dot(x, x), EPS) or any(np.array_equal(order, o) for o in orders):
            break
        orders.append(order)
        verts.append(q)
        alpha = np.append(alpha, 0.0)
        while True:  # minor cycle: the affine minimizer of the corral, kept inside its hull
            V = np.array(verts)
            G = (V * np.where(live, 1.0, 0.0) / w) @ V.T
            k = len(verts)
            A = np.zeros((k + 1, k + 1))
            A[:k, :k], A[:k, k], A[k, :k] = G, 1.0, 1.0
            rhs = np.zeros(k + 1)
            rhs[k] = 1.0
            beta = np.linalg.lstsq(A, rhs, rcond=None)[0][:k]
            if (beta > 1e-12).all():
                alpha = beta
                break
            neg = beta < alpha
            theta = min(1.0, float(np.min(np.where(neg, alpha / np.where(neg, alpha - beta, 1.0), np.inf))))
            alpha = (1 - theta) * alpha + theta * beta
            keep = alpha > 1e-12
            if keep.all():
                keep[int(np.argmin(alpha))] = False
            verts = [v for v, kept in zip(verts, keep, strict=True) if kept]
            orders = [o for o, kept in zip(orders, keep, strict=True) if kept]
            alpha = alpha[keep] / alpha[keep].sum()
        x = alpha @ np.array(verts)
    fill = np.zeros_like(burst)
    for a, order in zip(alpha, orders, strict=True):
        fill += a * priority_fill(burst, spare, order)
    full = extra.copy()
    full[:, contended] = fill
    unit = np.where(sc.capacity > 0, sc.capacity, 1.0)
    served = (s.entitled + full).reshape(n, T, R).transpose(1, 0, 2) * unit
    sat = np.where(live, (s.entitled + full).sum(axis=1) / w, 1.0)
    cert = {
        "lowest": float(sat[live].min()) if live.any() else 1.0,
        "lowest_upper": lowest_upper(s, sat),
        "saver_upper": saver_upper(s),
        "iterations": it,
    }
    return np.minimum(served, sc.demand), cert
