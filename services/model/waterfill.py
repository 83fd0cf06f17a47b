"""Weighted water-filling, vectorized: the one primitive behind the scheduler
and the enforcement model.

Water-filling an amount A over caps c_i with weights w_i gives each i
``min(c_i, λ·w_i)`` with λ the largest value for which the sum stays ≤ A
(docs/DESIGN.md §6.1); an i with weight 0 gets nothing. No Python loop over VMs.

λ is found by Newton steps on f(λ) = Σ min(c_i, λ·w_i), concave and piecewise
linear: from λ = A/Σw (never above the answer), each step solves the line
through the VMs saturated so far, so λ rises and never overshoots, and it is
exact once the saturated set stops changing: 3–12 passes of comparisons and
sums on the benchmark's inputs. A column still moving after ``NEWTON_STEPS``
is solved in one pass by sorting (exact too, but the sort alone costs about
as much as a dozen Newton passes).

Inside, each resource is a row, (m, n) and contiguous: a sum along a row of
10k VMs is ~20× faster than a column sum of an (n, m) C array.
"""

from __future__ import annotations

import numpy as np

NEWTON_STEPS = 12


SMALLEST_RELATIVE_WEIGHT = 1e-150  # a ratio past it is "nearly nothing" already; below it λ overflows


def relative(weights: np.ndarray, axis: int = 0) -> np.ndarray:
    """Weights ≥ 0 scaled along ``axis`` to a largest of 1 (only ratios matter), none of them positive below
    ``SMALLEST_RELATIVE_WEIGHT``: λ = amount / Σ weight, and a cap's level c / w, must stay finite while a
    VM is unsaturated (a weight 1e-308 of the largest overflowed both to inf and served every cap)."""
    weights = np.maximum(np.asarray(weights, dtype=float), 0.0)
    top = weights.max(axis=axis, initial=0.0, keepdims=True)
    scaled = weights / np.where(top > 0, top, 1.0)
    return np.where(scaled > 0, np.maximum(scaled, SMALLEST_RELATIVE_WEIGHT), 0.0)


def _rows(matrix: np.ndarray) -> np.ndarray:
    """(n, m) → (m, n) C-contiguous (free for a Fortran-ordered input)."""
    return np.ascontiguousarray(np.asarray(matrix, dtype=float).T)


def waterfill(amount: np.ndarray, caps: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Water-fill ``amount`` (m,) over ``caps`` (n, m) with ``weights`` (n, m); returns (n, m),
    Fortran-ordered so that its column sums stay fast too."""
    amount = np.maximum(np.asarray(amount, dtype=float), 0.0)
    weights = relative(_rows(weights), axis=1)
    caps = np.where(weights > 0, np.maximum(_rows(caps), 0.0), 0.0)
    result = np.where(amount[:, None] > 0, caps, 0.0)  # where every cap fits, each gets its cap
    short = (caps.sum(axis=1) > amount) & (amount > 0)
    if short.any():
        result[short] = _fill(amount[short], caps[short], weights[short])
    return result.T


def _fill(amount: np.ndarray, caps: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Rows where Σ caps > amount > 0 (so some weight is 1): Newton on λ, sorting the stragglers."""
    with np.errstate(over="ignore", divide="ignore"):  # a tiny weight's level is inf: saturated last
        level = np.where(weights > 0, caps / np.where(weights > 0, weights, 1.0), 0.0)  # λ saturating i
    lam = amount / weights.sum(axis=1)
    exact = np.zeros(len(amount), dtype=bool)
    for _ in range(NEWTON_STEPS):
        saturated = level <= lam[:, None]
        served = (caps * saturated).sum(axis=1)
        rising = (weights * ~saturated).sum(axis=1)
        with np.errstate(over="ignore"):
            step = np.divide(amount - served, rising, out=lam.copy(), where=rising > 0)
        exact = step <= lam  # the same saturated set as the step before: λ is the answer
        if exact.all():
            break
        lam = np.maximum(step, lam)
    with np.errstate(invalid="ignore"):  # λ = inf (all saturated) × weight 0 is NaN: fmin keeps the cap 0
        result = np.fmin(caps, lam[:, None] * weights)
    if not exact.all():
        result[~exact] = _fill_sorted(amount[~exact], caps[~exact], weights[~exact], level[~exact])
    return result


def _fill_sorted(amount: np.ndarray, caps: np.ndarray, weights: np.ndarray, level: np.ndarray) -> np.ndarray:
    """The same rows in one pass: sort by the λ at which each VM saturates, then find the last
    level whose total Σ min(c, λ·w) still fits."""
    n = caps.shape[1]
    order = np.argsort(level, axis=1)  # ties share a level, so any order of them is right
    level_s = np.take_along_axis(level, order, axis=1)
    caps_s = np.take_along_axis(caps, order, axis=1)
    weights_s = np.take_along_axis(weights, order, axis=1)
    caps_cum = np.cumsum(caps_s, axis=1)  # saturated caps up to and including the k-th level
    weight_from = np.cumsum(weights_s[:, ::-1], axis=1)[:, ::-1]  # weights still rising at the k-th level
    total_at_level = caps_cum - caps_s + level_s * weight_from  # Σ min(c, λ·w) at λ = level_k
    saturated = (total_at_level <= amount[:, None]).sum(axis=1)  # how many are fully served
    rows = np.arange(caps.shape[0])
    below = np.maximum(saturated - 1, 0)  # the last saturated one (clamped: none saturated is masked)
    served = np.where(saturated > 0, caps_cum[rows, below], 0.0)
    rising = np.where(saturated < n, weight_from[rows, np.minimum(saturated, n - 1)], 0.0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        lam = np.where(rising > 0, (amount - served) / np.where(rising > 0, rising, 1.0), np.inf)
        # λ is at least the level of the last saturated VM (rounding can leave it a hair below)
        lam = np.maximum(lam, np.where(saturated > 0, level_s[rows, below], 0.0))
        return np.fmin(caps, lam[:, None] * weights)


def waterfill_loop(amount: np.ndarray, caps: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The obviously-correct reference: raise λ through each saturation point, one VM at a time."""
    result = np.zeros_like(np.asarray(caps, dtype=float))
    weights = relative(weights)
    with np.errstate(over="ignore"):  # a tiny weight's λ or step is inf: that VM simply saturates
        for r in range(result.shape[1]):
            left = max(float(amount[r]), 0.0)
            active = [i for i in range(result.shape[0]) if weights[i, r] > 0 and caps[i, r] > 0]
            if sum(caps[i, r] for i in active) <= left:  # every cap fits: exact, whatever the weights (a
                for i in active:  # subnormal weight would otherwise overflow λ and round the caps off)
                    result[i, r] = caps[i, r]
                continue
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
