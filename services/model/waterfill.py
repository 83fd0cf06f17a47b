"""Weighted water-filling, vectorized: the one primitive behind the scheduler
and the enforcement model.

Water-filling an amount A over caps c_i with weights w_i gives each i
``min(c_i, λ·w_i)`` with λ the largest value for which the sum stays ≤ A
(DESIGN §6); an i with weight 0 gets nothing. Done column-wise (one column per
resource) with one sort and cumulative sums: no Python loop over VMs.
"""

from __future__ import annotations

import numpy as np


def relative(weights: np.ndarray) -> np.ndarray:
    """Weights ≥ 0 scaled per column to a largest of 1: only ratios matter, and then the tiniest
    weights (1e-308) cannot overflow λ = amount / Σ weight to inf while a VM is still unsaturated."""
    weights = np.maximum(np.asarray(weights, dtype=float), 0.0)
    top = weights.max(axis=0, initial=0.0)
    return weights / np.where(top > 0, top, 1.0)


def waterfill(amount: np.ndarray, caps: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Water-fill ``amount`` (m,) over ``caps`` (n, m) with ``weights`` (n, m); returns (n, m)."""
    amount = np.maximum(np.asarray(amount, dtype=float), 0.0)
    weights = relative(weights)
    caps = np.where(weights > 0, np.maximum(np.asarray(caps, dtype=float), 0.0), 0.0)
    n = caps.shape[0]
    if n == 0:
        return caps.copy()
    short = caps.sum(axis=0) > amount  # only these columns need λ: in the others every cap fits
    empty = amount <= 0  # nothing to hand out: nobody gets anything
    if not short.all() or empty.any():
        result = np.where(empty, 0.0, caps)
        solve = short & ~empty
        if solve.any():
            result[:, solve] = waterfill(amount[solve], caps[:, solve], weights[:, solve])
        return result
    safe_w = np.where(weights > 0, weights, 1.0)
    with np.errstate(over="ignore"):  # a tiny weight's level overflows to inf: saturated last
        level = np.where(weights > 0, caps / safe_w, 0.0)  # the λ at which i is saturated
    order = np.argsort(level, axis=0)  # ties share a level, so any order of them is right
    level_s = np.take_along_axis(level, order, axis=0)
    caps_s = np.take_along_axis(caps, order, axis=0)
    weights_s = np.take_along_axis(weights, order, axis=0)
    caps_cum = np.cumsum(caps_s, axis=0)  # saturated caps up to and including the k-th level
    weight_from = np.cumsum(weights_s[::-1], axis=0)[::-1]  # weights still rising at the k-th level
    total_at_level = caps_cum - caps_s + level_s * weight_from  # Σ min(c, λ·w) at λ = level_k
    saturated = (total_at_level <= amount).sum(axis=0)  # (m,): how many are fully served
    cols = np.arange(caps.shape[1])
    below = np.maximum(saturated - 1, 0)  # the last saturated row (clamped: none saturated is masked)
    served = np.where(saturated > 0, caps_cum[below, cols], 0.0)
    rising = np.where(saturated < n, weight_from[np.minimum(saturated, n - 1), cols], 0.0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        lam = np.where(rising > 0, (amount - served) / np.where(rising > 0, rising, 1.0), np.inf)
        # λ is at least the level of the last saturated VM (rounding can leave it a hair below)
        last_level = np.where(saturated > 0, level_s[below, cols], 0.0)
        share = np.maximum(lam, last_level) * weights
    return np.where(np.isinf(lam), caps, np.minimum(caps, share))  # λ = inf: all saturated


def waterfill_loop(amount: np.ndarray, caps: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The obviously-correct reference: raise λ through each saturation point, one VM at a time."""
    result = np.zeros_like(np.asarray(caps, dtype=float))
    weights = relative(weights)
    with np.errstate(over="ignore"):  # a tiny weight's λ or step is inf: that VM simply saturates
        for r in range(result.shape[1]):
            left = max(float(amount[r]), 0.0)
            active = [i for i in range(result.shape[0]) if weights[i, r] > 0 and caps[i, r] > 0]
            while active and left > 1e-15 * max(1.0, float(amount[r])):
                total_w = sum(weights[i, r] for i in active)
                lam = left / total_w
                capped = [i for i in active if caps[i, r] - result[i, r] <= lam * weights[i, r]]
                if not capped:
                    for i in active:
                        result[i, r] += lam * weights[i, r]
                    break
                step = min((caps[i, r] - result[i, r]) / weights[i, r] for i in capped)
                for i in active:
                    result[i, r] = min(caps[i, r], result[i, r] + step * weights[i, r])
                left -= step * total_w
                active = [i for i in active if caps[i, r] - result[i, r] > 1e-12 * max(1.0, caps[i, r])]
    return result
