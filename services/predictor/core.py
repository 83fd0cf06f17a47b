"""The predictor's logic: a ring buffer of recent use per VM and one predictor per resource.

Socket-free: ``on_sample`` takes a decoded `sample` of period p and returns
the `estimate` for period p+1. VMs that appear get fresh state seeded with
their first use; VMs that leave lose theirs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from rescoin.proto import KIND_ESTIMATE, KIND_SAMPLE, RESOURCES, Envelope, topic_prefix
from rescoin.proto.messages import Estimate, Sample

from ..runtime.service import Health, Outgoing
from .models import DEFAULT_PARAMS, Predictor, make_predictor
from .settings import PredictorSettings


def predictor_params(settings: PredictorSettings, resource: int) -> dict[str, Any]:
    alpha = settings.alpha_cpu if resource == 0 else settings.alpha_other
    return {
        "alpha": alpha,
        "beta": settings.beta,
        "gamma": settings.gamma,
        "fast": settings.fast,
        "slow": settings.slow,
    }


class UsageHistory:
    """The last ``length`` periods of use per VM: a ring buffer (length, n, 4)."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.buffer = np.zeros((length, 0, 4))
        self.count = 0  # periods stored, up to length
        self.slot = 0

    def reindex(self, rows: np.ndarray) -> None:
        keep = rows >= 0
        moved = np.zeros((self.length, len(rows), 4))
        moved[:, keep] = self.buffer[:, rows[keep]]
        self.buffer = moved

    def push(self, use: np.ndarray) -> None:
        self.buffer[self.slot] = use
        self.slot = (self.slot + 1) % self.length
        self.count = min(self.count + 1, self.length)

    def recent(self) -> np.ndarray:
        """Stored periods, oldest first: (count, n, 4)."""
        return np.roll(self.buffer, -self.slot, axis=0)[self.length - self.count :]


class PredictorCore:
    name = "predictor"

    def __init__(self, host: str, settings: PredictorSettings) -> None:
        self.host = host
        self.settings = settings
        self.models: list[Predictor] = [
            make_predictor(name, _relevant(name, predictor_params(settings, r)))
            for r, name in enumerate(settings.predictors)
        ]
        self.history = UsageHistory(settings.history)
        self.vms: list[str] = []
        self.last_period = -1

    def subscriptions(self) -> list[bytes]:
        return [topic_prefix(KIND_SAMPLE, self.host)]

    def on_message(self, env: Envelope) -> list[Outgoing]:
        return self.on_sample(env) if env.kind == KIND_SAMPLE else []

    def on_sample(self, env: Envelope) -> list[Outgoing]:
        """Use of period p in, estimate for p+1 out."""
        sample: Sample = env.body
        self._align(sample.vms)
        usage = np.asarray(sample.usage, dtype=float)
        self.history.push(usage)
        estimate = (
            np.column_stack([model.update(usage[:, r]) for r, model in enumerate(self.models)])
            if len(self.vms)
            else np.zeros((0, 4))
        )
        self.last_period = env.period
        params = {f"{RESOURCES[r]}.{k}": v for r, m in enumerate(self.models) for k, v in m.params.items()}
        return [
            Outgoing(
                KIND_ESTIMATE,
                env.period + 1,
                Estimate(list(sample.vms), estimate, [m.name for m in self.models], params),
            )
        ]

    def _align(self, vms: list[str]) -> None:
        if vms == self.vms:
            return
        index = {vm: i for i, vm in enumerate(self.vms)}
        rows = np.array([index.get(vm, -1) for vm in vms], dtype=int)
        for model in self.models:
            model.reindex(rows)
        self.history.reindex(rows)
        self.vms = list(vms)

    def on_period(self, ended_period: int) -> list[Outgoing]:
        return []

    def health(self) -> Health:
        return Health(
            "ok",
            {
                "vms": len(self.vms),
                "predictors": ",".join(m.name for m in self.models),
                "last_period": self.last_period,
            },
        )

    def close(self) -> list[Outgoing]:
        return []


def _relevant(name: str, params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if k in DEFAULT_PARAMS[name]}
