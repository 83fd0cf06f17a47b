"""Demand predictors, vectorized over VMs (rows) for one resource column.

Each predictor keeps its state as arrays of shape (n,), one entry per VM row,
and is told when rows move (``reindex``) as VMs come and go. ``update(use)``
takes this period's measured use (n,) and returns the estimate for the next.

* ``last``: the last value.
* ``ewma``: e ← α·use + (1−α)·e.
* ``ewma_dev``: ewma plus β·dev, dev an EWMA of |use − e| (TCP's RTT
  estimator, RFC 6298): an upper bound rather than a mean.
* ``holt``: level + trend (double exponential smoothing), never below 0.
* ``fastslow``: max of a fast and a slow EWMA (ESX-style for memory: rises
  at once, falls slowly).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np


class Predictor:
    name: ClassVar[str] = ""
    params: dict[str, float]

    def __init__(self, **params: float) -> None:
        self.params = params
        self.state: dict[str, np.ndarray] = {}
        self.seen = np.zeros(0, dtype=bool)

    def reindex(self, rows: np.ndarray) -> None:
        """Keep the state of old row ``rows[i]`` (or none if -1) as new row ``i``."""
        keep = rows >= 0
        for key, values in self.state.items():
            moved = np.zeros(len(rows))
            moved[keep] = values[rows[keep]]
            self.state[key] = moved
        seen = np.zeros(len(rows), dtype=bool)
        seen[keep] = self.seen[rows[keep]]
        self.seen = seen

    def update(self, use: np.ndarray) -> np.ndarray:
        if len(self.seen) != len(use):  # rows were never aligned: all of them are new
            self.seen = np.zeros(len(use), dtype=bool)
            self.state = {}
        fresh = ~self.seen
        if fresh.any():  # a new VM's first value seeds its state
            self._seed(use, fresh)
            self.seen = np.ones(len(use), dtype=bool)
        return np.maximum(self._step(use), 0.0)

    def _seed(self, use: np.ndarray, fresh: np.ndarray) -> None:
        for key in self.state_keys():
            values = self.state.setdefault(key, np.zeros(len(use)))
            values[fresh] = use[fresh] if key != "dev" and key != "trend" else 0.0

    def state_keys(self) -> tuple[str, ...]:
        return ()

    def _step(self, use: np.ndarray) -> np.ndarray:
        raise TypeError("a Predictor subclass implements _step")


class Last(Predictor):
    name = "last"

    def _step(self, use: np.ndarray) -> np.ndarray:
        return use.copy()


class Ewma(Predictor):
    name = "ewma"

    def state_keys(self) -> tuple[str, ...]:
        return ("mean",)

    def _step(self, use: np.ndarray) -> np.ndarray:
        alpha = self.params["alpha"]
        self.state["mean"] = alpha * use + (1 - alpha) * self.state["mean"]
        return self.state["mean"].copy()


class EwmaDev(Predictor):
    name = "ewma_dev"

    def state_keys(self) -> tuple[str, ...]:
        return ("mean", "dev")

    def _step(self, use: np.ndarray) -> np.ndarray:
        alpha, beta, gamma = self.params["alpha"], self.params["beta"], self.params["gamma"]
        error = np.abs(use - self.state["mean"])
        self.state["dev"] = gamma * error + (1 - gamma) * self.state["dev"]
        self.state["mean"] = alpha * use + (1 - alpha) * self.state["mean"]
        return self.state["mean"] + beta * self.state["dev"]


class Holt(Predictor):
    name = "holt"

    def state_keys(self) -> tuple[str, ...]:
        return ("level", "trend")

    def _step(self, use: np.ndarray) -> np.ndarray:
        alpha, beta = self.params["alpha"], self.params["beta"]
        level = self.state["level"]
        new_level = alpha * use + (1 - alpha) * (level + self.state["trend"])
        self.state["trend"] = beta * (new_level - level) + (1 - beta) * self.state["trend"]
        self.state["level"] = new_level
        return new_level + self.state["trend"]


class FastSlow(Predictor):
    name = "fastslow"

    def state_keys(self) -> tuple[str, ...]:
        return ("fast", "slow")

    def _step(self, use: np.ndarray) -> np.ndarray:
        fast, slow = self.params["fast"], self.params["slow"]
        self.state["fast"] = fast * use + (1 - fast) * self.state["fast"]
        self.state["slow"] = slow * use + (1 - slow) * self.state["slow"]
        return np.maximum(self.state["fast"], self.state["slow"])


PREDICTORS: dict[str, type[Predictor]] = {p.name: p for p in (Last, Ewma, EwmaDev, Holt, FastSlow)}

DEFAULT_PARAMS: dict[str, dict[str, float]] = {
    "last": {},
    "ewma": {"alpha": 0.7},
    "ewma_dev": {"alpha": 0.7, "beta": 1.0, "gamma": 0.25},
    "holt": {"alpha": 0.7, "beta": 0.2},
    "fastslow": {"fast": 0.9, "slow": 0.05},
}


def make_predictor(name: str, overrides: dict[str, Any] | None = None) -> Predictor:
    if name not in PREDICTORS:
        raise ValueError(f"unknown predictor {name!r} (known: {', '.join(PREDICTORS)})")
    params = {**DEFAULT_PARAMS[name], **(overrides or {})}
    return PREDICTORS[name](**params)
