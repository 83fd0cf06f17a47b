"""[predictor]: which predictor per resource, and its parameters."""

from __future__ import annotations

from dataclasses import dataclass

from ..runtime.config import between, setting
from .models import PREDICTORS


def _names(value: list[str]) -> str | None:
    if len(value) != 4 or any(v not in PREDICTORS for v in value):
        return f"must be 4 predictor names (cpu, mem, disk, net) among {', '.join(PREDICTORS)}"
    return None


@dataclass
class PredictorSettings:
    """Predicts each VM's demand for the next period (rescoin-predictor).
    Defaults were chosen by `rescoin evaluate --predictors` on the Bitbrains traces (docs/EVALUATION.md)."""

    predictors: list[str] = setting(
        ["ewma_dev", "ewma_dev", "ewma_dev", "ewma_dev"],
        "predictor per resource (cpu, mem, disk, net): last, ewma, ewma_dev, holt, fastslow",
        _names,
    )
    alpha_cpu: float = setting(0.7, "EWMA weight of the newest cpu sample (the seed's 0.7)", between(0.0, 1.0))
    alpha_other: float = setting(
        0.8, "EWMA weight of the newest mem/disk/net sample (the seed's 0.8)", between(0.0, 1.0)
    )
    beta: float = setting(
        1.0, "ewma_dev: deviations of headroom above the mean; holt: trend smoothing", between(0.0, 10.0)
    )
    gamma: float = setting(0.25, "ewma_dev: EWMA weight of the newest absolute error (TCP uses 1/4)", between(0.0, 1.0))
    fast: float = setting(0.9, "fastslow: weight of the newest sample in the fast EWMA", between(0.0, 1.0))
    slow: float = setting(0.05, "fastslow: weight of the newest sample in the slow EWMA", between(0.0, 1.0))
    history: int = setting(32, "periods of use kept per VM in the ring buffer", between(2, 100_000))
